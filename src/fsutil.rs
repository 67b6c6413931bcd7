//! File primitives every stage shares: the one atomic write (honouring the umask, as cp and
//! tar do) and advisory locks that wait with a message.

use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Errors from the file primitives, naming the path involved.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct FsError {
    /// The file or directory.
    pub path: PathBuf,
    /// What the OS said.
    pub source: io::Error,
}

fn fs_err(path: &Path) -> impl FnOnce(io::Error) -> FsError + '_ {
    move |source| FsError {
        path: path.to_path_buf(),
        source,
    }
}

/// The process umask, read without changing it (reading it via `umask(2)` would briefly
/// clear it for every other thread).
pub fn umask() -> u32 {
    static MASK: OnceLock<u32> = OnceLock::new();
    *MASK.get_or_init(|| {
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0o022)
    })
}

/// Give a freshly created temp file (0600) the mode a plain `open(O_CREAT, 0666)` would have.
pub fn set_default_mode(file: &File) -> io::Result<()> {
    file.set_permissions(Permissions::from_mode(0o666 & !umask()))
}

/// Write a file atomically: a temp file in the same directory, synced, then renamed over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(fs_err(dir))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&crate::janitor::tmp_prefix())
        .tempfile_in(dir)
        .map_err(fs_err(dir))?;
    tmp.write_all(bytes).map_err(fs_err(path))?;
    set_default_mode(tmp.as_file()).map_err(fs_err(path))?;
    tmp.as_file().sync_data().map_err(fs_err(path))?;
    tmp.persist(path).map_err(|e| fs_err(path)(e.error))?;
    Ok(())
}

/// An exclusive `flock` on a file or directory, released when dropped (or when the process
/// dies, so a killed holder never wedges the next run).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Lock `path` (which must exist); when another process holds it, call `waiting` once
    /// and block until it is free.
    pub fn acquire(path: &Path, waiting: impl FnOnce()) -> Result<Self, FsError> {
        let file = File::open(path).map_err(fs_err(path))?;
        if flock(&file, libc::LOCK_EX | libc::LOCK_NB).is_err() {
            waiting();
            loop {
                match flock(&file, libc::LOCK_EX) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(fs_err(path)(e)),
                }
            }
        }
        Ok(Self { _file: file })
    }
}

fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn atomic_writes_replace_content_and_get_the_umask_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/f.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !umask());
        let leftovers: Vec<_> = fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("f.json")]);
    }

    #[test]
    fn a_held_lock_makes_the_next_taker_wait_and_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let held = FileLock::acquire(dir.path(), || panic!("free lock must not wait")).unwrap();
        let said = std::sync::Arc::new(AtomicBool::new(false));
        let s = said.clone();
        let path = dir.path().to_path_buf();
        let t = std::thread::spawn(move || {
            FileLock::acquire(&path, || s.store(true, Ordering::SeqCst)).unwrap();
        });
        // The waiter can only finish after the holder lets go.
        while !said.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        assert!(!t.is_finished());
        drop(held);
        t.join().unwrap();
    }
}
