//! Assembling layers: from a layer definition (plus fetched inputs) to sealed, cached blobs.

pub mod accounts;
pub mod archive;
#[cfg(test)]
mod code_hash;
pub mod diff;
pub mod entry;
mod file_digests;
pub mod install;
pub mod integrity;
mod parents;
pub mod store;
pub mod tarball;
pub mod walk;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::digest::Sha256Digest;
use crate::spec::{ArchiveFormat, ArchiveSpec, Compression, Layer, Sha256Spec};
use entry::{Content, Entry, Kind, LayerTree, rel_path};
use file_digests::FileDigests;
use store::Lower;
use walk::Ownership;

/// Bumped whenever the bytes hakim writes for the same inputs change.
pub const LAYER_FORMAT: u32 = 1;

/// A hash of the source that can shape layer bytes (computed by `build.rs`), so a layer cached by
/// another build of hakim is never reused even when nobody bumped [`LAYER_FORMAT`].
pub const LAYER_CODE: &str = env!("HAKIM_LAYER_CODE");

/// Errors while assembling a layer, each naming the layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// Reading a local input failed.
    #[error("layer `{layer}`: {path}: {source}")]
    Local {
        layer: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// Archive unpacking failed or was refused.
    #[error("layer `{layer}`: {source}")]
    Archive {
        layer: String,
        source: archive::ArchiveError,
    },
    /// Account merge failed.
    #[error("layer `{layer}`: {source}")]
    Accounts {
        layer: String,
        source: accounts::AccountError,
    },
    /// A declared value cannot be used.
    #[error("layer `{layer}` ({file}): {message}")]
    Invalid {
        layer: String,
        file: PathBuf,
        message: String,
    },
    /// The layer cache failed.
    #[error("layer `{layer}`: {source}")]
    Store {
        layer: String,
        source: store::StoreError,
    },
    /// Writing the tarball failed.
    #[error("layer `{layer}`: {source}")]
    Tar {
        layer: String,
        source: tarball::TarError,
    },
}

/// The sha256 an archive must have for `arch`.
pub fn archive_digest(a: &ArchiveSpec, arch: &str) -> Option<Sha256Digest> {
    let s = match &a.sha256 {
        Sha256Spec::All(s) => s,
        Sha256Spec::PerArch(m) => m.get(arch)?,
    };
    s.parse().ok()
}

/// The URL (or local path) of an archive for `arch`.
pub fn archive_url(layer: &Layer, a: &ArchiveSpec, arch: &str) -> String {
    let url = a.url.replace("{arch}", arch);
    if url.starts_with("http://") || url.starts_with("https://") {
        url
    } else {
        let local = url.strip_prefix("file://").unwrap_or(&url);
        layer.dir.join(local).to_string_lossy().into_owned()
    }
}

#[derive(Serialize)]
struct LocalInput {
    path: String,
    kind: char,
    mode: u32,
    sha256: Option<Sha256Digest>,
    link: Option<String>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn local_inputs(layer: &Layer, digests: &FileDigests) -> Result<Vec<LocalInput>, LayerError> {
    let mut srcs: Vec<(PathBuf, String)> = Vec::new();
    let rootfs = layer.dir.join("rootfs");
    if rootfs.is_dir() {
        srcs.push((rootfs, "rootfs".into()));
    }
    for f in &layer.spec.files {
        srcs.push((layer.dir.join(&f.value.src), f.value.src.clone()));
    }
    let mut out = Vec::new();
    for (src, label) in srcs {
        let entries =
            walk::walk(&src, &label, Ownership::Keep).map_err(|source| LayerError::Local {
                layer: layer.name.clone(),
                path: src.clone(),
                source,
            })?;
        for e in entries {
            let (kind, sha256, link) = match &e.kind {
                Kind::File(Content::Disk(p)) => {
                    let d = digests.digest(p).map_err(|source| LayerError::Local {
                        layer: layer.name.clone(),
                        path: p.clone(),
                        source,
                    })?;
                    ('f', Some(d), None)
                }
                Kind::Dir => ('d', None, None),
                Kind::Symlink(t) => ('l', None, Some(t.clone())),
                Kind::Hardlink(t) => ('h', None, Some(t.clone())),
                _ => ('o', None, None),
            };
            out.push(LocalInput {
                path: e.path,
                kind,
                mode: e.mode & 0o111,
                sha256,
                link,
                xattrs: e.xattrs,
            });
        }
    }
    Ok(out)
}

/// Everything a layer's bytes depend on, hashed: the code that builds it, definition, local files,
/// pinned digests, architecture, compression, epoch, the parent's key, and extra inputs such as
/// locked packages.
pub fn layer_key(
    layer: &Layer,
    arch: &str,
    compression: Compression,
    epoch: u64,
    parent: Option<&Sha256Digest>,
    extra: &serde_json::Value,
    memo: &LocalInputsMemo,
) -> Result<Sha256Digest, LayerError> {
    let local = memo.get(layer)?;
    Ok(key_of(
        LAYER_CODE,
        layer,
        arch,
        compression,
        epoch,
        parent,
        extra,
        &local,
    ))
}

/// Each layer's local inputs (files hashed) once per command, however many variants and
/// arches share the layer: a shared base with big local files is otherwise re-read per use.
/// With a cache dir, file digests are also remembered across commands by the files' stat.
#[derive(Debug, Default)]
pub struct LocalInputsMemo {
    layers: Mutex<HashMap<PathBuf, Arc<serde_json::Value>>>,
    files: FileDigests,
}

impl LocalInputsMemo {
    /// A memo that also remembers file digests under `cache_dir` across commands.
    pub fn in_cache(cache_dir: &std::path::Path) -> Self {
        Self {
            layers: Mutex::default(),
            files: FileDigests::in_dir(cache_dir.join("local-digests")),
        }
    }

    fn get(&self, layer: &Layer) -> Result<Arc<serde_json::Value>, LayerError> {
        if let Some(v) = self.layers.lock().expect("memo").get(&layer.dir) {
            return Ok(v.clone());
        }
        let inputs = local_inputs(layer, &self.files)?;
        let v = Arc::new(serde_json::to_value(inputs).expect("inputs serialize"));
        self.layers
            .lock()
            .expect("memo")
            .insert(layer.dir.clone(), v.clone());
        Ok(v)
    }
}

#[cfg(test)]
fn key_with_code(
    code: &str,
    layer: &Layer,
    arch: &str,
    compression: Compression,
    epoch: u64,
    parent: Option<&Sha256Digest>,
    extra: &serde_json::Value,
) -> Result<Sha256Digest, LayerError> {
    let local = serde_json::to_value(local_inputs(layer, &FileDigests::default())?)
        .expect("inputs serialize");
    Ok(key_of(
        code,
        layer,
        arch,
        compression,
        epoch,
        parent,
        extra,
        &local,
    ))
}

#[allow(clippy::too_many_arguments)] // every argument is a key input
fn key_of(
    code: &str,
    layer: &Layer,
    arch: &str,
    compression: Compression,
    epoch: u64,
    parent: Option<&Sha256Digest>,
    extra: &serde_json::Value,
    local: &serde_json::Value,
) -> Sha256Digest {
    let archives: Vec<Option<Sha256Digest>> = layer
        .spec
        .archives
        .iter()
        .map(|a| archive_digest(&a.value, arch))
        .collect();
    let key = serde_json::json!({
        "format": LAYER_FORMAT,
        "code": code,
        "parent": parent,
        "arch": arch,
        "compression": compression,
        "epoch": epoch,
        "spec": &layer.spec,
        "local": local,
        "archives": archives,
        "extra": extra,
    });
    Sha256Digest::of(&serde_json::to_vec(&key).expect("key serializes"))
}

/// Inputs for assembling one layer that does not need a root filesystem.
pub struct PureInputs<'a> {
    /// Target architecture.
    pub arch: &'a str,
    /// SOURCE_DATE_EPOCH.
    pub epoch: u64,
    /// Fetched archive files, in the order of `archives:`.
    pub archives: &'a [PathBuf],
    /// The layers below.
    pub lower: &'a dyn Lower,
}

const ACCOUNT_FILES: [&str; 4] = ["etc/passwd", "etc/group", "etc/shadow", "etc/gshadow"];

/// Build the entries of a layer made of files, directories, symlinks, archives and accounts.
pub fn assemble_pure(layer: &Layer, inp: &PureInputs<'_>) -> Result<LayerTree, LayerError> {
    // Accounts first: owners named in this layer may be users it creates.
    let lower_db = lower_accounts(layer, inp.lower)?;
    let (db, homes) = match (&layer.spec.accounts, lower_db) {
        (Some(spec), Some(lower_db)) => {
            let (merged, homes) =
                accounts::merge(&lower_db, &spec.value, inp.epoch).map_err(|source| {
                    LayerError::Accounts {
                        layer: layer.name.clone(),
                        source,
                    }
                })?;
            (Some(merged), homes)
        }
        (_, lower_db) => (lower_db, Vec::new()),
    };
    let owners = Owners {
        layer,
        db: db.as_ref(),
    };
    let mut tree = LayerTree::new();
    add_rootfs_dir(&mut tree, layer)?;
    add_files(&mut tree, layer, &owners)?;
    add_directories(&mut tree, layer, &owners)?;
    add_symlinks(&mut tree, layer)?;
    add_archives(&mut tree, layer, inp, &owners)?;
    if let (Some(_), Some(db)) = (&layer.spec.accounts, &db) {
        add_account_files(&mut tree, db, inp.lower);
        add_homes(&mut tree, &homes, inp.lower).map_err(|source| LayerError::Store {
            layer: layer.name.clone(),
            source,
        })?;
    }
    parents::check(&tree, inp.lower, &layer.spec).map_err(|m| invalid(layer, m))?;
    tree.adopt_lower_dirs(|p| inp.lower.meta(p));
    Ok(tree)
}

/// A layer definition error of `layer`.
fn invalid(layer: &Layer, message: String) -> LayerError {
    LayerError::Invalid {
        layer: layer.name.clone(),
        file: layer.file.clone(),
        message,
    }
}

/// The account files of the layers below, when this layer creates accounts or names owners.
fn lower_accounts(
    layer: &Layer,
    lower: &dyn Lower,
) -> Result<Option<accounts::AccountDb>, LayerError> {
    let named = |o: &Option<String>| o.as_deref().is_some_and(has_names);
    let spec = &layer.spec;
    let needs_db = spec.accounts.is_some()
        || spec.files.iter().any(|f| named(&f.value.owner))
        || spec.directories.iter().any(|d| named(&d.value.owner))
        || spec.archives.iter().any(|a| named(&a.value.owner));
    if !needs_db {
        return Ok(None);
    }
    let paths: Vec<String> = ACCOUNT_FILES.iter().map(|s| s.to_string()).collect();
    let files = lower
        .read_files(&paths)
        .map_err(|source| LayerError::Store {
            layer: layer.name.clone(),
            source,
        })?;
    let text = |p: &str| {
        String::from_utf8_lossy(files.get(p).map(Vec::as_slice).unwrap_or_default()).into_owned()
    };
    Ok(Some(accounts::AccountDb {
        passwd: text("etc/passwd"),
        group: text("etc/group"),
        shadow: text("etc/shadow"),
        gshadow: text("etc/gshadow"),
    }))
}

/// Resolves `owner:` fields against the accounts this layer sees.
struct Owners<'a> {
    layer: &'a Layer,
    db: Option<&'a accounts::AccountDb>,
}

impl Owners<'_> {
    fn ids(&self, owner: Option<&str>) -> Result<(u32, u32), LayerError> {
        match owner {
            None => Ok((0, 0)),
            Some(o) => resolve_owner(o, self.db).map_err(|m| invalid(self.layer, m)),
        }
    }
}

/// The layer's `rootfs/` directory, copied as it is (owners normalised to root).
fn add_rootfs_dir(tree: &mut LayerTree, layer: &Layer) -> Result<(), LayerError> {
    let rootfs = layer.dir.join("rootfs");
    if !rootfs.is_dir() {
        return Ok(());
    }
    let entries =
        walk::walk(&rootfs, "", Ownership::Normalize).map_err(|source| LayerError::Local {
            layer: layer.name.clone(),
            path: rootfs.clone(),
            source,
        })?;
    entries.into_iter().for_each(|e| tree.insert(e));
    Ok(())
}

fn add_files(tree: &mut LayerTree, layer: &Layer, owners: &Owners<'_>) -> Result<(), LayerError> {
    for f in &layer.spec.files {
        let f = &f.value;
        let src = layer.dir.join(&f.src);
        let dest = rel_path(&f.dest)
            .ok_or_else(|| invalid(layer, format!("files: `{}` is the root directory", f.dest)))?;
        let (uid, gid) = owners.ids(f.owner.as_deref())?;
        let entries =
            walk::walk(&src, &dest, Ownership::Normalize).map_err(|source| LayerError::Local {
                layer: layer.name.clone(),
                path: src.clone(),
                source,
            })?;
        for mut e in entries {
            e.uid = uid;
            e.gid = gid;
            if let (Some(m), false) = (f.mode, matches!(e.kind, Kind::Dir | Kind::Symlink(_))) {
                e.mode = m.0;
            }
            tree.insert(e);
        }
    }
    Ok(())
}

fn add_directories(
    tree: &mut LayerTree,
    layer: &Layer,
    owners: &Owners<'_>,
) -> Result<(), LayerError> {
    for d in &layer.spec.directories {
        let d = &d.value;
        let Some(path) = rel_path(&d.path) else {
            continue;
        };
        let (uid, gid) = owners.ids(d.owner.as_deref())?;
        let mut e = Entry::new(path, Kind::Dir, d.mode.map_or(0o755, |m| m.0));
        e.uid = uid;
        e.gid = gid;
        tree.insert(e);
    }
    Ok(())
}

fn add_symlinks(tree: &mut LayerTree, layer: &Layer) -> Result<(), LayerError> {
    for s in &layer.spec.symlinks {
        let s = &s.value;
        let path = rel_path(&s.path).ok_or_else(|| {
            invalid(
                layer,
                format!("symlinks: `{}` is the root directory", s.path),
            )
        })?;
        tree.insert(Entry::new(path, Kind::Symlink(s.target.clone()), 0o777));
    }
    Ok(())
}

fn add_archives(
    tree: &mut LayerTree,
    layer: &Layer,
    inp: &PureInputs<'_>,
    owners: &Owners<'_>,
) -> Result<(), LayerError> {
    for (a, file) in layer.spec.archives.iter().zip(inp.archives) {
        let a = &a.value;
        let format = a
            .format
            .or_else(|| ArchiveFormat::guess(&a.url))
            .unwrap_or(ArchiveFormat::Binary);
        let (uid, gid) = owners.ids(a.owner.as_deref())?;
        let dest = rel_path(&a.dest).unwrap_or_default();
        let label = a.url.replace("{arch}", inp.arch);
        let placement = archive::Placement {
            label: &label,
            dest: &dest,
            strip: a.strip_components,
            uid,
            gid,
            binary_mode: a.mode.map_or(0o755, |m| m.0),
        };
        let entries =
            archive::unpack(file, format, &placement).map_err(|source| LayerError::Archive {
                layer: layer.name.clone(),
                source,
            })?;
        entries.into_iter().for_each(|e| tree.insert(e));
    }
    Ok(())
}

/// The merged account files, written whole.
fn add_account_files(tree: &mut LayerTree, db: &accounts::AccountDb, lower: &dyn Lower) {
    for (path, text, mode) in [
        ("etc/passwd", &db.passwd, 0o644),
        ("etc/group", &db.group, 0o644),
        ("etc/shadow", &db.shadow, 0o640),
        ("etc/gshadow", &db.gshadow, 0o640),
    ] {
        let mut e = Entry::new(
            path,
            Kind::File(Content::Bytes(text.clone().into_bytes())),
            mode,
        );
        // Debian keeps the shadow files readable by group `shadow`.
        if mode == 0o640 {
            e.gid = lower.meta(path).map_or(0, |m| m.g);
        }
        tree.insert(e);
    }
}

fn add_homes(
    tree: &mut LayerTree,
    homes: &[accounts::Home],
    lower: &dyn Lower,
) -> Result<(), store::StoreError> {
    let skel = lower.files_under("etc/skel");
    let skel_paths: Vec<String> = skel
        .iter()
        .filter(|(_, m)| m.t == 'f')
        .map(|(p, _)| p.clone())
        .collect();
    let skel_files = lower.read_files(&skel_paths)?;
    for h in homes {
        let Some(home) = rel_path(&h.path) else {
            continue;
        };
        if lower.meta(&home).is_some()
            || tree
                .get(&home)
                .is_some_and(|e| !matches!(e.kind, Kind::Dir) || e.uid != 0)
        {
            continue;
        }
        let mut d = Entry::new(home.clone(), Kind::Dir, 0o750);
        d.uid = h.uid;
        d.gid = h.gid;
        tree.insert(d);
        for (path, meta) in &skel {
            let rel = &path["etc/skel/".len()..];
            let kind = match (meta.t, skel_files.get(path)) {
                ('d', _) => Kind::Dir,
                ('f', Some(bytes)) => Kind::File(Content::Bytes(bytes.clone())),
                _ => continue,
            };
            let mut e = Entry::new(format!("{home}/{rel}"), kind, meta.m);
            e.uid = h.uid;
            e.gid = h.gid;
            tree.insert(e);
        }
    }
    Ok(())
}

fn has_names(owner: &str) -> bool {
    owner.split(':').any(|p| p.parse::<u32>().is_err())
}

/// Resolve `user:group` (names or numbers) against the account databases.
pub fn resolve_owner(owner: &str, db: Option<&accounts::AccountDb>) -> Result<(u32, u32), String> {
    let (u, g) = owner.split_once(':').unwrap_or((owner, owner));
    let lookup = |name: &str, text: Option<&String>, what: &str| -> Result<u32, String> {
        if let Ok(n) = name.parse() {
            return Ok(n);
        }
        text.and_then(|t| {
            t.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.first() == Some(&name))
                    .then(|| f.get(2).and_then(|s| s.parse().ok()))
                    .flatten()
            })
        })
        .ok_or_else(|| {
            format!("owner `{owner}`: no {what} `{name}` in this layer or the layers below")
        })
    };
    let uid = lookup(u, db.map(|d| &d.passwd), "user")?;
    let gid = lookup(g, db.map(|d| &d.group), "group")?;
    Ok((uid, gid))
}

/// Files an archive source must be fetched from for `arch`, with their expected digests.
pub fn archive_sources(
    layer: &Layer,
    arch: &str,
) -> Result<Vec<(String, Sha256Digest)>, LayerError> {
    layer
        .spec
        .archives
        .iter()
        .map(|a| {
            let d = archive_digest(&a.value, arch).ok_or_else(|| LayerError::Invalid {
                layer: layer.name.clone(),
                file: layer.file.clone(),
                message: format!(
                    "archive `{}` has no sha256 for architecture `{arch}`",
                    a.value.url
                ),
            })?;
            Ok((archive_url(layer, &a.value, arch), d))
        })
        .collect()
}

#[cfg(test)]
mod key_tests;
