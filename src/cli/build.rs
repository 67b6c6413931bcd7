//! `hakim build`: build variants into the output layout.

use std::sync::Arc;

use anyhow::Result;
use clap::Args;
use hakim::build::{self, BuildOptions, BuildReport, CacheWriteState};
use hakim::publish::{PushOptions, cache::RegistryCache};
use hakim::spec::Variant;

use super::{Paths, exit::Status, print_json, progress::Reporter, source_date_epoch};

/// Arguments of `hakim build`.
#[derive(Args)]
pub struct BuildArgs {
    /// Variants to build.
    pub variants: Vec<String>,
    /// Build every variant (the same as naming none).
    #[arg(long, conflicts_with = "variants")]
    pub all: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Make no network requests (use the lock file and the cache).
    #[arg(long)]
    pub offline: bool,
    /// Value for `{version}` in tags and the version annotation.
    #[arg(long = "image-version")]
    pub version: Option<String>,
    /// Build only this architecture (a CI matrix job); the image is its bare manifest.
    #[arg(long)]
    pub arch: Option<String>,
    #[command(flatten)]
    pub cache: CacheRefs,
}

/// `--cache-from` / `--cache-to`: a layer cache in a registry, shared by jobs on other machines.
#[derive(Args, Clone, Debug, Default)]
pub struct CacheRefs {
    /// Registry repository to take missing layers from, e.g. ghcr.io/owner/hakim-cache;
    /// repeatable, tried in order. An unusable entry is rebuilt, never trusted.
    #[arg(long = "cache-from", value_name = "REPOSITORY")]
    pub from: Vec<String>,
    /// Registry repository to write every layer of the build to (a failed write only warns).
    #[arg(long = "cache-to", value_name = "REPOSITORY")]
    pub to: Option<String>,
    /// Speak plain HTTP to a non-loopback cache registry (loopback always uses HTTP).
    #[arg(long = "cache-plain-http", id = "cache_plain_http")]
    pub plain_http: bool,
}

impl CacheRefs {
    /// The registry cache these flags name, if any; credentials as `hakim push` finds them.
    pub fn open(&self, paths: &Paths) -> Result<Option<Arc<RegistryCache>>> {
        if self.from.is_empty() && self.to.is_none() {
            return Ok(None);
        }
        let mut opts = PushOptions::from_env();
        opts.plain_http = self.plain_http;
        opts.net = paths.net(Arc::new(super::progress::RetryLines));
        // A cache only saves time: one that keeps failing is given up on early, and the
        // layers built here instead.
        opts.net.retry.max_attempts = CACHE_ATTEMPTS;
        opts.locations_dir = Some(super::push::locations_dir(&paths.cache));
        let cache = RegistryCache::new(opts, &self.from, self.to.as_deref())?;
        Ok(Some(Arc::new(cache)))
    }
}

/// Attempts per registry cache request (a push makes six).
const CACHE_ATTEMPTS: u32 = 3;

/// What to build, for `build` and the commands that build before they work.
#[derive(Default)]
pub struct BuildRequest<'a> {
    /// Variant keys (all when empty).
    pub variants: &'a [String],
    /// No progress on stderr (e.g. `--json`).
    pub quiet: bool,
    /// Make no network requests.
    pub offline: bool,
    /// `{version}` for tags and the version annotation.
    pub version: Option<String>,
    /// Only this architecture.
    pub arch: Option<&'a str>,
    /// The registry layer cache.
    pub cache: CacheRefs,
}

/// Build, then print each variant's digest and refs (or the JSON report).
pub async fn run(paths: &Paths, args: BuildArgs) -> Result<Status> {
    let started = std::time::Instant::now();
    let report = build_variants(
        paths,
        &BuildRequest {
            variants: &args.variants,
            quiet: args.json,
            offline: args.offline,
            version: args.version,
            arch: args.arch.as_deref(),
            cache: args.cache,
        },
    )
    .await?;
    if args.json {
        print_json(&report)?;
    } else {
        for v in &report.variants {
            println!("{} {}", v.digest, v.refs.join(" "));
        }
        print_cache_writes(&report);
        eprintln!(
            "built {} variant(s) into {} in {:.2?}",
            report.variants.len(),
            report.layout.display(),
            started.elapsed()
        );
    }
    Ok(Status::SUCCESS)
}

/// One summary line of the registry cache writes (failures are warned about as they happen).
pub fn print_cache_writes(report: &BuildReport) {
    let writes = &report.cache_to;
    if writes.is_empty() {
        return;
    }
    let count = |s: CacheWriteState| writes.iter().filter(|w| w.state == s).count();
    let bytes: u64 = writes.iter().map(|w| w.bytes_uploaded).sum();
    eprintln!(
        "registry cache: {} layer(s) written ({}), {} already there, {} failed",
        count(CacheWriteState::Pushed),
        super::progress::size(bytes),
        count(CacheWriteState::Present),
        count(CacheWriteState::Failed)
    );
}

/// Build what `req` names, with progress on stderr unless it is quiet.
pub async fn build_variants(paths: &Paths, req: &BuildRequest<'_>) -> Result<BuildReport> {
    let project = paths.load()?;
    let mut selected: Vec<Variant> = project.select(req.variants)?.into_iter().cloned().collect();
    if let Some(arch) = req.arch {
        for v in &mut selected {
            anyhow::ensure!(
                v.archs.iter().any(|a| a == arch),
                "variant {} is not built for {arch} (its archs: {})",
                v.key,
                v.archs.join(", ")
            );
            v.archs = vec![arch.to_string()];
        }
    }
    let selected: Vec<&Variant> = selected.iter().collect();
    let reporter = Arc::new(Reporter::new(req.quiet));
    let opts = BuildOptions {
        cache_dir: paths.cache.clone(),
        layout_dir: paths.layout(),
        epoch: source_date_epoch()?,
        version: req.version.clone(),
        offline: req.offline,
        net: paths.net(reporter.clone()),
        remote_cache: req.cache.open(paths)?,
    };
    let report = build::build(&project, &selected, &opts, &*reporter).await;
    reporter.finish();
    Ok(report?)
}
