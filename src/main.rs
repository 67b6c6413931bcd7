//! The `hakim` command line: parse, call the library, render.

mod cli;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use hakim::build::{self, BuildOptions};
use hakim::rootfs::{self, MountedImage, RootfsCache, check, image};
use std::collections::BTreeMap;

use hakim::debian::lock::{LOCK_FILE, LockFile};
use hakim::fetch::{FetchOptions, Fetcher};
use hakim::layer::store::LayerStore;
use hakim::packages::{self, LockMode, Resolver};

use cli::{
    Paths, print_json,
    progress::{Reporter, size},
};

#[derive(Parser)]
#[command(
    name = "hakim",
    version,
    about = "Build, test and publish Hakim workspace images"
)]
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
        /// Build every variant (the same as naming none).
        #[arg(long, conflicts_with = "variants")]
        all: bool,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Make no network requests (use the lock file and the cache).
        #[arg(long)]
        offline: bool,
        /// Value for `{version}` in tags and the version annotation.
        #[arg(long = "image-version")]
        version: Option<String>,
        /// Build only this architecture (a CI matrix job); the image is its bare manifest.
        #[arg(long)]
        arch: Option<String>,
    },
    /// Show a variant's layers (digests, sizes, cache state) and resolved config.
    Inspect {
        /// The variant.
        variant: String,
        /// Architecture (default: the variant's first).
        #[arg(long)]
        arch: Option<String>,
        /// Also list each layer's Debian packages (from the lock, resolving when needed).
        #[arg(long)]
        packages: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Resolve Debian packages and write hakim.lock (all variants when none is named).
    Lock {
        /// Variants to lock.
        variants: Vec<String>,
        /// Re-resolve every entry against the current repository.
        #[arg(long)]
        update: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Download every locked .deb of the variants into the cache.
    Fetch {
        /// Variants to fetch for.
        variants: Vec<String>,
        /// Make no network requests (checks the cache is complete).
        #[arg(long)]
        offline: bool,
    },
    /// Build if needed, then push variants to <registry>/<namespace>/<image name>.
    Push {
        /// Variants to push (all when none is named).
        variants: Vec<String>,
        /// Registry and namespace, e.g. ghcr.io/owner or 127.0.0.1:5000/test.
        #[arg(long)]
        registry: String,
        /// Extra tags (templates {git_sha}, {date}, {version} allowed); repeatable.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Add stable release tags vX.Y.Z, vX.Y and latest (clean git tree only).
        #[arg(long)]
        release: Option<String>,
        /// Registry user (with --password-stdin).
        #[arg(long)]
        username: Option<String>,
        /// Read the registry password or token from stdin.
        #[arg(long)]
        password_stdin: bool,
        /// Use plain HTTP even for a non-loopback registry.
        #[arg(long)]
        plain_http: bool,
        /// Print pushed references and digests as JSON.
        #[arg(long)]
        json: bool,
        /// Build and push only this architecture; every tag gets the suffix `-<arch>`.
        #[arg(long, conflicts_with = "merge")]
        arch: Option<String>,
        /// Build nothing: merge the manifests pushed by `--arch` jobs under `<first --tag>-<arch>`
        /// into one index per variant once every arch has landed, then set the tags.
        #[arg(long)]
        merge: bool,
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
        /// Test every variant (the same as naming none).
        #[arg(long, conflicts_with = "variants")]
        all: bool,
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
            println!(
                "ok: {n} variants, {m} layers in {}",
                paths.project.display()
            );
        }
        Command::Build {
            variants,
            all: _,
            json,
            offline,
            version,
            arch,
        } => {
            let started = std::time::Instant::now();
            let report =
                run_build(&paths, &variants, json, offline, version, arch.as_deref()).await?;
            if json {
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
        }
        Command::Inspect {
            variant,
            arch,
            packages,
            json,
        } => {
            let project = paths.load()?;
            let v = project.variant(&variant)?;
            let arch = arch.unwrap_or_else(|| v.archs[0].clone());
            let store = LayerStore::open(&paths.cache)?;
            let lock_path = project.root.join(LOCK_FILE);
            let mut lock = LockFile::read(&lock_path)?.unwrap_or_default();
            let fetcher = Fetcher::new(
                store.cas().clone(),
                FetchOptions {
                    offline: !packages,
                    ..FetchOptions::default()
                },
            )?;
            let mut resolver = Resolver::new(&fetcher);
            let mode = if packages {
                LockMode::Refresh
            } else {
                LockMode::Offline
            };
            let locked: BTreeMap<usize, _> = match resolver
                .lock_variant(&project, v, &arch, &mut lock, mode)
                .await
            {
                Ok(layers) => layers.into_iter().map(|l| (l.position, l.locked)).collect(),
                Err(e) if !packages => {
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
                cli::source_date_epoch()?,
                &locked,
                apt_sources.as_deref(),
            )?;
            if json {
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
                print_json(&serde_json::json!({
                    "variant": v.key, "name": v.name, "arch": arch, "archs": v.archs,
                    "compression": v.compression, "tags": v.tags, "layers": layers, "config": v.config,
                }))?;
            } else {
                println!("{} ({}) arch {arch}", v.name, v.key);
                for p in &planned {
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
            }
        }
        Command::Lock {
            variants,
            update,
            json,
        } => {
            let project = paths.load()?;
            let selected = project.select(&variants)?;
            let store = LayerStore::open(&paths.cache)?;
            let fetcher = Fetcher::new(store.cas().clone(), FetchOptions::default())?;
            let report = packages::lock_project(&project, &selected, &fetcher, update).await?;
            if json {
                print_json(&report)?;
            } else {
                for r in &report {
                    let layers: Vec<String> =
                        r.layers.iter().map(|(l, n)| format!("{l}: {n}")).collect();
                    println!(
                        "{}/{}: {}",
                        r.variant,
                        r.arch,
                        if layers.is_empty() {
                            "no package layers".into()
                        } else {
                            layers.join(", ")
                        }
                    );
                }
                eprintln!("wrote {}", project.root.join(LOCK_FILE).display());
            }
        }
        Command::Fetch { variants, offline } => {
            let project = paths.load()?;
            let selected = project.select(&variants)?;
            let store = LayerStore::open(&paths.cache)?;
            let fetcher = Fetcher::new(
                store.cas().clone(),
                FetchOptions {
                    offline,
                    ..FetchOptions::default()
                },
            )?;
            let mut resolver = Resolver::new(&fetcher);
            let mut lock = LockFile::read(&project.root.join(LOCK_FILE))?.unwrap_or_default();
            let reporter = Reporter::new(false);
            let mode = if offline {
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
                            .fetch_debs(&l.locked.packages, &bases, &reporter)
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
        }
        Command::Push {
            variants,
            registry,
            tags,
            release,
            username,
            password_stdin,
            plain_http,
            json,
            arch,
            merge,
        } => {
            let args = cli::publish::PushArgs {
                registry,
                tags,
                release: release.clone(),
                username,
                password_stdin,
                plain_http,
                arch: arch.clone(),
                cache_dir: paths.cache.clone(),
            };
            let epoch = cli::source_date_epoch()?;
            let reports = if merge {
                let project = paths.load()?;
                let selected = project.select(&variants)?;
                cli::publish::merge(&project, &selected, &args, epoch, release.as_deref()).await?
            } else {
                let report = run_build(
                    &paths,
                    &variants,
                    json,
                    false,
                    release.clone(),
                    arch.as_deref(),
                )
                .await?;
                cli::publish::push(&paths.project, &report, &args, epoch, release.as_deref())
                    .await?
            };
            if json {
                print_json(&reports)?;
            } else {
                for r in &reports {
                    for reference in &r.references {
                        println!("{reference}");
                    }
                    eprintln!(
                        "{}: {} blobs uploaded ({}), {} mounted, {} already there",
                        r.repository,
                        r.blobs_uploaded,
                        size(r.bytes_uploaded),
                        r.blobs_mounted,
                        r.blobs_present
                    );
                }
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
            all: _,
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

async fn run_build(
    paths: &Paths,
    variants: &[String],
    quiet: bool,
    offline: bool,
    version: Option<String>,
    arch: Option<&str>,
) -> Result<build::BuildReport> {
    let project = paths.load()?;
    let mut selected: Vec<hakim::spec::Variant> =
        project.select(variants)?.into_iter().cloned().collect();
    if let Some(arch) = arch {
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
    let selected: Vec<&hakim::spec::Variant> = selected.iter().collect();
    let opts = BuildOptions {
        cache_dir: paths.cache.clone(),
        layout_dir: paths.out.join("oci"),
        epoch: cli::source_date_epoch()?,
        version,
        offline,
    };
    let reporter = Reporter::new(quiet);
    let report = build::build(&project, &selected, &opts, &reporter).await;
    reporter.finish();
    Ok(report?)
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
