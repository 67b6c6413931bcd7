//! Dependency closure over a [`PackageIndex`], choosing packages the way apt does.
//!
//! apt semantics followed here: every package name has one candidate (its highest version,
//! or the version the request pins); a dependency already satisfied by an installed or
//! selected package is left alone; otherwise the alternatives are tried in order, each with
//! its real candidate first and then its providers (essential first, then native
//! architecture, then higher priority, then name). Dependencies are followed depth-first as
//! soon as a package is chosen, and a choice whose own dependencies fail is undone and the
//! next alternative tried.

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
}

/// What to resolve.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// Native architecture, e.g. `amd64`.
    pub arch: String,
    /// Requested packages: `name`, `name=version`, `name:arch` or `name:arch=version`.
    pub packages: Vec<String>,
    /// Packages lower layers already have: never selected again, and they satisfy dependencies.
    pub installed: Vec<InstalledPackage>,
    /// Also install the base system: all `Essential: yes` and all `Priority: required` packages.
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
    let mut r = Resolver::new(index, request);
    let mut seeds = Vec::new();
    for entry in &request.packages {
        if let Some(id) = r.requested_id(entry)? {
            seeds.push(id);
        }
    }
    let mut seeds: Vec<(usize, Reason)> = seeds.into_iter().map(|id| (id, Reason::Requested)).collect();
    if request.essential_base {
        // Like mmdebstrap's minbase: first the Essential:yes closure on its own, then the
        // request together with Priority:required, each phase seeing the previous one.
        let (essential, required) = r.base_sets();
        r.phase(&essential.into_iter().map(|id| (id, Reason::Essential)).collect::<Vec<_>>())?;
        seeds.extend(required.into_iter().map(|id| (id, Reason::Essential)));
    }
    r.phase(&seeds)?;
    let mut packages: Vec<Resolved> = r
        .order
        .iter()
        .map(|(id, reason)| Resolved { package: index.packages()[*id].clone(), reason: reason.clone() })
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
        View { name: &p.name, version: &p.version, arch: &p.arch, multi_arch: p.multi_arch, provides: &p.provides }
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
    /// Selected packages in selection order; undone from the end on backtracking.
    order: Vec<(usize, Reason)>,
    selected: HashMap<&'a str, Vec<usize>>,
    selected_provides: HashMap<&'a str, Vec<usize>>,
    /// Conflicts/Breaks target name -> selected packages declaring them.
    negative: HashMap<&'a str, Vec<usize>>,
    /// How the package being processed was reached, for error messages.
    chain: Vec<String>,
}

impl<'a> Resolver<'a> {
    fn new(index: &'a PackageIndex, req: &'a Request) -> Self {
        let mut installed_names: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut installed_provides: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, p) in req.installed.iter().enumerate() {
            installed_names.entry(&p.name).or_default().push(i);
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
            order: Vec::new(),
            selected: HashMap::new(),
            selected_provides: HashMap::new(),
            negative: HashMap::new(),
            chain: Vec::new(),
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
            Some(ArchQual::Any) => matches!(target.multi_arch, MultiArch::Allowed | MultiArch::Foreign),
            Some(ArchQual::Native) => target.multi_arch == MultiArch::Foreign || t_arch == self.native,
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
        target.provides.iter().any(|p| p.name == rel.name && provide_matches(rel, p))
    }

    fn satisfied(&self, dep: &Dependency, dep_arch: &str) -> bool {
        dep.iter().any(|rel| {
            let sel = self.selected.get(rel.name.as_str()).into_iter().flatten();
            let selp = self.selected_provides.get(rel.name.as_str()).into_iter().flatten();
            let inst = self.installed_names.get(rel.name.as_str()).into_iter().flatten();
            let instp = self.installed_provides.get(rel.name.as_str()).into_iter().flatten();
            sel.chain(selp).any(|&id| self.satisfies(rel, dep_arch, &View::of(self.pkg(id))))
                || inst
                    .chain(instp)
                    .any(|&i| self.satisfies(rel, dep_arch, &View::installed(&self.req.installed[i])))
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
            !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-'))
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
        let rel = Relation { name: name.to_string(), arch_qual: None, constraint: None };
        let providers = self.providers_for(&rel, arch);
        match providers.as_slice() {
            [] => Err(self.unknown(name)),
            [one] => Ok(Some(*one)),
            many => Err(ResolveError::AmbiguousVirtual {
                name: name.to_string(),
                providers: many.iter().map(|&id| self.pkg(id).name.as_str()).collect::<Vec<_>>().join(", "),
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
            let Some(id) = self.candidate(name, self.native) else { continue };
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
        if self.selected.get(p.name.as_str()).is_some_and(|v| v.contains(&id)) {
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
        if let Some(&i) = self.installed_names.get(p.name.as_str()).and_then(|v| v.first()) {
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
            self.selected_provides.entry(&prov.name).or_default().push(id);
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
                let selp = self.selected_provides.get(rel.name.as_str()).into_iter().flatten();
                for &o in sel.chain(selp) {
                    let other = self.pkg(o);
                    if other.name != p.name && negative_hits(rel, &View::of(other)) {
                        return Err(self.conflict(&new, field, rel, View::of(other).label()));
                    }
                }
                let inst = self.installed_names.get(rel.name.as_str()).into_iter().flatten();
                let instp = self.installed_provides.get(rel.name.as_str()).into_iter().flatten();
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
        let names = std::iter::once(p.name.as_str()).chain(p.provides.iter().map(|x| x.name.as_str()));
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
        }
        Ok(())
    }

    fn conflict(&self, holder: &View, field: &'static str, rel: &Relation, other: String) -> ResolveError {
        ResolveError::Conflict {
            package: holder.label(),
            field,
            relation: rel.to_string(),
            other,
            chain: self.chain.clone(),
        }
    }

    fn unsat(&self, reason: String) -> ResolveError {
        ResolveError::Unsatisfiable { chain: self.chain.clone(), reason }
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
                    && p.provides.iter().any(|x| x.name == rel.name && provide_matches(rel, x))
            })
            .collect();
        out.sort_by_key(|&id| {
            let p = self.pkg(id);
            (
                !p.essential,
                self.norm(&p.architecture) != self.native,
                p.priority.as_ref().map_or(u8::MAX, |x| x.rank()),
                p.name.clone(),
            )
        });
        out.dedup();
        out
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
                None => format!("no package or provider named `{}` in {}", rel.name, self.origins()),
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
    fn satisfy(&mut self, parent: usize, kind: DepKind, dep: &'a Dependency) -> Result<(), ResolveError> {
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
                let reason = Reason::Dependency { parent: p.name.clone(), kind };
                let res = self.select(cand, reason).and_then(|()| self.install_deps(cand));
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
        || target.provides.iter().any(|p| p.name == rel.name && provide_matches(rel, p))
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
    let limit = (name.len() / 3).max(1).min(3);
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
