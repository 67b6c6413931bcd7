//! `hakim fetch`: download every locked `.deb` of the variants into the cache.

use anyhow::Result;
use clap::Args;
use hakim::debian::lock::{LOCK_FILE, LockFile};
use hakim::debian::packages::{LockMode, Resolver};
use hakim::fetch::{FetchOptions, Fetcher};
use hakim::layer::store::LayerStore;

use super::{
    Paths,
    exit::Status,
    progress::{Reporter, size},
};

/// Arguments of `hakim fetch`.
#[derive(Args)]
pub struct FetchArgs {
    /// Variants to fetch for.
    pub variants: Vec<String>,
    /// Make no network requests (checks the cache is complete).
    #[arg(long)]
    pub offline: bool,
}

/// Fetch the locked packages of every selected variant and arch.
pub async fn run(paths: &Paths, args: FetchArgs) -> Result<Status> {
    let project = paths.load()?;
    let selected = project.select(&args.variants)?;
    let store = LayerStore::open(&paths.cache)?;
    let reporter = std::sync::Arc::new(Reporter::new(false));
    let fetcher = Fetcher::new(
        store.cas().clone(),
        FetchOptions {
            offline: args.offline,
            net: paths.net(reporter.clone()),
            ..FetchOptions::default()
        },
    )?;
    let mut resolver = Resolver::new(&fetcher);
    let mut lock = LockFile::read(&project.root.join(LOCK_FILE))?.unwrap_or_default();
    let mode = if args.offline {
        LockMode::Offline
    } else {
        LockMode::Frozen
    };
    let mut total = 0;
    for v in &selected {
        for arch in &v.archs {
            let layers = resolver
                .lock_variant(&project, v, arch, &mut lock, mode)
                .await?;
            let bases = resolver.suite_bases(&v.debian, arch)?;
            for l in layers {
                total += resolver
                    .fetch_debs(&l.locked.packages, &bases, &*reporter)
                    .await?
                    .len();
            }
        }
    }
    reporter.finish();
    let stats = fetcher.stats();
    println!(
        "{total} packages in the cache; {} requests, {} downloaded",
        stats.requests,
        size(stats.bytes)
    );
    Ok(Status::SUCCESS)
}
