//! Export files: written under a temporary name and renamed, hashed while written, with a
//! `<file>.sha256` next to each and the directory's `sha256sums.txt` kept current.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{ExportError, io_err};
use crate::digest::{HashingWriter, Sha256Digest};

/// The file name of the checksum list kept in every export directory.
pub const SUMS_FILE: &str = "sha256sums.txt";

/// One written export file.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ExportedFile {
    /// Where it is (`-` for stdout).
    pub path: PathBuf,
    /// Bytes.
    pub size: u64,
    /// sha256 of the bytes.
    pub sha256: Sha256Digest,
}

/// What an export writes to while it runs: hashed, counted, buffered.
pub type Sink = HashingWriter<BufWriter<Box<dyn Write + Send>>>;

/// A file in the making: a hidden temporary next to its final name, deleted unless committed.
pub(crate) struct AtomicFile {
    path: PathBuf,
    tmp: Option<tempfile::TempPath>,
}

impl AtomicFile {
    /// Start writing `path` (its directory must exist and be writable).
    pub fn create(path: &Path) -> Result<(Self, Sink), ExportError> {
        let dir = parent_dir(path);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(io_err(path))?;
        let (file, tmp) = tmp.into_parts();
        let sink: Box<dyn Write + Send> = Box::new(file);
        Ok((
            Self {
                path: path.to_path_buf(),
                tmp: Some(tmp),
            },
            HashingWriter::new(BufWriter::with_capacity(1 << 20, sink)),
        ))
    }

    /// Flush, sync and rename into place; then write the checksum files.
    pub fn commit(mut self, sink: Sink) -> Result<ExportedFile, ExportError> {
        let (sha256, size, buf) = sink.finish();
        let mut inner = buf
            .into_inner()
            .map_err(|e| io_err(&self.path)(e.into_error()))?;
        inner.flush().map_err(io_err(&self.path))?;
        drop(inner);
        let tmp = self.tmp.take().expect("committed once");
        let f = File::open(&tmp).map_err(io_err(&self.path))?;
        f.sync_all().map_err(io_err(&self.path))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).map_err(io_err(&self.path))?;
        tmp.persist(&self.path)
            .map_err(|e| io_err(&self.path)(e.error))?;
        let done = ExportedFile {
            path: self.path.clone(),
            size,
            sha256,
        };
        record_checksum(&done)?;
        Ok(done)
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Write small bytes to `path` atomically, mode 0644.
fn write_small(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let (file, mut sink) = AtomicFile::create(path)?;
    sink.write_all(bytes).map_err(io_err(path))?;
    let (_, _, buf) = sink.finish();
    let mut inner = buf.into_inner().map_err(|e| io_err(path)(e.into_error()))?;
    inner.flush().map_err(io_err(path))?;
    drop(inner);
    let mut file = file;
    let tmp = file.tmp.take().expect("fresh");
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).map_err(io_err(path))?;
    tmp.persist(path).map_err(|e| io_err(path)(e.error))?;
    Ok(())
}

/// `<file>.sha256`, then the file's line in the directory's `sha256sums.txt` (under a lock,
/// so concurrent exports into one directory keep each other's lines).
fn record_checksum(f: &ExportedFile) -> Result<(), ExportError> {
    let name = file_name(&f.path);
    let line = format!("{}  {name}\n", f.sha256.hex());
    let mut own = f.path.clone().into_os_string();
    own.push(".sha256");
    write_small(Path::new(&own), line.as_bytes())?;

    let dir = parent_dir(&f.path);
    let lock = File::open(dir).map_err(io_err(dir))?;
    // SAFETY: flock on an fd we own; released when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io_err(dir)(io::Error::last_os_error()));
    }
    let sums = dir.join(SUMS_FILE);
    let old = match fs::read_to_string(&sums) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_err(&sums)(e)),
    };
    let mut lines: Vec<(String, String)> = old
        .lines()
        .filter_map(|l| {
            let (hash, n) = l.split_once(' ')?;
            let n = n.trim_start_matches([' ', '*']);
            (n != name).then(|| (n.to_string(), hash.to_string()))
        })
        .collect();
    lines.push((name, f.sha256.hex()));
    lines.sort();
    let text: String = lines.iter().map(|(n, h)| format!("{h}  {n}\n")).collect();
    write_small(&sums, text.as_bytes())
}

/// Streams to stdout: hashed like a file, nothing renamed, no checksum files.
pub(crate) fn stdout_sink() -> Sink {
    let out: Box<dyn Write + Send> = Box::new(io::stdout());
    HashingWriter::new(BufWriter::with_capacity(1 << 20, out))
}

/// Flush a stdout sink and report what went through it.
pub(crate) fn finish_stdout(sink: Sink) -> Result<ExportedFile, ExportError> {
    let (sha256, size, buf) = sink.finish();
    let mut inner = buf
        .into_inner()
        .map_err(|e| io_err(Path::new("-"))(e.into_error()))?;
    inner.flush().map_err(io_err(Path::new("-")))?;
    Ok(ExportedFile {
        path: PathBuf::from("-"),
        size,
        sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_renames_and_keeps_sums_sorted_and_unique() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(SUMS_FILE), "00  other.tar\nff  b.tar\n").unwrap();
        for (name, body) in [("b.tar", "one"), ("a.tar", "two"), ("b.tar", "three")] {
            let (f, mut sink) = AtomicFile::create(&d.path().join(name)).unwrap();
            sink.write_all(body.as_bytes()).unwrap();
            let done = f.commit(sink).unwrap();
            assert_eq!(done.sha256, Sha256Digest::of(body.as_bytes()));
        }
        let sums = fs::read_to_string(d.path().join(SUMS_FILE)).unwrap();
        let b = Sha256Digest::of(b"three").hex();
        let a = Sha256Digest::of(b"two").hex();
        assert_eq!(sums, format!("{a}  a.tar\n{b}  b.tar\n00  other.tar\n"));
        assert_eq!(
            fs::read_to_string(d.path().join("b.tar.sha256")).unwrap(),
            format!("{b}  b.tar\n")
        );
        let mode = fs::metadata(d.path().join("b.tar"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn an_abandoned_file_leaves_the_old_one_alone() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.tar");
        fs::write(&p, "old").unwrap();
        let (f, mut sink) = AtomicFile::create(&p).unwrap();
        sink.write_all(b"new partial").unwrap();
        drop(sink);
        drop(f);
        assert_eq!(fs::read_to_string(&p).unwrap(), "old");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
