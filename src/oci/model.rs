//! OCI image JSON documents (written through [`super::canonical`], so key order is canonical).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;

pub use crate::media::{
    CONFIG as MEDIA_CONFIG, INDEX as MEDIA_INDEX, MANIFEST as MEDIA_MANIFEST, REF_NAME,
};

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the target.
    pub media_type: String,
    /// Digest of the target.
    pub digest: Sha256Digest,
    /// Size of the target in bytes.
    pub size: u64,
    /// Platform, for index entries.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub platform: Option<Platform>,
    /// Annotations.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub annotations: BTreeMap<String, String>,
}

/// An image platform.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture (Go naming).
    pub architecture: String,
    /// Operating system.
    pub os: String,
    /// CPU variant (`v8` for arm64).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub variant: Option<String>,
}

impl Platform {
    /// The OCI platform of a Debian architecture.
    pub fn for_debian_arch(arch: &str) -> Self {
        let (architecture, variant) = match arch {
            "amd64" => ("amd64", None),
            "arm64" => ("arm64", Some("v8")),
            "armhf" => ("arm", Some("v7")),
            "i386" => ("386", None),
            "ppc64el" => ("ppc64le", None),
            other => (other, None),
        };
        Self {
            architecture: architecture.into(),
            os: "linux".into(),
            variant: variant.map(Into::into),
        }
    }
}

impl Platform {
    /// Whether `other` is this platform (any variant matches when this one names none).
    pub fn matches(&self, other: &Platform) -> bool {
        self.architecture == other.architecture
            && self.os == other.os
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

/// An image manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`MEDIA_MANIFEST`] (optional in documents other tools write).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// Layer blobs, bottom first.
    pub layers: Vec<Descriptor>,
    /// Annotations.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub annotations: BTreeMap<String, String>,
}

/// An image index (multi-arch image, or a layout's `index.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// [`MEDIA_INDEX`].
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub media_type: Option<String>,
    /// Entries.
    pub manifests: Vec<Descriptor>,
    /// Annotations.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub annotations: BTreeMap<String, String>,
}

/// An image configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// RFC 3339 creation time.
    pub created: String,
    /// CPU architecture.
    pub architecture: String,
    /// CPU variant.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub variant: Option<String>,
    /// Operating system.
    pub os: String,
    /// Runtime config.
    pub config: RuntimeConfig,
    /// Layer diff ids.
    pub rootfs: RootFs,
    /// One entry per layer.
    pub history: Vec<History>,
}

/// The runtime part of an image configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RuntimeConfig {
    /// `user[:group]`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user: Option<String>,
    /// `KEY=value` lines.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub env: Vec<String>,
    /// Entrypoint argv.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cmd: Option<Vec<String>>,
    /// Volumes as a set.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub volumes: BTreeMap<String, Empty>,
    /// Working directory.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub working_dir: Option<String>,
    /// Labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub labels: BTreeMap<String, String>,
    /// Stop signal.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stop_signal: Option<String>,
}

/// `{}` in JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// The rootfs section of a config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Uncompressed layer digests.
    pub diff_ids: Vec<Sha256Digest>,
}

/// A history entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// RFC 3339 time.
    pub created: String,
    /// What made the layer.
    pub created_by: String,
    /// Free text.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub comment: Option<String>,
}
