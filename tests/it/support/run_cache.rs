//! The cache the shipped variants are built in: private to this test process, so every layer is
//! built by the code under test, sharing only downloads (the blob store of .debs, indices and
//! archives, all verified by sha256) with the default cache so a warm CI machine skips the mirror.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// The user's default cache, as hakim resolves it.
pub fn default_cache() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("neither XDG_CACHE_HOME nor HOME is set");
    base.join("hakim")
}

/// This process's cache: empty layer records, extracted-layer and temp dirs; `blobs/` is the
/// default cache's.
pub fn dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let shared = default_cache().join("blobs");
        std::fs::create_dir_all(&shared).unwrap();
        let d = tempfile::Builder::new()
            .prefix("hakim-test-cache-")
            .tempdir()
            .unwrap();
        std::os::unix::fs::symlink(&shared, d.path().join("blobs")).unwrap();
        d
    })
    .path()
}

/// Held while a hakim build writes to [`dir`], so shared layers are built once, not raced.
pub fn lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `hakim` on the repository's own project with this process's cache and `out`.
pub fn hakim(out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hakim"));
    c.arg("--project")
        .arg(super::repo_root())
        .arg("--cache-dir")
        .arg(dir())
        .arg("--out")
        .arg(out);
    c.env_remove("SOURCE_DATE_EPOCH");
    c
}
