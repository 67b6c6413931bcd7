//! Temp files and mounts of interrupted runs: naming them, finding them, removing them.
//!
//! Every process gets a random session id. Each temp file or directory hakim creates in a
//! cache or layout carries it in its name (`.tmp-<id>-…`, `layer-<id>-…`), and while the
//! process lives it holds an exclusive `flock` on `<cache>/tmp/sessions/<id>.lock`. The
//! kernel drops that lock however the process ends (even SIGKILL), so a later run can tell
//! a dead session's leftovers from a running build's files without trusting pids, and
//! removes only the former ([`sweep`]). SIGTERM/SIGINT/SIGHUP clean up at once
//! ([`install_signal_cleanup`]).

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use serde::Serialize;

/// This process's session id: 16 hex digits.
pub fn session_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let mut b = [0u8; 8];
        // Random enough and unique per process: pid, time and address-space randomness.
        let seed = format!(
            "{}-{:?}-{:p}",
            std::process::id(),
            std::time::SystemTime::now(),
            &b
        );
        b.copy_from_slice(&crate::digest::Sha256Digest::of(seed.as_bytes()).bytes()[..8]);
        hex::encode(b)
    })
}

/// The prefix of temp files this process creates: `.tmp-<session>-`.
pub fn tmp_prefix() -> String {
    format!(".tmp-{}-", session_id())
}

/// The prefix of layer build directories: `layer-<session>-`.
pub fn layer_dir_prefix() -> String {
    format!("layer-{}-", session_id())
}

struct Registry {
    /// Session lock files held open (and locked) by this process, by cache dir.
    locks: Vec<(PathBuf, File)>,
    /// Directories whose temp files are ours to remove on a signal.
    dirs: BTreeSet<PathBuf>,
}

fn registry() -> &'static Mutex<Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    R.get_or_init(|| {
        Mutex::new(Registry {
            locks: Vec::new(),
            dirs: BTreeSet::new(),
        })
    })
}

fn sessions_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("tmp").join("sessions")
}

fn flock(f: &File, op: libc::c_int) -> io::Result<()> {
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Mark this process as alive in `cache_dir` and sweep what dead sessions left there
/// (once per cache dir); call before writing temp files.
pub fn register_cache(cache_dir: &Path) -> io::Result<SweepReport> {
    {
        let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        if reg.locks.iter().any(|(d, _)| d == cache_dir) {
            return Ok(SweepReport::default());
        }
        lock_session(&mut reg, cache_dir)?;
    }
    Ok(sweep(cache_dir, &[]))
}

fn lock_session(reg: &mut Registry, cache_dir: &Path) -> io::Result<()> {
    let dir = sessions_dir(cache_dir);
    fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{}.lock", session_id()));
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    flock(&f, libc::LOCK_EX | libc::LOCK_NB)?;
    reg.locks.push((cache_dir.to_path_buf(), f));
    for sub in ["tmp", "blobs/tmp", "layers", "rootfs"] {
        reg.dirs.insert(cache_dir.join(sub));
    }
    Ok(())
}

/// Remember a layout directory whose temp files this process may leave on a signal, and
/// remove what dead sessions (known to a registered cache) left in it.
pub fn register_layout(layout_dir: &Path) -> SweepReport {
    let caches: Vec<PathBuf> = {
        let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        reg.dirs.insert(layout_dir.to_path_buf());
        reg.dirs.insert(layout_dir.join("blobs/sha256"));
        reg.locks.iter().map(|(d, _)| d.clone()).collect()
    };
    let mut report = SweepReport::default();
    for dir in [layout_dir.to_path_buf(), layout_dir.join("blobs/sha256")] {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            if let Some(id) = session_of(&e.file_name().to_string_lossy())
                && !alive(&caches, id)
            {
                remove_leftover(&e.path(), &mut report);
            }
        }
    }
    report
}

/// The session id in a temp name this module hands out, if any.
fn session_of(name: &str) -> Option<&str> {
    let rest = name
        .strip_prefix(".tmp-")
        .or_else(|| name.strip_prefix("layer-"))?;
    let id = rest.get(..16)?;
    (rest.as_bytes().get(16) == Some(&b'-') && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(id)
}

/// Whether the session `id` is still running, judged by its lock in one of `caches`.
/// Without a lock file there is no evidence either way, so it counts as alive.
fn alive(caches: &[PathBuf], id: &str) -> bool {
    if id == session_id() {
        return true;
    }
    for c in caches {
        let path = sessions_dir(c).join(format!("{id}.lock"));
        if let Ok(f) = File::open(&path) {
            return flock(&f, libc::LOCK_SH | libc::LOCK_NB).is_err();
        }
    }
    true
}

/// What a sweep removed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SweepReport {
    /// Temp files and directories removed.
    pub removed: Vec<PathBuf>,
    /// Overlay mounts detached.
    pub unmounted: Vec<PathBuf>,
    /// Bytes freed (files only; directories are counted by their contents).
    pub bytes: u64,
}

/// Remove what dead sessions left in `cache_dir` (and in `layouts`), never touching the
/// files of a session that is still running.
pub fn sweep(cache_dir: &Path, layouts: &[&Path]) -> SweepReport {
    let mut report = SweepReport::default();
    let mut dirs = vec![
        cache_dir.join("tmp"),
        cache_dir.join("blobs/tmp"),
        cache_dir.join("layers"),
        cache_dir.join("rootfs"),
    ];
    for l in layouts {
        dirs.push(l.to_path_buf());
        dirs.push(l.join("blobs/sha256"));
    }
    let caches = [cache_dir.to_path_buf()];
    for dir in dirs {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(id) = session_of(&name.to_string_lossy()).map(String::from) else {
                continue;
            };
            if !alive(&caches, &id) {
                remove_leftover(&e.path(), &mut report);
            }
        }
    }
    remove_dead_locks(cache_dir);
    report
}

/// Remove the lock files of sessions that have ended.
fn remove_dead_locks(cache_dir: &Path) {
    let Ok(rd) = fs::read_dir(sessions_dir(cache_dir)) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Some(id) = p.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
            continue;
        };
        if id == session_id() {
            continue;
        }
        if let Ok(f) = File::open(&p)
            && flock(&f, libc::LOCK_EX | libc::LOCK_NB).is_ok()
        {
            let _ = fs::remove_file(&p);
        }
    }
}

/// Detach every mount at or below `dir`, deepest first.
fn unmount_below(dir: &Path, report: &mut SweepReport) {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in points {
        let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: c is a valid NUL-terminated path.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
            report.unmounted.push(p);
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(n) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(n);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn remove_leftover(path: &Path, report: &mut SweepReport) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        unmount_below(path, report);
        report.bytes += tree_bytes(path);
        if fs::remove_dir_all(path).is_ok() {
            report.removed.push(path.to_path_buf());
        }
    } else if fs::remove_file(path).is_ok() {
        report.bytes += meta.size();
        report.removed.push(path.to_path_buf());
    }
}

/// Bytes of the regular files below `dir` (symlinks not followed).
pub fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
}

/// Remove this process's own temp files and mounts (what a signal interrupted).
pub fn cleanup_own() -> SweepReport {
    let dirs: Vec<PathBuf> = {
        let reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        reg.dirs.iter().cloned().collect()
    };
    let mut report = SweepReport::default();
    for dir in dirs {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            if session_of(&e.file_name().to_string_lossy()) == Some(session_id()) {
                remove_leftover(&e.path(), &mut report);
            }
        }
    }
    report
}

/// On SIGTERM, SIGINT or SIGHUP remove this process's temp files and mounts, then exit with
/// 128 + the signal number as a shell reports it. Sandboxed children die with us
/// (bwrap --die-with-parent). Call once, inside the tokio runtime.
pub fn install_signal_cleanup() -> io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    for (kind, num) in [
        (SignalKind::terminate(), libc::SIGTERM),
        (SignalKind::interrupt(), libc::SIGINT),
        (SignalKind::hangup(), libc::SIGHUP),
    ] {
        let mut s = signal(kind)?;
        tokio::spawn(async move {
            if s.recv().await.is_some() {
                let report = tokio::task::spawn_blocking(cleanup_own)
                    .await
                    .unwrap_or_default();
                eprintln!(
                    "hakim: interrupted; removed {} temp entries and {} mounts",
                    report.removed.len(),
                    report.unmounted.len()
                );
                std::process::exit(128 + num);
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_session() {
        let id = session_id();
        assert_eq!(id.len(), 16);
        assert_eq!(session_of(&format!("{}abc", tmp_prefix())), Some(id));
        assert_eq!(session_of(&format!("{}x", layer_dir_prefix())), Some(id));
        assert_eq!(session_of(".tmpAbCdEf"), None);
        assert_eq!(session_of("layer-abc"), None);
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
    }

    #[test]
    fn sweep_removes_dead_sessions_only() {
        let cache = tempfile::tempdir().unwrap();
        register_cache(cache.path()).unwrap();
        let blobs_tmp = cache.path().join("blobs/tmp");
        fs::create_dir_all(&blobs_tmp).unwrap();
        let dead_id = "00000000deadbeef";
        let live_id = "00000000a11a11a1";
        // A dead session: lock file present, nobody holds it.
        File::create(sessions_dir(cache.path()).join(format!("{dead_id}.lock"))).unwrap();
        // A live one: we hold its lock through another descriptor.
        let live =
            File::create(sessions_dir(cache.path()).join(format!("{live_id}.lock"))).unwrap();
        flock(&live, libc::LOCK_EX).unwrap();
        for id in [dead_id, live_id, session_id()] {
            fs::write(blobs_tmp.join(format!(".tmp-{id}-x")), b"partial").unwrap();
            fs::create_dir_all(cache.path().join(format!("tmp/layer-{id}-y/upper"))).unwrap();
        }
        let r = sweep(cache.path(), &[]);
        assert_eq!(r.removed.len(), 2, "{r:?}");
        assert!(!blobs_tmp.join(format!(".tmp-{dead_id}-x")).exists());
        assert!(!cache.path().join(format!("tmp/layer-{dead_id}-y")).exists());
        assert!(blobs_tmp.join(format!(".tmp-{live_id}-x")).exists());
        assert!(blobs_tmp.join(format!(".tmp-{}-x", session_id())).exists());
        assert!(
            !sessions_dir(cache.path())
                .join(format!("{dead_id}.lock"))
                .exists()
        );
        assert!(
            sessions_dir(cache.path())
                .join(format!("{live_id}.lock"))
                .exists()
        );
        let own = cleanup_own();
        assert!(
            !blobs_tmp.join(format!(".tmp-{}-x", session_id())).exists(),
            "{own:?}"
        );
    }
}
