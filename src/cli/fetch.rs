//! `hakim fetch`: download every locked `.deb` of the variants into the cache.

use anyhow::Result;
use clap::Args;
use hakim::session::{Session, SessionOptions};

use super::{
    Paths,
    exit::Status,
    progress::{Reporter, size},
    source_date_epoch,
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
    let reporter = std::sync::Arc::new(Reporter::new(false));
    let mut session = Session::open(
        &project,
        SessionOptions::for_build(
            &paths.cache,
            source_date_epoch()?,
            args.offline,
            paths.net(reporter.clone()),
        ),
    )?;
    let mut total = 0;
    for v in &selected {
        total += session.fetch_variant_debs(&project, v, &*reporter).await?;
    }
    reporter.finish();
    let stats = session.fetcher().stats();
    println!(
        "{total} packages in the cache; {} requests, {} downloaded",
        stats.requests,
        size(stats.bytes)
    );
    Ok(Status::SUCCESS)
}
