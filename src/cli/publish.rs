//! `hakim push`: build if needed, then push each variant with its tags.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use hakim::build::{BuildReport, GitInfo, tag_vars};
use hakim::publish::{
    Credentials, Publisher, PushOptions, PushReport, TagVars, arch_tag, expand_tag, release_tags,
    step_summary,
};
use hakim::spec::{Project, Variant};

/// Arguments of `hakim push` after parsing.
pub struct PushArgs {
    /// `<registry>/<namespace>`.
    pub registry: String,
    /// Extra tag templates.
    pub tags: Vec<String>,
    /// `vX.Y.Z` for stable release tags.
    pub release: Option<String>,
    /// Username for `--password-stdin`.
    pub username: Option<String>,
    /// Read the password from stdin.
    pub password_stdin: bool,
    /// Force plain HTTP.
    pub plain_http: bool,
    /// Push only this arch's manifest, every tag suffixed `-<arch>` (a CI matrix job).
    pub arch: Option<String>,
    /// The cache directory (remembers where blobs were pushed).
    pub cache_dir: PathBuf,
}

/// Blob-location memory lives beside the layer cache.
fn locations_dir(cache_dir: &Path) -> PathBuf {
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
pub async fn push(
    project_root: &Path,
    built: &BuildReport,
    args: &PushArgs,
    epoch: u64,
    version: Option<&str>,
) -> Result<Vec<PushReport>> {
    let opts = push_options(args)?;
    let (_, extra) = extra_tags(project_root, args, epoch, version)?;
    let project = Project::load(project_root)?;
    let registry = args.registry.trim_end_matches('/');
    let publisher = Publisher::new(opts);
    let mut reports = Vec::new();
    // Bases first, so their blobs exist for later variants to mount.
    let mut variants: Vec<_> = built.variants.iter().collect();
    variants.sort_by_key(|v| v.archs.first().map_or(0, |a| a.layers.len()));
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
        let target = format!("{registry}/{}", v.name);
        let report = publisher
            .push(&built.layout, source, &target, &tags)
            .await?;
        reports.push(report);
    }
    write_step_summary(&reports)?;
    Ok(reports)
}

/// Merge the per-arch manifests that `push --arch` jobs pushed under `<first --tag>-<arch>`
/// into one index per variant, tagged like a plain push would tag it. Builds nothing.
pub async fn merge(
    project: &Project,
    variants: &[&Variant],
    args: &PushArgs,
    epoch: u64,
    version: Option<&str>,
) -> Result<Vec<PushReport>> {
    let (vars, extra) = extra_tags(&project.root, args, epoch, version)?;
    let source = extra
        .first()
        .context("--merge needs --tag: the per-arch manifests are read from <first tag>-<arch>")?
        .clone();
    let publisher = Publisher::new(push_options(args)?);
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

fn push_options(args: &PushArgs) -> Result<PushOptions> {
    let mut opts = PushOptions::from_env();
    opts.plain_http = args.plain_http;
    opts.locations_dir = Some(locations_dir(&args.cache_dir));
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
fn extra_tags(
    project_root: &Path,
    args: &PushArgs,
    epoch: u64,
    version: Option<&str>,
) -> Result<(TagVars, Vec<String>)> {
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
