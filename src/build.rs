//! The build pipeline, as a list of steps: expand tags, plan (lock + key) every variant and
//! arch, assemble missing layers, write each image into the layout, save the lock, and only
//! then point the refs at the new images.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use serde::Serialize;

use crate::digest::Sha256Digest;
use crate::fetch::FetchProgress;
use crate::git::{GitInfo, TagVars};
use crate::layer::entry::Entry;
use crate::layer::store::{LayerRecord, LayerStore, LowerView};
use crate::layer::{self, LayerError, PureInputs, tarball};
use crate::oci::{self, ImageLayer, Layout, model::Descriptor, model::REF_NAME};
use crate::publish::cache::{RegistryCache, Written};
use crate::session::{ArchPlan, Session, SessionOptions};
use crate::spec::{Project, Variant};

pub use crate::session::{PipelineError as BuildError, PlannedLayer};

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
    /// A registry layer cache to take missing layers from and give built ones to.
    pub remote_cache: Option<Arc<RegistryCache>>,
}

impl BuildOptions {
    /// The session a build of these options runs in.
    pub fn session(&self) -> SessionOptions {
        SessionOptions::for_build(&self.cache_dir, self.epoch, self.offline, self.net.clone())
    }
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
    /// Whether it came from a cache (local or remote) rather than being built.
    pub cached: bool,
    /// Where it came from.
    pub source: LayerSource,
}

/// Where a layer of a build came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerSource {
    /// Built by this run.
    Built,
    /// The local layer cache.
    Local,
    /// A `--cache-from` registry cache.
    Remote,
}

/// The outcome of one `--cache-to` write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheWriteState {
    /// The registry already had the entry.
    Present,
    /// The entry was written.
    Pushed,
    /// The write failed (a warning; the build stands).
    Failed,
}

/// What writing one layer to the `--cache-to` registry did.
#[derive(Clone, Debug, Serialize)]
pub struct CacheWrite {
    /// Layer name.
    pub layer: String,
    /// Cache key (the entry's tag is `layer-<hex>`).
    pub key: Sha256Digest,
    /// What happened.
    pub state: CacheWriteState,
    /// Bytes uploaded (blobs already there or mounted cost none).
    pub bytes_uploaded: u64,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
    /// Layers written to the `--cache-to` registry (empty without one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cache_to: Vec<CacheWrite>,
    /// Problems that did not fail the build (an unusable cache entry, a cache write refused).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Progress events for renderers.
pub trait Progress: Send + Sync + FetchProgress {
    /// A layer is about to be assembled (not called for cache hits).
    fn layer_started(&self, variant: &str, arch: &str, layer: &str);
    /// A layer is ready.
    fn layer_finished(&self, variant: &str, arch: &str, report: &LayerReport);
    /// Something went wrong that the build works around (e.g. an unusable cache entry).
    fn warning(&self, _message: &str) {}
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
    let mut session = Session::open(project, opts.session())?;
    build_in(&mut session, project, variants, opts, progress).await
}

/// [`build`] in an open session.
pub async fn build_in(
    session: &mut Session,
    project: &Project,
    variants: &[&Variant],
    opts: &BuildOptions,
    progress: &dyn Progress,
) -> Result<BuildReport, BuildError> {
    let git = GitInfo::discover(&project.root);
    let tags = expand_tags(
        variants,
        &TagVars::new(&git, opts.epoch, opts.version.as_deref()),
    )?;
    let plans = plan_all(session, project, variants).await?;
    let layout = Layout::open_or_create(&opts.layout_dir)?;
    let ctx = BuildCtx {
        project,
        session,
        opts,
        progress,
        layout: &layout,
        produced: Mutex::default(),
        warnings: Mutex::default(),
    };
    let mut reports = Vec::new();
    let mut refs = Vec::new();
    for (v, tags) in variants.iter().zip(&tags) {
        let (report, descriptors) = build_variant(&ctx, v, &plans, tags, &git).await?;
        reports.push(report);
        refs.extend(descriptors);
    }
    session.save_lock()?;
    layout.set_refs(refs)?;
    let cache_to = export_layers(&ctx).await;
    Ok(BuildReport {
        layout: opts.layout_dir.clone(),
        variants: reports,
        cache_to,
        warnings: ctx.warnings.into_inner().unwrap(),
    })
}

/// Expand every tag first, so a bad template fails before any work.
fn expand_tags(variants: &[&Variant], vars: &TagVars) -> Result<Vec<Vec<String>>, BuildError> {
    variants
        .iter()
        .map(|v| {
            v.tags
                .iter()
                .map(|t| {
                    crate::git::expand_tag(t, vars).map_err(|e| BuildError::Tag {
                        variant: v.key.clone(),
                        tag: t.clone(),
                        message: e.to_string(),
                    })
                })
                .collect()
        })
        .collect()
}

type Plans = BTreeMap<(String, String), ArchPlan>;

/// Resolve (or read from the lock) and key every layer of every variant and arch before
/// building anything, so a resolution error costs no build time.
async fn plan_all(
    session: &mut Session,
    project: &Project,
    variants: &[&Variant],
) -> Result<Plans, BuildError> {
    let mut plans = BTreeMap::new();
    for v in variants {
        for arch in &v.archs {
            let plan = session.plan(project, v, arch).await?;
            plans.insert((v.key.clone(), arch.clone()), plan);
        }
    }
    Ok(plans)
}

/// Build every arch of one variant into the layout; returns its report and the ref
/// descriptors to publish once everything has succeeded.
async fn build_variant(
    ctx: &BuildCtx<'_>,
    v: &Variant,
    plans: &Plans,
    tags: &[String],
    git: &GitInfo,
) -> Result<(VariantReport, Vec<Descriptor>), BuildError> {
    let annotations = standard_annotations(v, git, ctx.opts, tags);
    let mut labels = annotations.clone();
    labels.insert(
        oci::devcontainer::LABEL.into(),
        oci::devcontainer::label(&v.config),
    );
    labels.extend(v.config.labels.clone());
    let mut annotations = annotations;
    annotations.extend(v.config.annotations.clone());
    let mut arch_reports = Vec::new();
    let mut manifests = Vec::new();
    for arch in &v.archs {
        let plan = &plans[&(v.key.clone(), arch.clone())];
        let mut layers = assemble_layers(ctx, v, plan).await?;
        layers.extend(env_file_layer(ctx.session.store(), v, ctx.opts.epoch)?);
        let (report, descriptor) = write_image(ctx, v, arch, layers, &labels, &annotations)?;
        arch_reports.push(report);
        manifests.push(descriptor);
    }
    let top = if manifests.len() == 1 {
        let mut d = manifests.pop().expect("one manifest");
        d.set_platform(None);
        d
    } else {
        oci::write_index(ctx.layout, manifests, &annotations)?.descriptor
    };
    let refs: Vec<String> = tags.iter().map(|t| format!("{}:{t}", v.name)).collect();
    let descriptors = refs
        .iter()
        .map(|r| {
            let mut d = top.clone();
            let mut a = d.annotations().clone().unwrap_or_default();
            a.insert(REF_NAME.into(), r.clone());
            d.set_annotations(Some(a));
            d
        })
        .collect();
    let report = VariantReport {
        variant: v.key.clone(),
        name: v.name.clone(),
        refs,
        digest: oci::model::sha256(&top).expect("hakim writes sha256 digests"),
        media_type: top.media_type().to_string(),
        archs: arch_reports,
    };
    Ok((report, descriptors))
}

/// Put one arch's layer blobs into the layout and write its config and manifest.
fn write_image(
    ctx: &BuildCtx<'_>,
    v: &Variant,
    arch: &str,
    layers: Vec<(LayerReport, LayerRecord)>,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Result<(ArchReport, Descriptor), BuildError> {
    let image_layers: Vec<ImageLayer> = layers
        .iter()
        .map(|(r, rec)| ImageLayer {
            blob: rec.blob.clone(),
            name: r.name.clone(),
            comment: match ctx.project.layers().find(|l| l.name == r.name) {
                Some(l) => l.spec.description.clone(),
                None => v
                    .config
                    .env_file
                    .as_ref()
                    .map(|p| format!("config.env as {p}")),
            },
        })
        .collect();
    let cas = ctx.session.store().cas();
    for il in &image_layers {
        ctx.layout
            .put_blob_file(&cas.path(&il.blob.digest), &il.blob.digest)?;
    }
    let written = oci::write_manifest(
        ctx.layout,
        arch,
        &image_layers,
        &v.config,
        labels,
        annotations,
        ctx.opts.epoch,
    )?;
    let report = ArchReport {
        arch: arch.to_string(),
        manifest: oci::model::sha256(&written.descriptor).expect("hakim writes sha256 digests"),
        config: written.config.expect("manifests have configs"),
        layers: layers.into_iter().map(|(r, _)| r).collect(),
    };
    Ok((report, written.descriptor))
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
    session: &'a Session,
    opts: &'a BuildOptions,
    progress: &'a dyn Progress,
    layout: &'a Layout,
    /// Every keyed layer of this build, in order, once each: what `--cache-to` gets.
    produced: Mutex<Vec<(String, Sha256Digest, LayerRecord)>>,
    warnings: Mutex<Vec<String>>,
}

impl BuildCtx<'_> {
    fn warn(&self, message: String) {
        self.progress.warning(&message);
        self.warnings.lock().unwrap().push(message);
    }
}

/// Take each planned layer from a cache or build it, bottom first.
async fn assemble_layers(
    ctx: &BuildCtx<'_>,
    v: &Variant,
    plan: &ArchPlan,
) -> Result<Vec<(LayerReport, LayerRecord)>, BuildError> {
    let arch = plan.arch.as_str();
    let mut done: Vec<(Sha256Digest, LayerRecord)> = Vec::new();
    let mut out = Vec::new();
    for p in &plan.layers {
        let (record, source) = obtain_layer(ctx, v, plan, p, &done).await?;
        let report = LayerReport {
            name: p.name.clone(),
            key: p.key,
            digest: record.blob.digest,
            diff_id: record.blob.diff_id,
            size: record.blob.size,
            cached: source != LayerSource::Built,
            source,
        };
        ctx.progress.layer_finished(&v.key, arch, &report);
        {
            let mut produced = ctx.produced.lock().unwrap();
            if !produced.iter().any(|(_, k, _)| *k == p.key) {
                produced.push((p.name.clone(), p.key, record.clone()));
            }
        }
        done.push((p.key, record.clone()));
        out.push((report, record));
    }
    Ok(out)
}

/// One layer from the local cache, else a `--cache-from` registry, else built here.
async fn obtain_layer(
    ctx: &BuildCtx<'_>,
    v: &Variant,
    plan: &ArchPlan,
    p: &PlannedLayer,
    done: &[(Sha256Digest, LayerRecord)],
) -> Result<(LayerRecord, LayerSource), BuildError> {
    let store = ctx.session.store();
    // The plan predates this build: a variant built earlier in it may have made the layer.
    if let Some(rec) = p.cached.clone().or_else(|| store.get(&p.key)) {
        return Ok((rec, LayerSource::Local));
    }
    if let Some(remote) = ctx.opts.remote_cache.as_ref().filter(|r| r.reads()) {
        let lookup = remote.pull(&p.key, store).await;
        for problem in lookup.problems {
            ctx.warn(format!(
                "layer {} ({}/{}): registry cache not used, building it: {problem}",
                p.name, v.key, plan.arch
            ));
        }
        if let Some(record) = lookup.hit {
            return Ok((record, LayerSource::Remote));
        }
    }
    ctx.progress.layer_started(&v.key, &plan.arch, &p.name);
    Ok((
        assemble_layer(ctx, v, plan, p, done).await?,
        LayerSource::Built,
    ))
}

/// Cache entries written at once.
const PARALLEL_CACHE_WRITES: usize = 3;

/// Give every keyed layer of the build to the `--cache-to` registry. A failure is a warning:
/// the images are built and the next run can write the entry.
async fn export_layers(ctx: &BuildCtx<'_>) -> Vec<CacheWrite> {
    let Some(remote) = ctx.opts.remote_cache.as_ref().filter(|r| r.writes()) else {
        return Vec::new();
    };
    let produced = std::mem::take(&mut *ctx.produced.lock().unwrap());
    let store = ctx.session.store();
    let writes: Vec<CacheWrite> =
        futures::stream::iter(produced.into_iter().map(|(layer, key, rec)| async move {
            let written = remote.push(&key, &layer, store, &rec).await;
            let (state, bytes_uploaded, error) = match written {
                Ok(Written::Present) => (CacheWriteState::Present, 0, None),
                Ok(Written::Pushed(n)) => (CacheWriteState::Pushed, n, None),
                Err(e) => (CacheWriteState::Failed, 0, Some(e.to_string())),
            };
            CacheWrite {
                layer,
                key,
                state,
                bytes_uploaded,
                error,
            }
        }))
        .buffered(PARALLEL_CACHE_WRITES)
        .collect()
        .await;
    for w in &writes {
        if let Some(e) = &w.error {
            ctx.warn(format!(
                "layer {}: not written to the registry cache: {e}",
                w.layer
            ));
        }
    }
    writes
}

/// Build one layer that is not cached: fetch its inputs, then assemble it purely from its
/// spec, or in a rootfs of the layers below when it installs packages or runs steps.
async fn assemble_layer(
    ctx: &BuildCtx<'_>,
    v: &Variant,
    plan: &ArchPlan,
    p: &PlannedLayer,
    done: &[(Sha256Digest, LayerRecord)],
) -> Result<LayerRecord, BuildError> {
    let (arch, store) = (plan.arch.as_str(), ctx.session.store());
    let l = ctx.project.layer(&p.name);
    let archives = ctx.session.fetch_archives(l, arch, ctx.progress).await?;
    if l.needs_rootfs() {
        let debs = ctx.session.fetch_debs(plan, p, ctx.progress).await?;
        let sources = p
            .packages
            .as_ref()
            .filter(|e| e.bootstrap)
            .and(plan.apt_sources.as_deref());
        let inputs = RootfsInputs {
            debs: &debs,
            archives: &archives,
            apt_sources: sources,
        };
        return tokio::task::block_in_place(|| build_rootfs_layer(ctx, v, arch, p, done, &inputs));
    }
    let lower = LowerView::new(store, done)?;
    let tree = layer::assemble_pure(
        l,
        &PureInputs {
            arch,
            epoch: ctx.opts.epoch,
            archives: &archives,
            lower: &lower,
        },
    )?;
    let entries: Vec<&Entry> = tree.entries().collect();
    seal(store, p, &entries, ctx.opts.epoch, v.compression)
}

/// What a rootfs layer installs besides its spec.
struct RootfsInputs<'a> {
    debs: &'a [PathBuf],
    archives: &'a [PathBuf],
    apt_sources: Option<&'a str>,
}

fn build_rootfs_layer(
    ctx: &BuildCtx<'_>,
    v: &Variant,
    arch: &str,
    p: &PlannedLayer,
    done: &[(Sha256Digest, LayerRecord)],
    inputs: &RootfsInputs<'_>,
) -> Result<LayerRecord, BuildError> {
    let store = ctx.session.store();
    let rootfs_cache = crate::rootfs::RootfsCache::new(&ctx.opts.cache_dir);
    let lowers = done
        .iter()
        .map(|(_, rec)| {
            rootfs_cache.ensure(
                &store.cas().path(&rec.blob.digest),
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
        debs: inputs.debs,
        archives: inputs.archives,
        apt_sources: inputs.apt_sources,
        scratch: &ctx.opts.cache_dir.join("tmp"),
    })?;
    let entries: Vec<&Entry> = built.entries.iter().collect();
    let rec = seal(store, p, &entries, ctx.opts.epoch, v.compression)?;
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
        source: LayerSource::Built,
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
