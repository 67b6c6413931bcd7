//! Errors of the publish stage; none of them ever carries a secret.

use std::path::PathBuf;
use std::time::Duration;

use crate::digest::Sha256Digest;

use crate::git::TagError;

/// Everything that can go wrong while pushing an image.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The OCI layout is malformed (missing file, bad JSON, digest mismatch...).
    #[error("OCI layout {path}: {detail}")]
    Layout { path: PathBuf, detail: String },
    /// The requested image is not named in the layout's index.json.
    #[error(transparent)]
    RefNotFound {
        /// [`crate::oci::LayoutError::RefNotFound`], listing the names there are.
        source: Box<crate::oci::LayoutError>,
    },
    /// A merge found some arch manifests missing; nothing was pushed.
    #[error(
        "cannot merge {repository}: not every arch has landed (missing: {missing}); nothing was pushed"
    )]
    MergeIncomplete { repository: String, missing: String },
    /// An arch manifest to merge is not what its tag says; nothing was pushed.
    #[error("cannot merge {repository}:{reference}: {detail}; nothing was pushed")]
    MergeMismatch {
        repository: String,
        reference: String,
        detail: String,
    },
    /// The target `<registry>/<repository>` string is not usable.
    #[error("invalid target repository `{target}`: {reason}")]
    BadTarget { target: String, reason: String },
    /// A tag to push is not a valid OCI tag.
    #[error(transparent)]
    Tag(#[from] TagError),
    /// The registry (or its token service) rejected our credentials, or we had none.
    #[error("authentication to registry {registry} for repository {repository} failed: {detail}")]
    Auth {
        registry: String,
        repository: String,
        detail: String,
    },
    /// Authenticated, but not allowed to push there.
    #[error("access to repository {repository} on registry {registry} denied: {detail}")]
    Denied {
        registry: String,
        repository: String,
        detail: String,
    },
    /// The registry answered with an unexpected HTTP status.
    #[error("{method} {url}: registry answered HTTP {status}: {detail}")]
    Status {
        method: String,
        url: String,
        status: u16,
        detail: String,
        /// The `Retry-After` the registry asked for, if any.
        retry_after: Option<Duration>,
    },
    /// The request never got an answer (refused, reset, timed out).
    #[error("{method} {url}: {detail}")]
    Transport {
        method: String,
        url: String,
        detail: String,
        transient: bool,
    },
    /// The registry computed a different digest than the layout holds.
    #[error("{url}: registry reports digest {got}, expected {expected}")]
    DigestMismatch {
        url: String,
        expected: Sha256Digest,
        got: String,
    },
    /// A local file the push reads or writes failed (e.g. the blob store under the cache dir).
    #[error("{path}: {detail}")]
    Local { path: PathBuf, detail: String },
    /// Reading a credential source failed.
    #[error("credentials for registry {registry}: {detail}")]
    Credentials { registry: String, detail: String },
    /// A transient failure persisted through every retry.
    #[error("{operation}: giving up after {attempts} attempts: {last}")]
    RetriesExhausted {
        operation: String,
        attempts: u32,
        last: Box<PublishError>,
    },
}

impl PublishError {
    /// Whether retrying the same request later could succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport { transient, .. } => *transient,
            Self::Status { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// The delay the registry asked for before retrying.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl crate::net::Retryable for PublishError {
    fn verdict(&self) -> crate::net::Verdict {
        if self.is_transient() {
            crate::net::Verdict::Retry(self.retry_after())
        } else {
            crate::net::Verdict::Stop
        }
    }
}

/// Result alias for the publish stage.
pub type Result<T, E = PublishError> = std::result::Result<T, E>;
