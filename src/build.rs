//! The build pipeline: plan layer keys, fetch inputs, assemble missing layers, write the layout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::debian::lock::{LOCK_FILE, LockError, LockFile, LockedLayer};
use crate::debian::packages::{LockMode, PackagesError, Resolver};
use crate::digest::Sha256Digest;
use crate::fetch::{FetchError, FetchOptions, FetchProgress, Fetcher};
use crate::layer::entry::Entry;
use crate::layer::store::{LayerRecord, LayerStore, LowerView, StoreError};
use crate::layer::{self, LayerError, PureInputs, tarball};
use crate::oci::{
    self, ImageLayer, Layout, LayoutError,
    model::{Descriptor, REF_NAME},
};
use crate::spec::{Project, Variant};

/// Errors from a build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
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

impl From<PackagesError> for BuildError {
    fn from(e: PackagesError) -> Self {
        Self::Packages(Box::new(e))
    }
}

/// Settings of one build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Cache directory (layer cache, blobs, downloads).
    pub cache_dir: PathBuf,
    /// The OCI layout to write.
    pub layout_dir: PathBuf,
    /// SOURCE_DATE_EPOCH: clamps mtimes and dates the image.
    pub epoch: u64,
    /// Value for `{version}` tags and the version annotation.
    pub version: Option<String>,
    /// Make no network requests.
    pub offline: bool,
    /// Retries, stall timeout and retry reporting of downloads.
    pub net: crate::net::NetOptions,
}

/// Git facts recorded in annotations and tag templates.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GitInfo {
    /// Full commit id.
    pub revision: Option<String>,
    /// `remote.origin.url`, made browsable where it is an SSH form.
    pub source: Option<String>,
}

impl GitInfo {
    /// Ask git about the project directory; absent facts stay `None`.
    pub fn discover(dir: &Path) -> Self {
        let git = |args: &[&str]| -> Option<String> {
            let out = Command::new("git")
                .arg("-C")
                .arg(dir)
                .args(args)
                .output()
                .ok()?;
            let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
            (out.status.success() && !s.is_empty()).then_some(s)
        };
        let source = git(&["config", "--get", "remote.origin.url"]).map(|u| {
            match u.strip_prefix("git@").and_then(|r| r.split_once(':')) {
                Some((host, path)) => format!("https://{host}/{}", path.trim_end_matches(".git")),
                None => u.trim_end_matches(".git").to_string(),
            }
        });
        Self {
            revision: git(&["rev-parse", "HEAD"]),
            source,
        }
    }
}

/// The values tag templates are expanded with.
pub fn tag_vars(git: &GitInfo, epoch: u64, version: Option<&str>) -> crate::publish::TagVars {
    crate::publish::TagVars {
        git_sha: git.revision.clone(),
        source_date_epoch: Some(epoch as i64),
        version: version.map(String::from),
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

/// Compute the keys of a variant's layers for one arch and look them up in the cache.
///
/// `locked` maps a layer's position to its locked packages, which are part of its key.
pub fn plan(
    project: &Project,
    variant: &Variant,
    arch: &str,
    store: &LayerStore,
    epoch: u64,
    locked: &BTreeMap<usize, LockedLayer>,
    apt_sources: Option<&str>,
) -> Result<Vec<PlannedLayer>, BuildError> {
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
        let key = layer::layer_key(l, arch, variant.compression, epoch, parent.as_ref(), &extra)?;
        out.push(PlannedLayer {
            name: name.clone(),
            key,
            cached: store.get(&key),
            packages: locked.get(&i).cloned(),
        });
        parent = Some(key);
    }
    Ok(out)
}

/// What happened to one layer.
#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    /// Layer name.
    pub name: String,
    /// Cache key.
    pub key: Sha256Digest,
    /// Compressed blob digest.
    pub digest: Sha256Digest,
    /// Uncompressed digest.
    pub diff_id: Sha256Digest,
    /// Compressed size.
    pub size: u64,
    /// Whether it came from the cache.
    pub cached: bool,
}

/// One architecture of a built variant.
#[derive(Clone, Debug, Serialize)]
pub struct ArchReport {
    /// Debian architecture.
    pub arch: String,
    /// Manifest digest.
    pub manifest: Sha256Digest,
    /// Config digest.
    pub config: Sha256Digest,
    /// Layers, bottom first.
    pub layers: Vec<LayerReport>,
}

/// One built variant.
#[derive(Clone, Debug, Serialize)]
pub struct VariantReport {
    /// Variant key.
    pub variant: String,
    /// Image name.
    pub name: String,
    /// `name:tag` refs written to the layout.
    pub refs: Vec<String>,
    /// What the refs point at (an image index when multi-arch).
    pub digest: Sha256Digest,
    /// Media type of that document.
    pub media_type: String,
    /// Per architecture.
    pub archs: Vec<ArchReport>,
}

/// The result of `hakim build`.
#[derive(Clone, Debug, Serialize)]
pub struct BuildReport {
    /// The layout written.
    pub layout: PathBuf,
    /// Variants built.
    pub variants: Vec<VariantReport>,
}

/// Progress events for renderers.
pub trait Progress: Send + Sync + FetchProgress {
    /// A layer is about to be assembled (not called for cache hits).
    fn layer_started(&self, variant: &str, arch: &str, layer: &str);
    /// A layer is ready.
    fn layer_finished(&self, variant: &str, arch: &str, report: &LayerReport);
}

/// A progress sink that ignores everything.
pub struct Quiet;

impl FetchProgress for Quiet {
    fn begin(&self, _: usize, _: u64) {}
    fn advance(&self, _: u64) {}
    fn item_done(&self, _: &str, _: bool) {}
}

impl Progress for Quiet {
    fn layer_started(&self, _: &str, _: &str, _: &str) {}
    fn layer_finished(&self, _: &str, _: &str, _: &LayerReport) {}
}

/// Build variants into the layout; the layout's `index.json` changes only if everything succeeded.
pub async fn build(
    project: &Project,
    variants: &[&Variant],
    opts: &BuildOptions,
    progress: &dyn Progress,
) -> Result<BuildReport, BuildError> {
    let git = GitInfo::discover(&project.root);
    // Expand every tag first, so a bad template fails before any work.
    let mut tags_of = BTreeMap::new();
    for v in variants {
        let tags = v
            .tags
            .iter()
            .map(|t| {
                crate::publish::expand_tag(t, &tag_vars(&git, opts.epoch, opts.version.as_deref()))
                    .map_err(|e| BuildError::Tag {
                        variant: v.key.clone(),
                        tag: t.clone(),
                        message: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        tags_of.insert(v.key.clone(), tags);
    }
    let store = LayerStore::open(&opts.cache_dir)?;
    let fetcher = Fetcher::new(
        store.cas().clone(),
        FetchOptions {
            offline: opts.offline,
            net: opts.net.clone(),
            ..FetchOptions::default()
        },
    )?;
    let mut resolver = Resolver::new(&fetcher);
    let lock_path = project.root.join(LOCK_FILE);
    let original_lock = LockFile::read(&lock_path)?;
    let mut lock = original_lock.clone().unwrap_or_else(|| LockFile {
        lock_version: crate::debian::lock::LOCK_VERSION,
        ..Default::default()
    });
    let mode = if opts.offline {
        LockMode::Offline
    } else {
        LockMode::Frozen
    };
    // Resolve (or read from the lock) every package layer before building anything.
    let mut locked_of: BTreeMap<(String, String), BTreeMap<usize, LockedLayer>> = BTreeMap::new();
    for v in variants {
        for arch in &v.archs {
            let layers = resolver
                .lock_variant(project, v, arch, &mut lock, mode)
                .await?;
            locked_of.insert(
                (v.key.clone(), arch.clone()),
                layers.into_iter().map(|l| (l.position, l.locked)).collect(),
            );
        }
    }
    let ctx = BuildCtx {
        project,
        store: &store,
        fetcher: &fetcher,
        resolver: &resolver,
        opts,
        progress,
    };
    let layout = Layout::open_or_create(&opts.layout_dir)?;
    let mut reports = Vec::new();
    let mut refs: Vec<(String, Vec<Descriptor>)> = Vec::new();
    for v in variants {
        let mut arch_reports = Vec::new();
        let mut manifests = Vec::new();
        let tags = &tags_of[&v.key];
        let annotations = standard_annotations(v, &git, opts, tags);
        let mut labels = annotations.clone();
        labels.insert(
            oci::devcontainer::LABEL.into(),
            oci::devcontainer::label(&v.config),
        );
        labels.extend(v.config.labels.clone());
        let mut annotations = annotations;
        annotations.extend(v.config.annotations.clone());
        for arch in &v.archs {
            let mut layers =
                build_arch(&ctx, v, arch, &locked_of[&(v.key.clone(), arch.clone())]).await?;
            layers.extend(env_file_layer(&store, v, opts.epoch)?);
            let image_layers: Vec<ImageLayer> = layers
                .iter()
                .map(|(r, rec)| ImageLayer {
                    blob: rec.blob.clone(),
                    name: r.name.clone(),
                    comment: match project.layers().find(|l| l.name == r.name) {
                        Some(l) => l.spec.description.clone(),
                        None => v
                            .config
                            .env_file
                            .as_ref()
                            .map(|p| format!("config.env as {p}")),
                    },
                })
                .collect();
            for il in &image_layers {
                layout.put_blob_file(&store.cas().path(&il.blob.digest), &il.blob.digest)?;
            }
            let written = oci::write_manifest(
                &layout,
                arch,
                &image_layers,
                &v.config,
                &labels,
                &annotations,
                opts.epoch,
            )?;
            arch_reports.push(ArchReport {
                arch: arch.clone(),
                manifest: written.descriptor.digest,
                config: written.config.expect("manifests have configs"),
                layers: layers.into_iter().map(|(r, _)| r).collect(),
            });
            manifests.push(written.descriptor);
        }
        let top = if manifests.len() == 1 {
            let mut d = manifests.pop().expect("one manifest");
            d.platform = None;
            d
        } else {
            oci::write_index(&layout, manifests, &annotations)?.descriptor
        };
        let descriptors = tags
            .iter()
            .map(|t| {
                let mut d = top.clone();
                d.annotations
                    .insert(REF_NAME.into(), format!("{}:{t}", v.name));
                d
            })
            .collect();
        refs.push((v.name.clone(), descriptors));
        reports.push(VariantReport {
            variant: v.key.clone(),
            name: v.name.clone(),
            refs: tags.iter().map(|t| format!("{}:{t}", v.name)).collect(),
            digest: top.digest,
            media_type: top.media_type.clone(),
            archs: arch_reports,
        });
    }
    if original_lock.as_ref() != Some(&lock) && !lock.layers.is_empty() {
        lock.write(&lock_path)?;
    }
    for (name, descriptors) in refs {
        layout.set_refs(&name, descriptors)?;
    }
    Ok(BuildReport {
        layout: opts.layout_dir.clone(),
        variants: reports,
    })
}

fn standard_annotations(
    v: &Variant,
    git: &GitInfo,
    opts: &BuildOptions,
    tags: &[String],
) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert("org.opencontainers.image.title".to_string(), v.name.clone());
    a.insert(
        "org.opencontainers.image.created".to_string(),
        oci::rfc3339(opts.epoch),
    );
    if let Some(d) = &v.description {
        a.insert(
            "org.opencontainers.image.description".to_string(),
            d.clone(),
        );
    }
    if let Some(s) = &git.source {
        a.insert("org.opencontainers.image.source".to_string(), s.clone());
    }
    if let Some(r) = &git.revision {
        a.insert("org.opencontainers.image.revision".to_string(), r.clone());
    }
    if let Some(version) = opts.version.clone().or_else(|| tags.first().cloned()) {
        a.insert("org.opencontainers.image.version".to_string(), version);
    }
    a
}

struct BuildCtx<'a> {
    project: &'a Project,
    store: &'a LayerStore,
    fetcher: &'a Fetcher,
    resolver: &'a Resolver<'a>,
    opts: &'a BuildOptions,
    progress: &'a dyn Progress,
}

async fn build_arch(
    ctx: &BuildCtx<'_>,
    v: &Variant,
    arch: &str,
    locked: &BTreeMap<usize, LockedLayer>,
) -> Result<Vec<(LayerReport, LayerRecord)>, BuildError> {
    let (project, store, opts, progress) = (ctx.project, ctx.store, ctx.opts, ctx.progress);
    let bases = ctx.resolver.suite_bases(&v.debian, arch)?;
    let apt_sources = crate::debian::packages::image_apt_sources(&v.debian, &bases);
    let planned = plan(
        project,
        v,
        arch,
        store,
        opts.epoch,
        locked,
        apt_sources.as_deref(),
    )?;
    let mut done: Vec<(Sha256Digest, LayerRecord)> = Vec::new();
    let mut out = Vec::new();
    for p in planned {
        let (record, cached) = match p.cached {
            Some(rec) => (rec, true),
            None => {
                progress.layer_started(&v.key, arch, &p.name);
                let l = project.layer(&p.name);
                let archives = fetch_archives(ctx.fetcher, l, arch, progress).await?;
                let rec = if l.needs_rootfs() {
                    let debs = match &p.packages {
                        Some(entry) => {
                            let bases = ctx.resolver.suite_bases(&v.debian, arch)?;
                            ctx.resolver
                                .fetch_debs(&entry.packages, &bases, progress)
                                .await?
                        }
                        None => Vec::new(),
                    };
                    let sources = p
                        .packages
                        .as_ref()
                        .filter(|e| e.bootstrap)
                        .and(apt_sources.as_deref());
                    tokio::task::block_in_place(|| {
                        build_rootfs_layer(ctx, v, arch, &p, &done, &debs, &archives, sources)
                    })?
                } else {
                    let lower = LowerView::new(store, &done)?;
                    let tree = layer::assemble_pure(
                        l,
                        &PureInputs {
                            arch,
                            epoch: opts.epoch,
                            archives: &archives,
                            lower: &lower,
                        },
                    )?;
                    let entries: Vec<&Entry> = tree.entries().collect();
                    seal(store, &p, &entries, opts.epoch, v.compression)?
                };
                (rec, false)
            }
        };
        let report = LayerReport {
            name: p.name.clone(),
            key: p.key,
            digest: record.blob.digest,
            diff_id: record.blob.diff_id,
            size: record.blob.size,
            cached,
        };
        progress.layer_finished(&v.key, arch, &report);
        done.push((p.key, record.clone()));
        out.push((report, record));
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn build_rootfs_layer(
    ctx: &BuildCtx<'_>,
    v: &Variant,
    arch: &str,
    p: &PlannedLayer,
    done: &[(Sha256Digest, LayerRecord)],
    debs: &[PathBuf],
    archives: &[PathBuf],
    apt_sources: Option<&str>,
) -> Result<LayerRecord, BuildError> {
    let rootfs_cache = crate::rootfs::RootfsCache::new(&ctx.opts.cache_dir);
    let lowers = done
        .iter()
        .map(|(_, rec)| {
            rootfs_cache.ensure(
                &ctx.store.cas().path(&rec.blob.digest),
                &rec.blob.media_type,
                &rec.blob.diff_id,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let built = crate::layer::install::build(&crate::layer::install::RootfsLayer {
        layer: ctx.project.layer(&p.name),
        arch,
        epoch: ctx.opts.epoch,
        lowers,
        packages: p.packages.as_ref(),
        debs,
        archives,
        apt_sources,
        scratch: &ctx.opts.cache_dir.join("tmp"),
    })?;
    let entries: Vec<&Entry> = built.entries.iter().collect();
    let rec = seal(ctx.store, p, &entries, ctx.opts.epoch, v.compression)?;
    // The upper dir already is this layer unpacked; keep it for the layers above.
    let dest = rootfs_cache.path(&rec.blob.diff_id);
    if !dest.exists() {
        let _ = std::fs::create_dir_all(dest.parent().expect("cache path has a parent"));
        let _ = std::fs::rename(&built.upper, &dest);
    }
    Ok(rec)
}

/// Report name of the generated env-file layer (not a `layers/` directory).
const ENV_FILE_LAYER: &str = "config.env_file";

/// The top layer holding `config.env_file`, when the variant has one. Tiny and derived from
/// the config alone, so it is written every build (same bytes, same blob).
fn env_file_layer(
    store: &LayerStore,
    v: &Variant,
    epoch: u64,
) -> Result<Option<(LayerReport, LayerRecord)>, BuildError> {
    let Some(path) = &v.config.env_file else {
        return Ok(None);
    };
    let entries = oci::env_file::layer_entries(path, &v.config.env);
    let blob = tarball::write_layer(entries.iter(), epoch, v.compression, store.cas()).map_err(
        |source| LayerError::Tar {
            layer: path.clone(),
            source,
        },
    )?;
    let report = LayerReport {
        name: ENV_FILE_LAYER.into(),
        key: blob.diff_id,
        digest: blob.digest,
        diff_id: blob.diff_id,
        size: blob.size,
        cached: false,
    };
    let rec = LayerRecord {
        blob,
        entries: entries.len(),
    };
    Ok(Some((report, rec)))
}

/// Write a layer's entries as a compressed blob and remember it in the layer cache.
fn seal(
    store: &LayerStore,
    p: &PlannedLayer,
    entries: &[&Entry],
    epoch: u64,
    compression: crate::spec::Compression,
) -> Result<LayerRecord, BuildError> {
    let blob = tarball::write_layer(entries.iter().copied(), epoch, compression, store.cas())
        .map_err(|source| LayerError::Tar {
            layer: p.name.clone(),
            source,
        })?;
    let rec = LayerRecord {
        blob,
        entries: entries.len(),
    };
    store.put(&p.key, &rec, &tarball::meta_index(entries.iter().copied()))?;
    Ok(rec)
}

async fn fetch_archives(
    fetcher: &Fetcher,
    l: &crate::spec::Layer,
    arch: &str,
    progress: &dyn FetchProgress,
) -> Result<Vec<PathBuf>, BuildError> {
    let items = layer::archive_sources(l, arch)?
        .into_iter()
        .map(|(url, sha256)| crate::fetch::FetchItem {
            label: url.clone(),
            url,
            sha256,
            size: None,
        })
        .collect();
    Ok(fetcher.fetch_all(items, progress).await?)
}
