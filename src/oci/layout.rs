//! OCI image layouts on disk: blobs first, `index.json` last, every write atomic.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::model::{Descriptor, Index, MEDIA_INDEX, REF_NAME};
use crate::digest::Sha256Digest;

/// Errors touching a layout.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// Filesystem failure.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// A manifest, config or index larger than registries and skopeo accept.
    #[error(
        "the image {what} would be {size} bytes, over the {limit}-byte limit registries enforce; \
         shorten descriptions, labels or annotations"
    )]
    Oversized {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    /// `index.json` or `oci-layout` is not what the spec says.
    #[error("{path}: not an OCI image layout: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An OCI image layout directory.
#[derive(Clone, Debug)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// Open a layout, creating an empty one if the directory does not exist or is empty.
    pub fn open_or_create(dir: &Path) -> Result<Self, LayoutError> {
        let layout = Self {
            dir: dir.to_path_buf(),
        };
        crate::janitor::register_layout(dir);
        let marker = dir.join("oci-layout");
        if marker.is_file() {
            let text = fs::read_to_string(&marker).map_err(io_err(&marker))?;
            if !text.contains("\"imageLayoutVersion\"") {
                return Err(LayoutError::Invalid {
                    path: marker,
                    message: "bad oci-layout file".into(),
                });
            }
            layout.read_index()?;
            return Ok(layout);
        }
        if dir.exists() && fs::read_dir(dir).map_err(io_err(dir))?.next().is_some() {
            return Err(LayoutError::Invalid {
                path: dir.to_path_buf(),
                message: "directory exists, is not empty and has no oci-layout file".into(),
            });
        }
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        layout.write_index(&Index {
            schema_version: 2,
            media_type: Some(MEDIA_INDEX.into()),
            manifests: vec![],
            annotations: Default::default(),
        })?;
        Ok(layout)
    }

    /// The layout directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of a blob.
    pub fn blob_path(&self, d: &Sha256Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(d.hex())
    }

    /// Whether a blob is present.
    pub fn has_blob(&self, d: &Sha256Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Add a blob from a file already known to have digest `d` (hardlinked when possible).
    pub fn put_blob_file(&self, src: &Path, d: &Sha256Digest) -> Result<(), LayoutError> {
        let dest = self.blob_path(d);
        if keep_existing(src, &dest, d) {
            return Ok(());
        }
        let tmp = self.dir.join("blobs/sha256").join(format!(
            "{}{}",
            crate::janitor::tmp_prefix(),
            d.hex()
        ));
        let _ = fs::remove_file(&tmp);
        if fs::hard_link(src, &tmp).is_err()
            && let Err(e) = fs::copy(src, &tmp)
        {
            // A full disk must not leave a partial blob behind.
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&tmp)(e));
        }
        fs::rename(&tmp, &dest).map_err(io_err(&dest))
    }

    /// Add a blob from bytes and return its digest.
    pub fn put_blob_bytes(&self, bytes: &[u8]) -> Result<Sha256Digest, LayoutError> {
        let d = Sha256Digest::of(bytes);
        let dest = self.blob_path(&d);
        if !dest.is_file() {
            write_atomic(&dest, bytes)?;
        }
        Ok(d)
    }

    /// Read a blob.
    pub fn read_blob(&self, d: &Sha256Digest) -> Result<Vec<u8>, LayoutError> {
        let p = self.blob_path(d);
        fs::read(&p).map_err(io_err(&p))
    }

    /// Parse `index.json`.
    pub fn read_index(&self) -> Result<Index, LayoutError> {
        let p = self.dir.join("index.json");
        let bytes = fs::read(&p).map_err(io_err(&p))?;
        serde_json::from_slice(&bytes).map_err(|e| LayoutError::Invalid {
            path: p,
            message: e.to_string(),
        })
    }

    /// Replace `index.json` atomically.
    pub fn write_index(&self, index: &Index) -> Result<(), LayoutError> {
        let bytes = serde_json::to_vec_pretty(index).expect("index serializes");
        write_atomic(&self.dir.join("index.json"), &bytes)
    }

    /// Point `name:*` refs at `entries` (dropping this name's old refs), keeping every other ref.
    pub fn set_refs(&self, name: &str, entries: Vec<Descriptor>) -> Result<(), LayoutError> {
        let mut index = self.read_index()?;
        let prefix = format!("{name}:");
        index.manifests.retain(|d| {
            !d.annotations
                .get(REF_NAME)
                .is_some_and(|r| r.starts_with(&prefix))
        });
        index.manifests.extend(entries);
        index.manifests.sort_by(|a, b| {
            a.annotations
                .get(REF_NAME)
                .cmp(&b.annotations.get(REF_NAME))
        });
        self.write_index(&index)
    }

    /// The descriptor a `name:tag` ref points at.
    pub fn resolve_ref(&self, reference: &str) -> Result<Option<Descriptor>, LayoutError> {
        Ok(self
            .read_index()?
            .manifests
            .into_iter()
            .find(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(reference)))
    }
}

/// Whether the layout's copy at `dest` can stay: it is `src` itself (a hardlink), or a
/// separate copy that still holds the blob. Anything else is replaced, so a cache entry
/// rebuilt after corruption also repairs the layout.
fn keep_existing(src: &Path, dest: &Path, d: &Sha256Digest) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(have), Ok(want)) = (fs::metadata(dest), fs::metadata(src)) else {
        return false;
    };
    if (have.dev(), have.ino()) == (want.dev(), want.ino()) {
        return true;
    }
    have.dev() != want.dev() && crate::cache::verify_file(dest, d, want.len()).is_ok()
}

/// Write a file atomically (temp file in the same directory, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&crate::janitor::tmp_prefix())
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    io::Write::write_all(&mut tmp, bytes).map_err(io_err(path))?;
    tmp.as_file().sync_data().map_err(io_err(path))?;
    tmp.persist(path).map_err(|e| io_err(path)(e.error))?;
    Ok(())
}
