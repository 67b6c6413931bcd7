//! Where each blob was pushed, remembered across invocations (like docker's distribution
//! metadata), so a later `hakim push` of a sibling variant mounts instead of uploading.
//!
//! One small JSON file per registry host and blob digest: separate CI steps and parallel
//! pushes touch different files, and each write is temp + rename, so a reader never sees a torn
//! file. Losing a concurrent update only costs a mount attempt, never correctness: the memory
//! is a hint and every mount falls back to an upload.

use std::fs;
use std::path::PathBuf;

use crate::digest::Sha256Digest;
use crate::fsutil::write_atomic;
use crate::layer::store::StoreError;

/// Repositories remembered per blob; older ones are dropped first.
const MAX_REPOS: usize = 16;

/// The on-disk memory of blob locations under one directory.
#[derive(Clone, Debug)]
pub struct BlobLocations {
    dir: PathBuf,
}

impl BlobLocations {
    /// Memory kept under `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn file(&self, host: &str, digest: &Sha256Digest) -> PathBuf {
        // Host names may carry `:port` or `[::1]`; keep the path one plain component.
        let host: String = host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(host).join(format!("{}.json", digest.hex()))
    }

    /// Repositories of `host` believed to hold `digest`, most recent first.
    pub fn get(&self, host: &str, digest: &Sha256Digest) -> Vec<String> {
        fs::read(self.file(host, digest))
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<String>>(&b).ok())
            .unwrap_or_default()
    }

    /// Remember that `repo` of `host` holds `digest`.
    pub fn record(&self, host: &str, digest: &Sha256Digest, repo: &str) -> Result<(), StoreError> {
        let mut repos = self.get(host, digest);
        if repos.first().map(String::as_str) == Some(repo) {
            return Ok(());
        }
        repos.retain(|r| r != repo);
        repos.insert(0, repo.to_string());
        repos.truncate(MAX_REPOS);
        self.write(host, digest, &repos)
    }

    /// Forget `repo` as a holder of `digest` (a mount from it was refused).
    pub fn forget(&self, host: &str, digest: &Sha256Digest, repo: &str) -> Result<(), StoreError> {
        let mut repos = self.get(host, digest);
        let before = repos.len();
        repos.retain(|r| r != repo);
        if repos.len() == before {
            return Ok(());
        }
        self.write(host, digest, &repos)
    }

    fn write(&self, host: &str, digest: &Sha256Digest, repos: &[String]) -> Result<(), StoreError> {
        let path = self.file(host, digest);
        let parent = path.parent().expect("file() always has a parent");
        fs::create_dir_all(parent).map_err(|source| StoreError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
        write_atomic(
            &path,
            &serde_json::to_vec(repos).expect("strings serialize"),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_most_recent_first_forgets_and_keeps_hosts_apart() {
        let tmp = tempfile::tempdir().unwrap();
        let m = BlobLocations::new(tmp.path());
        let d = Sha256Digest::of(b"blob");
        assert!(m.get("127.0.0.1:5000", &d).is_empty());
        m.record("127.0.0.1:5000", &d, "ns/a").unwrap();
        m.record("127.0.0.1:5000", &d, "ns/b").unwrap();
        m.record("127.0.0.1:5000", &d, "ns/a").unwrap();
        assert_eq!(m.get("127.0.0.1:5000", &d), vec!["ns/a", "ns/b"]);
        assert!(m.get("ghcr.io", &d).is_empty());
        m.forget("127.0.0.1:5000", &d, "ns/a").unwrap();
        assert_eq!(m.get("127.0.0.1:5000", &d), vec!["ns/b"]);
        // A second handle (another invocation) sees the same memory.
        assert_eq!(
            BlobLocations::new(tmp.path()).get("127.0.0.1:5000", &d),
            vec!["ns/b"]
        );
    }

    #[test]
    fn a_garbled_file_reads_as_empty_and_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let m = BlobLocations::new(tmp.path());
        let d = Sha256Digest::of(b"blob");
        let f = m.file("[::1]:5000", &d);
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(&f, b"{not json").unwrap();
        assert!(m.get("[::1]:5000", &d).is_empty());
        m.record("[::1]:5000", &d, "ns/a").unwrap();
        assert_eq!(m.get("[::1]:5000", &d), vec!["ns/a"]);
    }
}
