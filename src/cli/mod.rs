//! The command line: one file per command, each parsing its arguments, calling the library
//! and rendering the result; this module holds what they share (paths, output, arch choice).

pub mod build;
pub mod cache;
pub mod exit;
pub mod export;
pub mod fetch;
pub mod inspect;
pub mod lock;
pub mod progress;
pub mod push;
pub mod run;
pub mod test;
pub mod validate;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hakim::net::{NetOptions, RetryLog, RetryObserver};
use hakim::spec::{Project, find_project};

/// Paths and settings every command needs.
pub struct Paths {
    /// Project root.
    pub project: PathBuf,
    /// Cache directory.
    pub cache: PathBuf,
    /// Output directory.
    pub out: PathBuf,
    /// `--http-timeout`: how long a request may receive nothing.
    pub stall_timeout: Duration,
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
            stall_timeout: hakim::net::DEFAULT_STALL_TIMEOUT,
        })
    }

    /// Load and validate the project.
    pub fn load(&self) -> Result<Project> {
        Ok(Project::load(&self.project)?)
    }

    /// Network settings, with every retry reported to `observer`.
    pub fn net(&self, observer: Arc<dyn RetryObserver>) -> NetOptions {
        NetOptions {
            stall_timeout: self.stall_timeout,
            retry_log: RetryLog::to(observer),
            ..NetOptions::default()
        }
    }

    /// The OCI layout builds write to and other commands read from.
    pub fn layout(&self) -> PathBuf {
        self.out.join("oci")
    }
}

/// The requested arch, else this machine's when the variant has it, else its first.
pub fn pick_arch(v: &hakim::spec::Variant, arch: Option<String>) -> String {
    arch.unwrap_or_else(|| {
        let host = hakim::oci::host_arch();
        if v.archs.iter().any(|a| a == host) {
            host.to_string()
        } else {
            v.archs[0].clone()
        }
    })
}

/// The error and its causes, skipping causes whose text the message already carries.
pub fn render_error(e: &anyhow::Error) -> String {
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
