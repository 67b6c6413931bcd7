//! Squashing layer tars into one tar without unpacking to disk.
//!
//! Pass 1 reads every layer's headers (in parallel) and replays them in order, honouring
//! whiteouts and opaque directories, into the final tree. Pass 2 reads the layers again in
//! order and copies each surviving entry's bytes straight into the output tar, so the result
//! depends only on the layers, never on timing or thread count.
//!
//! Decompressing a layer costs more than reading it, so pass 1 also copies each compressed
//! layer's tar stream into an anonymous scratch file, and pass 2 reads that instead of
//! decompressing the blob a second time. The copy is only a shortcut: a layer whose copy
//! could not be made (no scratch directory, a full disk) is decompressed again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::ExportError;
use crate::layer::entry::{Content, Entry, Kind, rel_path};
use crate::layer::tarball::append_entry;
use crate::rootfs::unpack::{decoder, pax_of};

/// A layer entry's place: (layer index, entry index within the layer).
pub(crate) type Pos = (usize, u64);

/// What a path is in the final tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NodeKind {
    /// A directory.
    Dir,
    /// A regular file whose bytes are those of the entry at this position.
    File(Pos),
    /// A symlink.
    Symlink(String),
    /// A character device.
    Char(u32, u32),
    /// A block device.
    Block(u32, u32),
    /// A named pipe.
    Fifo,
}

/// Owner, mode, time and xattrs of a node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// One path of the final tree.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    /// The entry that put it there (for files: where the link or copy was read).
    pub pos: Pos,
    pub kind: NodeKind,
    pub meta: Meta,
}

/// An image layer blob to read.
#[derive(Clone, Debug)]
pub(crate) struct LayerSource {
    pub blob: PathBuf,
    pub media_type: String,
}

/// One header of a layer, as pass 1 needs it.
#[derive(Debug)]
struct Raw {
    seq: u64,
    path: String,
    what: RawKind,
    meta: Meta,
}

#[derive(Debug)]
enum RawKind {
    Node(NodeKind),
    Hardlink(String),
    Whiteout,
    Opaque,
}

/// The merged tree of a stack of layers, plus small files captured on the way.
#[derive(Debug, Default)]
pub(crate) struct Tree {
    pub nodes: BTreeMap<String, Node>,
    /// Contents of the requested small files, with the position they were read at.
    captured: Captured,
    /// Entries added by the template layer (index `layers`), by entry index.
    synthetic: BTreeMap<u64, Entry>,
    layers: usize,
    /// Per layer, its tar stream as pass 1 decompressed it, when a copy was made.
    spilled: Vec<Option<File>>,
}

fn bad_layer(blob: &Path, message: impl Into<String>) -> ExportError {
    ExportError::Layer {
        blob: blob.to_path_buf(),
        message: message.into(),
    }
}

/// Captured small files: path → (where read, bytes).
type Captured = BTreeMap<String, (Pos, Vec<u8>)>;

/// A reader that also writes what it reads to a scratch file, giving up on the copy (never
/// on the read) when the copy cannot be written.
struct Tee<R> {
    inner: R,
    copy: Option<BufWriter<File>>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(c) = &mut self.copy
            && c.write_all(&buf[..n]).is_err()
        {
            self.copy = None;
        }
        Ok(n)
    }
}

impl<R> Tee<R> {
    /// The complete copy, if every write reached the file.
    fn finish(self) -> Option<File> {
        self.copy?.into_inner().ok()
    }
}

/// A layer blob that pass 2 would have to decompress again (plain tars are read as they are).
fn is_compressed(media_type: &str) -> bool {
    !media_type.trim().ends_with(".tar")
}

/// Pass 1 for one layer: its headers, the captured files and the copy of its tar stream.
fn read_headers(
    index: usize,
    src: &LayerSource,
    capture: &BTreeSet<String>,
    scratch: Option<&Path>,
) -> Result<(Vec<Raw>, Captured, Option<File>), ExportError> {
    let io = |e: std::io::Error| bad_layer(&src.blob, e.to_string());
    // Anonymous (O_TMPFILE, else unlinked at once): the kernel frees it however the export
    // ends, even on SIGKILL, so no sweep is needed and nothing shows in the directory.
    let copy = scratch
        .filter(|_| is_compressed(&src.media_type))
        .and_then(|dir| tempfile::tempfile_in(dir).ok())
        .map(|f| BufWriter::with_capacity(1 << 20, f));
    let mut archive = tar::Archive::new(Tee {
        inner: decoder(&src.blob, &src.media_type)?,
        copy,
    });
    let mut out = Vec::new();
    let mut captured = BTreeMap::new();
    for (seq, entry) in archive.entries().map_err(io)?.enumerate() {
        let mut entry = entry.map_err(io)?;
        let seq = seq as u64;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(path) = rel_path(&name) else {
            continue;
        };
        let base = path.rsplit('/').next().unwrap_or(&path);
        let pax = pax_of(&mut entry).map_err(io)?;
        let h = entry.header();
        let meta = Meta {
            mode: h.mode().map_err(io)? & 0o7777,
            uid: pax.uid.map_or_else(|| h.uid().map_err(io), Ok)? as u32,
            gid: pax.gid.map_or_else(|| h.gid().map_err(io), Ok)? as u32,
            mtime: pax.mtime.map_or_else(|| h.mtime().map_err(io), Ok)?,
            xattrs: pax.xattrs,
        };
        let link = || -> Result<String, ExportError> {
            let l = entry
                .link_name_bytes()
                .ok_or_else(|| bad_layer(&src.blob, format!("`{name}` has no link target")))?;
            Ok(String::from_utf8_lossy(&l).into_owned())
        };
        let dev = || -> Result<(u32, u32), ExportError> {
            Ok((
                h.device_major().map_err(io)?.unwrap_or(0),
                h.device_minor().map_err(io)?.unwrap_or(0),
            ))
        };
        use tar::EntryType as T;
        let what = if base == ".wh..wh..opq" {
            RawKind::Opaque
        } else if base.starts_with(".wh..wh.") {
            continue; // aufs bookkeeping (e.g. `.wh..wh.plnk`), not part of the tree
        } else if base.starts_with(".wh.") {
            RawKind::Whiteout
        } else {
            match h.entry_type() {
                T::Regular | T::Continuous => RawKind::Node(NodeKind::File((index, seq))),
                T::Directory => RawKind::Node(NodeKind::Dir),
                T::Symlink => RawKind::Node(NodeKind::Symlink(link()?)),
                T::Link => RawKind::Hardlink(
                    rel_path(&link()?)
                        .ok_or_else(|| bad_layer(&src.blob, format!("`{name}` links to `/`")))?,
                ),
                T::Char => {
                    let (a, b) = dev()?;
                    RawKind::Node(NodeKind::Char(a, b))
                }
                T::Block => {
                    let (a, b) = dev()?;
                    RawKind::Node(NodeKind::Block(a, b))
                }
                T::Fifo => RawKind::Node(NodeKind::Fifo),
                other => {
                    return Err(bad_layer(
                        &src.blob,
                        format!("`{name}`: unsupported tar entry type {other:?}"),
                    ));
                }
            }
        };
        if matches!(what, RawKind::Node(NodeKind::File(_))) && capture.contains(&path) {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(io)?;
            captured.insert(path.clone(), ((index, seq), bytes));
        }
        out.push(Raw {
            seq,
            path,
            what,
            meta,
        });
    }
    // Pass 2 parses the same bytes the same way, so it never reads past what the tar
    // reader consumed here: the copy is complete without draining the rest of the stream.
    Ok((out, captured, archive.into_inner().finish()))
}

fn parent(path: &str) -> Option<&str> {
    path.rsplit_once('/').map(|(p, _)| p)
}

impl Tree {
    /// Replay `layers` bottom first; the contents of regular files in `capture` are kept.
    /// With a `scratch` directory, compressed layers' tar streams are copied there for
    /// [`Tree::write`] (as large as the uncompressed layers, freed with the tree).
    pub fn read(
        layers: &[LayerSource],
        capture: &BTreeSet<String>,
        scratch: Option<&Path>,
    ) -> Result<Self, ExportError> {
        // Headers are read in parallel (decompression is the cost), then applied in order.
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = layers
                .iter()
                .enumerate()
                .map(|(i, l)| s.spawn(move || read_headers(i, l, capture, scratch)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("header reader panicked"))
                .collect()
        });
        let mut tree = Tree {
            layers: layers.len(),
            ..Tree::default()
        };
        for (i, r) in results.into_iter().enumerate() {
            let (raws, captured, spilled) = r?;
            tree.captured.extend(captured);
            tree.spilled.push(spilled);
            tree.apply(i, &layers[i].blob, raws)?;
        }
        Ok(tree)
    }

    fn apply(&mut self, index: usize, blob: &Path, raws: Vec<Raw>) -> Result<(), ExportError> {
        // Whiteouts hide what the layers below have, never this layer's own entries.
        for r in &raws {
            match r.what {
                RawKind::Whiteout => {
                    let (dir, base) = match r.path.rsplit_once('/') {
                        Some((d, b)) => (Some(d), b),
                        None => (None, r.path.as_str()),
                    };
                    let name = &base[".wh.".len()..];
                    let target = dir.map_or(name.to_string(), |d| format!("{d}/{name}"));
                    self.remove_tree(&target, true);
                }
                RawKind::Opaque => {
                    if let Some(dir) = parent(&r.path) {
                        self.remove_tree(dir, false);
                    } else {
                        self.nodes.clear();
                    }
                }
                _ => {}
            }
        }
        for r in raws {
            let pos = (index, r.seq);
            let node = match r.what {
                RawKind::Node(kind) => Node {
                    pos,
                    kind,
                    meta: r.meta,
                },
                RawKind::Hardlink(target) => {
                    let t = self.nodes.get(&target).ok_or_else(|| {
                        bad_layer(
                            blob,
                            format!("`{}` is a hardlink to missing `{target}`", r.path),
                        )
                    })?;
                    // A link shares its target's inode: same bytes, owner and mode.
                    Node {
                        pos,
                        kind: t.kind.clone(),
                        meta: t.meta.clone(),
                    }
                }
                RawKind::Whiteout | RawKind::Opaque => continue,
            };
            self.insert(r.path, node);
        }
        Ok(())
    }

    /// Put a node at `path`, making its parents directories and dropping whatever it replaces.
    pub fn insert(&mut self, path: String, node: Node) {
        let mut prefix = String::new();
        for part in path.split('/').collect::<Vec<_>>().split_last().unwrap().1 {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            match self.nodes.get(&prefix) {
                Some(n) if n.kind == NodeKind::Dir => {}
                _ => {
                    self.remove_tree(&prefix, true);
                    self.nodes.insert(
                        prefix.clone(),
                        Node {
                            pos: node.pos,
                            kind: NodeKind::Dir,
                            meta: Meta {
                                mode: 0o755,
                                ..Meta::default()
                            },
                        },
                    );
                }
            }
        }
        let keep_children = node.kind == NodeKind::Dir
            && self
                .nodes
                .get(&path)
                .is_some_and(|n| n.kind == NodeKind::Dir);
        if !keep_children {
            self.remove_tree(&path, true);
        }
        self.nodes.insert(path, node);
    }

    /// Remove everything below `path`, and `path` itself when `itself`.
    pub fn remove_tree(&mut self, path: &str, itself: bool) {
        if itself {
            self.nodes.remove(path);
        }
        let prefix = format!("{path}/");
        let below: Vec<String> = self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in below {
            self.nodes.remove(&k);
        }
    }

    /// The captured contents of `path`, if it is still the file they were read from.
    pub fn captured(&self, path: &str) -> Option<&[u8]> {
        let (pos, bytes) = self.captured.get(path)?;
        match self.nodes.get(path) {
            Some(Node {
                kind: NodeKind::File(p),
                ..
            }) if p == pos => Some(bytes),
            _ => None,
        }
    }

    /// Add an entry of the template layer that comes after every image layer.
    pub fn add_synthetic(&mut self, entry: Entry) {
        let seq = self.synthetic.len() as u64;
        let pos = (self.layers, seq);
        let meta = Meta {
            mode: entry.mode,
            uid: entry.uid,
            gid: entry.gid,
            mtime: entry.mtime,
            xattrs: entry.xattrs.clone(),
        };
        let kind = match &entry.kind {
            Kind::Dir => NodeKind::Dir,
            Kind::File(_) => NodeKind::File(pos),
            Kind::Symlink(t) => NodeKind::Symlink(t.clone()),
            Kind::Char(a, b) => NodeKind::Char(*a, *b),
            Kind::Block(a, b) => NodeKind::Block(*a, *b),
            Kind::Fifo => NodeKind::Fifo,
            Kind::Hardlink(t) => match self.nodes.get(t) {
                Some(n) => n.kind.clone(),
                None => return,
            },
            Kind::Whiteout => {
                self.remove_tree(&entry.path, true);
                return;
            }
            Kind::Opaque => {
                self.remove_tree(&entry.path, false);
                return;
            }
        };
        let path = entry.path.clone();
        self.synthetic.insert(seq, entry);
        self.insert(path, Node { pos, kind, meta });
    }

    /// Follow symlinks inside the tree (at most 40) to the node `path` names.
    pub fn resolve(&self, path: &str) -> Option<(&str, &Node)> {
        let mut parts: Vec<String> = rel_path(path)?.split('/').map(String::from).collect();
        let mut done: Vec<String> = Vec::new();
        let mut hops = 0;
        while !parts.is_empty() {
            let part = parts.remove(0);
            if part == ".." {
                done.pop();
                continue;
            }
            done.push(part);
            let key = done.join("/");
            let node = self.nodes.get(&key)?;
            if let NodeKind::Symlink(t) = &node.kind {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                done.pop();
                if t.starts_with('/') {
                    done.clear();
                }
                let mut new: Vec<String> = t
                    .split('/')
                    .filter(|c| !c.is_empty() && *c != ".")
                    .map(String::from)
                    .collect();
                new.append(&mut parts);
                parts = new;
            }
        }
        let key = done.join("/");
        self.nodes.get_key_value(&key).map(|(k, n)| (k.as_str(), n))
    }

    /// Write the tree as one tar to `out`, reading the layers (or pass 1's copies of their
    /// tar streams) a second time for contents.
    pub fn write<W: Write>(&self, layers: &[LayerSource], out: W) -> Result<W, ExportError> {
        let plan = self.plan();
        let mut w = Writer {
            tree: self,
            b: tar::Builder::new(out),
            emitted: BTreeSet::new(),
        };
        for (i, src) in layers.iter().enumerate() {
            if !plan.layers.contains(&i) {
                continue; // nothing of this layer survives
            }
            let io = |e: std::io::Error| bad_layer(&src.blob, e.to_string());
            let stream: Box<dyn Read + '_> = match self.spilled.get(i).and_then(Option::as_ref) {
                Some(mut copy) => {
                    copy.seek(SeekFrom::Start(0)).map_err(io)?;
                    Box::new(BufReader::with_capacity(1 << 20, copy))
                }
                None => decoder(&src.blob, &src.media_type)?,
            };
            let mut archive = tar::Archive::new(stream);
            for (seq, entry) in archive.entries().map_err(io)?.enumerate() {
                let mut entry = entry.map_err(io)?;
                if let Some(paths) = plan.at.get(&(i, seq as u64)) {
                    let size = entry.header().size().map_err(io)?;
                    w.emit_all(paths, Some((size, &mut entry)))?;
                }
            }
        }
        for (seq, _) in self.synthetic.iter() {
            if let Some(paths) = plan.at.get(&(self.layers, *seq)) {
                w.emit_all(paths, None)?;
            }
        }
        w.b.into_inner().map_err(|e| ExportError::Tar(e.into()))
    }

    /// Which paths each entry position emits: a file's first path carries its bytes, the
    /// other paths sharing them follow as hardlinks.
    fn plan(&self) -> Plan {
        let mut at: HashMap<Pos, Vec<String>> = HashMap::new();
        let mut groups: BTreeMap<Pos, Vec<&String>> = BTreeMap::new();
        for (path, node) in &self.nodes {
            match node.kind {
                NodeKind::File(content) => groups.entry(content).or_default().push(path),
                _ => at.entry(node.pos).or_default().push(path.clone()),
            }
        }
        for (content, mut paths) in groups {
            // The path that still holds the original entry goes first; else the smallest.
            if let Some(i) = paths.iter().position(|p| self.nodes[*p].pos == content) {
                let p = paths.remove(i);
                paths.insert(0, p);
            }
            at.entry(content)
                .or_default()
                .extend(paths.into_iter().cloned());
        }
        let layers = at.keys().map(|(l, _)| *l).collect();
        Plan { at, layers }
    }
}

struct Plan {
    at: HashMap<Pos, Vec<String>>,
    layers: BTreeSet<usize>,
}

struct Writer<'t, W: Write> {
    tree: &'t Tree,
    b: tar::Builder<W>,
    emitted: BTreeSet<String>,
}

impl<W: Write> Writer<'_, W> {
    fn emit_all(
        &mut self,
        paths: &[String],
        mut stream: Option<(u64, &mut dyn Read)>,
    ) -> Result<(), ExportError> {
        let mut first_file: Option<&String> = None;
        for path in paths {
            let node = &self.tree.nodes[path];
            if let NodeKind::File(content) = node.kind {
                match first_file {
                    None => {
                        first_file = Some(path);
                        let data = if content.0 < self.tree.layers {
                            stream.take()
                        } else {
                            None
                        };
                        self.emit(path, node, None, data)?;
                    }
                    Some(primary) => self.emit(path, node, Some(primary), None)?,
                }
            } else {
                self.emit(path, node, None, None)?;
            }
        }
        Ok(())
    }

    fn emit(
        &mut self,
        path: &str,
        node: &Node,
        link_to: Option<&String>,
        data: Option<(u64, &mut dyn Read)>,
    ) -> Result<(), ExportError> {
        if self.emitted.contains(path) {
            return Ok(());
        }
        // Parents first, with their final metadata, whichever layer they came from.
        if let Some(p) = parent(path)
            && !self.emitted.contains(p)
        {
            let pnode = &self.tree.nodes[p];
            self.emit(p, pnode, None, None)?;
        }
        let kind = match (&node.kind, link_to) {
            (NodeKind::File(_), Some(primary)) => Kind::Hardlink(primary.clone()),
            // Image bytes come streamed in `data`; template bytes from the template entry.
            (NodeKind::File(pos), None) if pos.0 < self.tree.layers => {
                Kind::File(Content::Bytes(Vec::new()))
            }
            (NodeKind::File(pos), None) => self.tree.synthetic[&pos.1].kind.clone(),
            (NodeKind::Dir, _) => Kind::Dir,
            (NodeKind::Symlink(t), _) => Kind::Symlink(t.clone()),
            (NodeKind::Char(a, b), _) => Kind::Char(*a, *b),
            (NodeKind::Block(a, b), _) => Kind::Block(*a, *b),
            (NodeKind::Fifo, _) => Kind::Fifo,
        };
        let e = Entry {
            path: path.to_string(),
            kind,
            mode: node.meta.mode,
            uid: node.meta.uid,
            gid: node.meta.gid,
            mtime: node.meta.mtime,
            xattrs: node.meta.xattrs.clone(),
        };
        append_entry(&mut self.b, &e, u64::MAX, data).map_err(ExportError::Tar)?;
        self.emitted.insert(path.to_string());
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A plain tar layer file `dir/name` of (path, type, contents or link target) entries.
    pub(in crate::export) fn layer(
        dir: &Path,
        name: &str,
        entries: &[(&str, tar::EntryType, &str)],
    ) -> LayerSource {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, body) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            if matches!(kind, tar::EntryType::Link | tar::EntryType::Symlink) {
                h.set_size(0);
                b.append_link(&mut h, path, body).unwrap();
            } else {
                h.set_size(body.len() as u64);
                b.append_data(&mut h, path, body.as_bytes()).unwrap();
            }
        }
        let blob = dir.join(name);
        std::fs::write(&blob, b.into_inner().unwrap()).unwrap();
        LayerSource {
            blob,
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        }
    }

    /// path → (type, contents or link target) of a tar.
    pub(in crate::export) fn contents(
        tar_bytes: &[u8],
    ) -> BTreeMap<String, (tar::EntryType, String)> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().to_string_lossy().into_owned();
                let kind = e.header().entry_type();
                let mut body = String::new();
                if kind == tar::EntryType::Link {
                    body = e
                        .link_name()
                        .unwrap()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                } else {
                    e.read_to_string(&mut body).unwrap();
                }
                (path, (kind, body))
            })
            .collect()
    }

    #[test]
    fn hardlinks_keep_the_bytes_they_had_when_linked() {
        use tar::EntryType::{Link, Regular};
        let d = tempfile::tempdir().unwrap();
        let layers = vec![
            layer(
                d.path(),
                "1",
                &[("t", Regular, "old"), ("h", Link, "t"), ("g", Link, "t")],
            ),
            layer(
                d.path(),
                "2",
                &[(".wh.t", Regular, ""), ("u", Regular, "u")],
            ),
            layer(d.path(), "3", &[("t", Regular, "new")]),
        ];
        let tree = Tree::read(&layers, &BTreeSet::new(), None).unwrap();
        let out = tree.write(&layers, Vec::new()).unwrap();
        let got = contents(&out);
        // `t` was deleted and re-created: the links keep the old bytes, sharing one inode.
        assert_eq!(got["t"], (Regular, "new".into()));
        assert_eq!(got["g"], (Regular, "old".into()));
        assert_eq!(got["h"], (Link, "g".into()));
        assert_eq!(got["u"], (Regular, "u".into()));
        // The same layers always give the same bytes.
        let again = Tree::read(&layers, &BTreeSet::new(), None)
            .unwrap()
            .write(&layers, Vec::new())
            .unwrap();
        assert!(out == again);
    }

    /// `l` gzip-compressed in place, as built layers are.
    fn gzipped(l: LayerSource) -> LayerSource {
        let tar = std::fs::read(&l.blob).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        std::fs::write(&l.blob, gz.finish().unwrap()).unwrap();
        LayerSource {
            blob: l.blob,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        }
    }

    #[test]
    fn pass_two_reads_the_spilled_copies_and_writes_the_same_bytes() {
        use tar::EntryType::{Link, Regular};
        let d = tempfile::tempdir().unwrap();
        let big = "x".repeat(3 << 20); // larger than the copy's and the reader's buffers
        let layers = vec![
            gzipped(layer(
                d.path(),
                "1",
                &[
                    ("big", Regular, &big),
                    ("t", Regular, "old"),
                    ("h", Link, "t"),
                ],
            )),
            layer(
                d.path(),
                "2",
                &[(".wh.t", Regular, ""), ("u", Regular, "u")],
            ),
            gzipped(layer(d.path(), "3", &[("t", Regular, "new")])),
        ];
        let scratch = d.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        let direct = Tree::read(&layers, &BTreeSet::new(), None).unwrap();
        let spilled = Tree::read(&layers, &BTreeSet::new(), Some(&scratch)).unwrap();
        // Compressed layers are copied; the plain one is read as it is.
        let copied: Vec<bool> = spilled.spilled.iter().map(Option::is_some).collect();
        assert_eq!(copied, [true, false, true]);
        // The copies are anonymous: nothing to clean up, whatever ends the export.
        assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
        let expected = direct.write(&layers, Vec::new()).unwrap();
        // A scratch directory that cannot take files only costs the second decompression.
        let missing = d.path().join("missing");
        let fallback = Tree::read(&layers, &BTreeSet::new(), Some(&missing)).unwrap();
        assert!(fallback.spilled.iter().all(Option::is_none));
        assert!(fallback.write(&layers, Vec::new()).unwrap() == expected);
        // Pass 2 must not decompress again: with the blobs gone, only the copies are left.
        for l in &layers {
            if is_compressed(&l.media_type) {
                std::fs::remove_file(&l.blob).unwrap();
            }
        }
        let got = spilled.write(&layers, Vec::new()).unwrap();
        assert!(got == expected, "the spilled copies gave other bytes");
        assert_eq!(contents(&got)["big"].1.len(), big.len());
        // A second write reads the copies from their start again.
        assert!(spilled.write(&layers, Vec::new()).unwrap() == expected);
    }

    #[test]
    fn template_entries_follow_the_layers_and_symlinks_resolve() {
        use tar::EntryType::{Regular, Symlink};
        let d = tempfile::tempdir().unwrap();
        let layers = vec![layer(
            d.path(),
            "1",
            &[
                ("usr/sbin/init", Regular, "systemd"),
                ("sbin", Symlink, "usr/sbin"),
            ],
        )];
        let mut tree = Tree::read(&layers, &BTreeSet::new(), None).unwrap();
        assert_eq!(tree.resolve("/sbin/init").unwrap().0, "usr/sbin/init");
        assert!(tree.resolve("/sbin/nothing").is_none());
        tree.add_synthetic(Entry::new(
            "etc/x",
            Kind::File(Content::Bytes(b"from yaml".to_vec())),
            0o600,
        ));
        tree.add_synthetic(Entry::new("usr/sbin/init", Kind::Whiteout, 0));
        let got = contents(&tree.write(&layers, Vec::new()).unwrap());
        assert_eq!(got["etc/x"], (Regular, "from yaml".into()));
        assert!(!got.contains_key("usr/sbin/init"));
        assert!(
            got.contains_key("etc/") || got.contains_key("etc"),
            "{got:?}"
        );
    }
}
