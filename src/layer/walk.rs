//! Turning a directory on disk into layer entries without following symlinks.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::entry::{Content, Entry, Kind};

/// How ownership and modes of walked files are taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Project files: root:root, 0644/0755 by the source's exec bit, dirs 0755.
    Normalize,
    /// Built trees (package layers): owner, mode and xattrs as on disk.
    Keep,
}

/// Walk `root` (a directory or a single file) and return entries placed under `dest` (relative).
pub fn walk(root: &Path, dest: &str, ownership: Ownership) -> io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    let mut inodes: HashMap<(u64, u64), String> = HashMap::new();
    let meta = fs::symlink_metadata(root)?;
    if meta.is_dir() {
        walk_dir(root, dest, ownership, &mut inodes, &mut out)?;
    } else {
        out.push(entry_for(
            root,
            dest.to_string(),
            &meta,
            ownership,
            &mut inodes,
        )?);
    }
    Ok(out)
}

fn walk_dir(
    dir: &Path,
    dest: &str,
    ownership: Ownership,
    inodes: &mut HashMap<(u64, u64), String>,
    out: &mut Vec<Entry>,
) -> io::Result<()> {
    let mut names: Vec<(Vec<u8>, PathBuf)> = fs::read_dir(dir)?
        .map(|e| e.map(|e| (e.file_name().into_encoded_bytes(), e.path())))
        .collect::<io::Result<_>>()?;
    // Byte order, so hardlink targets come before their links in the sorted tar.
    names.sort();
    for (name, path) in names {
        let name = String::from_utf8_lossy(&name).into_owned();
        let rel = if dest.is_empty() {
            name
        } else {
            format!("{dest}/{name}")
        };
        let meta = fs::symlink_metadata(&path)?;
        out.push(entry_for(&path, rel.clone(), &meta, ownership, inodes)?);
        if meta.is_dir() {
            walk_dir(&path, &rel, ownership, inodes, out)?;
        }
    }
    Ok(())
}

fn entry_for(
    path: &Path,
    rel: String,
    meta: &fs::Metadata,
    ownership: Ownership,
    inodes: &mut HashMap<(u64, u64), String>,
) -> io::Result<Entry> {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink(fs::read_link(path)?.to_string_lossy().into_owned())
    } else if ft.is_file() {
        if meta.nlink() > 1 {
            match inodes.get(&(meta.dev(), meta.ino())) {
                Some(first) => Kind::Hardlink(first.clone()),
                None => {
                    inodes.insert((meta.dev(), meta.ino()), rel.clone());
                    Kind::File(Content::Disk(path.to_path_buf()))
                }
            }
        } else {
            Kind::File(Content::Disk(path.to_path_buf()))
        }
    } else if ft.is_char_device() {
        Kind::Char(major(meta.rdev()), minor(meta.rdev()))
    } else if ft.is_block_device() {
        Kind::Block(major(meta.rdev()), minor(meta.rdev()))
    } else if ft.is_fifo() {
        Kind::Fifo
    } else {
        return Err(io::Error::other(format!(
            "{}: sockets cannot be archived",
            path.display()
        )));
    };
    let mut e = Entry::new(rel, kind, meta.mode() & 0o7777);
    match ownership {
        Ownership::Normalize => {
            e.mode = match &e.kind {
                Kind::Dir => 0o755,
                Kind::Symlink(_) => 0o777,
                _ if meta.mode() & 0o111 != 0 => 0o755,
                _ => 0o644,
            };
            // File capabilities are part of what a project file means; keep them.
            e.xattrs = read_xattrs(path);
        }
        Ownership::Keep => {
            e.uid = meta.uid();
            e.gid = meta.gid();
            e.mtime = meta.mtime().max(0) as u64;
            e.xattrs = read_xattrs(path);
        }
    }
    Ok(e)
}

/// Extended attributes worth keeping (file capabilities and user attributes), sorted.
pub fn read_xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let Ok(names) = xattr::list(path) else {
        return out;
    };
    for name in names {
        let n = name.to_string_lossy().into_owned();
        // Overlay bookkeeping and SELinux labels belong to the build host, not the image.
        if n.starts_with("trusted.") || n == "security.selinux" {
            continue;
        }
        if let Ok(Some(v)) = xattr::get(path, &name) {
            out.insert(n, v);
        }
    }
    out
}

fn major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)) as u32
}

fn minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0xff)) as u32
}
