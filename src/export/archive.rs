//! Image archives: the single-platform OCI archive Proxmox imports and the `docker load`
//! tarball. Both copy the layout's blobs verbatim, so digests stay those that were pushed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use super::{ExportError, io_err};
use crate::digest::Sha256Digest;
use crate::oci::model::{self, Descriptor, Index, MEDIA_MANIFEST, Manifest, MediaType, REF_NAME};
use crate::oci::{Layout, ResolvedImage};

/// Layer media types Proxmox accepts (tar, tar+gzip, tar+zstd; never Docker's).
const OCI_LAYER_TYPES: [&str; 3] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
];

/// The image's manifest as stored, with its bytes.
struct Stored {
    manifest: Manifest,
    bytes: Vec<u8>,
    digest: Sha256Digest,
}

// The export reads the layout the same way every command does: through oci::Layout.
fn open(layout: &Path) -> Result<Layout, ExportError> {
    Layout::open(layout).map_err(|e| ExportError::Image(e.to_string()))
}

fn digest(d: &Descriptor) -> Result<Sha256Digest, ExportError> {
    model::sha256(d).map_err(|e| ExportError::Image(e.to_string()))
}

fn read_manifest(layout: &Layout, image: &ResolvedImage) -> Result<Stored, ExportError> {
    let path = layout.blob_path(&image.manifest);
    let bytes = std::fs::read(&path).map_err(io_err(&path))?;
    if Sha256Digest::of(&bytes) != image.manifest {
        return Err(ExportError::Image(format!(
            "{}: blob is corrupt",
            path.display()
        )));
    }
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| ExportError::Image(format!("{}: {e}", path.display())))?;
    Ok(Stored {
        manifest,
        bytes,
        digest: image.manifest,
    })
}

/// A tar member header: fixed owner, mode and time, so archives are reproducible.
fn header(name: &str, size: u64, epoch: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_path(name).expect("short member names");
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(epoch);
    h.set_cksum();
    h
}

fn add_bytes<W: Write>(
    b: &mut tar::Builder<W>,
    name: &str,
    bytes: &[u8],
    epoch: u64,
) -> Result<(), ExportError> {
    b.append(&header(name, bytes.len() as u64, epoch), bytes)
        .map_err(|e| ExportError::Tar(e.into()))
}

fn add_blob<W: Write>(
    b: &mut tar::Builder<W>,
    layout: &Layout,
    d: &Descriptor,
    epoch: u64,
) -> Result<(), ExportError> {
    let digest = digest(d)?;
    let path = layout.blob_path(&digest);
    let f = File::open(&path).map_err(io_err(&path))?;
    let len = f.metadata().map_err(io_err(&path))?.len();
    if len != d.size() {
        return Err(ExportError::Image(format!(
            "{}: {len} bytes, the manifest says {}",
            path.display(),
            d.size()
        )));
    }
    let name = format!("blobs/sha256/{}", digest.hex());
    b.append(&header(&name, len, epoch), f.take(len))
        .map_err(|e| ExportError::Tar(e.into()))
}

/// Write `image` as an OCI archive whose `index.json` lists exactly this one manifest.
pub(crate) fn write_oci<W: Write>(
    layout: &Path,
    image: &ResolvedImage,
    arch: &str,
    tag: &str,
    epoch: u64,
    out: W,
) -> Result<W, ExportError> {
    let layout = &open(layout)?;
    let stored = read_manifest(layout, image)?;
    let m = &stored.manifest;
    if m.config().media_type().as_ref() != model::MEDIA_CONFIG {
        return Err(ExportError::Image(format!(
            "config media type `{}` is not the OCI one; Proxmox would refuse it",
            m.config().media_type()
        )));
    }
    if let Some(l) = m
        .layers()
        .iter()
        .find(|l| !OCI_LAYER_TYPES.contains(&l.media_type().as_ref()))
    {
        return Err(ExportError::Image(format!(
            "layer {} has media type `{}`; Proxmox takes only {}",
            l.digest(),
            l.media_type(),
            OCI_LAYER_TYPES.join(", ")
        )));
    }
    let mut entry = model::descriptor(MEDIA_MANIFEST, &stored.digest, stored.bytes.len() as u64);
    entry.set_platform(Some(model::platform_for_debian_arch(arch)));
    entry.set_annotations(model::annotations(&BTreeMap::from([(
        REF_NAME.to_string(),
        tag.to_string(),
    )])));
    let mut index = Index::default();
    index.set_media_type(Some(MediaType::ImageIndex));
    index.set_manifests(vec![entry]);
    let mut b = tar::Builder::new(out);
    add_bytes(
        &mut b,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        epoch,
    )?;
    let index_bytes = crate::oci::canonical::to_vec(&index);
    add_bytes(&mut b, "index.json", &index_bytes, epoch)?;
    add_bytes(
        &mut b,
        &format!("blobs/sha256/{}", stored.digest.hex()),
        &stored.bytes,
        epoch,
    )?;
    let mut seen = std::collections::BTreeSet::new();
    for d in std::iter::once(m.config()).chain(m.layers()) {
        if seen.insert(digest(d)?) {
            add_blob(&mut b, layout, d, epoch)?;
        }
    }
    b.into_inner().map_err(|e| ExportError::Tar(e.into()))
}

/// Write `image` as a `docker load` tarball tagged `reference` (layers stay compressed;
/// Docker and Podman decompress them on load).
pub(crate) fn write_docker<W: Write>(
    layout: &Path,
    image: &ResolvedImage,
    reference: &str,
    epoch: u64,
    out: W,
) -> Result<W, ExportError> {
    let layout = &open(layout)?;
    let stored = read_manifest(layout, image)?;
    let m = &stored.manifest;
    let path = |d: &Descriptor| Ok::<_, ExportError>(format!("blobs/sha256/{}", digest(d)?.hex()));
    let manifest = serde_json::json!([{
        "Config": path(m.config())?,
        "RepoTags": [reference],
        "Layers": m.layers().iter().map(path).collect::<Result<Vec<_>, _>>()?,
    }]);
    let mut b = tar::Builder::new(out);
    let mut seen = std::collections::BTreeSet::new();
    for d in std::iter::once(m.config()).chain(m.layers()) {
        if seen.insert(digest(d)?) {
            add_blob(&mut b, layout, d, epoch)?;
        }
    }
    let bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
    add_bytes(&mut b, "manifest.json", &bytes, epoch)?;
    b.into_inner().map_err(|e| ExportError::Tar(e.into()))
}
