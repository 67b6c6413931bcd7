//! `hakim cache verify|prune`: check the layer cache, and reclaim its space.

use std::path::Path;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::{exit::Status, print_json, progress::size};

/// Arguments of `hakim cache`.
#[derive(Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Re-hash every blob and layer; remove bad entries (the next build rebuilds them).
    Verify {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove what interrupted runs left; with --keep-storage, also the least recently
    /// used entries until the cache fits (like `docker builder prune --keep-storage`).
    Prune {
        /// Size budget, e.g. 10GB or 500M.
        #[arg(long, value_name = "SIZE")]
        keep_storage: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Run `hakim cache <action>` on the cache directory.
pub fn run(cache: &Path, args: CacheArgs) -> Result<Status> {
    match args.action {
        Action::Verify { json } => {
            let r = hakim::layer::integrity::verify_cache(cache)?;
            if json {
                print_json(&r)?;
            } else {
                for bad in &r.removed {
                    println!("removed {}: {}", bad.path.display(), bad.reason);
                }
                println!(
                    "checked {} layers and {} blobs in {}; {} bad entries removed",
                    r.layers,
                    r.blobs,
                    cache.display(),
                    r.removed.len()
                );
            }
        }
        Action::Prune { keep_storage, json } => {
            let keep = keep_storage
                .as_deref()
                .map(hakim::prune::parse_size)
                .transpose()?;
            let r = hakim::prune::prune(cache, keep)?;
            if json {
                print_json(&r)?;
            } else {
                println!(
                    "removed {} leftovers of interrupted runs ({} mounts) and {} cache entries; freed {}, {} remain",
                    r.leftovers,
                    r.unmounted,
                    r.entries,
                    size(r.freed),
                    size(r.remaining)
                );
            }
        }
    }
    Ok(Status::SUCCESS)
}
