//! Variant and layer files: parsing, `from:` inheritance and validation.
//!
//! Everything is checked before anything is built, so a bad input never reaches the output.

pub mod check;
mod error;
mod rootfs;
mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Component, Path, PathBuf};

pub use error::{SourcePos, SpecError};
pub use rootfs::{RootLogin, RootfsPart, RootfsSpec};
pub use types::*;

use crate::digest::Sha256Digest;
use serde_saphyr::Spanned;

/// Architectures hakim knows, by Debian name.
pub const KNOWN_ARCHS: &[&str] = &[
    "amd64", "arm64", "armhf", "i386", "ppc64el", "riscv64", "s390x",
];

/// A loaded project: every variant resolved through `from:`, every layer parsed.
#[derive(Debug)]
pub struct Project {
    /// The directory holding `variants/` and `layers/`.
    pub root: PathBuf,
    variants: BTreeMap<String, Variant>,
    layers: BTreeMap<String, Layer>,
}

/// A variant after inheritance.
#[derive(Clone, Debug)]
pub struct Variant {
    /// File stem, used on the command line.
    pub key: String,
    /// Image name.
    pub name: String,
    /// Where it was defined.
    pub file: PathBuf,
    /// Free text.
    pub description: Option<String>,
    /// Architectures, Debian names.
    pub archs: Vec<String>,
    /// Layer compression.
    pub compression: Compression,
    /// Merged Debian settings.
    pub debian: DebianSettings,
    /// Layer names, bottom first.
    pub layers: Vec<String>,
    /// Merged image config.
    pub config: ImageConfigSpec,
    /// Tag templates.
    pub tags: Vec<String>,
    /// Inherited then own tests.
    pub tests: Vec<TestSpec>,
    /// `rootfs:` blocks of its layers (bottom first), then of its `from:` chain (root first).
    pub rootfs: Vec<RootfsPart>,
}

/// A layer definition.
#[derive(Clone, Debug)]
pub struct Layer {
    /// Directory name under `layers/`.
    pub name: String,
    /// The layer's directory.
    pub dir: PathBuf,
    /// Its `layer.yaml`.
    pub file: PathBuf,
    /// Parsed contents.
    pub spec: LayerFile,
}

impl Layer {
    /// Whether building needs a real root filesystem (packages or run steps).
    pub fn needs_rootfs(&self) -> bool {
        !self.spec.packages.is_empty() || !self.spec.run.is_empty() || !self.spec.locales.is_empty()
    }
}

/// Find the project root: `start` or its nearest parent holding `variants/`.
pub fn find_project(start: &Path) -> Result<PathBuf, SpecError> {
    let start = fs::canonicalize(start).unwrap_or_else(|_| start.to_path_buf());
    start
        .ancestors()
        .find(|d| d.join("variants").is_dir())
        .map(Path::to_path_buf)
        .ok_or(SpecError::NoProject(start))
}

impl Project {
    /// Parse and validate every variant and layer under `root`.
    pub fn load(root: &Path) -> Result<Self, SpecError> {
        let layers = load_layers(&root.join("layers"))?;
        let files = load_variant_files(&root.join("variants"))?;
        let mut variants = BTreeMap::new();
        for key in files.keys() {
            let v = resolve_variant(key, &files, &layers)?;
            variants.insert(key.clone(), v);
        }
        let mut names: BTreeMap<&str, &str> = BTreeMap::new();
        for v in variants.values() {
            if let Some(other) = names.insert(&v.name, &v.key) {
                return Err(SpecError::invalid(
                    SourcePos::file(&v.file),
                    "name",
                    format!("image name `{}` is also used by variant `{other}`", v.name),
                ));
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
            variants,
            layers,
        })
    }

    /// All variants by key.
    pub fn variants(&self) -> impl Iterator<Item = &Variant> {
        self.variants.values()
    }

    /// A variant by key (file stem) or image name.
    pub fn variant(&self, key: &str) -> Result<&Variant, SpecError> {
        self.variants
            .get(key)
            .or_else(|| self.variants.values().find(|v| v.name == key))
            .ok_or_else(|| SpecError::UnknownVariant {
                name: key.to_string(),
                known: self.variants.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    /// Variants by key, all of them when `keys` is empty.
    pub fn select(&self, keys: &[String]) -> Result<Vec<&Variant>, SpecError> {
        if keys.is_empty() {
            return Ok(self.variants().collect());
        }
        keys.iter().map(|k| self.variant(k)).collect()
    }

    /// A layer by name (validated to exist at load time).
    pub fn layer(&self, name: &str) -> &Layer {
        &self.layers[name]
    }

    /// All layers by name.
    pub fn layers(&self) -> impl Iterator<Item = &Layer> {
        self.layers.values()
    }
}

fn read(path: &Path) -> Result<String, SpecError> {
    fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, SpecError> {
    let text = read(path)?;
    serde_saphyr::from_str(&text).map_err(|e| {
        let pos = e
            .location()
            .map(|l| SourcePos::at(path, l))
            .unwrap_or_else(|| SourcePos::file(path));
        let message = e.without_snippet().to_string();
        let message = message.lines().next().unwrap_or_default();
        // The position is already in front; drop the parser's own copy of it.
        let message = match message.rfind(" at line ") {
            Some(i) => message[..i].to_string(),
            None => message.to_string(),
        };
        SpecError::Parse { pos, message }
    })
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, SpecError> {
    let rd = fs::read_dir(dir).map_err(|source| SpecError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    out.sort();
    Ok(out)
}

fn load_variant_files(dir: &Path) -> Result<BTreeMap<String, (PathBuf, VariantFile)>, SpecError> {
    let mut out = BTreeMap::new();
    for path in yaml_files(dir)? {
        let key = path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let vf: VariantFile = parse_yaml(&path)?;
        if let Some(r) = &vf.rootfs {
            rootfs::validate(path.parent().unwrap_or(Path::new(".")), &path, r)?;
        }
        out.insert(key, (path, vf));
    }
    Ok(out)
}

fn load_layers(dir: &Path) -> Result<BTreeMap<String, Layer>, SpecError> {
    let mut out = BTreeMap::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return Ok(out);
    };
    let mut dirs: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for d in dirs {
        let file = d.join("layer.yaml");
        if !file.is_file() {
            continue;
        }
        let name = d
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let spec: LayerFile = parse_yaml(&file)?;
        validate_layer(&d, &file, &spec)?;
        if let Some(r) = &spec.rootfs {
            rootfs::validate(&d, &file, r)?;
        }
        out.insert(
            name.clone(),
            Layer {
                name,
                dir: d,
                file,
                spec,
            },
        );
    }
    Ok(out)
}

fn resolve_variant(
    key: &str,
    files: &BTreeMap<String, (PathBuf, VariantFile)>,
    layers: &BTreeMap<String, Layer>,
) -> Result<Variant, SpecError> {
    // Walk `from:` to the root, detecting cycles, then apply bottom-up.
    let mut chain: Vec<&str> = vec![key];
    let mut cur = key;
    while let Some(from) = &files[cur].1.from {
        let pos = SourcePos::at(&files[cur].0, from.referenced);
        if !files.contains_key(from.value.as_str()) {
            return Err(SpecError::invalid(
                pos,
                "from",
                format!("no variant `{}` in variants/", from.value),
            ));
        }
        if chain.contains(&from.value.as_str()) {
            chain.push(&from.value);
            return Err(SpecError::invalid(
                pos,
                "from",
                format!("inheritance cycle: {}", chain.join(" -> ")),
            ));
        }
        chain.push(&from.value);
        cur = &from.value;
    }

    let (file, own) = &files[key];
    let mut v = Variant {
        key: key.to_string(),
        name: String::new(),
        file: file.clone(),
        description: own.description.as_ref().map(|d| d.value.clone()),
        archs: vec!["amd64".to_string()],
        compression: Compression::Gzip,
        debian: DebianSettings::default(),
        layers: Vec::new(),
        config: ImageConfigSpec::default(),
        tags: vec!["latest".to_string()],
        tests: Vec::new(),
        rootfs: Vec::new(),
    };
    let mut top: Vec<(PathBuf, Spanned<String>)> = Vec::new();
    for k in chain.iter().rev() {
        let (path, f) = &files[*k];
        apply(&mut v, path, f, layers)?;
        if let Some(t) = &f.top_layers {
            top = t.iter().map(|l| (path.clone(), l.clone())).collect();
        }
    }
    for (path, l) in top {
        let f = VariantFile {
            layers: vec![l],
            ..empty_variant_file()
        };
        apply(&mut v, &path, &f, layers)?;
    }
    if v.layers.is_empty() {
        return Err(SpecError::invalid(
            SourcePos::file(file),
            "layers",
            "a variant needs at least one layer (own, inherited with `from:`, or `top_layers:`)",
        ));
    }
    v.rootfs = rootfs_parts(&v.layers, layers, chain.iter().rev().map(|k| &files[*k]));
    v.name = match &own.name {
        Some(n) => {
            check_image_name(&n.value)
                .map_err(|m| SpecError::invalid(SourcePos::at(file, n.referenced), "name", m))?;
            n.value.clone()
        }
        None => key.to_string(),
    };
    Ok(v)
}

fn empty_variant_file() -> VariantFile {
    VariantFile {
        name: None,
        description: None,
        from: None,
        layers: Vec::new(),
        top_layers: None,
        archs: None,
        compression: None,
        debian: None,
        config: None,
        tags: None,
        tests: Vec::new(),
        rootfs: None,
    }
}

fn rootfs_parts<'a>(
    names: &[String],
    layers: &BTreeMap<String, Layer>,
    chain: impl Iterator<Item = &'a (PathBuf, VariantFile)>,
) -> Vec<RootfsPart> {
    let from_layers = names.iter().filter_map(|n| {
        let l = &layers[n];
        let spec = l.spec.rootfs.as_ref()?;
        Some(RootfsPart {
            dir: l.dir.clone(),
            file: l.file.clone(),
            spec: spec.value.clone(),
        })
    });
    let from_variants = chain.filter_map(|(path, f)| {
        let spec = f.rootfs.as_ref()?;
        Some(RootfsPart {
            dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            file: path.clone(),
            spec: spec.value.clone(),
        })
    });
    from_layers.chain(from_variants).collect()
}

fn apply(
    v: &mut Variant,
    path: &Path,
    f: &VariantFile,
    layers: &BTreeMap<String, Layer>,
) -> Result<(), SpecError> {
    for l in &f.layers {
        let pos = SourcePos::at(path, l.referenced);
        if !layers.contains_key(&l.value) {
            let known = layers.keys().cloned().collect::<Vec<_>>().join(", ");
            return Err(SpecError::invalid(
                pos,
                "layers",
                format!(
                    "no layer `{}` (no layers/{}/layer.yaml); known layers: {known}",
                    l.value, l.value
                ),
            ));
        }
        if v.layers.contains(&l.value) {
            return Err(SpecError::invalid(
                pos,
                "layers",
                format!("layer `{}` is listed twice", l.value),
            ));
        }
        v.layers.push(l.value.clone());
    }
    if let Some(archs) = &f.archs {
        let pos = SourcePos::at(path, archs.referenced);
        if archs.value.is_empty() {
            return Err(SpecError::invalid(
                pos,
                "archs",
                "must name at least one architecture",
            ));
        }
        let mut seen = BTreeSet::new();
        for a in &archs.value {
            if !KNOWN_ARCHS.contains(&a.as_str()) {
                return Err(SpecError::invalid(
                    pos,
                    "archs",
                    format!(
                        "unknown architecture `{a}` (known: {})",
                        KNOWN_ARCHS.join(", ")
                    ),
                ));
            }
            if !seen.insert(a) {
                return Err(SpecError::invalid(
                    pos,
                    "archs",
                    format!("architecture `{a}` is listed twice"),
                ));
            }
        }
        v.archs = archs.value.clone();
    }
    if let Some(c) = &f.compression {
        v.compression = c.value;
    }
    if let Some(d) = &f.debian {
        merge_debian(&mut v.debian, d);
    }
    if let Some(d) = &f.description {
        check::text("description", &d.value)
            .map_err(|(f, m)| SpecError::invalid(SourcePos::at(path, d.referenced), &f, m))?;
    }
    if let Some(c) = &f.config {
        check::config(&c.value)
            .map_err(|(f, m)| SpecError::invalid(SourcePos::at(path, c.referenced), &f, m))?;
        merge_config(&mut v.config, &c.value);
    }
    check_env(&v.config)
        .map_err(|(field, m)| SpecError::invalid(SourcePos::file(path), &field, m))?;
    if let Some(tags) = &f.tags {
        if tags.value.is_empty() {
            // An empty list would build an image no ref names: nothing to run, test or push.
            return Err(SpecError::invalid(
                SourcePos::at(path, tags.referenced),
                "tags",
                "a variant needs at least one tag",
            ));
        }
        let mut seen = BTreeSet::new();
        v.tags.clear();
        for t in &tags.value {
            let pos = SourcePos::at(path, t.referenced);
            check_tag_template(&t.value).map_err(|m| SpecError::invalid(pos.clone(), "tags", m))?;
            if !seen.insert(&t.value) {
                return Err(SpecError::invalid(
                    pos,
                    "tags",
                    format!("duplicate tag `{}`", t.value),
                ));
            }
            v.tags.push(t.value.clone());
        }
    }
    for t in &f.tests {
        if let Some(re) = &t.stdout
            && let Err(e) = regex::Regex::new(re)
        {
            return Err(SpecError::invalid(
                SourcePos::file(path),
                &format!("tests[{}].stdout", t.name),
                e.to_string(),
            ));
        }
        v.tests.push(t.clone());
    }
    Ok(())
}

fn merge_debian(into: &mut DebianSettings, d: &DebianSettings) {
    macro_rules! take {
        ($($f:ident),*) => { $( if d.$f.is_some() { into.$f = d.$f.clone(); } )* };
    }
    take!(
        suite,
        components,
        updates,
        security,
        mirror,
        security_mirror,
        snapshot,
        snapshot_mirror,
        keyring,
        image_mirror,
        image_security_mirror
    );
}

fn merge_config(into: &mut ImageConfigSpec, c: &ImageConfigSpec) {
    macro_rules! take {
        ($($f:ident),*) => { $( if c.$f.is_some() { into.$f = c.$f.clone(); } )* };
    }
    take!(
        entrypoint,
        cmd,
        workdir,
        user,
        stop_signal,
        env_file,
        remote_user
    );
    into.env.extend(c.env.clone());
    into.labels.extend(c.labels.clone());
    into.annotations.extend(c.annotations.clone());
    for vol in &c.volumes {
        if !into.volumes.contains(vol) {
            into.volumes.push(vol.clone());
        }
    }
}

/// Check the merged `config.env` and `config.env_file`: the env must survive a `KEY=VALUE`
/// line file that sh reads (names as sh accepts them; values on one line).
fn check_env(c: &ImageConfigSpec) -> Result<(), (String, String)> {
    if let Some(p) = &c.env_file {
        check_image_path(p).map_err(|m| ("config.env_file".to_string(), m))?;
    }
    for (k, v) in &c.env {
        let name_ok = k.bytes().next().is_some_and(|b| !b.is_ascii_digit())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            return Err((
                format!("config.env.{k}"),
                "a variable name is letters, digits and `_`, not starting with a digit".into(),
            ));
        }
        if v.contains(['\n', '\r', '\0']) {
            return Err((
                format!("config.env.{k}"),
                "the value must not contain a newline or NUL".into(),
            ));
        }
    }
    Ok(())
}

/// Check an image name: lowercase OCI repository path component(s).
pub fn check_image_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.split('/').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && check::ref_component(part, b"._-")
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid image name (lowercase letters and digits, joined by single `.`, `_`, `-` or `--`)"
        ))
    }
}

pub use crate::git::PLACEHOLDERS as TAG_PLACEHOLDERS;

/// Check a tag template: OCI tag characters plus known `{placeholders}`.
pub fn check_tag_template(tag: &str) -> Result<(), String> {
    let mut rest = tag;
    let mut literal = String::new();
    while let Some(start) = rest.find('{') {
        literal.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .ok_or(format!("unclosed `{{` in tag `{tag}`"))?
            + start;
        let ph = &rest[start + 1..end];
        if !TAG_PLACEHOLDERS.contains(&ph) {
            return Err(format!(
                "unknown placeholder `{{{ph}}}` in tag `{tag}` (known: {})",
                TAG_PLACEHOLDERS.join(", ")
            ));
        }
        literal.push('x');
        rest = &rest[end + 1..];
    }
    literal.push_str(rest);
    let valid = literal.len() <= 128 && check::ref_component(&literal, b"._-");
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{tag}` is not a valid tag: letters and digits joined by single `.`, `_`, `-` (or `--`), at most 128, as OCI layout ref names require"
        ))
    }
}

/// Check an absolute in-image path without `..`.
pub fn check_image_path(p: &str) -> Result<(), String> {
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err(format!("`{p}` must be an absolute path"));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("`{p}` must not contain `..`"));
    }
    Ok(())
}

/// Parse `user:group` where both are numbers; names are resolved later against the accounts.
pub fn check_owner(o: &str) -> Result<(), String> {
    match o.split_once(':') {
        Some((u, g)) if !u.is_empty() && !g.is_empty() => Ok(()),
        _ if !o.is_empty() && !o.contains(':') => Ok(()),
        _ => Err(format!(
            "owner `{o}` must be `user:group` (names or numbers)"
        )),
    }
}

fn validate_layer(dir: &Path, file: &Path, spec: &LayerFile) -> Result<(), SpecError> {
    validate_files(dir, file, spec)?;
    validate_directories(file, spec)?;
    validate_symlinks(file, spec)?;
    validate_archives(file, spec)?;
    validate_accounts(file, spec)?;
    validate_description(file, spec)?;
    validate_packages(file, spec)
}

/// Files: `src` inside the layer dir, `dest` an image path, owners well-formed.
fn validate_files(dir: &Path, file: &Path, spec: &LayerFile) -> Result<(), SpecError> {
    let at = |loc| SourcePos::at(file, loc);
    for (i, f) in spec.files.iter().enumerate() {
        let field = format!("files[{i}]");
        let pos = at(f.referenced);
        check_image_path(&f.value.dest)
            .map_err(|m| SpecError::invalid(pos.clone(), &format!("{field}.dest"), m))?;
        let src = Path::new(&f.value.src);
        if src.is_absolute() || src.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(SpecError::invalid(
                pos,
                &format!("{field}.src"),
                "must be a relative path inside the layer directory",
            ));
        }
        if fs::symlink_metadata(dir.join(src)).is_err() {
            return Err(SpecError::invalid(
                pos,
                &format!("{field}.src"),
                format!("{} does not exist", dir.join(src).display()),
            ));
        }
        if let Some(o) = &f.value.owner {
            check_owner(o)
                .map_err(|m| SpecError::invalid(at(f.referenced), &format!("{field}.owner"), m))?;
        }
    }
    Ok(())
}

/// Directories: image paths and owners.
fn validate_directories(file: &Path, spec: &LayerFile) -> Result<(), SpecError> {
    let at = |loc| SourcePos::at(file, loc);
    for (i, d) in spec.directories.iter().enumerate() {
        let pos = at(d.referenced);
        check_image_path(&d.value.path)
            .and_then(|()| match entry_root(&d.value.path) {
                true => {
                    Err("`/` is the image root and always exists; name a directory below it".into())
                }
                false => Ok(()),
            })
            .map_err(|m| SpecError::invalid(pos.clone(), &format!("directories[{i}].path"), m))?;
        if let Some(o) = &d.value.owner {
            check_owner(o)
                .map_err(|m| SpecError::invalid(pos, &format!("directories[{i}].owner"), m))?;
        }
    }
    Ok(())
}

/// Symlinks: image paths and non-empty targets.
fn validate_symlinks(file: &Path, spec: &LayerFile) -> Result<(), SpecError> {
    let at = |loc| SourcePos::at(file, loc);
    for (i, s) in spec.symlinks.iter().enumerate() {
        check_image_path(&s.value.path)
            .map_err(|m| SpecError::invalid(at(s.referenced), &format!("symlinks[{i}].path"), m))?;
        if s.value.target.is_empty() {
            return Err(SpecError::invalid(
                at(s.referenced),
                &format!("symlinks[{i}].target"),
                "must not be empty",
            ));
        }
    }
    Ok(())
}

/// Archives: destinations, pinned digests, a known format, local URLs inside the layer, owners.
fn validate_archives(file: &Path, spec: &LayerFile) -> Result<(), SpecError> {
    let at = |loc| SourcePos::at(file, loc);
    for (i, a) in spec.archives.iter().enumerate() {
        let field = format!("archives[{i}]");
        let pos = at(a.referenced);
        check_image_path(&a.value.dest)
            .map_err(|m| SpecError::invalid(pos.clone(), &format!("{field}.dest"), m))?;
        let digests: Vec<(&str, &String)> = match &a.value.sha256 {
            Sha256Spec::All(d) => vec![("*", d)],
            Sha256Spec::PerArch(m) => m.iter().map(|(k, v)| (k.as_str(), v)).collect(),
        };
        for (arch, d) in digests {
            if arch != "*" && !KNOWN_ARCHS.contains(&arch) {
                return Err(SpecError::invalid(
                    pos,
                    &format!("{field}.sha256"),
                    format!("unknown architecture `{arch}`"),
                ));
            }
            d.parse::<Sha256Digest>().map_err(|e| {
                SpecError::invalid(pos.clone(), &format!("{field}.sha256"), e.to_string())
            })?;
        }
        if a.value.format.is_none() && ArchiveFormat::guess(&a.value.url).is_none() {
            return Err(SpecError::invalid(
                pos,
                &format!("{field}.format"),
                format!(
                    "cannot guess the format of `{}`; set format: tar|tar.gz|tar.xz|tar.zst|zip|binary",
                    a.value.url
                ),
            ));
        }
        let url = &a.value.url;
        let remote = url.starts_with("http://") || url.starts_with("https://");
        if !remote {
            let local = Path::new(url.strip_prefix("file://").unwrap_or(url));
            if local
                .components()
                .any(|c| matches!(c, Component::ParentDir))
            {
                return Err(SpecError::invalid(
                    pos,
                    &format!("{field}.url"),
                    "a local archive must be inside the layer directory",
                ));
            }
        }
        if let Some(o) = &a.value.owner {
            check_owner(o)
                .map_err(|m| SpecError::invalid(at(a.referenced), &format!("{field}.owner"), m))?;
        }
    }
    Ok(())
}

/// Accounts: every field as `useradd`/`groupadd` would accept it.
fn validate_accounts(file: &Path, spec: &LayerFile) -> Result<(), SpecError> {
    if let Some(acc) = &spec.accounts {
        check::accounts(&acc.value).map_err(|(f, m)| {
            SpecError::invalid(
                SourcePos::at(file, acc.referenced),
                &format!("accounts.{f}"),
                m,
            )
        })?;
    }
    Ok(())
}

/// Description: bounded free text.
fn validate_description(file: &Path, spec: &LayerFile) -> Result<(), SpecError> {
    match &spec.description {
        Some(d) => check::text("description", d)
            .map_err(|(f, m)| SpecError::invalid(SourcePos::file(file), &f, m)),
        None => Ok(()),
    }
}

/// Packages: Debian package names.
fn validate_packages(file: &Path, spec: &LayerFile) -> Result<(), SpecError> {
    let at = |loc| SourcePos::at(file, loc);
    for p in &spec.packages {
        let ok = !p.value.is_empty()
            && p.value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.:=~".contains(&b));
        if !ok {
            return Err(SpecError::invalid(
                at(p.referenced),
                "packages",
                format!("`{}` is not a Debian package name", p.value),
            ));
        }
    }
    Ok(())
}

/// Whether an in-image path names the root directory itself (`/`, `//`, `/.`).
fn entry_root(p: &str) -> bool {
    p.split('/').all(|c| c.is_empty() || c == ".")
}

#[cfg(test)]
mod inherit_tests;
