//! The in-memory form of a layer: a sorted set of tar entries.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where a regular file's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// A file on disk, read when the tar is written.
    Disk(PathBuf),
    /// Bytes held in memory.
    Bytes(Vec<u8>),
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File(Content),
    /// A symlink with its target, kept verbatim.
    Symlink(String),
    /// A hardlink to another path of the same layer (relative, no leading `/`).
    Hardlink(String),
    /// Character device (major, minor).
    Char(u32, u32),
    /// Block device (major, minor).
    Block(u32, u32),
    /// Named pipe.
    Fifo,
    /// Deletes the lower layers' entry at this path (`.wh.<name>`).
    Whiteout,
    /// Hides everything the lower layers have below this directory (`.wh..wh..opq`).
    Opaque,
}

/// One entry of a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the image, relative (`usr/bin/x`), never empty.
    pub path: String,
    /// Type and payload.
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Modification time, seconds (clamped when written).
    pub mtime: u64,
    /// Extended attributes (e.g. `security.capability`), sorted by name.
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl Entry {
    /// An entry with root ownership and no xattrs.
    pub fn new(path: impl Into<String>, kind: Kind, mode: u32) -> Self {
        Self {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: BTreeMap::new(),
        }
    }
}

/// Metadata of one path as the lower layers leave it (no contents).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// `d`, `f`, `l`, `h`, `c`, `b`, `p`.
    pub t: char,
    /// Mode bits.
    pub m: u32,
    /// uid.
    pub u: u32,
    /// gid.
    pub g: u32,
}

/// Normalise an image path (`/usr//bin/` → `usr/bin`); `None` for the root itself.
pub fn rel_path(p: &str) -> Option<String> {
    let parts: Vec<&str> = p
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if parts.is_empty() {
        None
    } else {
        Some(parts.join("/"))
    }
}

/// A layer under construction: entries by path, parents created on demand.
#[derive(Clone, Debug, Default)]
pub struct LayerTree {
    entries: BTreeMap<String, Entry>,
    /// Paths of directories that were created only as parents.
    implicit: std::collections::BTreeSet<String>,
}

impl LayerTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add or replace an entry; missing parent directories are added as implicit dirs.
    pub fn insert(&mut self, entry: Entry) {
        let mut parent = entry.path.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            if !self.entries.contains_key(p) {
                self.entries
                    .insert(p.to_string(), Entry::new(p, Kind::Dir, 0o755));
                self.implicit.insert(p.to_string());
            }
            parent = p;
        }
        self.implicit.remove(&entry.path);
        self.entries.insert(entry.path.clone(), entry);
    }

    /// Look an entry up.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// Remove an entry and everything below it.
    pub fn remove_tree(&mut self, path: &str) {
        let prefix = format!("{path}/");
        self.entries
            .retain(|k, _| k != path && !k.starts_with(&prefix));
        self.implicit
            .retain(|k| k != path && !k.starts_with(&prefix));
    }

    /// Give implicit parents the metadata the lower layers have for them, so writing this
    /// layer does not change a lower directory's owner or mode.
    pub fn adopt_lower_dirs(&mut self, lower: impl Fn(&str) -> Option<Meta>) {
        for p in &self.implicit {
            if let (Some(e), Some(m)) = (self.entries.get_mut(p), lower(p))
                && m.t == 'd'
            {
                e.mode = m.m;
                e.uid = m.u;
                e.gid = m.g;
            }
        }
    }

    /// Whether `path` was added only as the parent of another entry.
    pub fn is_implicit(&self, path: &str) -> bool {
        self.implicit.contains(path)
    }

    /// Entries in tar order (sorted by path bytes, so parents come first).
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the tree is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_created_and_adopt_lower_metadata() {
        let mut t = LayerTree::new();
        t.insert(Entry::new(
            "home/coder/.profile",
            Kind::File(Content::Bytes(vec![])),
            0o644,
        ));
        t.insert(Entry::new("etc", Kind::Dir, 0o700));
        t.adopt_lower_dirs(|p| {
            (p == "home/coder").then_some(Meta {
                t: 'd',
                m: 0o750,
                u: 1000,
                g: 1000,
            })
        });
        let paths: Vec<_> = t
            .entries()
            .map(|e| (e.path.as_str(), e.mode, e.uid))
            .collect();
        assert_eq!(
            paths,
            vec![
                ("etc", 0o700, 0),
                ("home", 0o755, 0),
                ("home/coder", 0o750, 1000),
                ("home/coder/.profile", 0o644, 0)
            ]
        );
        assert_eq!(rel_path("//usr/./bin/"), Some("usr/bin".to_string()));
        assert_eq!(rel_path("/"), None);
    }
}
