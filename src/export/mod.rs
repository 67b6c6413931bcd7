//! Exports of a built image as files: the single-platform OCI archive Proxmox imports
//! (`oci-archive`), a flattened system-container rootfs tarball for `pct create` and
//! `lxc-create -t local` (`rootfs`), and a `docker load` tarball (`docker-archive`).
//!
//! Every file is written under a temporary name and renamed, with `<file>.sha256` next to
//! it and the directory's `sha256sums.txt` updated; the same image gives the same bytes.

mod archive;
pub mod compress;
mod flatten;
pub mod output;
mod template;

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use compress::Compression;
pub use output::{ExportedFile, SUMS_FILE};

use crate::layer::tarball::TarError;
use crate::oci::ResolvedImage;
use crate::rootfs::RootfsError;
use crate::spec::Variant;
use compress::Encoder;
use flatten::{LayerSource, Tree};
use output::{AtomicFile, Sink};

/// Errors of an export; each names the file or image concerned.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading or writing a file failed (e.g. an unwritable directory or a full disk).
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The image in the layout cannot be exported as asked.
    #[error("{0}")]
    Image(String),
    /// A layer blob could not be read as a tar.
    #[error("layer {blob}: {message}")]
    Layer { blob: PathBuf, message: String },
    /// The `rootfs:` template cannot be applied.
    #[error("{file}: {message}")]
    Template { file: PathBuf, message: String },
    /// Writing the tar stream failed.
    #[error("writing the export: {0}")]
    Tar(#[from] TarError),
    /// Finding or opening the image failed.
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    /// The request itself is not possible.
    #[error("{0}")]
    Usage(String),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Single-platform OCI archive (`.tar`) for Proxmox VE 9.1+ and skopeo.
    OciArchive,
    /// Flattened system-container rootfs tarball.
    Rootfs,
    /// `docker load` / `podman load` tarball.
    DockerArchive,
}

/// Where the export goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dest {
    /// This file (its directory must exist).
    File(PathBuf),
    /// Standard output (docker-archive only).
    Stdout,
}

/// One export to make from a built image.
pub struct ExportRequest<'a> {
    /// The format.
    pub format: Format,
    /// The variant the image was built from (its `rootfs:` template, its name).
    pub variant: &'a Variant,
    /// Debian architecture of the image.
    pub arch: &'a str,
    /// The OCI layout holding the image.
    pub layout: &'a Path,
    /// The image, resolved for `arch`.
    pub image: &'a ResolvedImage,
    /// Where to write.
    pub dest: Dest,
    /// Rootfs compression (rootfs only).
    pub compression: Compression,
    /// Also write an LXC meta tarball next to the rootfs (rootfs only).
    pub lxc_meta: bool,
    /// SOURCE_DATE_EPOCH: the mtime of archive members and template files.
    pub epoch: u64,
    /// Where a rootfs export may keep each compressed layer's uncompressed tar between its
    /// two passes (the cache's `tmp`), so no layer is decompressed twice; `None`, or a
    /// directory that cannot take the files, costs time, never the export.
    pub scratch: Option<&'a Path>,
}

/// What an export wrote.
#[derive(Clone, Debug, Serialize)]
pub struct ExportReport {
    /// The format.
    pub format: Format,
    /// The image reference exported (`name:tag`).
    pub reference: String,
    /// Debian architecture.
    pub arch: String,
    /// The export file.
    #[serde(flatten)]
    pub file: ExportedFile,
    /// The LXC meta tarball, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<ExportedFile>,
}

/// PVE's template name for a reference: `[^A-Za-z0-9_.-]` replaced by `_`.
fn pve_name(reference: &str) -> String {
    reference
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The file name an export gets when no `-o FILE` is given.
pub fn default_file_name(
    format: Format,
    variant: &Variant,
    reference: &str,
    arch: &str,
    compression: Compression,
) -> String {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    match format {
        Format::OciArchive => format!("{}.tar", pve_name(last)),
        Format::DockerArchive => format!("{}.docker.tar", pve_name(last)),
        Format::Rootfs => format!(
            "{}-{}-{arch}.tar.{}",
            variant.name,
            variant.debian.suite.as_deref().unwrap_or("debian"),
            compression.extension()
        ),
    }
}

/// The LXC meta tarball's name next to a rootfs tarball: `<stem>.meta.tar.<ext>`.
pub fn meta_file_name(rootfs: &Path, compression: Compression) -> PathBuf {
    let name = rootfs
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name
        .strip_suffix(&format!(".tar.{}", compression.extension()))
        .unwrap_or(&name);
    rootfs.with_file_name(format!("{stem}.meta.tar.{}", compression.extension()))
}

/// Make one export.
pub fn export(req: &ExportRequest<'_>) -> Result<ExportReport, ExportError> {
    verify_layers(req.image)?;
    let tag = req
        .image
        .reference
        .rsplit_once(':')
        .map_or("latest", |(_, t)| t)
        .to_string();
    let (file, meta) = match (req.format, &req.dest) {
        (Format::DockerArchive, Dest::Stdout) => {
            let sink = archive::write_docker(
                req.layout,
                req.image,
                &req.image.reference,
                req.epoch,
                output::stdout_sink(),
            )?;
            (output::finish_stdout(sink)?, None)
        }
        (_, Dest::Stdout) => {
            return Err(ExportError::Usage(
                "only docker-archive can be written to stdout (`-o -`)".into(),
            ));
        }
        (Format::DockerArchive, Dest::File(p)) => (
            write_file(p, |sink| {
                archive::write_docker(req.layout, req.image, &req.image.reference, req.epoch, sink)
            })?,
            None,
        ),
        (Format::OciArchive, Dest::File(p)) => (
            write_file(p, |sink| {
                archive::write_oci(req.layout, req.image, req.arch, &tag, req.epoch, sink)
            })?,
            None,
        ),
        (Format::Rootfs, Dest::File(p)) => rootfs(req, p)?,
    };
    Ok(ExportReport {
        format: req.format,
        reference: req.image.reference.clone(),
        arch: req.arch.to_string(),
        file,
        meta,
    })
}

/// Check every layer blob against its digest: layout blobs are hardlinks into the cache, and
/// a corrupt one must fail the export, never become a release file.
fn verify_layers(image: &ResolvedImage) -> Result<(), ExportError> {
    for l in &image.layers {
        crate::cache::verify_file(&l.blob, &l.digest, l.size).map_err(|e| ExportError::Layer {
            blob: l.blob.clone(),
            message: format!("{e}; rebuild with `hakim build` (after `hakim cache verify`)"),
        })?;
    }
    Ok(())
}

/// Write `path` atomically through `body`, then record its checksums.
fn write_file(
    path: &Path,
    body: impl FnOnce(Sink) -> Result<Sink, ExportError>,
) -> Result<ExportedFile, ExportError> {
    let (file, sink) = AtomicFile::create(path)?;
    // A failed write (a full disk) names the file, not just the tar stream.
    let sink = body(sink).map_err(|e| match e {
        ExportError::Tar(TarError::Write(source)) => ExportError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => other,
    })?;
    file.commit(sink)
}

fn compressed(
    path: &Path,
    c: Compression,
    body: impl FnOnce(&mut dyn Write) -> Result<(), ExportError>,
) -> Result<ExportedFile, ExportError> {
    write_file(path, |sink| {
        let enc = Encoder::new(c, sink, 0).map_err(io_err(path))?;
        // The tar writer hands over 512-byte headers and small file bodies one by one, and
        // every write is a call into the encoder (a lock and a hand-off in liblzma's and
        // zstd's multi-threaded modes); 1 MiB writes keep that overhead off the hot path.
        let mut buf = BufWriter::with_capacity(1 << 20, enc);
        body(&mut buf)?;
        let enc = buf.into_inner().map_err(|e| io_err(path)(e.into_error()))?;
        enc.finish().map_err(io_err(path))
    })
}

fn rootfs(
    req: &ExportRequest<'_>,
    path: &Path,
) -> Result<(ExportedFile, Option<ExportedFile>), ExportError> {
    let layers: Vec<LayerSource> = req
        .image
        .layers
        .iter()
        .map(|l| LayerSource {
            blob: l.blob.clone(),
            media_type: l.media_type.clone(),
        })
        .collect();
    let mut tree = Tree::read(&layers, &template::wanted_files(), req.scratch)?;
    template::apply(&mut tree, &req.variant.rootfs, req.epoch)?;
    let os = template::os_id(&tree).unwrap_or_else(|| "debian".into());
    // Meta first: a rootfs that lands without its meta would be the worse half-state.
    let meta = if req.lxc_meta {
        let mp = meta_file_name(path, req.compression);
        Some(compressed(&mp, req.compression, |enc| {
            write_meta(enc, &os, req.arch, req.epoch)
        })?)
    } else {
        None
    };
    let file = compressed(path, req.compression, |enc| {
        tree.write(&layers, enc).map(|_| ())
    })?;
    Ok((file, meta))
}

/// The meta tarball `lxc-create -t local -- -m META -f ROOTFS` reads: the distribution's
/// common config, and the user-namespace config for unprivileged containers.
fn write_meta<W: Write>(out: W, os: &str, arch: &str, epoch: u64) -> Result<(), ExportError> {
    let config = format!("lxc.include = LXC_TEMPLATE_CONFIG/{os}.common.conf\nlxc.arch = {arch}\n");
    let user = format!("{config}lxc.include = LXC_TEMPLATE_CONFIG/{os}.userns.conf\n");
    let mut b = tar::Builder::new(out);
    for (name, body) in [("config", config), ("config-user", user)] {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).expect("short name");
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(epoch);
        h.set_cksum();
        b.append(&h, body.as_bytes())
            .map_err(|e| ExportError::Tar(e.into()))?;
    }
    b.into_inner().map_err(|e| ExportError::Tar(e.into()))?;
    Ok(())
}
