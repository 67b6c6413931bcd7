//! The lock file: per layer chain and architecture, the exact Debian packages to install.
//!
//! Entries are keyed by the chain of layer names, so a layer shared by several variants is
//! locked once and yields the same blob everywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;

/// Current lock format.
pub const LOCK_VERSION: u32 = 1;

/// File name of the lock, at the project root.
pub const LOCK_FILE: &str = "hakim.lock";

/// The whole lock file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    /// Format version.
    pub lock_version: u32,
    /// Release files the entries were resolved against, by suite.
    pub suites: BTreeMap<String, LockedSuite>,
    /// Locked package layers by `<layer>/<layer>…@<arch>`.
    pub layers: BTreeMap<String, LockedLayer>,
}

/// A verified Release file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedSuite {
    /// `archive` or `security`: which mirror serves it.
    pub archive: String,
    /// sha256 of the verified InRelease.
    pub inrelease_sha256: Sha256Digest,
    /// The Release `Date`.
    pub date: String,
}

/// The packages one layer installs on top of its lower layers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedLayer {
    /// Hash of what was asked for (settings, packages, lower request); a change invalidates the entry.
    pub request: Sha256Digest,
    /// Whether this is the image's bootstrap layer (Essential + required set).
    pub bootstrap: bool,
    /// The packages, sorted by name.
    pub packages: Vec<LockedPackage>,
}

/// One package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    /// Package name.
    pub name: String,
    /// Exact version.
    pub version: String,
    /// `amd64`, `all`, …
    pub architecture: String,
    /// Suite it comes from.
    pub suite: String,
    /// Path relative to the mirror root.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256 of the .deb.
    pub sha256: Sha256Digest,
    /// In the Essential set (or its dependencies) that a bootstrap layer extracts first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub essential: bool,
}

/// Errors reading or writing the lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Filesystem failure.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not a lock file hakim can read.
    #[error("{path}: {message} (delete it and run `hakim lock` to recreate it)")]
    Invalid { path: PathBuf, message: String },
}

impl LockFile {
    /// Read the lock at `path`; `None` when there is none.
    pub fn read(path: &Path) -> Result<Option<Self>, LockError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LockError::Io {
                    path: path.into(),
                    source,
                });
            }
        };
        let lock: Self = serde_json::from_slice(&bytes).map_err(|e| LockError::Invalid {
            path: path.into(),
            message: e.to_string(),
        })?;
        if lock.lock_version != LOCK_VERSION {
            return Err(LockError::Invalid {
                path: path.into(),
                message: format!(
                    "lock_version {} is not supported (expected {LOCK_VERSION})",
                    lock.lock_version
                ),
            });
        }
        Ok(Some(lock))
    }

    /// Write atomically, pretty-printed for review.
    pub fn write(&self, path: &Path) -> Result<(), LockError> {
        let mut text = serde_json::to_string_pretty(self).expect("lock serializes");
        text.push('\n');
        crate::fsutil::write_atomic(path, text.as_bytes()).map_err(|e| LockError::Invalid {
            path: path.into(),
            message: e.to_string(),
        })
    }
}

/// The lock key of a layer chain on an architecture.
pub fn chain_key(chain: &[String], arch: &str) -> String {
    format!("{}@{arch}", chain.join("/"))
}
