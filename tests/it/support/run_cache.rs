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

const PREFIX: &str = "hakim-test-cache-";

/// This process's cache: empty layer records, extracted-layer and temp dirs; `blobs/` is the
/// default cache's. Statics are never dropped, so the directory is named by pid and the caches
/// of finished test processes are removed here instead (they would pile up, gigabytes each).
pub fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = std::env::temp_dir();
        for e in std::fs::read_dir(&tmp).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix(PREFIX) else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let shared = default_cache().join("blobs");
        std::fs::create_dir_all(&shared).unwrap();
        let d = tmp.join(format!("{PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::os::unix::fs::symlink(&shared, d.join("blobs")).unwrap();
        d
    })
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
