//! Digests of a layer's local input files, remembered across commands by their stat, so a warm
//! build of a layer with big local files reads none of them. Any write to a file changes its
//! ctime, so a remembered digest only serves the very file it was computed from.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::integrity::Stamp;
use crate::digest::Sha256Digest;
use crate::fsutil::write_atomic;

/// A file changed this recently may change again within its timestamp granularity without its
/// stamp changing (git's "racy" files): such a digest is not remembered.
const RACY: Duration = Duration::from_secs(2);

#[derive(Serialize, Deserialize)]
struct Remembered {
    stamp: Stamp,
    digest: Sha256Digest,
}

/// Where digests are remembered (`None`: hash every time).
#[derive(Debug, Default)]
pub struct FileDigests {
    dir: Option<PathBuf>,
}

impl FileDigests {
    /// Remember digests under `dir` (created on first use).
    pub fn in_dir(dir: PathBuf) -> Self {
        Self { dir: Some(dir) }
    }

    /// The SHA-256 of the file at `path`.
    pub fn digest(&self, path: &Path) -> io::Result<Sha256Digest> {
        self.digest_at(path, SystemTime::now())
    }

    fn digest_at(&self, path: &Path, now: SystemTime) -> io::Result<Sha256Digest> {
        let Some(dir) = &self.dir else {
            return hash(path);
        };
        let abs = std::path::absolute(path)?;
        let memo = dir.join(Sha256Digest::of(abs.as_os_str().as_bytes()).hex());
        let before = Stamp::of(path)?;
        let known = fs::read(&memo)
            .ok()
            .and_then(|b| serde_json::from_slice::<Remembered>(&b).ok());
        if let Some(k) = known
            && k.stamp == before
        {
            return Ok(k.digest);
        }
        let digest = hash(path)?;
        // Unchanged while it was read, and not so recent that a later write could hide.
        if Stamp::of(path)? == before && !before.is_recent(RACY, now) {
            let _ = fs::create_dir_all(dir);
            let bytes = serde_json::to_vec(&Remembered {
                stamp: before,
                digest,
            })
            .expect("digest memo serializes");
            // A hint only: without it the next command hashes the file again.
            let _ = write_atomic(&memo, &bytes);
        }
        Ok(digest)
    }
}

fn hash(path: &Path) -> io::Result<Sha256Digest> {
    Sha256Digest::of_reader(io::BufReader::new(fs::File::open(path)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_digest_serves_only_the_unchanged_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("memo");
        let memo = FileDigests::in_dir(dir.clone());
        let f = tmp.path().join("data");
        fs::write(&f, b"one").unwrap();
        let now = SystemTime::now();
        // Just written: hashed, not remembered.
        assert_eq!(memo.digest_at(&f, now).unwrap(), Sha256Digest::of(b"one"));
        assert!(!dir.exists());
        // A while later: remembered.
        let later = now + Duration::from_secs(3600);
        assert_eq!(memo.digest_at(&f, later).unwrap(), Sha256Digest::of(b"one"));
        let slots: Vec<_> = fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(slots.len(), 1);
        // What is remembered is what is served (a marker digest proves no re-read)...
        let slot = slots[0].path();
        let mut r: Remembered = serde_json::from_slice(&fs::read(&slot).unwrap()).unwrap();
        r.digest = Sha256Digest::of(b"marker");
        fs::write(&slot, serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(
            memo.digest_at(&f, later).unwrap(),
            Sha256Digest::of(b"marker")
        );
        // ...until the file is written, even to the same size: its ctime moves, it is re-read.
        fs::write(&f, b"two").unwrap();
        assert_eq!(memo.digest_at(&f, later).unwrap(), Sha256Digest::of(b"two"));
        // Without a directory nothing is remembered.
        let none = FileDigests::default();
        assert_eq!(none.digest(&f).unwrap(), Sha256Digest::of(b"two"));
    }
}
