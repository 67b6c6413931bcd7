//! Command-line plumbing shared by the subcommands: paths and output.

pub mod progress;
pub mod publish;

use std::path::PathBuf;

use anyhow::{Context, Result};
use hakim::spec::{Project, find_project};

/// Paths every command needs.
pub struct Paths {
    /// Project root.
    pub project: PathBuf,
    /// Cache directory.
    pub cache: PathBuf,
    /// Output directory.
    pub out: PathBuf,
}

impl Paths {
    /// Resolve `--project`, `--cache-dir` and `--out` with their defaults.
    pub fn resolve(
        project: Option<PathBuf>,
        cache: Option<PathBuf>,
        out: Option<PathBuf>,
    ) -> Result<Self> {
        let project = match project {
            Some(p) => find_project(&p)?,
            None => find_project(&std::env::current_dir().context("current directory")?)?,
        };
        let cache = cache.unwrap_or_else(default_cache_dir);
        let out = out.unwrap_or_else(|| project.join("out"));
        Ok(Self {
            project,
            cache,
            out,
        })
    }

    /// Load and validate the project.
    pub fn load(&self) -> Result<Project> {
        Ok(Project::load(&self.project)?)
    }
}

/// `$XDG_CACHE_HOME/hakim`, else `~/.cache/hakim`.
pub fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("hakim")
}

/// SOURCE_DATE_EPOCH, or 0 when unset.
pub fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) if !s.is_empty() => {
            hakim::spec::check::source_date_epoch(&s).map_err(anyhow::Error::msg)
        }
        _ => Ok(0),
    }
}

/// Print JSON to stdout.
pub fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
