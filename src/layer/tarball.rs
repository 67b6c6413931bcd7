//! Deterministic layer tarballs: sorted PAX entries, clamped mtimes, compressed into the store.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::PathBuf;

use gzp::{ZWriter, deflate::Gzip, par::compress::ParCompressBuilder};
use serde::{Deserialize, Serialize};

use super::entry::{Content, Entry, Kind, Meta};
use crate::cache::{Cas, CasError, CasWriter};
use crate::digest::{HashingWriter, Sha256Digest};
use crate::spec::Compression;

/// A sealed layer blob in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerBlob {
    /// Digest of the compressed blob.
    pub digest: Sha256Digest,
    /// Digest of the uncompressed tar (the config's diff_id).
    pub diff_id: Sha256Digest,
    /// Compressed size in bytes.
    pub size: u64,
    /// OCI media type.
    pub media_type: String,
}

/// Errors while writing a layer.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// Reading a source file failed.
    #[error("{path}: {source}")]
    Source { path: PathBuf, source: io::Error },
    /// A source file changed size while it was being archived.
    #[error("{0}: file changed while it was being archived")]
    Changed(PathBuf),
    /// Writing or compressing failed.
    #[error("writing layer: {0}")]
    Write(#[from] io::Error),
    /// The store refused the blob.
    #[error(transparent)]
    Cas(#[from] CasError),
    /// The compressor failed.
    #[error("compressing layer: {0}")]
    Compress(String),
}

/// The OCI media type for a compression.
pub fn media_type(c: Compression) -> &'static str {
    match c {
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Write entries as a tar, compress it and store it; `epoch` clamps every mtime.
pub fn write_layer<'a>(
    entries: impl Iterator<Item = &'a Entry>,
    epoch: u64,
    compression: Compression,
    cas: &Cas,
) -> Result<LayerBlob, TarError> {
    let sink = cas.writer()?;
    let (blob_writer, diff_id) = match compression {
        Compression::Gzip => {
            // Fixed block size keeps the output identical whatever the thread count.
            let mut z = ParCompressBuilder::<Gzip>::new()
                .num_threads(threads())
                .map_err(|e| TarError::Compress(e.to_string()))?
                .compression_level(flate2::Compression::new(6))
                .from_writer(sink);
            let diff_id = write_tar(entries, epoch, &mut z)?;
            (
                z.finish().map_err(|e| TarError::Compress(e.to_string()))?,
                diff_id,
            )
        }
        Compression::Zstd => {
            let mut z = zstd::Encoder::new(sink, 3)?;
            z.multithread(threads() as u32)?;
            z.include_checksum(true)?;
            let diff_id = write_tar(entries, epoch, &mut z)?;
            (z.finish()?, diff_id)
        }
    };
    let (digest, size) = commit(blob_writer)?;
    Ok(LayerBlob {
        digest,
        diff_id,
        size,
        media_type: media_type(compression).to_string(),
    })
}

fn commit(w: CasWriter) -> Result<(Sha256Digest, u64), TarError> {
    Ok(w.commit(None)?)
}

/// Write a tar stream of `entries` to `out` and return its sha256 (the diff_id).
pub fn write_tar<'a, W: Write>(
    entries: impl Iterator<Item = &'a Entry>,
    epoch: u64,
    out: W,
) -> Result<Sha256Digest, TarError> {
    let mut builder = tar::Builder::new(HashingWriter::new(out));
    builder.mode(tar::HeaderMode::Deterministic);
    for e in link_targets_first(entries) {
        append_entry(&mut builder, e, epoch, None)?;
    }
    let hw = builder.into_inner()?;
    let (digest, _, _) = hw.finish();
    Ok(digest)
}

/// Append one entry with a deterministic header; a regular file's bytes come from `stream`
/// (length, reader) when given, else from its [`Content`].
pub fn append_entry<W: Write>(
    b: &mut tar::Builder<W>,
    e: &Entry,
    epoch: u64,
    stream: Option<(u64, &mut dyn Read)>,
) -> Result<(), TarError> {
    let (dir, name) = match e.path.rsplit_once('/') {
        Some((d, n)) => (Some(d), n),
        None => (None, e.path.as_str()),
    };
    let with_dir = |n: &str| dir.map_or(n.to_string(), |d| format!("{d}/{n}"));
    let (path, kind) = match &e.kind {
        Kind::Whiteout => (with_dir(&format!(".wh.{name}")), tar::EntryType::Regular),
        Kind::Opaque => (format!("{}/.wh..wh..opq", e.path), tar::EntryType::Regular),
        Kind::Dir => (format!("{}/", e.path), tar::EntryType::Directory),
        Kind::File(_) => (e.path.clone(), tar::EntryType::Regular),
        Kind::Symlink(_) => (e.path.clone(), tar::EntryType::Symlink),
        Kind::Hardlink(_) => (e.path.clone(), tar::EntryType::Link),
        Kind::Char(..) => (e.path.clone(), tar::EntryType::Char),
        Kind::Block(..) => (e.path.clone(), tar::EntryType::Block),
        Kind::Fifo => (e.path.clone(), tar::EntryType::Fifo),
    };
    let whiteout = matches!(e.kind, Kind::Whiteout | Kind::Opaque);

    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mtime(if whiteout { 0 } else { e.mtime.min(epoch) });
    h.set_mode(if whiteout { 0o644 } else { e.mode & 0o7777 });
    h.set_uid(if whiteout { 0 } else { e.uid as u64 });
    h.set_gid(if whiteout { 0 } else { e.gid as u64 });
    h.set_size(0);
    if h.set_path(&path).is_err() {
        pax.push(("path".into(), path.clone().into_bytes()));
        let short: String = path
            .chars()
            .rev()
            .take(90)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        h.set_path(short.trim_start_matches('/'))
            .map_err(TarError::Write)?;
    }
    if let Kind::Symlink(t) | Kind::Hardlink(t) = &e.kind
        && (h.set_link_name(t).is_err() || t.len() > 100)
    {
        {
            pax.push(("linkpath".into(), t.clone().into_bytes()));
            h.set_link_name("pax-linkpath").map_err(TarError::Write)?;
        }
    }
    if let Kind::Char(ma, mi) | Kind::Block(ma, mi) = &e.kind {
        h.set_device_major(*ma)?;
        h.set_device_minor(*mi)?;
    }
    if !whiteout {
        for (k, v) in &e.xattrs {
            pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
        }
    }
    if !pax.is_empty() {
        b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
    }
    match (&e.kind, stream) {
        (Kind::File(_), Some((len, r))) => {
            h.set_size(len);
            h.set_cksum();
            let mut counted = CountingReader { inner: r, n: 0 };
            b.append(&h, &mut counted)?;
            if counted.n != len {
                return Err(TarError::Changed(PathBuf::from(&e.path)));
            }
        }
        (Kind::File(Content::Bytes(bytes)), None) => {
            h.set_size(bytes.len() as u64);
            h.set_cksum();
            b.append(&h, bytes.as_slice())?;
        }
        (Kind::File(Content::Disk(p)), None) => {
            let f = File::open(p).map_err(|source| TarError::Source {
                path: p.clone(),
                source,
            })?;
            let len = f
                .metadata()
                .map_err(|source| TarError::Source {
                    path: p.clone(),
                    source,
                })?
                .len();
            h.set_size(len);
            h.set_cksum();
            let mut r = BufReader::with_capacity(1 << 20, f).take(len);
            let mut counted = CountingReader {
                inner: &mut r,
                n: 0,
            };
            b.append(&h, &mut counted)?;
            if counted.n != len {
                return Err(TarError::Changed(p.clone()));
            }
        }
        _ => {
            h.set_cksum();
            b.append(&h, io::empty())?;
        }
    }
    Ok(())
}

/// Path order, except that a hardlink waits until its target has been written: extractors
/// (tar, umoci) create a link from an entry they have already seen.
pub fn link_targets_first<'a>(entries: impl Iterator<Item = &'a Entry>) -> Vec<&'a Entry> {
    use std::collections::{BTreeMap, BTreeSet};
    let all: Vec<&Entry> = entries.collect();
    let present: BTreeSet<&str> = all.iter().map(|e| e.path.as_str()).collect();
    let mut written: BTreeSet<&str> = BTreeSet::new();
    let mut waiting: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
    let mut out = Vec::with_capacity(all.len());
    for e in all {
        if let Kind::Hardlink(t) = &e.kind
            && present.contains(t.as_str())
            && !written.contains(t.as_str())
            && *t != e.path
        {
            waiting.entry(t.as_str()).or_default().push(e);
            continue;
        }
        // Writing one entry may release links to it, which may release links to them.
        let mut ready = vec![e];
        while let Some(next) = ready.pop() {
            out.push(next);
            written.insert(next.path.as_str());
            if let Some(links) = waiting.remove(next.path.as_str()) {
                ready.extend(links.into_iter().rev());
            }
        }
    }
    // Links in a cycle never get a written target; keep them rather than drop entries.
    out.extend(waiting.into_values().flatten());
    out
}

struct CountingReader<'a, R: ?Sized> {
    inner: &'a mut R,
    n: u64,
}

impl<R: Read + ?Sized> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// The metadata index of a layer's entries, used by later layers (path → [`Meta`]).
pub fn meta_index<'a>(entries: impl Iterator<Item = &'a Entry>) -> Vec<(String, Meta)> {
    entries
        .map(|e| {
            let t = match e.kind {
                Kind::Dir => 'd',
                Kind::File(_) => 'f',
                Kind::Symlink(_) => 'l',
                Kind::Hardlink(_) => 'h',
                Kind::Char(..) => 'c',
                Kind::Block(..) => 'b',
                Kind::Fifo => 'p',
                Kind::Whiteout => 'w',
                Kind::Opaque => 'o',
            };
            (
                e.path.clone(),
                Meta {
                    t,
                    m: e.mode,
                    u: e.uid,
                    g: e.gid,
                },
            )
        })
        .collect()
}
