//! `hakim push`: build if needed, then push each variant with its tags.

use std::io::Read;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;
use hakim::build::{BuildReport, GitInfo, tag_vars};
use hakim::publish::{
    Credentials, Publisher, PushOptions, PushReport, expand_tag, release_tags, step_summary,
};

use super::{
    Paths, build::build_variants, exit::Status, print_json, progress::size, source_date_epoch,
};

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
}

/// Build what is missing, push, and print every pushed reference.
pub async fn run(paths: &Paths, args: PushArgs) -> Result<Status> {
    let built = build_variants(
        paths,
        &args.variants,
        args.json,
        false,
        args.release.clone(),
    )
    .await?;
    let reports = push(
        paths,
        &built,
        &args,
        source_date_epoch()?,
        args.release.as_deref(),
    )
    .await?;
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

fn git_clean(dir: &Path) -> Result<bool> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["status", "--porcelain"])
        .output()
        .context("running git status")?;
    if !out.status.success() {
        bail!(
            "--release needs a git checkout: `git status` failed in {}",
            dir.display()
        );
    }
    Ok(out.stdout.is_empty())
}

/// Push every built variant of `built` to `args.registry`.
async fn push(
    paths: &Paths,
    built: &BuildReport,
    args: &PushArgs,
    epoch: u64,
    version: Option<&str>,
) -> Result<Vec<PushReport>> {
    let project_root = paths.project.as_path();
    let mut opts = PushOptions::from_env();
    opts.plain_http = args.plain_http;
    opts.net = paths.net(std::sync::Arc::new(super::progress::RetryLines));
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
    let git = GitInfo::discover(project_root);
    let vars = tag_vars(&git, epoch, version.or(args.release.as_deref()));
    let mut extra = Vec::new();
    for t in &args.tags {
        extra.push(expand_tag(t, &vars)?);
    }
    if let Some(r) = &args.release {
        if !git_clean(project_root)? {
            bail!(
                "--release {r}: the git tree has uncommitted changes; release tags are only pushed from a clean tree"
            );
        }
        extra.extend(release_tags(r)?);
    }
    let publisher = Publisher::new(opts);
    let mut reports = Vec::new();
    // Bases first, so their blobs exist for later variants to mount.
    let mut variants: Vec<_> = built.variants.iter().collect();
    variants.sort_by_key(|v| v.archs.first().map_or(0, |a| a.layers.len()));
    for v in variants {
        let source = v.refs.first().context("variant has no tags")?;
        let mut tags: Vec<String> = v
            .refs
            .iter()
            .filter_map(|r| r.rsplit_once(':').map(|(_, t)| t.to_string()))
            .collect();
        for t in &extra {
            if !tags.contains(t) {
                tags.push(t.clone());
            }
        }
        let target = format!("{}/{}", args.registry.trim_end_matches('/'), v.name);
        let report = publisher
            .push(&built.layout, source, &target, &tags)
            .await?;
        reports.push(report);
    }
    if let Ok(path) = std::env::var("GITHUB_STEP_SUMMARY")
        && !path.is_empty()
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {path}"))?;
        f.write_all(step_summary(&reports).as_bytes())?;
    }
    Ok(reports)
}
