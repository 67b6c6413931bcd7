//! `hakim lock`: resolve Debian packages and write the lock file.

use anyhow::Result;
use clap::Args;
use hakim::debian::lock::LOCK_FILE;
use hakim::debian::packages;
use hakim::fetch::{FetchOptions, Fetcher};
use hakim::layer::store::LayerStore;

use super::{Paths, exit::Status, print_json};

/// Arguments of `hakim lock`.
#[derive(Args)]
pub struct LockArgs {
    /// Variants to lock.
    pub variants: Vec<String>,
    /// Re-resolve every entry against the current repository.
    #[arg(long)]
    pub update: bool,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// Lock the selected variants and print each one's package counts per layer.
pub async fn run(paths: &Paths, args: LockArgs) -> Result<Status> {
    let project = paths.load()?;
    let selected = project.select(&args.variants)?;
    let store = LayerStore::open(&paths.cache)?;
    let options = FetchOptions {
        net: paths.net(std::sync::Arc::new(super::progress::RetryLines)),
        ..FetchOptions::default()
    };
    let fetcher = Fetcher::new(store.cas().clone(), options)?;
    let report = packages::lock_project(&project, &selected, &fetcher, args.update).await?;
    if args.json {
        print_json(&report)?;
        return Ok(Status::SUCCESS);
    }
    for r in &report {
        let layers: Vec<String> = r.layers.iter().map(|(l, n)| format!("{l}: {n}")).collect();
        let summary = if layers.is_empty() {
            "no package layers".into()
        } else {
            layers.join(", ")
        };
        println!("{}/{}: {summary}", r.variant, r.arch);
    }
    eprintln!("wrote {}", project.root.join(LOCK_FILE).display());
    Ok(Status::SUCCESS)
}
