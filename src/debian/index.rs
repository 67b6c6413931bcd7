//! Binary package indexes: parsed `Packages` paragraphs, looked up by name and by Provides.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use super::relation::{self, Dependency, Provide};
use super::version::Version;
use crate::digest::Sha256Digest;

/// The `Multi-Arch` field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MultiArch {
    /// Absent or `no`: only satisfies same-architecture dependencies.
    #[default]
    No,
    /// `same`: co-installable across architectures.
    Same,
    /// `foreign`: satisfies dependencies from any architecture.
    Foreign,
    /// `allowed`: satisfies `:any` dependencies from any architecture.
    Allowed,
}

impl MultiArch {
    /// Parse a field value; unknown values count as `no`, as dpkg does.
    pub fn parse(s: &str) -> Self {
        match s.trim_ascii() {
            "same" => Self::Same,
            "foreign" => Self::Foreign,
            "allowed" => Self::Allowed,
            _ => Self::No,
        }
    }
}

/// The `Priority` field.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Priority {
    /// `required`
    Required,
    /// `important`
    Important,
    /// `standard`
    Standard,
    /// `optional`
    Optional,
    /// `extra` (obsolete)
    Extra,
    /// Anything else.
    Other(String),
}

impl Priority {
    /// Parse a field value.
    pub fn parse(s: &str) -> Self {
        match s.trim_ascii() {
            "required" => Self::Required,
            "important" => Self::Important,
            "standard" => Self::Standard,
            "optional" => Self::Optional,
            "extra" => Self::Extra,
            other => Self::Other(other.to_string()),
        }
    }

    /// Smaller is more important (used to choose between providers, as apt does).
    pub fn rank(&self) -> u8 {
        match self {
            Self::Required => 1,
            Self::Important => 2,
            Self::Standard => 3,
            Self::Optional => 4,
            Self::Extra => 5,
            Self::Other(_) => 6,
        }
    }
}

/// One binary package version from a Packages index.
#[derive(Clone, Debug)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Version.
    pub version: Version,
    /// Architecture (`amd64`, `all`, ...).
    pub architecture: String,
    /// Multi-Arch field.
    pub multi_arch: MultiArch,
    /// `Essential: yes`.
    pub essential: bool,
    /// Priority, if given.
    pub priority: Option<Priority>,
    /// Depends.
    pub depends: Vec<Dependency>,
    /// Pre-Depends.
    pub pre_depends: Vec<Dependency>,
    /// Recommends.
    pub recommends: Vec<Dependency>,
    /// Conflicts.
    pub conflicts: Vec<Dependency>,
    /// Breaks.
    pub breaks: Vec<Dependency>,
    /// Provides.
    pub provides: Vec<Provide>,
    /// Path of the .deb relative to the mirror root.
    pub filename: String,
    /// Size of the .deb in bytes.
    pub size: u64,
    /// SHA-256 of the .deb.
    pub sha256: Sha256Digest,
    /// Source package name (the binary name when the field is absent).
    pub source: String,
    /// Label of the index this paragraph came from, as given to [`PackageIndex::add`].
    pub origin: Arc<str>,
}

/// A Packages paragraph that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: paragraph at line {line}: {message}")]
pub struct IndexError {
    /// Label of the index.
    pub origin: String,
    /// 1-based line of the paragraph (or of the malformed line).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// All packages of one architecture from one or more Packages indexes.
#[derive(Debug, Default)]
pub struct PackageIndex {
    arch: String,
    origins: Vec<Arc<str>>,
    packages: Vec<Package>,
    /// Indexes into `packages`, highest version first (earlier index first on ties).
    by_name: HashMap<String, Vec<usize>>,
    /// Virtual name -> indexes of packages that provide it.
    providers: HashMap<String, Vec<usize>>,
}

impl PackageIndex {
    /// An empty index for native architecture `arch` (used to evaluate `[arch]` restrictions).
    pub fn new(arch: &str) -> Self {
        Self {
            arch: arch.to_string(),
            ..Self::default()
        }
    }

    /// Parse one Packages text and add its paragraphs, labelled `origin` (e.g. `trixie/main`).
    ///
    /// Same deb822 rules as [`super::control::parse`], but scanned without copying: owning every
    /// field of a 65k-paragraph index costs more than everything else put together.
    pub fn add(&mut self, origin: &str, text: &str) -> Result<(), IndexError> {
        let label: Arc<str> = Arc::from(origin);
        let first = self.packages.len();
        // Paragraphs in real indexes average 700-900 bytes; reserving avoids repeated
        // reallocation of this large vector and of the maps below.
        let estimate = text.len() / 700;
        self.packages.reserve(estimate);
        self.by_name.reserve(estimate);
        if let Err(e) = scan(text, &self.arch, &label, &mut self.packages) {
            // Leave the index as it was: no half-added origin.
            self.packages.truncate(first);
            return Err(e);
        }
        for (i, pkg) in self.packages.iter().enumerate().skip(first) {
            self.by_name.entry(pkg.name.clone()).or_default().push(i);
            for prov in &pkg.provides {
                self.providers.entry(prov.name.clone()).or_default().push(i);
            }
        }
        let packages = &self.packages;
        for idxs in self.by_name.values_mut().filter(|v| v.len() > 1) {
            // Stable: among equal versions the earlier-added index wins, like apt's source order.
            idxs.sort_by(|&a, &b| packages[b].version.cmp(&packages[a].version));
        }
        self.origins.push(label);
        Ok(())
    }

    /// The native architecture.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Labels of the added indexes, in order.
    pub fn origins(&self) -> impl Iterator<Item = &str> {
        self.origins.iter().map(|o| &**o)
    }

    /// Number of package paragraphs.
    pub fn len(&self) -> usize {
        self.packages.len()
    }

    /// Whether no paragraphs were added.
    pub fn is_empty(&self) -> bool {
        self.packages.is_empty()
    }

    /// Every package paragraph.
    pub fn packages(&self) -> &[Package] {
        &self.packages
    }

    /// All real package names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Positions in [`Self::packages`] of all versions of `name`, highest first.
    pub(super) fn version_ids(&self, name: &str) -> &[usize] {
        self.by_name.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Positions in [`Self::packages`] of the packages that provide `name`.
    pub(super) fn provider_ids(&self, name: &str) -> &[usize] {
        self.providers.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// All versions (any architecture) of a real package, highest first.
    pub fn versions(&self, name: &str) -> impl Iterator<Item = &Package> {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .map(|&i| &self.packages[i])
    }

    /// The candidate: highest version of `name` for the native architecture or `all`.
    pub fn best(&self, name: &str) -> Option<&Package> {
        self.versions(name)
            .find(|p| p.architecture == self.arch || p.architecture == "all")
    }

    /// Every package version that lists `name` in its Provides.
    pub fn providers(&self, name: &str) -> impl Iterator<Item = &Package> {
        self.providers
            .get(name)
            .into_iter()
            .flatten()
            .map(|&i| &self.packages[i])
    }
}

/// Parse every paragraph of `text` into `out`, with the deb822 rules of `control::parse`.
fn scan(
    text: &str,
    arch: &str,
    label: &Arc<str>,
    out: &mut Vec<Package>,
) -> Result<(), IndexError> {
    let err = |line: usize, message: String| IndexError {
        origin: label.to_string(),
        line,
        message,
    };
    let mut fields: Vec<(&str, Cow<str>)> = Vec::with_capacity(32);
    let mut start = 0;
    for (idx, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.bytes().all(|b| b == b' ' || b == b'\t') {
            if !fields.is_empty() {
                out.push(package_from(&fields, arch, label).map_err(|m| err(start, m))?);
                fields.clear();
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            let Some((_, value)) = fields.last_mut() else {
                return Err(err(
                    idx + 1,
                    format!("continuation line without a field: `{}`", line.trim_ascii()),
                ));
            };
            let cont = line.trim_ascii();
            let value = value.to_mut();
            value.push('\n');
            if cont != "." {
                value.push_str(cont);
            }
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            let text: String = line.chars().take(80).collect();
            return Err(err(idx + 1, format!("malformed control field `{text}`")));
        };
        if fields.is_empty() {
            start = idx + 1;
        }
        fields.push((name.trim_ascii(), Cow::Borrowed(value.trim_ascii())));
    }
    if !fields.is_empty() {
        out.push(package_from(&fields, arch, label).map_err(|m| err(start, m))?);
    }
    Ok(())
}

/// The fields of one paragraph that a [`Package`] needs (names matched case-insensitively).
#[derive(Default)]
struct Fields<'f> {
    package: Option<&'f str>,
    version: Option<&'f str>,
    architecture: Option<&'f str>,
    multi_arch: Option<&'f str>,
    essential: Option<&'f str>,
    priority: Option<&'f str>,
    depends: Option<&'f str>,
    pre_depends: Option<&'f str>,
    recommends: Option<&'f str>,
    conflicts: Option<&'f str>,
    breaks: Option<&'f str>,
    provides: Option<&'f str>,
    filename: Option<&'f str>,
    size: Option<&'f str>,
    sha256: Option<&'f str>,
    source: Option<&'f str>,
}

impl<'f> Fields<'f> {
    fn collect(fields: &'f [(&str, Cow<str>)]) -> Self {
        let mut f = Fields::default();
        for (name, value) in fields {
            let slot = match name.len() {
                4 if name.eq_ignore_ascii_case("Size") => &mut f.size,
                6 if name.eq_ignore_ascii_case("SHA256") => &mut f.sha256,
                6 if name.eq_ignore_ascii_case("Breaks") => &mut f.breaks,
                6 if name.eq_ignore_ascii_case("Source") => &mut f.source,
                7 if name.eq_ignore_ascii_case("Package") => &mut f.package,
                7 if name.eq_ignore_ascii_case("Version") => &mut f.version,
                7 if name.eq_ignore_ascii_case("Depends") => &mut f.depends,
                8 if name.eq_ignore_ascii_case("Priority") => &mut f.priority,
                8 if name.eq_ignore_ascii_case("Provides") => &mut f.provides,
                8 if name.eq_ignore_ascii_case("Filename") => &mut f.filename,
                9 if name.eq_ignore_ascii_case("Essential") => &mut f.essential,
                9 if name.eq_ignore_ascii_case("Conflicts") => &mut f.conflicts,
                10 if name.eq_ignore_ascii_case("Multi-Arch") => &mut f.multi_arch,
                10 if name.eq_ignore_ascii_case("Recommends") => &mut f.recommends,
                11 if name.eq_ignore_ascii_case("Pre-Depends") => &mut f.pre_depends,
                12 if name.eq_ignore_ascii_case("Architecture") => &mut f.architecture,
                _ => continue,
            };
            // First occurrence wins, like control::Paragraph::get.
            slot.get_or_insert(&**value);
        }
        f
    }
}

fn req<'v>(v: Option<&'v str>, field: &str) -> Result<&'v str, String> {
    v.ok_or_else(|| format!("missing field `{field}`"))
}

fn package_from(
    fields: &[(&str, Cow<str>)],
    arch: &str,
    origin: &Arc<str>,
) -> Result<Package, String> {
    let f = Fields::collect(fields);
    let name = req(f.package, "Package")?.to_string();
    let ctx =
        |field: &str, e: &dyn std::fmt::Display| format!("package `{name}`, field `{field}`: {e}");
    let version: Version = req(f.version, "Version")?
        .parse()
        .map_err(|e| ctx("Version", &e))?;
    let deps = |v: Option<&str>, field: &str| -> Result<Vec<Dependency>, String> {
        match v {
            Some(v) => relation::parse_dependencies(v, arch).map_err(|e| ctx(field, &e)),
            None => Ok(Vec::new()),
        }
    };
    let provides = match f.provides {
        Some(v) => relation::parse_provides(v).map_err(|e| ctx("Provides", &e))?,
        None => Vec::new(),
    };
    let size = req(f.size, "Size")?
        .parse::<u64>()
        .map_err(|e| ctx("Size", &e))?;
    let sha256 = req(f.sha256, "SHA256")?
        .parse::<Sha256Digest>()
        .map_err(|e| ctx("SHA256", &e))?;
    let source = match f.source {
        // `Source: name (version)` when the source version differs from the binary's.
        Some(s) => s.split_whitespace().next().unwrap_or(&name).to_string(),
        None => name.clone(),
    };
    Ok(Package {
        version,
        architecture: req(f.architecture, "Architecture")?.to_string(),
        multi_arch: f.multi_arch.map(MultiArch::parse).unwrap_or_default(),
        essential: f.essential.is_some_and(|e| e.trim_ascii() == "yes"),
        priority: f.priority.map(Priority::parse),
        depends: deps(f.depends, "Depends")?,
        pre_depends: deps(f.pre_depends, "Pre-Depends")?,
        recommends: deps(f.recommends, "Recommends")?,
        conflicts: deps(f.conflicts, "Conflicts")?,
        breaks: deps(f.breaks, "Breaks")?,
        provides,
        filename: req(f.filename, "Filename")?.to_string(),
        size,
        sha256,
        source,
        origin: origin.clone(),
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn para(name: &str, version: &str, extra: &str) -> String {
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: amd64\n{extra}Filename: pool/{name}_{version}.deb\nSize: 10\nSHA256: {SHA}\n\n"
        )
    }

    #[test]
    fn highest_version_wins_across_suites() {
        let mut idx = PackageIndex::new("amd64");
        idx.add(
            "trixie/main",
            &(para("curl", "8.14.1-2", "") + &para("jq", "1.7", "")),
        )
        .unwrap();
        idx.add(
            "trixie-security/main",
            &para("curl", "8.14.1-2+deb13u1", ""),
        )
        .unwrap();
        idx.add("trixie-updates/main", &para("curl", "8.14.1-1", ""))
            .unwrap();
        let best = idx.best("curl").unwrap();
        assert_eq!(best.version.to_string(), "8.14.1-2+deb13u1");
        assert_eq!(&*best.origin, "trixie-security/main");
        let all: Vec<String> = idx
            .versions("curl")
            .map(|p| p.version.to_string())
            .collect();
        assert_eq!(all, ["8.14.1-2+deb13u1", "8.14.1-2", "8.14.1-1"]);
        assert_eq!(
            idx.origins().collect::<Vec<_>>(),
            ["trixie/main", "trixie-security/main", "trixie-updates/main"]
        );
        assert!(idx.best("nope").is_none());
    }

    #[test]
    fn parses_fields_and_providers() {
        let mut idx = PackageIndex::new("amd64");
        let extra = "Source: exim4 (4.98-1)\nMulti-Arch: foreign\nEssential: yes\nPriority: required\n\
                     Pre-Depends: libc6 (>= 2.36)\nDepends: a | b [i386], c\nProvides: mail-transport-agent, x (= 2)\n\
                     Conflicts: mail-transport-agent\n";
        idx.add("o", &para("exim4-daemon-light", "4.98-1+b1", extra))
            .unwrap();
        let p = idx.best("exim4-daemon-light").unwrap();
        assert_eq!(p.source, "exim4");
        assert_eq!(p.multi_arch, MultiArch::Foreign);
        assert!(p.essential);
        assert_eq!(p.priority, Some(Priority::Required));
        assert_eq!(p.depends.len(), 2);
        assert_eq!(p.depends[0].len(), 1, "i386-only alternative dropped");
        assert_eq!(p.pre_depends[0][0].name, "libc6");
        assert_eq!(p.size, 10);
        assert_eq!(p.filename, "pool/exim4-daemon-light_4.98-1+b1.deb");
        let provs: Vec<&str> = idx
            .providers("mail-transport-agent")
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(provs, ["exim4-daemon-light"]);
    }

    #[test]
    fn errors_name_origin_and_line() {
        let mut idx = PackageIndex::new("amd64");
        let text = para("ok", "1", "")
            + "Package: bad\nVersion: 1\nArchitecture: amd64\nFilename: f\nSize: 1\n";
        let e = idx.add("trixie/main", &text).unwrap_err();
        assert_eq!(e.line, 8);
        let msg = e.to_string();
        assert!(
            msg.contains("trixie/main") && msg.contains("SHA256") && msg.contains("line 8"),
            "{msg}"
        );
        assert!(
            idx.is_empty() && idx.best("ok").is_none(),
            "failed add left packages behind"
        );
        let e = idx.add("z", "Package: a\nnot a field\n").unwrap_err();
        assert_eq!((e.line, e.origin.as_str()), (2, "z"));
        let e = idx.add("x", &para("v", "a.1", "")).unwrap_err();
        assert!(e.to_string().contains("`a.1`"), "{e}");
        let e = idx
            .add("y", &para("d", "1", "Depends: a (>= \n"))
            .unwrap_err();
        assert!(e.to_string().contains("Depends"), "{e}");
    }
}
