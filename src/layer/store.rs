//! The layer cache: sealed layers by cache key, with a metadata index of their entries.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::entry::Meta;
use super::tarball::LayerBlob;
use crate::cache::Cas;
use crate::digest::Sha256Digest;
use crate::fsutil::write_atomic;

/// Errors from the layer cache.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Filesystem failure.
    #[error("layer cache {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// A record or index that does not parse (it is ignored and rebuilt by callers).
    #[error("layer cache {path}: {message}")]
    Corrupt { path: PathBuf, message: String },
}

/// What the cache remembers about a sealed layer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRecord {
    /// The blob.
    pub blob: LayerBlob,
    /// Number of tar entries.
    pub entries: usize,
}

/// Sealed layers keyed by their input hash.
#[derive(Clone, Debug)]
pub struct LayerStore {
    dir: PathBuf,
    cas: Cas,
}

impl LayerStore {
    /// Open the store under `cache_dir`.
    pub fn open(cache_dir: &Path) -> Result<Self, StoreError> {
        // Before any temp file of ours exists: claim a session and sweep dead ones.
        crate::janitor::register_cache(cache_dir).map_err(|source| StoreError::Io {
            path: cache_dir.join("tmp/sessions"),
            source,
        })?;
        let dir = cache_dir.join("layers");
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        let cas = Cas::open(cache_dir.join("blobs")).map_err(|e| StoreError::Corrupt {
            path: dir.clone(),
            message: e.to_string(),
        })?;
        Ok(Self { dir, cas })
    }

    /// The blob store layers are written to.
    pub fn cas(&self) -> &Cas {
        &self.cas
    }

    fn record_path(&self, key: &Sha256Digest) -> PathBuf {
        self.dir.join(format!("{}.json", key.hex()))
    }

    fn index_path(&self, key: &Sha256Digest) -> PathBuf {
        self.dir.join(format!("{}.index.json", key.hex()))
    }

    /// A cached layer whose blob is present and intact; a bad entry is evicted (`None`).
    ///
    /// Cheap on a warm cache: the blob is re-hashed only when its size, inode or times
    /// differ from when it was last verified (see [`integrity`](super::integrity)).
    pub fn get(&self, key: &Sha256Digest) -> Option<LayerRecord> {
        let bytes = fs::read(self.record_path(key)).ok()?;
        let rec: LayerRecord = serde_json::from_slice(&bytes).ok()?;
        if !self.index_path(key).is_file() {
            return None;
        }
        match super::integrity::check_reuse(self, key, &rec) {
            Ok(()) => {
                // The record's mtime is its last use, which `hakim cache prune` goes by.
                let _ = filetime::set_file_mtime(self.record_path(key), filetime::FileTime::now());
                Some(rec)
            }
            Err(_) => {
                self.evict(key);
                None
            }
        }
    }

    /// Forget a layer (record, index and stamp); its blob stays for other records.
    pub fn evict(&self, key: &Sha256Digest) {
        for p in [
            self.record_path(key),
            self.index_path(key),
            self.stamp_path(key),
        ] {
            let _ = fs::remove_file(p);
        }
    }

    /// Where the stat of the blob at its last verification is kept.
    pub(crate) fn stamp_path(&self, key: &Sha256Digest) -> PathBuf {
        self.dir.join(format!("{}.verified", key.hex()))
    }

    /// The directory holding records.
    pub(crate) fn records_dir(&self) -> &Path {
        &self.dir
    }

    /// Remember a sealed layer (index first, record last, both atomic).
    pub fn put(
        &self,
        key: &Sha256Digest,
        rec: &LayerRecord,
        index: &[(String, Meta)],
    ) -> Result<(), StoreError> {
        write_atomic(
            &self.index_path(key),
            &serde_json::to_vec(index).expect("index serializes"),
        )?;
        write_atomic(
            &self.record_path(key),
            &serde_json::to_vec_pretty(rec).expect("record serializes"),
        )?;
        // The blob was hashed as it was written: it is verified as of now.
        super::integrity::stamp(self, key, &rec.blob);
        Ok(())
    }

    /// Remember a layer built elsewhere (a registry cache) whose blob is already in the blob
    /// store, once the blob hashes to the record's digest and uncompresses to its diff_id.
    pub fn adopt(
        &self,
        key: &Sha256Digest,
        rec: &LayerRecord,
        index: &[(String, Meta)],
    ) -> Result<(), StoreError> {
        super::integrity::content_ok(self, rec).map_err(|message| StoreError::Corrupt {
            path: self.cas().path(&rec.blob.digest),
            message,
        })?;
        self.put(key, rec, index)
    }

    /// The entry index of a cached layer.
    pub fn index(&self, key: &Sha256Digest) -> Result<Vec<(String, Meta)>, StoreError> {
        let path = self.index_path(key);
        let bytes = fs::read(&path).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path,
            message: e.to_string(),
        })
    }
}

impl From<crate::fsutil::FsError> for StoreError {
    fn from(e: crate::fsutil::FsError) -> Self {
        Self::Io {
            path: e.path,
            source: e.source,
        }
    }
}

/// What a layer being built can see of the layers below it.
pub trait Lower {
    /// Metadata of a path, if present.
    fn meta(&self, path: &str) -> Option<Meta>;
    /// Contents of regular files by path; missing paths are absent from the result.
    fn read_files(&self, paths: &[String]) -> Result<BTreeMap<String, Vec<u8>>, StoreError>;
    /// Everything below a directory (e.g. `etc/skel`), as relative paths.
    fn files_under(&self, dir: &str) -> Vec<(String, Meta)>;
}

/// The merged view of the layers below the one being built.
pub struct LowerView<'a> {
    store: &'a LayerStore,
    layers: Vec<LayerRecord>,
    /// path → (meta, index of the layer that last wrote it)
    merged: BTreeMap<String, (Meta, usize)>,
}

impl<'a> LowerView<'a> {
    /// Build the view from cached layers, bottom first.
    pub fn new(
        store: &'a LayerStore,
        layers: &[(Sha256Digest, LayerRecord)],
    ) -> Result<Self, StoreError> {
        let mut merged: BTreeMap<String, (Meta, usize)> = BTreeMap::new();
        for (i, (key, _)) in layers.iter().enumerate() {
            for (path, meta) in store.index(key)? {
                match meta.t {
                    'w' => remove_tree(&mut merged, &path, true),
                    'o' => remove_tree(&mut merged, &path, false),
                    _ => {
                        merged.insert(path, (meta, i));
                    }
                }
            }
        }
        Ok(Self {
            store,
            layers: layers.iter().map(|(_, r)| r.clone()).collect(),
            merged,
        })
    }
}

impl Lower for LowerView<'_> {
    fn meta(&self, path: &str) -> Option<Meta> {
        self.merged.get(path).map(|(m, _)| m.clone())
    }

    fn read_files(&self, paths: &[String]) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
        let mut by_layer: BTreeMap<usize, Vec<&String>> = BTreeMap::new();
        for p in paths {
            if let Some((m, i)) = self.merged.get(p)
                && m.t == 'f'
            {
                by_layer.entry(*i).or_default().push(p);
            }
        }
        let mut out = BTreeMap::new();
        for (i, wanted) in by_layer {
            let blob = &self.layers[i].blob;
            let path = self.store.cas.path(&blob.digest);
            let io_err = |source| StoreError::Io {
                path: path.clone(),
                source,
            };
            let file = fs::File::open(&path).map_err(io_err)?;
            let reader: Box<dyn Read> = if blob.media_type.ends_with("zstd") {
                Box::new(zstd::Decoder::new(file).map_err(io_err)?)
            } else {
                Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(file)))
            };
            let mut ar = tar::Archive::new(reader);
            for entry in ar.entries().map_err(io_err)? {
                let mut entry = entry.map_err(io_err)?;
                let name = String::from_utf8_lossy(&entry.path_bytes())
                    .trim_start_matches("./")
                    .trim_end_matches('/')
                    .to_string();
                if wanted.iter().any(|w| **w == name) {
                    let mut buf = Vec::new();
                    entry.read_to_end(&mut buf).map_err(io_err)?;
                    out.insert(name, buf);
                }
            }
        }
        Ok(out)
    }

    fn files_under(&self, dir: &str) -> Vec<(String, Meta)> {
        let prefix = format!("{dir}/");
        self.merged
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, (m, _))| (k.clone(), m.clone()))
            .collect()
    }
}

fn remove_tree(map: &mut BTreeMap<String, (Meta, usize)>, path: &str, including_self: bool) {
    if including_self {
        map.remove(path);
    }
    let prefix = format!("{path}/");
    let doomed: Vec<String> = map
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        map.remove(&k);
    }
}

/// A real root filesystem seen as the lower side (package and run layers build on one).
pub struct DirView {
    /// The root directory.
    pub root: PathBuf,
}

fn dir_meta(p: &Path) -> Option<Meta> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = fs::symlink_metadata(p).ok()?;
    let ft = m.file_type();
    let t = if ft.is_dir() {
        'd'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_file() {
        'f'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else {
        'p'
    };
    Some(Meta {
        t,
        m: m.mode() & 0o7777,
        u: m.uid(),
        g: m.gid(),
    })
}

impl Lower for DirView {
    fn meta(&self, path: &str) -> Option<Meta> {
        dir_meta(&self.root.join(path))
    }

    fn read_files(&self, paths: &[String]) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
        let mut out = BTreeMap::new();
        for p in paths {
            let full = self.root.join(p);
            if fs::symlink_metadata(&full).is_ok_and(|m| m.is_file()) {
                let bytes = fs::read(&full).map_err(|source| StoreError::Io {
                    path: full.clone(),
                    source,
                })?;
                out.insert(p.clone(), bytes);
            }
        }
        Ok(out)
    }

    fn files_under(&self, dir: &str) -> Vec<(String, Meta)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_string()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = fs::read_dir(self.root.join(&d)) else {
                continue;
            };
            for e in rd.flatten() {
                let rel = format!("{d}/{}", e.file_name().to_string_lossy());
                if let Some(m) = dir_meta(&e.path()) {
                    if m.t == 'd' {
                        stack.push(rel.clone());
                    }
                    out.push((rel, m));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}
