//! One pipeline session: the layer store, the fetcher, the package resolver and the lock file
//! with its mode, owned in one place. It answers "the plan for this variant on this arch";
//! build, inspect, fetch and push ask it instead of assembling the stages themselves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::debian::lock::{LOCK_FILE, LOCK_VERSION, LockError, LockFile, LockedLayer};
use crate::debian::packages::{self, LockMode, PackagesError, Resolver};
use crate::digest::Sha256Digest;
use crate::fetch::{FetchError, FetchOptions, FetchProgress, Fetcher};
use crate::layer::store::{LayerRecord, LayerStore, StoreError};
use crate::layer::{self, LayerError};
use crate::net::NetOptions;
use crate::oci::LayoutError;
use crate::spec::{Project, Variant};

/// Errors of the pipeline stages a session drives.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A layer failed.
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// The layer cache failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The output layout failed.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Fetching an input failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// Resolving or locking packages failed.
    #[error(transparent)]
    Packages(Box<PackagesError>),
    /// The lock file failed.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A tag template could not be expanded.
    #[error("variant `{variant}`: tag `{tag}`: {message}")]
    Tag {
        variant: String,
        tag: String,
        message: String,
    },
    /// Building a package or run layer failed.
    #[error(transparent)]
    Install(#[from] crate::layer::install::InstallError),
    /// Unpacking a lower layer failed.
    #[error(transparent)]
    Rootfs(#[from] crate::rootfs::RootfsError),
}

impl From<PackagesError> for PipelineError {
    fn from(e: PackagesError) -> Self {
        Self::Packages(Box::new(e))
    }
}

/// How a session treats the network, the cache and the lock file.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Cache directory (layer cache, blobs, downloads).
    pub cache_dir: PathBuf,
    /// SOURCE_DATE_EPOCH, part of every layer key.
    pub epoch: u64,
    /// Make no network requests.
    pub offline: bool,
    /// How existing lock entries are treated.
    pub lock_mode: LockMode,
    /// Retries, timeouts and where retries are reported.
    pub net: NetOptions,
}

impl SessionOptions {
    /// What a build uses: the lock as it is (frozen), or the lock and cache only when offline.
    pub fn for_build(cache_dir: &Path, epoch: u64, offline: bool, net: NetOptions) -> Self {
        Self {
            cache_dir: cache_dir.to_path_buf(),
            epoch,
            offline,
            net,
            lock_mode: if offline {
                LockMode::Offline
            } else {
                LockMode::Frozen
            },
        }
    }
}

/// One layer as planned: its key and, when cached, its record.
#[derive(Clone, Debug)]
pub struct PlannedLayer {
    /// Layer name.
    pub name: String,
    /// Cache key.
    pub key: Sha256Digest,
    /// The cached result, if any.
    pub cached: Option<LayerRecord>,
    /// Locked Debian packages, for package layers.
    pub packages: Option<LockedLayer>,
}

/// The plan for one variant on one architecture.
#[derive(Clone, Debug)]
pub struct ArchPlan {
    /// Debian architecture.
    pub arch: String,
    /// Layers, bottom first.
    pub layers: Vec<PlannedLayer>,
    /// Base URL of each Debian suite the variant uses.
    pub bases: BTreeMap<String, String>,
    /// The apt sources a bootstrapped image ships.
    pub apt_sources: Option<String>,
}

/// The pipeline's shared state for one command.
pub struct Session {
    opts: SessionOptions,
    store: LayerStore,
    fetcher: Arc<Fetcher>,
    resolver: Resolver,
    lock_path: PathBuf,
    original_lock: Option<LockFile>,
    lock: LockFile,
    local_inputs: layer::LocalInputsMemo,
}

impl Session {
    /// Open the cache and read the project's lock file.
    pub fn open(project: &Project, opts: SessionOptions) -> Result<Self, PipelineError> {
        let store = LayerStore::open(&opts.cache_dir)?;
        let fetcher = Arc::new(Fetcher::new(
            store.cas().clone(),
            FetchOptions {
                offline: opts.offline,
                net: opts.net.clone(),
                ..FetchOptions::default()
            },
        )?);
        let lock_path = project.root.join(LOCK_FILE);
        let original_lock = LockFile::read(&lock_path)?;
        let lock = original_lock.clone().unwrap_or_else(|| LockFile {
            lock_version: LOCK_VERSION,
            ..Default::default()
        });
        let local_inputs = layer::LocalInputsMemo::in_cache(&opts.cache_dir);
        Ok(Self {
            resolver: Resolver::new(fetcher.clone()),
            opts,
            store,
            fetcher,
            lock_path,
            original_lock,
            lock,
            local_inputs,
        })
    }

    /// The layer cache.
    pub fn store(&self) -> &LayerStore {
        &self.store
    }

    /// The downloader (with its network counters).
    pub fn fetcher(&self) -> &Arc<Fetcher> {
        &self.fetcher
    }

    /// The options the session was opened with.
    pub fn options(&self) -> &SessionOptions {
        &self.opts
    }

    /// Lock (or read from the lock) the package layers of `v` on `arch`, by layer position.
    pub async fn lock_layers(
        &mut self,
        project: &Project,
        v: &Variant,
        arch: &str,
    ) -> Result<BTreeMap<usize, LockedLayer>, PipelineError> {
        let layers = self
            .resolver
            .lock_variant(project, v, arch, &mut self.lock, self.opts.lock_mode)
            .await?;
        Ok(layers.into_iter().map(|l| (l.position, l.locked)).collect())
    }

    /// The plan for `v` on `arch` given its locked package layers: layer keys and cache state.
    pub fn plan_locked(
        &self,
        project: &Project,
        v: &Variant,
        arch: &str,
        locked: &BTreeMap<usize, LockedLayer>,
    ) -> Result<ArchPlan, PipelineError> {
        let bases = self.resolver.suite_bases(&v.debian, arch)?;
        let apt_sources = packages::image_apt_sources(&v.debian, &bases);
        let layers = self.layer_keys(project, v, arch, locked, apt_sources.as_deref())?;
        Ok(ArchPlan {
            arch: arch.to_string(),
            layers,
            bases,
            apt_sources,
        })
    }

    /// The plan for `v` on `arch`: lock its packages, then key its layers.
    pub async fn plan(
        &mut self,
        project: &Project,
        v: &Variant,
        arch: &str,
    ) -> Result<ArchPlan, PipelineError> {
        let locked = self.lock_layers(project, v, arch).await?;
        self.plan_locked(project, v, arch, &locked)
    }

    /// Download (or find in the cache) the .debs of one planned layer, in lock order.
    pub async fn fetch_debs(
        &self,
        plan: &ArchPlan,
        layer: &PlannedLayer,
        progress: &dyn FetchProgress,
    ) -> Result<Vec<PathBuf>, PipelineError> {
        match &layer.packages {
            Some(entry) => Ok(self
                .resolver
                .fetch_debs(&entry.packages, &plan.bases, progress)
                .await?),
            None => Ok(Vec::new()),
        }
    }

    /// Make every locked .deb of `v` present in the cache; returns how many there are.
    pub async fn fetch_variant_debs(
        &mut self,
        project: &Project,
        v: &Variant,
        progress: &dyn FetchProgress,
    ) -> Result<usize, PipelineError> {
        let mut total = 0;
        for arch in &v.archs {
            let plan = self.plan(project, v, arch).await?;
            for l in &plan.layers {
                total += self.fetch_debs(&plan, l, progress).await?.len();
            }
        }
        Ok(total)
    }

    /// Fetch the archives a layer unpacks.
    pub async fn fetch_archives(
        &self,
        l: &crate::spec::Layer,
        arch: &str,
        progress: &dyn FetchProgress,
    ) -> Result<Vec<PathBuf>, PipelineError> {
        let items = layer::archive_sources(l, arch)?
            .into_iter()
            .map(|(url, sha256)| crate::fetch::FetchItem {
                label: url.clone(),
                url,
                sha256,
                size: None,
            })
            .collect();
        Ok(self.fetcher.fetch_all(items, progress).await?)
    }

    /// Write the lock file if resolving changed it; returns whether it was written.
    pub fn save_lock(&self) -> Result<bool, PipelineError> {
        if self.original_lock.as_ref() == Some(&self.lock) || self.lock.layers.is_empty() {
            return Ok(false);
        }
        self.lock.write(&self.lock_path)?;
        Ok(true)
    }

    /// Compute the keys of a variant's layers for one arch and look them up in the cache.
    ///
    /// `locked` maps a layer's position to its locked packages, which are part of its key.
    fn layer_keys(
        &self,
        project: &Project,
        variant: &Variant,
        arch: &str,
        locked: &BTreeMap<usize, LockedLayer>,
        apt_sources: Option<&str>,
    ) -> Result<Vec<PlannedLayer>, PipelineError> {
        let mut parent: Option<Sha256Digest> = None;
        let mut out = Vec::new();
        for (i, name) in variant.layers.iter().enumerate() {
            let l = project.layer(name);
            let extra = match locked.get(&i) {
                Some(entry) => serde_json::json!({
                    "bootstrap": entry.bootstrap,
                    "apt_sources": if entry.bootstrap { apt_sources } else { None },
                    "packages": entry.packages.iter().map(|p| (&p.name, &p.version, &p.architecture, p.sha256)).collect::<Vec<_>>(),
                }),
                None => serde_json::Value::Null,
            };
            let key = layer::layer_key(
                l,
                arch,
                variant.compression,
                self.opts.epoch,
                parent.as_ref(),
                &extra,
                &self.local_inputs,
            )?;
            out.push(PlannedLayer {
                name: name.clone(),
                key,
                cached: self.store.get(&key),
                packages: locked.get(&i).cloned(),
            });
            parent = Some(key);
        }
        Ok(out)
    }
}
