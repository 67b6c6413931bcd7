//! The content-addressed store shared by every variant: blobs named by their SHA-256.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::digest::{HashingWriter, Sha256Digest};

/// Errors from the content-addressed store.
#[derive(Debug, thiserror::Error)]
pub enum CasError {
    /// Filesystem failure, with the path involved.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// A file that should hold a blob does not (size or digest differs).
    #[error("{path}: corrupt blob {expected}: {why}")]
    Corrupt {
        path: PathBuf,
        expected: Sha256Digest,
        why: String,
    },
    /// Content did not hash to what the caller expected.
    #[error("content hashes to {actual}, expected {expected}")]
    Mismatch {
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CasError + '_ {
    move |source| CasError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Check that the file at `path` is exactly the blob `digest` of `size` bytes.
///
/// Call it before a blob leaves the machine or the cache (push, export): a reuse only
/// checks sizes, so this is where a flipped byte is caught.
pub fn verify_file(path: &Path, digest: &Sha256Digest, size: u64) -> Result<(), CasError> {
    let corrupt = |why: String| CasError::Corrupt {
        path: path.to_path_buf(),
        expected: *digest,
        why,
    };
    let file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    if len != size {
        return Err(corrupt(format!("{len} bytes, expected {size}")));
    }
    let actual = Sha256Digest::of_reader(io::BufReader::new(file)).map_err(io_err(path))?;
    if actual != *digest {
        return Err(corrupt(format!(
            "content hashes to {actual}; run `hakim cache verify` and rebuild"
        )));
    }
    Ok(())
}

/// What [`Cas::check`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobState {
    /// Present and hashing to its name.
    Good,
    /// Not present.
    Missing,
    /// Present but hashing to `actual`; it has been removed.
    Removed {
        /// What the bytes hashed to.
        actual: Sha256Digest,
    },
}

/// A directory of blobs at `<root>/sha256/<hex>`, written atomically.
#[derive(Clone, Debug)]
pub struct Cas {
    root: PathBuf,
}

impl Cas {
    /// Open (creating) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, CasError> {
        let root = root.into();
        let dir = root.join("sha256");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(Self { root })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob lives (whether or not it is present).
    pub fn path(&self, digest: &Sha256Digest) -> PathBuf {
        self.root.join("sha256").join(digest.hex())
    }

    /// Whether a blob is present (not re-hashed).
    pub fn contains(&self, digest: &Sha256Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Re-hash a present blob; a corrupt one is removed and `false` returned.
    pub fn verify(&self, digest: &Sha256Digest) -> Result<bool, CasError> {
        Ok(self.check(digest)? == BlobState::Good)
    }

    /// Re-hash a blob and say what was found; a corrupt one is removed.
    pub fn check(&self, digest: &Sha256Digest) -> Result<BlobState, CasError> {
        let path = self.path(digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BlobState::Missing),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let actual = Sha256Digest::of_reader(io::BufReader::new(file)).map_err(io_err(&path))?;
        if actual == *digest {
            return Ok(BlobState::Good);
        }
        fs::remove_file(&path).map_err(io_err(&path))?;
        Ok(BlobState::Removed { actual })
    }

    /// Start writing a blob; nothing is visible until [`CasWriter::commit`].
    pub fn writer(&self) -> Result<CasWriter, CasError> {
        let dir = self.root.join("tmp");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let tmp = tempfile::Builder::new()
            .prefix(&crate::janitor::tmp_prefix())
            .tempfile_in(&dir)
            .map_err(io_err(&dir))?;
        Ok(CasWriter {
            cas: self.clone(),
            inner: HashingWriter::new(BufWriter::new(tmp)),
        })
    }

    /// Store bytes and return their digest.
    pub fn insert_bytes(&self, bytes: &[u8]) -> Result<Sha256Digest, CasError> {
        let digest = Sha256Digest::of(bytes);
        if self.contains(&digest) {
            return Ok(digest);
        }
        let mut w = self.writer()?;
        w.write_all(bytes).map_err(io_err(&self.root))?;
        w.commit(Some(&digest)).map(|(d, _)| d)
    }
}

/// An in-progress blob: a temp file in the store that hashes what is written.
pub struct CasWriter {
    cas: Cas,
    inner: HashingWriter<BufWriter<tempfile::NamedTempFile>>,
}

impl CasWriter {
    /// Flush, check against `expected` if given, and rename into place.
    pub fn commit(self, expected: Option<&Sha256Digest>) -> Result<(Sha256Digest, u64), CasError> {
        let (digest, len, buf) = self.inner.finish();
        let tmp = buf
            .into_inner()
            .map_err(|e| io_err(self.cas.root())(e.into_error()))?;
        if let Some(expected) = expected
            && *expected != digest
        {
            return Err(CasError::Mismatch {
                expected: *expected,
                actual: digest,
            });
        }
        let dest = self.cas.path(&digest);
        // Read-only: layouts hardlink these files, so a write through a layout must not
        // silently change the cache.
        tmp.as_file()
            .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o444))
            .map_err(io_err(&dest))?;
        tmp.as_file().sync_data().map_err(io_err(&dest))?;
        tmp.persist(&dest).map_err(|e| io_err(&dest)(e.error))?;
        Ok((digest, len))
    }
}

impl Write for CasWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_verifies_and_drops_corrupt_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path()).unwrap();
        let d = cas.insert_bytes(b"hello").unwrap();
        assert!(cas.verify(&d).unwrap());
        fs::write(cas.path(&d), b"tampered").unwrap();
        assert!(!cas.verify(&d).unwrap());
        assert!(!cas.contains(&d));

        let mut w = cas.writer().unwrap();
        w.write_all(b"x").unwrap();
        let err = w.commit(Some(&d)).unwrap_err();
        assert!(matches!(err, CasError::Mismatch { .. }));
        assert!(!cas.contains(&Sha256Digest::of(b"x")));
    }
}
