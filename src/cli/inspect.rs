//! `hakim inspect`: a variant's layers (keys, digests, sizes, cache state) and resolved config.

use std::collections::BTreeMap;

use anyhow::Result;
use clap::Args;
use hakim::build::{self, PlannedLayer};
use hakim::debian::lock::{LOCK_FILE, LockFile};
use hakim::debian::packages::{self, LockMode, Resolver};
use hakim::fetch::{FetchOptions, Fetcher};
use hakim::layer::store::LayerStore;
use hakim::spec::Variant;

use super::{Paths, exit::Status, print_json, progress::size, source_date_epoch};

/// Arguments of `hakim inspect`.
#[derive(Args)]
pub struct InspectArgs {
    /// The variant.
    pub variant: String,
    /// Architecture (default: the variant's first).
    #[arg(long)]
    pub arch: Option<String>,
    /// Also list each layer's Debian packages (from the lock, resolving when needed).
    #[arg(long)]
    pub packages: bool,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// Plan the variant's layers and render them.
pub async fn run(paths: &Paths, args: InspectArgs) -> Result<Status> {
    let project = paths.load()?;
    let v = project.variant(&args.variant)?;
    let arch = args.arch.clone().unwrap_or_else(|| v.archs[0].clone());
    let store = LayerStore::open(&paths.cache)?;
    let mut lock = LockFile::read(&project.root.join(LOCK_FILE))?.unwrap_or_default();
    let fetcher = Fetcher::new(
        store.cas().clone(),
        FetchOptions {
            offline: !args.packages,
            net: paths.net(std::sync::Arc::new(super::progress::RetryLines)),
            ..FetchOptions::default()
        },
    )?;
    let mut resolver = Resolver::new(&fetcher);
    let mode = if args.packages {
        LockMode::Refresh
    } else {
        LockMode::Offline
    };
    // Without --packages a missing lock entry only means packages are not shown.
    let locked: BTreeMap<usize, _> = match resolver
        .lock_variant(&project, v, &arch, &mut lock, mode)
        .await
    {
        Ok(layers) => layers.into_iter().map(|l| (l.position, l.locked)).collect(),
        Err(e) if !args.packages => {
            eprintln!("note: {e}");
            BTreeMap::new()
        }
        Err(e) => return Err(e.into()),
    };
    let bases = resolver.suite_bases(&v.debian, &arch)?;
    let apt_sources = packages::image_apt_sources(&v.debian, &bases);
    let planned = build::plan(
        &project,
        v,
        &arch,
        &store,
        source_date_epoch()?,
        &locked,
        apt_sources.as_deref(),
    )?;
    if args.json {
        print_json(&inspect_json(v, &arch, &planned))?;
    } else {
        render(v, &arch, &planned, args.packages)?;
    }
    Ok(Status::SUCCESS)
}

fn inspect_json(v: &Variant, arch: &str, planned: &[PlannedLayer]) -> serde_json::Value {
    let layers: Vec<_> = planned
        .iter()
        .map(|p| {
            serde_json::json!({
                "name": p.name,
                "key": p.key,
                "cached": p.cached.is_some(),
                "digest": p.cached.as_ref().map(|c| c.blob.digest),
                "diff_id": p.cached.as_ref().map(|c| c.blob.diff_id),
                "size": p.cached.as_ref().map(|c| c.blob.size),
                "media_type": p.cached.as_ref().map(|c| c.blob.media_type.clone()),
                "packages": p.packages.as_ref().map(|l| &l.packages),
            })
        })
        .collect();
    serde_json::json!({
        "variant": v.key, "name": v.name, "arch": arch, "archs": v.archs,
        "compression": v.compression, "tags": v.tags, "layers": layers, "config": v.config,
    })
}

fn render(v: &Variant, arch: &str, planned: &[PlannedLayer], packages: bool) -> Result<()> {
    println!("{} ({}) arch {arch}", v.name, v.key);
    for p in planned {
        match &p.cached {
            Some(c) => println!(
                "  {:<14} {} {:>10}  cached",
                p.name,
                c.blob.digest,
                size(c.blob.size)
            ),
            None => println!("  {:<14} {:<71} {:>10}  not built", p.name, "-", "-"),
        }
        if packages && let Some(l) = &p.packages {
            for pkg in &l.packages {
                println!(
                    "      {:<40} {:<32} {}",
                    pkg.name, pkg.version, pkg.architecture
                );
            }
        }
    }
    println!("config: {}", serde_json::to_string(&v.config)?);
    Ok(())
}
