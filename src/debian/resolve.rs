//! Dependency closure over a [`PackageIndex`], choosing packages the way apt does.
//!
//! apt semantics followed here (apt-pkg's `MarkInstall`): every package name has one
//! candidate (its highest version, or the version the request pins); a dependency already
//! satisfied by an installed or selected package is left alone; otherwise the alternatives
//! are tried in order, each with its real candidate first and then its providers (essential
//! first, then native architecture, then higher priority, then the name apt's cache met
//! last). Requested packages are all marked before any dependency is followed, dependencies
//! are followed depth-first (Pre-Depends, Depends, Recommends) as soon as a package is
//! chosen, and a choice whose own dependencies fail is undone and the next one tried.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use super::index::{MultiArch, Package, PackageIndex};
use super::relation::{ArchQual, Dependency, Provide, Relation, display_dependency};
use super::version::Version;

/// A package already present in a lower image layer.
#[derive(Clone, Debug)]
pub struct InstalledPackage {
    /// Package name.
    pub name: String,
    /// Installed version.
    pub version: Version,
    /// Architecture (`amd64`, `all`, ...).
    pub arch: String,
    /// Its Provides.
    pub provides: Vec<Provide>,
    /// Its Multi-Arch field.
    pub multi_arch: MultiArch,
    /// Its Conflicts, checked against newly selected packages.
    pub conflicts: Vec<Dependency>,
    /// Its Breaks, checked against newly selected packages.
    pub breaks: Vec<Dependency>,
}

impl From<&Package> for InstalledPackage {
    /// What a lower layer built from a resolution has installed.
    fn from(p: &Package) -> Self {
        InstalledPackage {
            name: p.name.clone(),
            version: p.version.clone(),
            arch: p.architecture.clone(),
            provides: p.provides.clone(),
            multi_arch: p.multi_arch,
            conflicts: p.conflicts.clone(),
            breaks: p.breaks.clone(),
        }
    }
}

/// What to resolve.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// Native architecture, e.g. `amd64`; must equal the index's [`PackageIndex::arch`].
    pub arch: String,
    /// Requested packages: `name`, `name=version`, `name:arch` or `name:arch=version`.
    pub packages: Vec<String>,
    /// Packages lower layers already have: never selected again, and they satisfy dependencies.
    pub installed: Vec<InstalledPackage>,
    /// Also install the base system the way mmdebstrap's `minbase` does: first the
    /// `Essential: yes` packages with their dependencies on their own, then every other
    /// `Priority: required` package (which includes apt) together with [`Self::packages`].
    pub essential_base: bool,
    /// Follow Recommends too (unsatisfiable Recommends are skipped, as apt does).
    pub recommends: bool,
}

/// Which relationship field pulled a package in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DepKind {
    /// Pre-Depends
    PreDepends,
    /// Depends
    Depends,
    /// Recommends
    Recommends,
}

impl fmt::Display for DepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PreDepends => "pre-depends",
            Self::Depends => "depends",
            Self::Recommends => "recommends",
        })
    }
}

/// Why a package is in the resolution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Named in [`Request::packages`].
    Requested,
    /// Part of the base set (`Essential: yes` or `Priority: required`).
    Essential,
    /// Needed by another selected package.
    Dependency {
        /// The package whose relationship pulled this one in.
        parent: String,
        /// The relationship field.
        kind: DepKind,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Requested => f.write_str("requested"),
            Self::Essential => f.write_str("essential"),
            Self::Dependency { parent, kind } => write!(f, "{kind} of {parent}"),
        }
    }
}

/// One selected package and why.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The chosen package version.
    pub package: Package,
    /// Why it was chosen.
    pub reason: Reason,
}

/// The packages to install on top of [`Request::installed`], sorted by name.
#[derive(Clone, Debug, Default)]
pub struct Resolution {
    /// Selected packages, sorted by name (then architecture).
    pub packages: Vec<Resolved>,
}

/// Why a request cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The request's architecture differs from the index's.
    #[error("request is for architecture {request}, but the package index is for {index}")]
    ArchMismatch {
        /// [`Request::arch`].
        request: String,
        /// [`PackageIndex::arch`].
        index: String,
    },
    /// A request entry that is not `name[:arch][=version]`.
    #[error("invalid package request `{0}`: expected name, name=version or name:arch")]
    BadRequest(String),
    /// A requested name that no index has (nor provides).
    #[error("no package `{name}` in {origins} {arch}{}", suggestion.as_ref().map(|s| format!(" — did you mean `{s}`?")).unwrap_or_default())]
    UnknownPackage {
        /// The requested name.
        name: String,
        /// The index labels searched.
        origins: String,
        /// The architecture searched.
        arch: String,
        /// The closest known name, if one is close.
        suggestion: Option<String>,
    },
    /// A `name=version` request for a version the indexes lack.
    #[error("no version {version} of `{name}` in {origins}; available: {available}")]
    UnknownVersion {
        /// Package name.
        name: String,
        /// Requested version.
        version: String,
        /// The index labels searched.
        origins: String,
        /// Versions that exist, comma separated.
        available: String,
    },
    /// A requested virtual package with several providers.
    #[error("`{name}` is a virtual package provided by {providers}; request one of them")]
    AmbiguousVirtual {
        /// The virtual name.
        name: String,
        /// Candidate providers, comma separated.
        providers: String,
    },
    /// A requested package already present in a lower layer at a different version.
    #[error("`{name}` is installed in a lower layer at {installed}, but {wanted} is requested")]
    InstalledMismatch {
        /// Package name.
        name: String,
        /// Version in the lower layer.
        installed: String,
        /// What the request or a dependency needs.
        wanted: String,
    },
    /// A dependency no available package satisfies.
    #[error("unsatisfiable dependency: {}: {reason}", chain.join(" -> "))]
    Unsatisfiable {
        /// How the dependency was reached, from the request to the failing relation.
        chain: Vec<String>,
        /// Why no alternative works.
        reason: String,
    },
    /// Two packages that cannot be installed together.
    #[error("`{package}` {field} `{relation}`, which `{other}` matches ({})", chain.join(" -> "))]
    Conflict {
        /// The package declaring the relation (name and version).
        package: String,
        /// `Conflicts` or `Breaks`.
        field: &'static str,
        /// The relation as written.
        relation: String,
        /// The package it hits (name and version; "installed" if from a lower layer).
        other: String,
        /// How the later of the two was reached.
        chain: Vec<String>,
    },
}

/// Resolve `request` against `index` into the full set of packages to install.
pub fn resolve(index: &PackageIndex, request: &Request) -> Result<Resolution, ResolveError> {
    if request.arch != index.arch() {
        return Err(ResolveError::ArchMismatch {
            request: request.arch.clone(),
            index: index.arch().to_string(),
        });
    }
    let mut r = Resolver::new(index, request);
    let mut seeds = Vec::new();
    for entry in &request.packages {
        if let Some(id) = r.requested_id(entry)? {
            seeds.push(id);
        }
    }
    let mut seeds: Vec<(usize, Reason)> = seeds
        .into_iter()
        .map(|id| (id, Reason::Requested))
        .collect();
    if request.essential_base {
        // Like mmdebstrap's minbase: first the Essential:yes closure on its own, then the
        // request together with Priority:required, each phase seeing the previous one.
        let (essential, required) = r.base_sets();
        r.phase(
            &essential
                .into_iter()
                .map(|id| (id, Reason::Essential))
                .collect::<Vec<_>>(),
        )?;
        seeds.extend(required.into_iter().map(|id| (id, Reason::Essential)));
    }
    r.phase(&seeds)?;
    let mut packages: Vec<Resolved> = r
        .order
        .iter()
        .map(|(id, reason)| Resolved {
            package: index.packages()[*id].clone(),
            reason: reason.clone(),
        })
        .collect();
    packages.sort_by(|a, b| {
        (&a.package.name, &a.package.architecture).cmp(&(&b.package.name, &b.package.architecture))
    });
    Ok(Resolution { packages })
}

/// A package-like view shared by index packages and installed packages.
struct View<'p> {
    name: &'p str,
    version: &'p Version,
    arch: &'p str,
    multi_arch: MultiArch,
    provides: &'p [Provide],
}

impl<'p> View<'p> {
    fn of(p: &'p Package) -> Self {
        View {
            name: &p.name,
            version: &p.version,
            arch: &p.architecture,
            multi_arch: p.multi_arch,
            provides: &p.provides,
        }
    }

    fn installed(p: &'p InstalledPackage) -> Self {
        View {
            name: &p.name,
            version: &p.version,
            arch: &p.arch,
            multi_arch: p.multi_arch,
            provides: &p.provides,
        }
    }

    fn label(&self) -> String {
        format!("{} {}", self.name, self.version)
    }
}

struct Resolver<'a> {
    index: &'a PackageIndex,
    req: &'a Request,
    native: &'a str,
    /// `name=version` requests override the candidate.
    pins: HashMap<&'a str, usize>,
    installed_names: HashMap<&'a str, Vec<usize>>,
    installed_provides: HashMap<&'a str, Vec<usize>>,
    /// Conflicts/Breaks target name -> installed packages declaring them.
    installed_negative: HashMap<&'a str, Vec<usize>>,
    /// Selected packages in selection order; undone from the end on backtracking.
    order: Vec<(usize, Reason)>,
    selected: HashMap<&'a str, Vec<usize>>,
    selected_provides: HashMap<&'a str, Vec<usize>>,
    /// Conflicts/Breaks target name -> selected packages declaring them.
    negative: HashMap<&'a str, Vec<usize>>,
    /// How the package being processed was reached, for error messages.
    chain: Vec<String>,
    /// Memo for [`Self::first_mention`].
    mentions: RefCell<HashMap<String, (usize, usize)>>,
}

impl<'a> Resolver<'a> {
    fn new(index: &'a PackageIndex, req: &'a Request) -> Self {
        let mut installed_names: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut installed_provides: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut installed_negative: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, p) in req.installed.iter().enumerate() {
            installed_names.entry(&p.name).or_default().push(i);
            for rel in p.conflicts.iter().chain(&p.breaks).flatten() {
                installed_negative.entry(&rel.name).or_default().push(i);
            }
            for prov in &p.provides {
                installed_provides.entry(&prov.name).or_default().push(i);
            }
        }
        Resolver {
            index,
            req,
            native: &req.arch,
            pins: HashMap::new(),
            installed_names,
            installed_provides,
            installed_negative,
            order: Vec::new(),
            selected: HashMap::new(),
            selected_provides: HashMap::new(),
            negative: HashMap::new(),
            chain: Vec::new(),
            mentions: RefCell::default(),
        }
    }

    fn pkg(&self, id: usize) -> &'a Package {
        &self.index.packages()[id]
    }

    fn origins(&self) -> String {
        self.index.origins().collect::<Vec<_>>().join(", ")
    }

    /// `all` counts as the native architecture.
    fn norm<'s>(&'s self, arch: &'s str) -> &'s str {
        if arch == "all" { self.native } else { arch }
    }

    /// The version apt would install for `name` on `arch`.
    fn candidate(&self, name: &str, arch: &str) -> Option<usize> {
        if let Some(&id) = self.pins.get(name) {
            return (self.norm(&self.pkg(id).architecture) == arch).then_some(id);
        }
        let arch = self.norm(arch);
        self.index
            .version_ids(name)
            .iter()
            .copied()
            .find(|&id| self.norm(&self.pkg(id).architecture) == arch)
    }

    /// Multi-Arch rules: whether `target` may satisfy `rel` declared by a package of `dep_arch`.
    fn arch_ok(&self, rel: &Relation, dep_arch: &str, target: &View) -> bool {
        let t_arch = self.norm(target.arch);
        match &rel.arch_qual {
            None => target.multi_arch == MultiArch::Foreign || t_arch == self.norm(dep_arch),
            Some(ArchQual::Any) => {
                matches!(target.multi_arch, MultiArch::Allowed | MultiArch::Foreign)
            }
            Some(ArchQual::Native) => {
                target.multi_arch == MultiArch::Foreign || t_arch == self.native
            }
            Some(ArchQual::Arch(a)) => t_arch == self.norm(a),
        }
    }

    /// Whether `target` satisfies `rel` as itself or through one of its Provides.
    fn satisfies(&self, rel: &Relation, dep_arch: &str, target: &View) -> bool {
        if !self.arch_ok(rel, dep_arch, target) {
            return false;
        }
        if target.name == rel.name && rel.version_matches(target.version) {
            return true;
        }
        target
            .provides
            .iter()
            .any(|p| p.name == rel.name && provide_matches(rel, p))
    }

    fn satisfied(&self, dep: &Dependency, dep_arch: &str) -> bool {
        dep.iter().any(|rel| {
            let sel = self.selected.get(rel.name.as_str()).into_iter().flatten();
            let selp = self
                .selected_provides
                .get(rel.name.as_str())
                .into_iter()
                .flatten();
            let inst = self
                .installed_names
                .get(rel.name.as_str())
                .into_iter()
                .flatten();
            let instp = self
                .installed_provides
                .get(rel.name.as_str())
                .into_iter()
                .flatten();
            sel.chain(selp)
                .any(|&id| self.satisfies(rel, dep_arch, &View::of(self.pkg(id))))
                || inst.chain(instp).any(|&i| {
                    self.satisfies(rel, dep_arch, &View::installed(&self.req.installed[i]))
                })
        })
    }

    /// Turn one request entry into a package id (None when a lower layer already has it).
    fn requested_id(&mut self, entry: &'a str) -> Result<Option<usize>, ResolveError> {
        let (spec, version) = match entry.split_once('=') {
            Some((s, v)) => (s, Some(v)),
            None => (entry, None),
        };
        let (name, arch) = match spec.split_once(':') {
            Some((n, a)) => (n, a),
            None => (spec, self.native),
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-'))
        };
        if !valid(name) || !valid(arch) || version.is_some_and(|v| v.is_empty()) {
            return Err(ResolveError::BadRequest(entry.to_string()));
        }
        if let Some(insts) = self.installed_names.get(name) {
            let inst = &self.req.installed[insts[0]];
            return match version {
                Some(v) if v.parse::<Version>().ok().as_ref() != Some(&inst.version) => {
                    Err(ResolveError::InstalledMismatch {
                        name: name.to_string(),
                        installed: inst.version.to_string(),
                        wanted: format!("version {v}"),
                    })
                }
                _ => Ok(None),
            };
        }
        if let Some(v) = version {
            let want: Option<Version> = v.parse().ok();
            let found = self.index.version_ids(name).iter().copied().find(|&id| {
                let p = self.pkg(id);
                Some(&p.version) == want.as_ref() && self.norm(&p.architecture) == self.norm(arch)
            });
            return match found {
                Some(id) => {
                    self.pins.insert(name, id);
                    Ok(Some(id))
                }
                None if self.index.version_ids(name).is_empty() => Err(self.unknown(name)),
                None => Err(ResolveError::UnknownVersion {
                    name: name.to_string(),
                    version: v.to_string(),
                    origins: self.origins(),
                    available: self
                        .index
                        .versions(name)
                        .map(|p| format!("{} ({})", p.version, p.architecture))
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
            };
        }
        if let Some(id) = self.candidate(name, arch) {
            return Ok(Some(id));
        }
        // A virtual name: apt installs the provider when there is exactly one.
        let rel = Relation {
            name: name.to_string(),
            arch_qual: None,
            constraint: None,
        };
        let providers = self.providers_for(&rel, arch);
        match providers.as_slice() {
            [] => Err(self.unknown(name)),
            [one] => Ok(Some(*one)),
            many => Err(ResolveError::AmbiguousVirtual {
                name: name.to_string(),
                providers: many
                    .iter()
                    .map(|&id| self.pkg(id).name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    fn unknown(&self, name: &str) -> ResolveError {
        ResolveError::UnknownPackage {
            name: name.to_string(),
            origins: self.origins(),
            arch: self.native.to_string(),
            suggestion: suggest(name, self.index.names()),
        }
    }

    /// Candidates of Essential:yes packages, and of other Priority:required ones, by name.
    fn base_sets(&self) -> (Vec<usize>, Vec<usize>) {
        let mut names: Vec<&str> = self.index.names().collect();
        names.sort_unstable();
        let (mut essential, mut required) = (Vec::new(), Vec::new());
        for name in names {
            if self.installed_names.contains_key(name) {
                continue;
            }
            let Some(id) = self.candidate(name, self.native) else {
                continue;
            };
            let p = self.pkg(id);
            if p.essential {
                essential.push(id);
            } else if p.priority.as_ref().is_some_and(|p| p.rank() == 1) {
                required.push(id);
            }
        }
        (essential, required)
    }

    /// apt-get install: mark all seeds first, then follow their dependencies in order.
    fn phase(&mut self, seeds: &[(usize, Reason)]) -> Result<(), ResolveError> {
        for (id, reason) in seeds {
            self.chain = vec![format!("{reason} `{}`", self.pkg(*id).name)];
            self.select(*id, reason.clone())?;
        }
        for &(id, ref reason) in seeds {
            self.chain = vec![format!("{reason} `{}`", self.pkg(id).name)];
            self.install_deps(id)?;
        }
        Ok(())
    }

    /// Add one package to the selection after checking Conflicts/Breaks both ways.
    fn select(&mut self, id: usize, reason: Reason) -> Result<(), ResolveError> {
        let p = self.pkg(id);
        if self
            .selected
            .get(p.name.as_str())
            .is_some_and(|v| v.contains(&id))
        {
            return Ok(());
        }
        let arch = self.norm(&p.architecture).to_string();
        if let Some(&other) = self
            .selected
            .get(p.name.as_str())
            .into_iter()
            .flatten()
            .find(|&&o| self.norm(&self.pkg(o).architecture) == arch)
        {
            return Err(self.unsat(format!(
                "needs `{}`, but `{}` is already selected",
                View::of(p).label(),
                View::of(self.pkg(other)).label()
            )));
        }
        if let Some(&i) = self
            .installed_names
            .get(p.name.as_str())
            .and_then(|v| v.first())
        {
            let inst = &self.req.installed[i];
            return Err(ResolveError::InstalledMismatch {
                name: p.name.clone(),
                installed: inst.version.to_string(),
                wanted: format!("{} ({})", p.version, self.chain.join(" -> ")),
            });
        }
        self.check_conflicts(id)?;
        self.order.push((id, reason));
        self.selected.entry(&p.name).or_default().push(id);
        for prov in &p.provides {
            self.selected_provides
                .entry(&prov.name)
                .or_default()
                .push(id);
        }
        for rel in p.conflicts.iter().chain(&p.breaks).flatten() {
            self.negative.entry(&rel.name).or_default().push(id);
        }
        Ok(())
    }

    /// Undo selections back to `len` entries (they were pushed in order, so pop in reverse).
    fn rollback(&mut self, len: usize) {
        while self.order.len() > len {
            let (id, _) = self.order.pop().expect("len checked");
            let p = self.pkg(id);
            for rel in p.conflicts.iter().chain(&p.breaks).flatten().rev() {
                pop_last(&mut self.negative, &rel.name);
            }
            for prov in p.provides.iter().rev() {
                pop_last(&mut self.selected_provides, &prov.name);
            }
            pop_last(&mut self.selected, &p.name);
        }
    }

    fn check_conflicts(&self, id: usize) -> Result<(), ResolveError> {
        let p = self.pkg(id);
        let new = View::of(p);
        // The new package's own Conflicts/Breaks against everything present.
        for (field, deps) in [("Conflicts", &p.conflicts), ("Breaks", &p.breaks)] {
            for rel in deps.iter().flatten() {
                let sel = self.selected.get(rel.name.as_str()).into_iter().flatten();
                let selp = self
                    .selected_provides
                    .get(rel.name.as_str())
                    .into_iter()
                    .flatten();
                for &o in sel.chain(selp) {
                    let other = self.pkg(o);
                    if other.name != p.name && negative_hits(rel, &View::of(other)) {
                        return Err(self.conflict(&new, field, rel, View::of(other).label()));
                    }
                }
                let inst = self
                    .installed_names
                    .get(rel.name.as_str())
                    .into_iter()
                    .flatten();
                let instp = self
                    .installed_provides
                    .get(rel.name.as_str())
                    .into_iter()
                    .flatten();
                for &i in inst.chain(instp) {
                    let other = View::installed(&self.req.installed[i]);
                    if other.name != p.name && negative_hits(rel, &other) {
                        let label = format!("{} (installed in a lower layer)", other.label());
                        return Err(self.conflict(&new, field, rel, label));
                    }
                }
            }
        }
        // Selected packages' Conflicts/Breaks against the new package's name and Provides.
        let names =
            std::iter::once(p.name.as_str()).chain(p.provides.iter().map(|x| x.name.as_str()));
        for name in names {
            for &holder in self.negative.get(name).into_iter().flatten() {
                let h = self.pkg(holder);
                if h.name == p.name {
                    continue;
                }
                for (field, deps) in [("Conflicts", &h.conflicts), ("Breaks", &h.breaks)] {
                    for rel in deps.iter().flatten().filter(|r| r.name == name) {
                        if negative_hits(rel, &new) {
                            return Err(self.conflict(&View::of(h), field, rel, new.label()));
                        }
                    }
                }
            }
            for &i in self.installed_negative.get(name).into_iter().flatten() {
                let h = &self.req.installed[i];
                if h.name == p.name {
                    continue;
                }
                for (field, deps) in [("Conflicts", &h.conflicts), ("Breaks", &h.breaks)] {
                    for rel in deps.iter().flatten().filter(|r| r.name == name) {
                        if negative_hits(rel, &new) {
                            let holder = View::installed(h);
                            let mut e = self.conflict(&holder, field, rel, new.label());
                            if let ResolveError::Conflict { package, .. } = &mut e {
                                package.push_str(" (installed in a lower layer)");
                            }
                            return Err(e);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn conflict(
        &self,
        holder: &View,
        field: &'static str,
        rel: &Relation,
        other: String,
    ) -> ResolveError {
        ResolveError::Conflict {
            package: holder.label(),
            field,
            relation: rel.to_string(),
            other,
            chain: self.chain.clone(),
        }
    }

    fn unsat(&self, reason: String) -> ResolveError {
        ResolveError::Unsatisfiable {
            chain: self.chain.clone(),
            reason,
        }
    }

    /// Providers of `rel.name` that apt would consider: candidate versions whose Provides match.
    fn providers_for(&self, rel: &Relation, dep_arch: &str) -> Vec<usize> {
        let mut out: Vec<usize> = self
            .index
            .provider_ids(&rel.name)
            .iter()
            .copied()
            .filter(|&id| {
                let p = self.pkg(id);
                self.candidate(&p.name, &p.architecture) == Some(id)
                    && self.arch_ok(rel, dep_arch, &View::of(p))
                    && p.provides
                        .iter()
                        .any(|x| x.name == rel.name && provide_matches(rel, x))
            })
            .collect();
        let primary = |id: usize| {
            let p = self.pkg(id);
            (
                !p.essential,
                self.norm(&p.architecture) != self.native,
                p.priority.as_ref().map_or(u8::MAX, |x| x.rank()),
            )
        };
        // apt's last resort prefers the package it created last, i.e. whose name its cache
        // generator met last while reading the indexes.
        out.sort_by(|&a, &b| {
            primary(a).cmp(&primary(b)).then_with(|| {
                self.first_mention(&self.pkg(b).name)
                    .cmp(&self.first_mention(&self.pkg(a).name))
            })
        });
        out.dedup();
        out
    }

    /// Where apt's cache generator first meets `name`: the paragraph, then the position in
    /// it (the package itself, then Pre-Depends, Depends, Conflicts, Breaks, Recommends,
    /// Provides). Only needed to break ties, so computed on demand and memoised.
    fn first_mention(&self, name: &str) -> (usize, usize) {
        if let Some(&m) = self.mentions.borrow().get(name) {
            return m;
        }
        let mut found = (usize::MAX, 0);
        'outer: for (i, p) in self.index.packages().iter().enumerate() {
            if p.name == name {
                found = (i, 0);
                break;
            }
            let rels = [
                &p.pre_depends,
                &p.depends,
                &p.conflicts,
                &p.breaks,
                &p.recommends,
            ];
            let names = rels
                .into_iter()
                .flatten()
                .flatten()
                .map(|r| r.name.as_str());
            for (k, n) in names
                .chain(p.provides.iter().map(|x| x.name.as_str()))
                .enumerate()
            {
                if n == name {
                    found = (i, k + 1);
                    break 'outer;
                }
            }
        }
        self.mentions.borrow_mut().insert(name.to_string(), found);
        found
    }

    /// Every package version that could satisfy one alternative, in apt's preference order.
    fn options(&self, rel: &Relation, dep_arch: &str) -> Vec<usize> {
        let want_arch = match &rel.arch_qual {
            Some(ArchQual::Arch(a)) => a.as_str(),
            _ => self.native,
        };
        let mut out = Vec::new();
        if let Some(id) = self.candidate(&rel.name, want_arch) {
            let p = self.pkg(id);
            if rel.version_matches(&p.version) && self.arch_ok(rel, dep_arch, &View::of(p)) {
                out.push(id);
            }
        }
        for id in self.providers_for(rel, dep_arch) {
            if !out.contains(&id) {
                out.push(id);
            }
        }
        out
    }

    /// Why no alternative of `dep` had a usable candidate.
    fn why_unavailable(&self, dep: &Dependency) -> String {
        let parts: Vec<String> = dep
            .iter()
            .map(|rel| match self.candidate(&rel.name, self.native) {
                Some(id) => format!(
                    "`{}` not available in a matching version, best is {} ({})",
                    rel.name,
                    self.pkg(id).version,
                    self.pkg(id).architecture
                ),
                None if !self.index.provider_ids(&rel.name).is_empty() => {
                    format!("no provider of `{}` matches", rel)
                }
                None => format!(
                    "no package or provider named `{}` in {}",
                    rel.name,
                    self.origins()
                ),
            })
            .collect();
        parts.join("; ")
    }

    /// Follow the dependencies of a selected package, depth-first.
    fn install_deps(&mut self, id: usize) -> Result<(), ResolveError> {
        let p = self.pkg(id);
        let mut deps: Vec<(DepKind, &'a Dependency)> = Vec::new();
        deps.extend(p.pre_depends.iter().map(|d| (DepKind::PreDepends, d)));
        deps.extend(p.depends.iter().map(|d| (DepKind::Depends, d)));
        if self.req.recommends {
            deps.extend(p.recommends.iter().map(|d| (DepKind::Recommends, d)));
        }
        for (kind, dep) in deps {
            if self.satisfied(dep, &p.architecture) {
                continue;
            }
            let step = format!("{kind} `{}`", display_dependency(dep));
            self.chain.push(step);
            let result = self.satisfy(id, kind, dep);
            self.chain.pop();
            match result {
                Ok(()) => {}
                Err(_) if kind == DepKind::Recommends => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Choose and install the first workable alternative of one unsatisfied dependency.
    fn satisfy(
        &mut self,
        parent: usize,
        kind: DepKind,
        dep: &'a Dependency,
    ) -> Result<(), ResolveError> {
        let p = self.pkg(parent);
        let mut first_err = None;
        for rel in dep {
            for cand in self.options(rel, &p.architecture) {
                let mark = self.order.len();
                let c = self.pkg(cand);
                let via = c.name != rel.name;
                if via {
                    self.chain.push(format!("via `{}`", c.name));
                }
                let reason = Reason::Dependency {
                    parent: p.name.clone(),
                    kind,
                };
                let res = self
                    .select(cand, reason)
                    .and_then(|()| self.install_deps(cand));
                if via {
                    self.chain.pop();
                }
                match res {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        self.rollback(mark);
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        Err(first_err.unwrap_or_else(|| self.unsat(self.why_unavailable(dep))))
    }
}

/// Whether a Provides entry satisfies a relation: unversioned Provides only satisfy
/// unversioned relations.
fn provide_matches(rel: &Relation, p: &Provide) -> bool {
    match (&rel.constraint, &p.version) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(_), Some(v)) => rel.version_matches(v),
    }
}

/// Whether a Conflicts/Breaks relation applies to `target` (by name or by Provides).
fn negative_hits(rel: &Relation, target: &View) -> bool {
    (target.name == rel.name && rel.version_matches(target.version))
        || target
            .provides
            .iter()
            .any(|p| p.name == rel.name && provide_matches(rel, p))
}

fn pop_last(map: &mut HashMap<&str, Vec<usize>>, key: &str) {
    if let Some(v) = map.get_mut(key) {
        v.pop();
        if v.is_empty() {
            map.remove(key);
        }
    }
}

/// The closest name by edit distance, if it is close enough to be a plausible typo.
fn suggest<'n>(name: &str, names: impl Iterator<Item = &'n str>) -> Option<String> {
    let limit = (name.len() / 3).clamp(1, 3);
    names
        .filter(|n| n.len().abs_diff(name.len()) <= limit)
        .map(|n| (edit_distance(name, n), n))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, n)| n.to_string())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "1111111111111111111111111111111111111111111111111111111111111111";

    /// One Packages paragraph; `extra` holds further fields, one per line.
    fn p(name: &str, version: &str, extra: &str) -> String {
        let arch = if extra.contains("Architecture:") {
            ""
        } else {
            "Architecture: amd64\n"
        };
        let extra: String = extra.lines().map(|l| format!("{}\n", l.trim())).collect();
        format!(
            "Package: {name}\nVersion: {version}\n{arch}{extra}Filename: pool/{name}.deb\nSize: 1\nSHA256: {SHA}\n\n"
        )
    }

    fn index(paragraphs: &[String]) -> PackageIndex {
        let mut idx = PackageIndex::new("amd64");
        idx.add("test/main", &paragraphs.concat()).unwrap();
        idx
    }

    fn req(packages: &[&str]) -> Request {
        Request {
            arch: "amd64".into(),
            packages: packages.iter().map(|s| s.to_string()).collect(),
            ..Request::default()
        }
    }

    fn names(r: &Resolution) -> Vec<String> {
        r.packages.iter().map(|x| x.package.name.clone()).collect()
    }

    fn installed(name: &str, version: &str, provides: &[&str]) -> InstalledPackage {
        InstalledPackage {
            name: name.into(),
            version: version.parse().unwrap(),
            arch: "amd64".into(),
            provides: provides
                .iter()
                .map(|n| Provide {
                    name: n.to_string(),
                    version: None,
                })
                .collect(),
            multi_arch: MultiArch::No,
            conflicts: Vec::new(),
            breaks: Vec::new(),
        }
    }

    fn reason_of<'r>(r: &'r Resolution, name: &str) -> &'r Reason {
        &r.packages
            .iter()
            .find(|x| x.package.name == name)
            .unwrap()
            .reason
    }

    #[test]
    fn alternatives_first_satisfiable_unless_already_chosen() {
        let idx = index(&[
            p("app", "1", "Depends: x (>= 2) | y | z"),
            p("x", "1", ""),
            p("y", "1", ""),
            p("z", "1", ""),
        ]);
        // x is too old, so y (the next alternative) is chosen.
        assert_eq!(names(&resolve(&idx, &req(&["app"])).unwrap()), ["app", "y"]);
        // An alternative that is requested anyway wins.
        assert_eq!(
            names(&resolve(&idx, &req(&["app", "z"])).unwrap()),
            ["app", "z"]
        );
        // So does one a lower layer already has.
        let mut r = req(&["app"]);
        r.installed.push(installed("z", "1", &[]));
        assert_eq!(names(&resolve(&idx, &r).unwrap()), ["app"]);
    }

    #[test]
    fn alternative_with_broken_dependencies_is_undone() {
        let idx = index(&[
            p("app", "1", "Depends: x | y"),
            p("x", "1", "Depends: helper-x"),
            p("helper-x", "1", "Depends: missing"),
            p("y", "1", ""),
        ]);
        assert_eq!(names(&resolve(&idx, &req(&["app"])).unwrap()), ["app", "y"]);
    }

    #[test]
    fn virtual_packages_and_versioned_provides() {
        let idx = index(&[
            p("mailer", "1", "Depends: mail-transport-agent"),
            p(
                "postfix",
                "3",
                "Provides: mail-transport-agent\nPriority: optional",
            ),
            p(
                "exim4",
                "4",
                "Provides: mail-transport-agent\nPriority: standard",
            ),
            p("abi-user", "1", "Depends: libfoo-abi (>= 2)"),
            p("libfoo1", "1", "Provides: libfoo-abi (= 1)"),
            p("libfoo2", "2", "Provides: libfoo-abi (= 2)"),
            p("strict", "1", "Depends: unversioned (>= 1)"),
            p("prov", "5", "Provides: unversioned"),
        ]);
        // The provider with the more important priority wins, as in apt.
        assert_eq!(
            names(&resolve(&idx, &req(&["mailer"])).unwrap()),
            ["exim4", "mailer"]
        );
        // A versioned dependency only takes a provider whose provided version matches.
        assert_eq!(
            names(&resolve(&idx, &req(&["abi-user"])).unwrap()),
            ["abi-user", "libfoo2"]
        );
        // An unversioned Provides never satisfies a versioned dependency.
        let e = resolve(&idx, &req(&["strict"])).unwrap_err();
        assert!(matches!(e, ResolveError::Unsatisfiable { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("no provider of `unversioned (>= 1)` matches"),
            "{e}"
        );
        // Requesting a virtual name with a single provider installs it; with several it asks.
        assert_eq!(
            names(&resolve(&idx, &req(&["unversioned"])).unwrap()),
            ["prov"]
        );
        let e = resolve(&idx, &req(&["mail-transport-agent"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`mail-transport-agent` is a virtual package provided by exim4, postfix; request one of them"
        );
    }

    #[test]
    fn pre_depends_chains_and_cycles() {
        let idx = index(&[
            p("a", "1", "Pre-Depends: b"),
            p("b", "1", "Depends: c"),
            p("c", "1", "Pre-Depends: a"),
        ]);
        let r = resolve(&idx, &req(&["a"])).unwrap();
        assert_eq!(names(&r), ["a", "b", "c"]);
        assert_eq!(reason_of(&r, "a"), &Reason::Requested);
        assert_eq!(
            reason_of(&r, "b"),
            &Reason::Dependency {
                parent: "a".into(),
                kind: DepKind::PreDepends
            }
        );
        assert_eq!(
            reason_of(&r, "c"),
            &Reason::Dependency {
                parent: "b".into(),
                kind: DepKind::Depends
            }
        );
    }

    #[test]
    fn conflicts_and_breaks_are_errors_naming_both() {
        let idx = index(&[
            p("a", "1", "Depends: b"),
            p("b", "2", "Conflicts: c"),
            p("c", "1", ""),
            p("d", "1", "Breaks: e (<< 2)"),
            p("e", "1.5", ""),
            p("f", "1", "Breaks: g (<< 2)"),
            p("g", "2", ""),
        ]);
        let e = resolve(&idx, &req(&["c", "a"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`b 2` Conflicts `c`, which `c 1` matches (requested `a` -> depends `b`)"
        );
        let e = resolve(&idx, &req(&["d", "e"])).unwrap_err();
        assert!(
            matches!(
                &e,
                ResolveError::Conflict {
                    field: "Breaks",
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("`d 1` Breaks `e (<< 2)`, which `e 1.5` matches"),
            "{e}"
        );
        // The version constraint matters: g 2 is not broken.
        assert_eq!(
            names(&resolve(&idx, &req(&["f", "g"])).unwrap()),
            ["f", "g"]
        );
    }

    #[test]
    fn provides_and_conflicts_same_virtual_is_not_self_conflict() {
        let idx = index(&[
            p(
                "exim4",
                "4",
                "Provides: mail-transport-agent\nConflicts: mail-transport-agent",
            ),
            p(
                "postfix",
                "3",
                "Provides: mail-transport-agent\nConflicts: mail-transport-agent",
            ),
        ]);
        assert_eq!(names(&resolve(&idx, &req(&["exim4"])).unwrap()), ["exim4"]);
        let e = resolve(&idx, &req(&["exim4", "postfix"])).unwrap_err();
        assert!(
            e.to_string().contains("Conflicts `mail-transport-agent`"),
            "{e}"
        );
        assert!(
            e.to_string().contains("exim4 4") && e.to_string().contains("postfix 3"),
            "{e}"
        );
    }

    #[test]
    fn conflict_steers_alternatives_and_hits_installed() {
        let idx = index(&[
            p("app", "1", "Depends: x | y"),
            p("x", "1", "Conflicts: keep"),
            p("y", "1", ""),
            p("keep", "1", ""),
            p("rival", "1", "Conflicts: base-thing"),
        ]);
        assert_eq!(
            names(&resolve(&idx, &req(&["keep", "app"])).unwrap()),
            ["app", "keep", "y"]
        );
        let mut r = req(&["rival"]);
        r.installed.push(installed("base-thing", "1", &[]));
        let e = resolve(&idx, &r).unwrap_err();
        assert!(
            e.to_string()
                .contains("`base-thing 1 (installed in a lower layer)`"),
            "{e}"
        );
        // A lower layer's Breaks also hold against new packages; built via From<&Package>.
        let old = index(&[p("old-tool", "1", "Breaks: keep (<< 2)")]);
        let mut r = req(&["keep"]);
        r.installed
            .push(InstalledPackage::from(old.best("old-tool").unwrap()));
        let e = resolve(&idx, &r).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`old-tool 1 (installed in a lower layer)` Breaks `keep (<< 2)`, which `keep 1` matches (requested `keep`)"
        );
    }

    #[test]
    fn installed_packages_are_not_pulled_again_and_satisfy_deps() {
        let idx = index(&[
            p("app", "1", "Depends: libc6 (>= 2.36), mta"),
            p("libc6", "2.41", ""),
            p("newer", "1", "Depends: libc6 (>= 2.41)"),
        ]);
        let mut r = req(&["app", "libc6"]);
        r.installed.push(installed("libc6", "2.40", &[]));
        r.installed.push(installed("exim4", "4", &["mta"]));
        assert_eq!(names(&resolve(&idx, &r).unwrap()), ["app"]);
        // A lower layer's version that is too old is reported, not silently upgraded.
        r.packages = vec!["newer".into()];
        let e = resolve(&idx, &r).unwrap_err();
        assert!(matches!(e, ResolveError::InstalledMismatch { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("`libc6` is installed in a lower layer at 2.40"),
            "{e}"
        );
    }

    #[test]
    fn multi_arch_any_and_foreign() {
        let idx = index(&[
            p("tool", "1", "Depends: python3:any"),
            p("python3", "3.13", "Multi-Arch: allowed"),
            p("tool2", "1", "Depends: perl:any"),
            p("perl", "5.40", ""),
            p("data", "1", "Architecture: all\nDepends: libz"),
            p("libz", "1", "Multi-Arch: same"),
            p("app", "1", "Depends: helper, helper2"),
            p("helper", "1", "Architecture: i386\nMulti-Arch: foreign"),
            p("helper2", "1", "Architecture: i386"),
            p("app1", "1", "Depends: helper"),
        ]);
        assert_eq!(
            names(&resolve(&idx, &req(&["tool"])).unwrap()),
            ["python3", "tool"]
        );
        let e = resolve(&idx, &req(&["tool2"])).unwrap_err();
        assert!(e.to_string().contains("perl:any"), "{e}");
        // An arch:all package's dependencies are satisfied by native packages.
        assert_eq!(
            names(&resolve(&idx, &req(&["data"])).unwrap()),
            ["data", "libz"]
        );
        // A foreign-architecture Multi-Arch: foreign package satisfies a native dependency ...
        let r = resolve(&idx, &req(&["helper:i386", "app1"])).unwrap();
        assert_eq!(names(&r), ["app1", "helper"]);
        assert_eq!(r.packages[1].package.architecture, "i386");
        // ... but one without Multi-Arch: foreign does not.
        let e = resolve(&idx, &req(&["helper:i386", "helper2:i386", "app"])).unwrap_err();
        assert!(e.to_string().contains("depends `helper2`"), "{e}");
    }

    #[test]
    fn unknown_package_suggests_a_close_name() {
        let idx = index(&[p("nodejs", "20", ""), p("node-gyp", "10", "")]);
        let e = resolve(&idx, &req(&["nodjs"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no package `nodjs` in test/main amd64 — did you mean `nodejs`?"
        );
        let e = resolve(&idx, &req(&["completely-different"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no package `completely-different` in test/main amd64"
        );
        assert!(matches!(
            resolve(&idx, &req(&["bad name"])),
            Err(ResolveError::BadRequest(_))
        ));
    }

    #[test]
    fn unsatisfiable_names_the_chain_and_best_version() {
        let idx = index(&[
            p("x", "1", "Depends: mid"),
            p("mid", "1", "Depends: y (>= 2)"),
            p("y", "1.5", ""),
        ]);
        let e = resolve(&idx, &req(&["x"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unsatisfiable dependency: requested `x` -> depends `mid` -> depends `y (>= 2)`: \
             `y` not available in a matching version, best is 1.5 (amd64)"
        );
    }

    #[test]
    fn pinned_versions_and_highest_candidate() {
        let mut idx = index(&[p("foo", "1.0", ""), p("bar", "1", "Depends: foo (>= 2)")]);
        idx.add("test-updates/main", &p("foo", "2.0", "")).unwrap();
        let r = resolve(&idx, &req(&["foo"])).unwrap();
        assert_eq!(r.packages[0].package.version.to_string(), "2.0");
        assert_eq!(&*r.packages[0].package.origin, "test-updates/main");
        let r = resolve(&idx, &req(&["foo=1.0"])).unwrap();
        assert_eq!(r.packages[0].package.version.to_string(), "1.0");
        assert!(resolve(&idx, &req(&["foo=1.0", "bar"])).is_err());
        let e = resolve(&idx, &req(&["foo=3"])).unwrap_err();
        assert!(
            e.to_string()
                .contains("available: 2.0 (amd64), 1.0 (amd64)"),
            "{e}"
        );
    }

    #[test]
    fn essential_base_is_two_phase_like_mmdebstrap() {
        let idx = index(&[
            p(
                "base",
                "1",
                "Essential: yes\nPriority: required\nDepends: awk-a | awk-b",
            ),
            p("awk-a", "1", "Priority: optional"),
            p("awk-b", "1", "Priority: optional"),
            p("apt", "3", "Priority: required\nDepends: awk-b | awk-a"),
            p("extra", "1", "Priority: optional"),
            p("old-essential", "1", "Essential: yes"),
        ]);
        let mut r = req(&["awk-b"]);
        r.essential_base = true;
        r.installed.push(installed("old-essential", "1", &[]));
        let res = resolve(&idx, &r).unwrap();
        // The Essential phase picks awk-a without seeing the request for awk-b.
        assert_eq!(names(&res), ["apt", "awk-a", "awk-b", "base"]);
        assert_eq!(reason_of(&res, "base"), &Reason::Essential);
        assert_eq!(reason_of(&res, "apt"), &Reason::Essential);
        assert_eq!(reason_of(&res, "awk-b"), &Reason::Requested);
    }

    #[test]
    fn recommends_only_when_asked_and_only_if_possible() {
        let idx = index(&[
            p("app", "1", "Recommends: nice, missing\nDepends: lib"),
            p("nice", "1", ""),
            p("lib", "1", ""),
        ]);
        assert_eq!(
            names(&resolve(&idx, &req(&["app"])).unwrap()),
            ["app", "lib"]
        );
        let mut r = req(&["app"]);
        r.recommends = true;
        let res = resolve(&idx, &r).unwrap();
        assert_eq!(names(&res), ["app", "lib", "nice"]);
        assert_eq!(reason_of(&res, "nice").to_string(), "recommends of app");
    }
}
