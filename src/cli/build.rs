//! `hakim build`: build variants into the output layout.

use anyhow::Result;
use clap::Args;
use hakim::build::{self, BuildOptions, BuildReport};

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
}

/// Build, then print each variant's digest and refs (or the JSON report).
pub async fn run(paths: &Paths, args: BuildArgs) -> Result<Status> {
    let started = std::time::Instant::now();
    let report =
        build_variants(paths, &args.variants, args.json, args.offline, args.version).await?;
    if args.json {
        print_json(&report)?;
    } else {
        for v in &report.variants {
            println!("{} {}", v.digest, v.refs.join(" "));
        }
        eprintln!(
            "built {} variant(s) into {} in {:.2?}",
            report.variants.len(),
            report.layout.display(),
            started.elapsed()
        );
    }
    Ok(Status::SUCCESS)
}

/// Build the named variants (all when none) with progress on stderr unless `quiet`.
pub async fn build_variants(
    paths: &Paths,
    variants: &[String],
    quiet: bool,
    offline: bool,
    version: Option<String>,
) -> Result<BuildReport> {
    let project = paths.load()?;
    let selected = project.select(variants)?;
    let reporter = std::sync::Arc::new(Reporter::new(quiet));
    let opts = BuildOptions {
        cache_dir: paths.cache.clone(),
        layout_dir: paths.layout(),
        epoch: source_date_epoch()?,
        version,
        offline,
        net: paths.net(reporter.clone()),
    };
    let report = build::build(&project, &selected, &opts, &*reporter).await;
    reporter.finish();
    Ok(report?)
}
