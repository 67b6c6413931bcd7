//! The `hakim` command line: parse, call the library, render.

mod cli;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use hakim::build::{self, BuildOptions};
use hakim::layer::store::LayerStore;
use hakim::rootfs::{self, MountedImage, RootfsCache, check, image};

use cli::{Paths, print_json, progress::{Reporter, size}};

#[derive(Parser)]
#[command(name = "hakim", version, about = "Build, test and publish Hakim workspace images")]
struct Cli {
    /// Project directory (default: nearest parent holding `variants/`).
    #[arg(long, global = true, env = "HAKIM_PROJECT")]
    project: Option<PathBuf>,
    /// Cache directory (default: $XDG_CACHE_HOME/hakim).
    #[arg(long, global = true, env = "HAKIM_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Output directory (default: <project>/out).
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and check every variant and layer.
    Validate,
    /// Build variants (all when none is named) into <out>/oci.
    Build {
        /// Variants to build.
        variants: Vec<String>,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Make no network requests (use the lock file and the cache).
        #[arg(long)]
        offline: bool,
        /// Value for `{version}` in tags and the version annotation.
        #[arg(long = "image-version")]
        version: Option<String>,
    },
    /// Show a variant's layers (digests, sizes, cache state) and resolved config.
    Inspect {
        /// The variant.
        variant: String,
        /// Architecture (default: the variant's first).
        #[arg(long)]
        arch: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Run a command in a built variant's image (bubblewrap sandbox; needs root).
    Run {
        /// The variant.
        variant: String,
        /// Architecture (default: this machine's, when the variant has it).
        #[arg(long)]
        arch: Option<String>,
        /// Tag to run (default: the variant's first tag found in the layout).
        #[arg(long)]
        tag: Option<String>,
        /// Share the host network.
        #[arg(long)]
        network: bool,
        /// User to run as (default: the image's).
        #[arg(long)]
        user: Option<String>,
        /// Command (default: the image's entrypoint and cmd).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Run variants' `tests:` in their built images (all variants when none is named).
    Test {
        /// Variants to test.
        variants: Vec<String>,
        /// Architecture (default: this machine's, when the variant has it).
        #[arg(long)]
        arch: Option<String>,
        /// Print the results as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Seconds before a test is killed.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("error: {}", render_error(&e));
        std::process::exit(1);
    }
}

/// The error and its causes, skipping causes whose text the message already carries.
fn render_error(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

async fn run() -> Result<()> {
    let cli = Cli::parse();
    let paths = Paths::resolve(cli.project, cli.cache_dir, cli.out)?;
    match cli.command {
        Command::Validate => {
            let project = paths.load()?;
            let n = project.variants().count();
            let m = project.layers().count();
            println!("ok: {n} variants, {m} layers in {}", paths.project.display());
        }
        Command::Build { variants, json, offline, version } => {
            let project = paths.load()?;
            let selected = project.select(&variants)?;
            let opts = BuildOptions {
                cache_dir: paths.cache.clone(),
                layout_dir: paths.out.join("oci"),
                epoch: cli::source_date_epoch()?,
                version,
                offline,
            };
            let reporter = Reporter::new(json);
            let started = std::time::Instant::now();
            let report = build::build(&project, &selected, &opts, &reporter).await;
            reporter.finish();
            let report = report?;
            if json {
                print_json(&report)?;
            } else {
                for v in &report.variants {
                    println!("{} {}", v.digest, v.refs.join(" "));
                }
                eprintln!("built {} variant(s) into {} in {:.2?}", report.variants.len(), report.layout.display(), started.elapsed());
            }
        }
        Command::Inspect { variant, arch, json } => {
            let project = paths.load()?;
            let v = project.variant(&variant)?;
            let arch = arch.unwrap_or_else(|| v.archs[0].clone());
            let store = LayerStore::open(&paths.cache)?;
            let planned = build::plan(&project, v, &arch, &store, cli::source_date_epoch()?)?;
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
                    })
                })
                .collect();
            if json {
                print_json(&serde_json::json!({
                    "variant": v.key, "name": v.name, "arch": arch, "archs": v.archs,
                    "compression": v.compression, "tags": v.tags, "layers": layers, "config": v.config,
                }))?;
            } else {
                println!("{} ({}) arch {arch}", v.name, v.key);
                for p in &planned {
                    match &p.cached {
                        Some(c) => println!("  {:<14} {} {:>10}  cached", p.name, c.blob.digest, size(c.blob.size)),
                        None => println!("  {:<14} {:<71} {:>10}  not built", p.name, "-", "-"),
                    }
                }
                println!("config: {}", serde_json::to_string(&v.config)?);
            }
        }
        Command::Run {
            variant,
            arch,
            tag,
            network,
            user,
            command,
        } => {
            let project = paths.load()?;
            let v = project.variant(&variant)?;
            let arch = pick_arch(v, arch);
            let refs =
                image::variant_refs(&project.root, v, cli::source_date_epoch()?, tag.as_deref());
            let img = rootfs::resolve_image(&paths.out.join("oci"), &v.key, &refs, &arch)?;
            rootfs::require_bwrap()?;
            let code = {
                let mounted = MountedImage::mount(&img, &RootfsCache::new(&paths.cache))?;
                let mut sb = mounted.sandbox(user.as_deref())?;
                sb.network = network;
                let argv = if command.is_empty() {
                    image::default_command(mounted.config())
                } else {
                    command
                };
                anyhow::ensure!(
                    !argv.is_empty(),
                    "`{}` has no entrypoint or cmd: give a command after `--`",
                    img.reference
                );
                rootfs::sandbox::run_foreground(sb.command(&argv))?
            };
            std::process::exit(code);
        }
        Command::Test {
            variants,
            arch,
            json,
            timeout,
        } => {
            let project = paths.load()?;
            let cache = RootfsCache::new(&paths.cache);
            let epoch = cli::source_date_epoch()?;
            let mut results = Vec::new();
            for v in project.select(&variants)? {
                let arch = pick_arch(v, arch.clone());
                let refs = image::variant_refs(&project.root, v, epoch, None);
                let img = rootfs::resolve_image(&paths.out.join("oci"), &v.key, &refs, &arch)?;
                let r = check::test_variant(
                    &v.key,
                    &arch,
                    &img,
                    &v.tests,
                    &cache,
                    std::time::Duration::from_secs(timeout),
                )?;
                if !json {
                    render_tests(&r);
                }
                results.push(r);
            }
            let passed = results.iter().all(|r| r.passed);
            if json {
                print_json(&serde_json::json!({ "passed": passed, "variants": results }))?;
            }
            if !passed {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}

/// The requested arch, else this machine's when the variant has it, else its first.
fn pick_arch(v: &hakim::spec::Variant, arch: Option<String>) -> String {
    arch.unwrap_or_else(|| {
        let host = image::host_arch();
        if v.archs.iter().any(|a| a == host) {
            host.to_string()
        } else {
            v.archs[0].clone()
        }
    })
}

/// Plain per-test lines; a failing test's reasons and output tail go to stderr.
fn render_tests(r: &check::VariantTests) {
    println!("{} ({}, {})", r.variant, r.reference, r.arch);
    for t in &r.tests {
        println!(
            "  {} {} ({:.2}s)",
            if t.passed { "ok  " } else { "FAIL" },
            t.name,
            t.seconds
        );
        if !t.passed {
            for f in &t.failures {
                println!("       {f}");
            }
            for (label, text) in [("stdout", &t.stdout), ("stderr", &t.stderr)] {
                let lines: Vec<&str> = text.lines().collect();
                if !lines.is_empty() {
                    eprintln!("       --- {label} (last lines) ---");
                    for l in &lines[lines.len().saturating_sub(20)..] {
                        eprintln!("       {l}");
                    }
                }
            }
        }
    }
    let failed = r.tests.iter().filter(|t| !t.passed).count();
    println!("  {} passed, {failed} failed", r.tests.len() - failed);
}
