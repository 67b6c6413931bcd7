//! The resolve/lock stage: a variant's package layers become locked package lists and fetched .debs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Serialize;

use crate::debian::index::PackageIndex;
use crate::debian::lock::{LockFile, LockedLayer, LockedPackage, LockedSuite, chain_key};
use crate::debian::repo::{self, HostContext, RepoError, RepoSpec};
use crate::debian::resolve::{InstalledPackage, Request, ResolveError, resolve};
use crate::debian::sources::{self, MirrorConfig};
use crate::digest::Sha256Digest;
use crate::fetch::{FetchError, FetchItem, FetchProgress, Fetcher};
use crate::spec::{DebianSettings, Project, Variant};

/// Errors of the resolve/lock stage.
#[derive(Debug, thiserror::Error)]
pub enum PackagesError {
    /// A package layer without a `debian.suite`.
    #[error(
        "variant `{variant}`: layer `{layer}` installs packages but no `debian: {{suite: …}}` is set ({file})"
    )]
    NoSuite {
        variant: String,
        layer: String,
        file: PathBuf,
    },
    /// Repository access failed.
    #[error(transparent)]
    Repo(Box<RepoError>),
    /// A Packages index did not parse.
    #[error(transparent)]
    Index(#[from] crate::debian::index::IndexError),
    /// Resolution failed.
    #[error("variant `{variant}`, layer `{layer}` ({arch}): {source}")]
    Resolve {
        variant: String,
        layer: String,
        arch: String,
        source: Box<ResolveError>,
    },
    /// The lock no longer matches the variant.
    #[error(
        "hakim.lock: the entry for layer `{layer}` ({arch}) no longer matches variant `{variant}`; run `hakim lock {variant}`"
    )]
    Mismatch {
        variant: String,
        layer: String,
        arch: String,
    },
    /// A locked package is gone from the repository.
    #[error(
        "hakim.lock: `{name} {version}` ({arch}) is no longer in the repository; run `hakim lock --update`"
    )]
    Gone {
        name: String,
        version: String,
        arch: String,
    },
    /// A lock entry is missing and the network may not be used.
    #[error(
        "hakim.lock has no entry for layer `{layer}` ({arch}) of variant `{variant}`, and --offline forbids resolving it"
    )]
    OfflineMissing {
        variant: String,
        layer: String,
        arch: String,
    },
    /// Mirror discovery failed.
    #[error(transparent)]
    Sources(#[from] sources::SourcesError),
    /// Downloading failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

impl From<RepoError> for PackagesError {
    fn from(e: RepoError) -> Self {
        Self::Repo(Box::new(e))
    }
}

/// How existing lock entries are treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// Keep matching entries, add missing ones, refuse mismatched ones (`hakim build`).
    Frozen,
    /// Keep matching entries, re-resolve mismatched or missing ones (`hakim lock`).
    Refresh,
    /// Re-resolve every entry (`hakim lock --update`).
    Update,
    /// Use the lock only; never touch the network (`--offline`).
    Offline,
}

/// Repository settings of a variant with defaults applied.
pub fn repo_spec(settings: &DebianSettings, arch: &str) -> Option<RepoSpec> {
    Some(RepoSpec {
        suite: settings.suite.clone()?,
        components: settings
            .components
            .clone()
            .unwrap_or_else(|| vec!["main".into()]),
        archs: vec![arch.to_string()],
        updates: settings.updates.unwrap_or(true),
        security: settings.security.unwrap_or(true),
        mirror: MirrorConfig {
            mirror: settings.mirror.clone(),
            security_mirror: settings.security_mirror.clone(),
            snapshot: settings.snapshot.clone(),
            snapshot_mirror: settings.snapshot_mirror.clone(),
        },
        keyring: settings.keyring.as_ref().map(PathBuf::from),
    })
}

#[derive(Serialize)]
struct RequestKey<'a> {
    suite: &'a str,
    components: &'a [String],
    updates: bool,
    security: bool,
    snapshot: Option<&'a str>,
    arch: &'a str,
    packages: Vec<&'a str>,
    recommends: bool,
    bootstrap: bool,
    lower: Option<Sha256Digest>,
}

/// A loaded, verified repository for one settings block and arch.
struct Loaded {
    index: PackageIndex,
    bases: BTreeMap<String, String>,
}

/// The stage's state across variants in one run (repositories are loaded once).
pub struct Resolver<'a> {
    fetcher: &'a Fetcher,
    ctx: HostContext,
    loaded: BTreeMap<String, Loaded>,
}

/// One package layer's locked packages.
#[derive(Clone, Debug)]
pub struct LayerPackages {
    /// Index of the layer in the variant's `layers`.
    pub position: usize,
    /// Layer name.
    pub layer: String,
    /// The lock entry.
    pub locked: LockedLayer,
}

impl<'a> Resolver<'a> {
    /// A resolver using `fetcher` and this host's mirror configuration.
    pub fn new(fetcher: &'a Fetcher) -> Self {
        Self {
            fetcher,
            ctx: HostContext::current(),
            loaded: BTreeMap::new(),
        }
    }

    async fn load(
        &mut self,
        spec: &RepoSpec,
        lock: &mut LockFile,
    ) -> Result<&Loaded, PackagesError> {
        let key = serde_json::to_string(&(
            &spec.suite,
            &spec.components,
            spec.updates,
            spec.security,
            &spec.mirror.snapshot,
            &spec.archs,
        ))
        .expect("key serializes");
        if !self.loaded.contains_key(&key) {
            let indexes = repo::load_with(spec, self.fetcher, &self.ctx).await?;
            let mut index = PackageIndex::new(&spec.archs[0]);
            let mut bases = BTreeMap::new();
            for s in &indexes.suites {
                for p in &s.packages {
                    index.add(&format!("{}/{}", s.suite, p.component), &p.text)?;
                }
                bases.insert(s.suite.clone(), s.base_url.clone());
                let archive = if s.suite.ends_with("-security") {
                    "security"
                } else {
                    "archive"
                };
                lock.suites.insert(
                    s.suite.clone(),
                    LockedSuite {
                        archive: archive.into(),
                        inrelease_sha256: s.inrelease_sha256,
                        date: s.date.clone(),
                    },
                );
            }
            self.loaded.insert(key.clone(), Loaded { index, bases });
        }
        Ok(&self.loaded[&key])
    }

    /// Lock every package layer of `variant` on `arch`, updating `lock` in place.
    pub async fn lock_variant(
        &mut self,
        project: &Project,
        variant: &Variant,
        arch: &str,
        lock: &mut LockFile,
        mode: LockMode,
    ) -> Result<Vec<LayerPackages>, PackagesError> {
        let steps = plan_steps(project, variant, arch, lock, mode)?;
        if steps.iter().all(|s| s.keep.is_some()) {
            return Ok(steps.into_iter().map(LockStep::kept).collect());
        }
        let spec = repo_spec(&variant.debian, arch).expect("suite is set");
        let loaded = self.load(&spec, lock).await?;
        // Packages of the layers below, as the resolver of the next layer must see them.
        let mut installed: Vec<InstalledPackage> = Vec::new();
        let mut out = Vec::new();
        for s in steps {
            let locked = match s.keep {
                Some(keep) => {
                    installed.extend(reinstall_kept(&loaded.index, &keep, arch)?);
                    keep
                }
                None => {
                    let entry =
                        resolve_step(project, variant, arch, &loaded.index, &s, &installed)?;
                    installed.extend(entry.1);
                    lock.layers.insert(s.key.clone(), entry.0.clone());
                    entry.0
                }
            };
            out.push(LayerPackages {
                position: s.position,
                layer: s.layer,
                locked,
            });
        }
        Ok(out)
    }

    /// Base URLs for the suites of a variant: from a loaded repository, else from mirror discovery.
    pub fn suite_bases(
        &self,
        settings: &DebianSettings,
        arch: &str,
    ) -> Result<BTreeMap<String, String>, PackagesError> {
        let Some(spec) = repo_spec(settings, arch) else {
            return Ok(BTreeMap::new());
        };
        if let Some(l) = self
            .loaded
            .values()
            .find(|l| l.index.arch() == arch && l.bases.contains_key(&spec.suite))
        {
            return Ok(l.bases.clone());
        }
        let host = sources::read_apt_sources(&self.ctx.apt_dir).unwrap_or_default();
        let mirrors = sources::discover(&spec.mirror, &self.ctx.env, &host, &self.ctx.apt_dir)?;
        let archive = mirrors
            .archive
            .first()
            .map(|c| c.url.clone())
            .unwrap_or_default();
        let security = mirrors
            .security
            .first()
            .map(|c| c.url.clone())
            .unwrap_or_default();
        let mut out = BTreeMap::new();
        out.insert(spec.suite.clone(), archive.clone());
        out.insert(format!("{}-updates", spec.suite), archive);
        out.insert(format!("{}-security", spec.suite), security);
        Ok(out)
    }

    /// Download (or find in the cache) every .deb of `packages`; paths are in the same order.
    pub async fn fetch_debs(
        &self,
        packages: &[LockedPackage],
        bases: &BTreeMap<String, String>,
        progress: &dyn FetchProgress,
    ) -> Result<Vec<PathBuf>, PackagesError> {
        let items = packages
            .iter()
            .map(|p| FetchItem {
                url: repo::deb_url(
                    bases.get(&p.suite).map(String::as_str).unwrap_or_default(),
                    &p.path,
                ),
                sha256: p.sha256,
                size: Some(p.size),
                label: format!("{}_{}_{}", p.name, p.version, p.architecture),
            })
            .collect();
        self.fetcher
            .fetch_all(items, progress)
            .await
            .map_err(|e| match e {
                // The mirror moved on: say which locked package is gone and what to do.
                FetchError::Status {
                    ref url,
                    status: 404,
                } => match packages.iter().find(|p| url.ends_with(&p.path)) {
                    Some(p) => PackagesError::Gone {
                        name: p.name.clone(),
                        version: p.version.clone(),
                        arch: p.architecture.clone(),
                    },
                    None => e.into(),
                },
                e => e.into(),
            })
    }
}

/// What `hakim lock` did for one variant and arch.
#[derive(Clone, Debug, Serialize)]
pub struct LockedVariant {
    /// Variant key.
    pub variant: String,
    /// Architecture.
    pub arch: String,
    /// Per package layer: name and package count.
    pub layers: Vec<(String, usize)>,
}

/// Lock the selected variants and write `hakim.lock`; with `update`, re-resolve everything.
pub async fn lock_project(
    project: &Project,
    variants: &[&Variant],
    fetcher: &Fetcher,
    update: bool,
) -> Result<Vec<LockedVariant>, LockProjectError> {
    let path = project.root.join(crate::debian::lock::LOCK_FILE);
    let mut lock = LockFile::read(&path)?.unwrap_or_else(|| LockFile {
        lock_version: crate::debian::lock::LOCK_VERSION,
        ..Default::default()
    });
    let mut resolver = Resolver::new(fetcher);
    let mode = if update {
        LockMode::Update
    } else {
        LockMode::Refresh
    };
    let mut report = Vec::new();
    let mut used = std::collections::BTreeSet::new();
    for v in variants {
        for arch in &v.archs {
            let layers = resolver
                .lock_variant(project, v, arch, &mut lock, mode)
                .await?;
            for l in &layers {
                used.insert(chain_key(&v.layers[..=l.position], arch));
            }
            report.push(LockedVariant {
                variant: v.key.clone(),
                arch: arch.clone(),
                layers: layers
                    .iter()
                    .map(|l| (l.layer.clone(), l.locked.packages.len()))
                    .collect(),
            });
        }
    }
    // Locking every variant is the moment to forget entries nothing uses any more.
    if variants.len() == project.variants().count() {
        lock.layers.retain(|k, _| used.contains(k));
    }
    lock.write(&path)?;
    Ok(report)
}

/// Errors of `hakim lock`.
#[derive(Debug, thiserror::Error)]
pub enum LockProjectError {
    /// Resolution failed.
    #[error(transparent)]
    Packages(#[from] PackagesError),
    /// The lock file failed.
    #[error(transparent)]
    Lock(#[from] crate::debian::lock::LockError),
}

/// The deb822 apt sources a bootstrapped image ships, so `apt-get update` works in a workspace.
pub fn image_apt_sources(
    settings: &DebianSettings,
    bases: &BTreeMap<String, String>,
) -> Option<String> {
    let suite = settings.suite.as_deref()?;
    let components = settings
        .components
        .clone()
        .unwrap_or_else(|| vec!["main".into()])
        .join(" ");
    let archive = settings
        .image_mirror
        .clone()
        .or_else(|| bases.get(suite).cloned())?;
    let mut suites = vec![suite.to_string()];
    if settings.updates.unwrap_or(true) {
        suites.push(format!("{suite}-updates"));
    }
    let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
    let mut text = format!(
        "Types: deb\nURIs: {archive}\nSuites: {}\nComponents: {components}\nSigned-By: {keyring}\n",
        suites.join(" ")
    );
    let security = settings
        .image_security_mirror
        .clone()
        .or_else(|| bases.get(&format!("{suite}-security")).cloned())
        .filter(|s| !s.is_empty());
    if settings.security.unwrap_or(true)
        && let Some(sec) = security
    {
        text.push_str(&format!("\nTypes: deb\nURIs: {sec}\nSuites: {suite}-security\nComponents: {components}\nSigned-By: {keyring}\n"));
    }
    Some(text)
}

/// One package layer of a variant on its way into the lock.
struct LockStep {
    position: usize,
    layer: String,
    /// The lock key: the layer chain up to this layer, and the arch.
    key: String,
    /// Hash of everything resolution depends on.
    request: Sha256Digest,
    /// The lowest package layer, which bootstraps the Essential set.
    bootstrap: bool,
    /// The lock entry that still matches, if any.
    keep: Option<LockedLayer>,
}

impl LockStep {
    fn kept(self) -> LayerPackages {
        LayerPackages {
            position: self.position,
            layer: self.layer,
            locked: self.keep.expect("kept"),
        }
    }
}

/// First pass: each package layer's request hash, and whether its lock entry can be kept.
fn plan_steps(
    project: &Project,
    variant: &Variant,
    arch: &str,
    lock: &LockFile,
    mode: LockMode,
) -> Result<Vec<LockStep>, PackagesError> {
    let mut steps = Vec::new();
    let mut lower: Option<Sha256Digest> = None;
    for (position, name) in variant.layers.iter().enumerate() {
        let layer = project.layer(name);
        if layer.spec.packages.is_empty() {
            continue;
        }
        let request = request_hash(variant, layer, arch, lower)?;
        let key = chain_key(&variant.layers[..=position], arch);
        let keep = keep_entry(lock.layers.get(&key), request, mode, variant, name, arch)?;
        steps.push(LockStep {
            position,
            layer: name.clone(),
            key,
            request,
            bootstrap: lower.is_none(),
            keep,
        });
        lower = Some(request);
    }
    Ok(steps)
}

/// Hash of a package layer's resolution inputs, chained to the layer below (`lower`).
fn request_hash(
    variant: &Variant,
    layer: &crate::spec::Layer,
    arch: &str,
    lower: Option<Sha256Digest>,
) -> Result<Sha256Digest, PackagesError> {
    let Some(suite) = variant.debian.suite.as_deref() else {
        return Err(PackagesError::NoSuite {
            variant: variant.key.clone(),
            layer: layer.name.clone(),
            file: variant.file.clone(),
        });
    };
    let spec = repo_spec(&variant.debian, arch).expect("suite is set");
    let mut packages: Vec<&str> = layer
        .spec
        .packages
        .iter()
        .map(|p| p.value.as_str())
        .collect();
    packages.sort_unstable();
    packages.dedup();
    let key = RequestKey {
        suite,
        components: &spec.components,
        updates: spec.updates,
        security: spec.security,
        snapshot: spec.mirror.snapshot.as_deref(),
        arch,
        packages,
        recommends: layer.spec.recommends,
        bootstrap: lower.is_none(),
        lower,
    };
    Ok(Sha256Digest::of(
        &serde_json::to_vec(&key).expect("request serializes"),
    ))
}

/// The existing lock entry if `mode` lets it stand for `request`; an error if the mode forbids
/// re-resolving; `None` when the layer must be resolved again.
fn keep_entry(
    existing: Option<&LockedLayer>,
    request: Sha256Digest,
    mode: LockMode,
    variant: &Variant,
    layer: &str,
    arch: &str,
) -> Result<Option<LockedLayer>, PackagesError> {
    match (existing, mode) {
        (Some(e), LockMode::Frozen | LockMode::Refresh | LockMode::Offline)
            if e.request == request =>
        {
            Ok(Some(e.clone()))
        }
        (Some(_), LockMode::Frozen | LockMode::Offline) => Err(PackagesError::Mismatch {
            variant: variant.key.clone(),
            layer: layer.into(),
            arch: arch.into(),
        }),
        (None, LockMode::Offline) => Err(PackagesError::OfflineMissing {
            variant: variant.key.clone(),
            layer: layer.into(),
            arch: arch.into(),
        }),
        _ => Ok(None),
    }
}

/// The index entries of a kept layer's packages; fails if one left the repository.
fn reinstall_kept(
    index: &PackageIndex,
    keep: &LockedLayer,
    arch: &str,
) -> Result<Vec<InstalledPackage>, PackagesError> {
    keep.packages
        .iter()
        .map(|p| {
            index
                .versions(&p.name)
                .find(|c| c.version.as_str() == p.version && c.architecture == p.architecture)
                .map(InstalledPackage::from)
                .ok_or_else(|| PackagesError::Gone {
                    name: p.name.clone(),
                    version: p.version.clone(),
                    arch: arch.into(),
                })
        })
        .collect()
}

/// Resolve one layer over the packages `installed` below it: its lock entry and what it adds.
fn resolve_step(
    project: &Project,
    variant: &Variant,
    arch: &str,
    index: &PackageIndex,
    step: &LockStep,
    installed: &[InstalledPackage],
) -> Result<(LockedLayer, Vec<InstalledPackage>), PackagesError> {
    let layer = project.layer(&step.layer);
    let resolve_err = |source| PackagesError::Resolve {
        variant: variant.key.clone(),
        layer: step.layer.clone(),
        arch: arch.into(),
        source: Box::new(source),
    };
    let request = Request {
        arch: arch.to_string(),
        packages: layer
            .spec
            .packages
            .iter()
            .map(|p| p.value.clone())
            .collect(),
        installed: installed.to_vec(),
        essential_base: step.bootstrap,
        recommends: layer.spec.recommends,
    };
    let res = resolve(index, &request).map_err(resolve_err)?;
    let phase1 = if step.bootstrap {
        essential_set(index, arch).map_err(resolve_err)?
    } else {
        BTreeSet::new()
    };
    let added = res
        .packages
        .iter()
        .map(|r| InstalledPackage::from(&r.package))
        .collect();
    let packages = res
        .packages
        .iter()
        .map(|r| {
            let p = &r.package;
            LockedPackage {
                name: p.name.clone(),
                version: p.version.as_str().to_string(),
                architecture: p.architecture.clone(),
                suite: p.origin.split('/').next().unwrap_or_default().to_string(),
                path: p.filename.clone(),
                size: p.size,
                sha256: p.sha256,
                essential: phase1.contains(&p.name),
            }
        })
        .collect();
    let entry = LockedLayer {
        request: step.request,
        bootstrap: step.bootstrap,
        packages,
    };
    Ok((entry, added))
}

/// What mmdebstrap extracts first: the Essential set and its dependencies.
fn essential_set(index: &PackageIndex, arch: &str) -> Result<BTreeSet<String>, ResolveError> {
    let names: BTreeSet<String> = index
        .packages()
        .iter()
        .filter(|p| p.essential && (p.architecture == arch || p.architecture == "all"))
        .map(|p| p.name.clone())
        .collect();
    let req = Request {
        arch: arch.to_string(),
        packages: names.into_iter().collect(),
        ..Request::default()
    };
    let res = resolve(index, &req)?;
    Ok(res
        .packages
        .iter()
        .map(|r| r.package.name.clone())
        .collect())
}
