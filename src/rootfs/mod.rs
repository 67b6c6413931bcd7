//! Real root filesystems from layers: unpack into overlay upper-dir form, mount overlays,
//! and run commands in a sandbox (bubblewrap for layer builds, unshare + chroot for running
//! images). Mounting a built image for `hakim run`/`test` is the test stage's
//! (`imagetest`); this module knows nothing of layouts.
//!
//! Unpacking (ownership, device nodes) and mounting need root; every entry point that does
//! either checks for it and fails with [`RootfsError::NotRoot`].

pub mod overlay;
pub mod sandbox;
pub mod unpack;

use std::io;
use std::path::PathBuf;

pub use overlay::Overlay;
pub use sandbox::{Backend, Bind, Sandbox, SandboxError};
pub use unpack::{RootfsCache, unpack_layer};

/// Errors from building, mounting and running root filesystems.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// Filesystem failure on a path.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The operation needs root.
    #[error("{what} needs root (run hakim as root)")]
    NotRoot { what: String },
    /// A layer blob has a media type that cannot be unpacked.
    #[error("{blob}: cannot unpack layer media type `{media_type}`")]
    MediaType { blob: PathBuf, media_type: String },
    /// A layer entry is unsafe or malformed.
    #[error("{blob}: entry `{entry}`: {message}")]
    BadEntry {
        blob: PathBuf,
        entry: String,
        message: String,
    },
    /// A layer's uncompressed digest is not its diff_id.
    #[error("{blob}: uncompressed digest is {actual}, the image config says {expected}")]
    DiffId {
        blob: PathBuf,
        expected: String,
        actual: String,
    },
    /// Mounting or unmounting failed.
    #[error("overlay on {target}: {message}")]
    Mount { target: PathBuf, message: String },
    /// A required program is missing.
    #[error("`{tool}` not found in PATH: install it with `apt-get install {package}`")]
    MissingTool { tool: String, package: String },
    /// An image file is unusable.
    #[error("{path}: {message}")]
    BadImage { path: PathBuf, message: String },
    /// A user or group does not exist in the image.
    #[error("user `{user}`: {message}")]
    User { user: String, message: String },
    /// Starting a sandboxed command failed.
    #[error("running {what}: {source}")]
    Spawn { what: String, source: io::Error },
    /// A sandbox option the backend cannot honour.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

/// Shorthand for an I/O error on a path.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> RootfsError {
    let path = path.into();
    move |source| RootfsError::Io { path, source }
}

/// Fail with [`RootfsError::NotRoot`] unless the effective uid is 0.
pub fn require_root(what: &str) -> Result<(), RootfsError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        Ok(())
    } else {
        Err(RootfsError::NotRoot {
            what: what.to_string(),
        })
    }
}
