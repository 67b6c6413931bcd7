//! Extracting OCI layer blobs into overlayfs upper-dir form, and a cache of extracted layers.
//!
//! Whiteouts become what overlayfs itself writes: `.wh.NAME` a 0/0 character device `NAME`,
//! `.wh..wh..opq` the xattr `trusted.overlay.opaque=y` on its directory. So an extracted layer
//! can serve directly as an overlay lower dir. Needs root (ownership, device nodes, `trusted.*`).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{RootfsError, io_err, require_root};
use crate::digest::Sha256Digest;

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Extract a layer blob (`tar`, `tar+gzip` or `tar+zstd`, by `media_type`) into `dest`, which
/// must not exist yet. Extraction goes to a temp dir beside `dest`, renamed on success.
pub fn unpack_layer(blob: &Path, media_type: &str, dest: &Path) -> Result<(), RootfsError> {
    unpack_checked(blob, media_type, dest, None)
}

/// Like [`unpack_layer`], and fail unless the uncompressed stream has digest `diff_id`.
pub fn unpack_checked(
    blob: &Path,
    media_type: &str,
    dest: &Path,
    diff_id: Option<&Sha256Digest>,
) -> Result<(), RootfsError> {
    require_root("unpacking a layer")?;
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io_err(parent))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{}{name}-", crate::janitor::tmp_prefix()))
        .tempdir_in(parent)
        .map_err(io_err(parent))?;
    let root = tmp.path();
    // An image root is 0755 root:root unless the layer says otherwise with a `./` entry.
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).map_err(io_err(root))?;
    extract(blob, media_type, root, diff_id)?;
    let kept = tmp.keep();
    fs::rename(&kept, dest).map_err(|e| {
        let _ = fs::remove_dir_all(&kept);
        RootfsError::Io {
            path: dest.to_path_buf(),
            source: e,
        }
    })
}

/// A reader of a layer blob's uncompressed tar, chosen by media type.
pub(crate) fn decoder(blob: &Path, media_type: &str) -> Result<Box<dyn Read>, RootfsError> {
    let file = File::open(blob).map_err(io_err(blob))?;
    let file = BufReader::with_capacity(1 << 20, file);
    let mt = media_type.trim();
    if mt.ends_with("+gzip") || mt.ends_with(".tar.gzip") || mt.ends_with("tar.gzip") {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(file)))
    } else if mt.ends_with("+zstd") || mt.ends_with("tar.zstd") {
        Ok(Box::new(
            zstd::Decoder::with_buffer(file).map_err(io_err(blob))?,
        ))
    } else if mt.ends_with(".tar") || mt.ends_with("layer.v1.tar") {
        Ok(Box::new(file))
    } else {
        Err(RootfsError::MediaType {
            blob: blob.to_path_buf(),
            media_type: media_type.to_string(),
        })
    }
}

/// Hashes everything read through it (the layer's diff_id).
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

fn extract(
    blob: &Path,
    media_type: &str,
    root: &Path,
    diff_id: Option<&Sha256Digest>,
) -> Result<(), RootfsError> {
    let reader = HashingReader {
        inner: decoder(blob, media_type)?,
        hash: Sha256::new(),
    };
    let mut ar = tar::Archive::new(reader);
    let mut dir_times: Vec<(PathBuf, u64)> = Vec::new();
    let entries = ar.entries().map_err(io_err(blob))?;
    for entry in entries {
        let mut entry = entry.map_err(io_err(blob))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let bad = |message: String| RootfsError::BadEntry {
            blob: blob.to_path_buf(),
            entry: raw.clone(),
            message,
        };
        let parts = components(&raw).map_err(&bad)?;
        apply_entry(&mut entry, root, &parts, &mut dir_times).map_err(|e| match e {
            EntryError::Bad(m) => bad(m),
            EntryError::Io(e) => bad(e.to_string()),
        })?;
    }
    // Directory mtimes last: creating their children changed them.
    for (path, mtime) in dir_times.iter().rev() {
        let t = filetime::FileTime::from_unix_time(*mtime as i64, 0);
        filetime::set_symlink_file_times(path, t, t).map_err(io_err(path))?;
    }
    let mut reader = ar.into_inner();
    // The tar end marker may be followed by padding that is part of the diff_id.
    io::copy(&mut reader, &mut io::sink()).map_err(io_err(blob))?;
    if let Some(expected) = diff_id {
        let actual = hex::encode(reader.hash.finalize());
        if actual != expected.hex() {
            return Err(RootfsError::DiffId {
                blob: blob.to_path_buf(),
                expected: expected.oci(),
                actual: format!("sha256:{actual}"),
            });
        }
    }
    Ok(())
}

/// Split an entry name into safe components; refuses absolute names and `..`.
fn components(name: &str) -> Result<Vec<String>, String> {
    if name.starts_with('/') {
        return Err("absolute path".into());
    }
    let mut out = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("`..` in path".into()),
            c => out.push(c.to_string()),
        }
    }
    Ok(out)
}

enum EntryError {
    Bad(String),
    Io(io::Error),
}

impl From<io::Error> for EntryError {
    fn from(e: io::Error) -> Self {
        EntryError::Io(e)
    }
}

/// Make sure every directory from `root` down to `parts` exists and is a real directory
/// (never a symlink), creating missing ones 0755 root:root.
fn safe_parent(root: &Path, parts: &[String]) -> Result<PathBuf, EntryError> {
    let mut p = root.to_path_buf();
    for c in parts {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(EntryError::Bad(format!("parent `{c}` is a symlink")));
            }
            Ok(_) => return Err(EntryError::Bad(format!("parent `{c}` is not a directory"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&p)?;
                fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(p)
}

/// Remove whatever is at `path` (a directory with its contents); missing is fine.
fn clear(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::other("NUL in path"))
}

fn mknod(path: &Path, kind: libc::mode_t, major: u32, minor: u32) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: c is a valid NUL-terminated path.
    let rc = unsafe { libc::mknod(c.as_ptr(), kind | 0o600, libc::makedev(major, minor)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn lchown(path: &Path, uid: u64, gid: u64) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid as u32), Some(gid as u32))
}

/// Extended metadata from PAX records: xattrs and numeric overrides.
#[derive(Default)]
pub(crate) struct Pax {
    pub xattrs: BTreeMap<String, Vec<u8>>,
    pub uid: Option<u64>,
    pub gid: Option<u64>,
    pub mtime: Option<u64>,
}

/// Read an entry's PAX records (xattrs, large ids, mtime).
pub(crate) fn pax_of<R: Read>(entry: &mut tar::Entry<R>) -> io::Result<Pax> {
    let mut pax = Pax::default();
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            let Ok(key) = ext.key() else { continue };
            let num = || {
                std::str::from_utf8(ext.value_bytes())
                    .ok()
                    .and_then(|v| v.split('.').next()?.parse::<u64>().ok())
            };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                pax.xattrs
                    .insert(name.to_string(), ext.value_bytes().to_vec());
            } else if key == "uid" {
                pax.uid = num();
            } else if key == "gid" {
                pax.gid = num();
            } else if key == "mtime" {
                pax.mtime = num();
            }
        }
    }
    Ok(pax)
}

fn apply_entry<R: Read>(
    entry: &mut tar::Entry<R>,
    root: &Path,
    parts: &[String],
    dir_times: &mut Vec<(PathBuf, u64)>,
) -> Result<(), EntryError> {
    let h = entry.header().clone();
    if h.entry_type() == tar::EntryType::XGlobalHeader {
        return Ok(());
    }
    let pax = pax_of(entry)?;
    let uid = pax.uid.unwrap_or(h.uid()?);
    let gid = pax.gid.unwrap_or(h.gid()?);
    let mtime = pax.mtime.unwrap_or(h.mtime()?);
    let mode = h.mode()? & 0o7777;
    let kind = h.entry_type();

    let Some((name, dirs)) = parts.split_last() else {
        // `./` describes the image root itself.
        if kind.is_dir() {
            finish_meta(root, uid, gid, Some(mode), &pax.xattrs)?;
            dir_times.push((root.to_path_buf(), mtime));
        }
        return Ok(());
    };
    let parent = safe_parent(root, dirs)?;
    if name == ".wh..wh..opq" {
        xattr::set(&parent, OPAQUE_XATTR, b"y")?;
        return Ok(());
    }
    if let Some(hidden) = name.strip_prefix(".wh.") {
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(EntryError::Bad("malformed whiteout".into()));
        }
        let path = parent.join(hidden);
        clear(&path)?;
        mknod(&path, libc::S_IFCHR, 0, 0)?;
        return Ok(());
    }
    let path = parent.join(name);
    let existing = fs::symlink_metadata(&path).ok();
    if kind.is_dir() {
        match existing {
            Some(m) if m.is_dir() => {}
            _ => {
                clear(&path)?;
                fs::create_dir(&path)?;
            }
        }
        finish_meta(&path, uid, gid, Some(mode), &pax.xattrs)?;
        dir_times.push((path, mtime));
        return Ok(());
    }
    if existing.is_some() {
        clear(&path)?;
    }
    match kind {
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
            if kind == tar::EntryType::GNUSparse {
                return Err(EntryError::Bad("sparse files are not supported".into()));
            }
            // O_NOFOLLOW|O_EXCL: never write through a link, even one raced in.
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(0o600)
                .open(&path)?;
            io::copy(entry, &mut f)?;
            drop(f);
        }
        tar::EntryType::Symlink => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| EntryError::Bad("symlink without target".into()))?;
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &path)?;
            lchown(&path, uid, gid)?;
            set_xattrs(&path, &pax.xattrs)?;
            let t = filetime::FileTime::from_unix_time(mtime as i64, 0);
            filetime::set_symlink_file_times(&path, t, t)?;
            return Ok(());
        }
        tar::EntryType::Link => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| EntryError::Bad("hardlink without target".into()))?;
            let tparts = components(&String::from_utf8_lossy(&target))
                .map_err(|m| EntryError::Bad(format!("hardlink target: {m}")))?;
            let Some((tname, tdirs)) = tparts.split_last() else {
                return Err(EntryError::Bad("hardlink to the root".into()));
            };
            let tpath = safe_parent(root, tdirs)?.join(tname);
            match fs::symlink_metadata(&tpath) {
                Ok(m) if m.is_dir() => {
                    return Err(EntryError::Bad("hardlink to a directory".into()));
                }
                Ok(_) => fs::hard_link(&tpath, &path)?,
                Err(_) => {
                    return Err(EntryError::Bad(format!(
                        "hardlink target `{}` is not in this layer",
                        tparts.join("/")
                    )));
                }
            }
            // A hardlink shares its target's inode; its header metadata is not applied.
            return Ok(());
        }
        tar::EntryType::Char | tar::EntryType::Block => {
            let major = h.device_major()?.unwrap_or(0);
            let minor = h.device_minor()?.unwrap_or(0);
            let t = if kind == tar::EntryType::Char {
                libc::S_IFCHR
            } else {
                libc::S_IFBLK
            };
            mknod(&path, t, major, minor)?;
        }
        tar::EntryType::Fifo => mknod(&path, libc::S_IFIFO, 0, 0)?,
        other => return Err(EntryError::Bad(format!("unsupported entry type {other:?}"))),
    }
    finish_meta(&path, uid, gid, Some(mode), &pax.xattrs)?;
    let t = filetime::FileTime::from_unix_time(mtime as i64, 0);
    filetime::set_symlink_file_times(&path, t, t)?;
    Ok(())
}

/// Owner, then mode (chown clears setuid bits), then xattrs (chown clears file capabilities).
fn finish_meta(
    path: &Path,
    uid: u64,
    gid: u64,
    mode: Option<u32>,
    xattrs: &BTreeMap<String, Vec<u8>>,
) -> io::Result<()> {
    lchown(path, uid, gid)?;
    if let Some(m) = mode {
        fs::set_permissions(path, fs::Permissions::from_mode(m))?;
    }
    set_xattrs(path, xattrs)
}

fn set_xattrs(path: &Path, xattrs: &BTreeMap<String, Vec<u8>>) -> io::Result<()> {
    for (k, v) in xattrs {
        xattr::set(path, k, v)?;
    }
    Ok(())
}

/// Extracted layers by diff_id under `<cache_dir>/rootfs/<hex>`, unpacked once and reused.
#[derive(Clone, Debug)]
pub struct RootfsCache {
    dir: PathBuf,
}

impl RootfsCache {
    /// The cache under `cache_dir` (the directory is created on first use).
    pub fn new(cache_dir: &Path) -> Self {
        Self {
            dir: cache_dir.join("rootfs"),
        }
    }

    /// Where the layer with this diff_id is (or would be) extracted.
    pub fn path(&self, diff_id: &Sha256Digest) -> PathBuf {
        self.dir.join(diff_id.hex())
    }

    /// The extracted layer, unpacking `blob` first if needed (and checking its diff_id).
    pub fn ensure(
        &self,
        blob: &Path,
        media_type: &str,
        diff_id: &Sha256Digest,
    ) -> Result<PathBuf, RootfsError> {
        let dest = self.path(diff_id);
        if dest.is_dir() {
            return Ok(dest);
        }
        match unpack_checked(blob, media_type, &dest, Some(diff_id)) {
            Ok(()) => Ok(dest),
            // Another process finished the same layer first; its copy is as good as ours.
            Err(RootfsError::Io { .. }) if dest.is_dir() => Ok(dest),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::components;

    #[test]
    fn entry_names_are_checked() {
        assert_eq!(components("./usr//bin/x").unwrap(), vec!["usr", "bin", "x"]);
        assert!(components("/etc/passwd").is_err());
        assert!(components("a/../../etc").is_err());
        assert!(components("./").unwrap().is_empty());
    }
}
