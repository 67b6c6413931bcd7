//! Writing images: configs, manifests and indexes into an OCI layout; finding them again.

pub mod canonical;
pub mod devcontainer;
pub mod env_file;
pub mod image;
pub mod layout;
pub mod model;

use std::collections::BTreeMap;

use crate::digest::Sha256Digest;
use crate::layer::tarball::LayerBlob;
use crate::spec::ImageConfigSpec;
pub use image::{
    ImageError, LayerRef, ResolvedImage, find_variant_image, host_arch, image_for_arch,
    resolve_image,
};
pub use layout::{FoundImage, Layout, LayoutError};
use model::*;

/// One layer of an image, with the history it records.
#[derive(Clone, Debug)]
pub struct ImageLayer {
    /// The sealed blob.
    pub blob: LayerBlob,
    /// Layer name (history `created_by`).
    pub name: String,
    /// Layer description (history comment).
    pub comment: Option<String>,
}

/// Largest manifest, config or index registries (and skopeo) accept: 4 MiB.
pub const MAX_DOCUMENT: usize = 4 * 1024 * 1024;

/// Refuse a JSON document over [`MAX_DOCUMENT`] before anything is written.
pub fn check_document_size(what: &'static str, bytes: &[u8]) -> Result<(), LayoutError> {
    if bytes.len() > MAX_DOCUMENT {
        return Err(LayoutError::Oversized {
            what,
            size: bytes.len(),
            limit: MAX_DOCUMENT,
        });
    }
    Ok(())
}

/// RFC 3339 UTC time of a Unix timestamp.
pub fn rfc3339(epoch: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(epoch as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("formats")
}

/// The image config document for one architecture.
pub fn image_config(
    arch: &str,
    layers: &[ImageLayer],
    spec: &ImageConfigSpec,
    labels: &BTreeMap<String, String>,
    epoch: u64,
) -> ImageConfig {
    let platform = Platform::for_debian_arch(arch);
    let created = rfc3339(epoch);
    ImageConfig {
        created: created.clone(),
        architecture: platform.architecture,
        variant: platform.variant,
        os: platform.os,
        config: RuntimeConfig {
            user: spec.user.clone(),
            // Any `Env` key, even empty, makes Proxmox drop the create-time env.
            env: match spec.env_file {
                Some(_) => Vec::new(),
                None => spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            },
            entrypoint: spec.entrypoint.clone(),
            cmd: spec.cmd.clone(),
            volumes: spec.volumes.iter().map(|v| (v.clone(), Empty {})).collect(),
            working_dir: spec.workdir.clone(),
            labels: labels.clone(),
            stop_signal: spec.stop_signal.clone(),
        },
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: layers.iter().map(|l| l.blob.diff_id).collect(),
        },
        history: layers
            .iter()
            .map(|l| History {
                created: created.clone(),
                created_by: format!("hakim layer {}", l.name),
                comment: l.comment.clone(),
            })
            .collect(),
    }
}

/// A written manifest (or index) with its descriptor.
#[derive(Clone, Debug)]
pub struct Written {
    /// Descriptor of the document.
    pub descriptor: Descriptor,
    /// Config digest (manifests only).
    pub config: Option<Sha256Digest>,
}

/// Write config + manifest for one architecture; layer blobs must already be in the layout.
pub fn write_manifest(
    layout: &Layout,
    arch: &str,
    layers: &[ImageLayer],
    spec: &ImageConfigSpec,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    epoch: u64,
) -> Result<Written, LayoutError> {
    let config = image_config(arch, layers, spec, labels, epoch);
    let config_bytes = canonical::to_vec(&config);
    check_document_size("config", &config_bytes)?;
    let config_digest = layout.put_blob_bytes(&config_bytes)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_MANIFEST.into()),
        config: Descriptor {
            media_type: MEDIA_CONFIG.into(),
            digest: config_digest,
            size: config_bytes.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        },
        layers: layers
            .iter()
            .map(|l| Descriptor {
                media_type: l.blob.media_type.clone(),
                digest: l.blob.digest,
                size: l.blob.size,
                platform: None,
                annotations: BTreeMap::new(),
            })
            .collect(),
        annotations: annotations.clone(),
    };
    let bytes = canonical::to_vec(&manifest);
    check_document_size("manifest", &bytes)?;
    let digest = layout.put_blob_bytes(&bytes)?;
    Ok(Written {
        descriptor: Descriptor {
            media_type: MEDIA_MANIFEST.into(),
            digest,
            size: bytes.len() as u64,
            platform: Some(Platform::for_debian_arch(arch)),
            annotations: BTreeMap::new(),
        },
        config: Some(config_digest),
    })
}

/// Write an image index over per-arch manifests.
pub fn write_index(
    layout: &Layout,
    manifests: Vec<Descriptor>,
    annotations: &BTreeMap<String, String>,
) -> Result<Written, LayoutError> {
    let index = Index {
        schema_version: 2,
        media_type: Some(MEDIA_INDEX.into()),
        manifests,
        annotations: annotations.clone(),
    };
    let bytes = canonical::to_vec(&index);
    check_document_size("index", &bytes)?;
    let digest = layout.put_blob_bytes(&bytes)?;
    Ok(Written {
        descriptor: Descriptor {
            media_type: MEDIA_INDEX.into(),
            digest,
            size: bytes.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        },
        config: None,
    })
}
