//! `hakim push`: build if needed, then push each variant with its tags.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use futures::{StreamExt as _, TryStreamExt as _};
use hakim::build::BuildReport;
use hakim::git::GitInfo;
use hakim::publish::{
    Credentials, Publisher, PushOptions, PushReport, TagVars, arch_tag, expand_tag, release_tags,
    step_summary,
};
use hakim::spec::{Project, Variant};

use super::build::{BuildRequest, CacheRefs, build_variants};
use super::{Paths, exit::Status, print_json, progress::size, source_date_epoch};

/// Arguments of `hakim push`.
#[derive(Args)]
pub struct PushArgs {
    /// Variants to push (all when none is named).
    pub variants: Vec<String>,
    /// Registry and namespace, e.g. ghcr.io/owner or 127.0.0.1:5000/test.
    #[arg(long)]
    pub registry: String,
    /// Extra tags (templates {git_sha}, {date}, {version} allowed); repeatable.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Add stable release tags vX.Y.Z, vX.Y and latest (clean git tree only).
    #[arg(long)]
    pub release: Option<String>,
    /// Registry user (with --password-stdin).
    #[arg(long)]
    pub username: Option<String>,
    /// Read the registry password or token from stdin.
    #[arg(long)]
    pub password_stdin: bool,
    /// Use plain HTTP even for a non-loopback registry.
    #[arg(long)]
    pub plain_http: bool,
    /// Print pushed references and digests as JSON.
    #[arg(long)]
    pub json: bool,
    /// Build and push only this architecture; every tag gets the suffix `-<arch>`.
    #[arg(long, conflicts_with = "merge")]
    pub arch: Option<String>,
    /// Build nothing: merge the manifests pushed by `--arch` jobs under `<first --tag>-<arch>`
    /// into one index per variant once every arch has landed, then set the tags.
    #[arg(long)]
    pub merge: bool,
    #[command(flatten)]
    pub cache: CacheRefs,
}

/// Build what is missing, push, and print every pushed reference.
pub async fn run(paths: &Paths, args: PushArgs) -> Result<Status> {
    let epoch = source_date_epoch()?;
    let reports = if args.merge {
        let project = paths.load()?;
        let selected = project.select(&args.variants)?;
        merge(&project, &selected, &args, paths, epoch).await?
    } else {
        let built = build_variants(
            paths,
            &BuildRequest {
                variants: &args.variants,
                quiet: args.json,
                version: args.release.clone(),
                arch: args.arch.as_deref(),
                cache: args.cache.clone(),
                ..BuildRequest::default()
            },
        )
        .await?;
        if !args.json {
            super::build::print_cache_writes(&built);
        }
        push(paths, &built, &args, epoch).await?
    };
    if args.json {
        print_json(&reports)?;
        return Ok(Status::SUCCESS);
    }
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
    Ok(Status::SUCCESS)
}

/// Images pushed at once (each with its own bound on parallel blobs).
const PARALLEL_IMAGES: usize = 3;

/// Blob-location memory lives beside the layer cache.
pub fn locations_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("publish").join("blob-locations")
}

/// Every variant that lists `layer`, fewest layers first (bases are pushed first).
fn variants_with_layer<'a>(project: &'a Project, layer: &str, not: &str) -> Vec<&'a Variant> {
    let mut vs: Vec<&Variant> = project
        .variants()
        .filter(|v| v.key != not && v.layers.iter().any(|l| l == layer))
        .collect();
    vs.sort_by_key(|v| (v.layers.len(), v.key.clone()));
    vs
}

/// Push every built variant of `built` to `args.registry`.
async fn push(
    paths: &Paths,
    built: &BuildReport,
    args: &PushArgs,
    epoch: u64,
) -> Result<Vec<PushReport>> {
    let project_root = paths.project.as_path();
    let opts = push_options(args, paths)?;
    let (_, extra) = extra_tags(project_root, args, epoch)?;
    let project = Project::load(project_root)?;
    let registry = args.registry.trim_end_matches('/');
    let publisher = Publisher::new(opts);
    // Bases first: with the blob locks, a shared blob goes to the first repository and the
    // others mount it from there.
    let mut variants: Vec<_> = built.variants.iter().collect();
    variants.sort_by_key(|v| v.archs.first().map_or(0, |a| a.layers.len()));
    let mut jobs = Vec::new();
    for v in variants {
        // Sibling variants that list the same layer should hold its blob: mount from them.
        for layer in v.archs.iter().flat_map(|a| &a.layers) {
            let siblings = variants_with_layer(&project, &layer.name, &v.variant);
            publisher.suggest_mounts(
                layer.digest,
                siblings.iter().map(|s| format!("{registry}/{}", s.name)),
            );
        }
        let source = v.refs.first().context("variant has no tags")?;
        let own = v
            .refs
            .iter()
            .filter_map(|r| r.rsplit_once(':').map(|(_, t)| t.to_string()));
        let mut tags = merge_tags(own, &extra);
        if let Some(arch) = &args.arch {
            tags = tags.iter().map(|t| arch_tag(t, arch)).collect();
        }
        jobs.push((source.clone(), format!("{registry}/{}", v.name), tags));
    }
    let publisher = &publisher;
    let reports: Vec<PushReport> =
        futures::stream::iter(jobs.into_iter().map(|(source, target, tags)| async move {
            publisher.push(&built.layout, &source, &target, &tags).await
        }))
        .buffered(PARALLEL_IMAGES)
        .try_collect()
        .await?;
    write_step_summary(&reports)?;
    Ok(reports)
}

/// Merge the per-arch manifests that `push --arch` jobs pushed under `<first --tag>-<arch>`
/// into one index per variant, tagged like a plain push would tag it. Builds nothing.
async fn merge(
    project: &Project,
    variants: &[&Variant],
    args: &PushArgs,
    paths: &Paths,
    epoch: u64,
) -> Result<Vec<PushReport>> {
    let (vars, extra) = extra_tags(&project.root, args, epoch)?;
    let source = extra
        .first()
        .context("--merge needs --tag: the per-arch manifests are read from <first tag>-<arch>")?
        .clone();
    let publisher = Publisher::new(push_options(args, paths)?);
    let registry = args.registry.trim_end_matches('/');
    let mut reports = Vec::new();
    for v in variants {
        let own = v
            .tags
            .iter()
            .map(|t| expand_tag(t, &vars))
            .collect::<Result<Vec<_>, _>>()?;
        let tags = merge_tags(own.into_iter(), &extra);
        let target = format!("{registry}/{}", v.name);
        let report = publisher
            .merge(&target, &v.archs, &source, &tags)
            .await
            .with_context(|| format!("merging variant {}", v.key))?;
        reports.push(report);
    }
    write_step_summary(&reports)?;
    Ok(reports)
}

/// A variant's own tags, then the extra ones it lacks.
fn merge_tags(own: impl Iterator<Item = String>, extra: &[String]) -> Vec<String> {
    let mut tags: Vec<String> = own.collect();
    for t in extra {
        if !tags.contains(t) {
            tags.push(t.clone());
        }
    }
    tags
}

fn push_options(args: &PushArgs, paths: &Paths) -> Result<PushOptions> {
    let mut opts = PushOptions::from_env();
    opts.plain_http = args.plain_http;
    opts.net = paths.net(std::sync::Arc::new(super::progress::RetryLines));
    opts.locations_dir = Some(locations_dir(&paths.cache));
    if args.password_stdin {
        let user = args
            .username
            .clone()
            .context("--password-stdin needs --username")?;
        let mut password = String::new();
        std::io::stdin()
            .read_to_string(&mut password)
            .context("reading the password from stdin")?;
        opts.credentials = Some(Credentials::new(
            user,
            password.trim_end_matches(['\n', '\r']),
        ));
    }
    Ok(opts)
}

/// Tag values and the expanded `--tag`s plus release tags.
fn extra_tags(project_root: &Path, args: &PushArgs, epoch: u64) -> Result<(TagVars, Vec<String>)> {
    let git = GitInfo::discover(project_root);
    let vars = TagVars::new(&git, epoch, args.release.as_deref());
    let mut extra = Vec::new();
    for t in &args.tags {
        extra.push(expand_tag(t, &vars)?);
    }
    if let Some(r) = &args.release {
        let clean = GitInfo::is_clean(project_root).with_context(|| {
            format!(
                "--release needs a git checkout: `git status` failed in {}",
                project_root.display()
            )
        })?;
        if !clean {
            bail!(
                "--release {r}: the git tree has uncommitted changes; release tags are only pushed from a clean tree"
            );
        }
        extra.extend(release_tags(r)?);
    }
    Ok((vars, extra))
}

fn write_step_summary(reports: &[PushReport]) -> Result<()> {
    if let Ok(path) = std::env::var("GITHUB_STEP_SUMMARY")
        && !path.is_empty()
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {path}"))?;
        f.write_all(step_summary(reports).as_bytes())?;
    }
    Ok(())
}
