//! Checking cached layers before they are reused, and `hakim cache verify`.
//!
//! A reuse costs one `stat`: the blob is re-hashed only when its size, inode, mtime or
//! ctime differ from the stamp written when it was last verified. Any write to the blob
//! (even one that keeps its size) changes its ctime, so a flipped byte is caught.

use std::fs;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::store::{LayerRecord, LayerStore};
use super::tarball::LayerBlob;
use crate::cache::BlobState;
use crate::digest::Sha256Digest;
use crate::fsutil::write_atomic;

/// A file's identity and change times: equal stamps mean the content was not written.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    pub(super) fn of(path: &Path) -> io::Result<Self> {
        let m = fs::metadata(path)?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        })
    }

    /// Whether the file changed within `window` before `now`.
    pub(super) fn is_recent(
        &self,
        window: std::time::Duration,
        now: std::time::SystemTime,
    ) -> bool {
        let now_ns = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        now_ns - self.ctime_ns.max(self.mtime_ns) < window.as_nanos() as i128
    }
}

/// Remember that `blob` is intact as it is on disk now.
pub fn stamp(store: &LayerStore, key: &Sha256Digest, blob: &LayerBlob) {
    if let Ok(s) = Stamp::of(&store.cas().path(&blob.digest)) {
        // Best effort: without a stamp the next reuse hashes the blob again.
        let _ = write_atomic(
            &store.stamp_path(key),
            &serde_json::to_vec(&s).expect("stamp serializes"),
        );
    }
}

/// Why a cache entry cannot be reused.
pub fn check_reuse(
    store: &LayerStore,
    key: &Sha256Digest,
    rec: &LayerRecord,
) -> Result<(), String> {
    let path = store.cas().path(&rec.blob.digest);
    let now = Stamp::of(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if now.size != rec.blob.size {
        return Err(format!(
            "{}: {} bytes, the record says {}",
            path.display(),
            now.size,
            rec.blob.size
        ));
    }
    let known = fs::read(store.stamp_path(key))
        .ok()
        .and_then(|b| serde_json::from_slice::<Stamp>(&b).ok());
    if known.as_ref() == Some(&now) {
        return Ok(());
    }
    content_ok(store, rec)?;
    stamp(store, key, &rec.blob);
    Ok(())
}

/// The blob hashes to its digest and its uncompressed content to the layer's diff_id
/// (which catches a record pointing at another, intact blob).
pub(super) fn content_ok(store: &LayerStore, rec: &LayerRecord) -> Result<(), String> {
    digest_ok(store, &rec.blob)?;
    let path = store.cas().path(&rec.blob.digest);
    let diff_id = uncompressed_digest(&path, &rec.blob.media_type)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if diff_id != rec.blob.diff_id {
        return Err(format!(
            "record points at blob {} whose content is {diff_id}, not the layer's {}",
            rec.blob.digest, rec.blob.diff_id
        ));
    }
    Ok(())
}

fn digest_ok(store: &LayerStore, blob: &LayerBlob) -> Result<(), String> {
    match store.cas().check(&blob.digest) {
        Ok(BlobState::Good) => Ok(()),
        Ok(BlobState::Missing) => Err(format!("blob {} is missing", blob.digest)),
        Ok(BlobState::Removed { actual }) => {
            Err(format!("blob {} hashed to {actual}; removed", blob.digest))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// One cache entry `hakim cache verify` removed.
#[derive(Clone, Debug, Serialize)]
pub struct Removed {
    /// The record or blob file.
    pub path: PathBuf,
    /// What was wrong with it.
    pub reason: String,
}

/// What `hakim cache verify` found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Layer records checked (blob digest and uncompressed diff_id).
    pub layers: usize,
    /// Blobs re-hashed.
    pub blobs: usize,
    /// Entries found bad and removed; the next build rebuilds them.
    pub removed: Vec<Removed>,
}

/// `hakim cache verify`: open the layer cache under `cache_dir` and check all of it.
pub fn verify_cache(cache_dir: &Path) -> Result<VerifyReport, super::store::StoreError> {
    let store = LayerStore::open(cache_dir)?;
    verify_all(&store).map_err(|source| super::store::StoreError::Io {
        path: cache_dir.to_path_buf(),
        source,
    })
}

/// Re-hash every blob and every layer's uncompressed content; evict what is bad.
pub fn verify_all(store: &LayerStore) -> io::Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let mut records: Vec<PathBuf> = fs::read_dir(store.records_dir())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().unwrap_or_default().to_string_lossy();
            n.ends_with(".json") && !n.ends_with(".index.json")
        })
        .collect();
    records.sort();
    for path in records {
        let stem = path.file_stem().unwrap_or_default().to_string_lossy();
        let Ok(key) = stem.parse::<Sha256Digest>() else {
            continue;
        };
        report.layers += 1;
        if let Err(reason) = verify_layer(store, &key) {
            store.evict(&key);
            report.removed.push(Removed { path, reason });
        }
    }
    let blob_dir = store.cas().root().join("sha256");
    let mut blobs: Vec<PathBuf> = fs::read_dir(&blob_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    blobs.sort();
    for path in blobs {
        let Some(d) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<Sha256Digest>().ok())
        else {
            continue;
        };
        report.blobs += 1;
        match store.cas().check(&d) {
            Ok(BlobState::Removed { actual }) => report.removed.push(Removed {
                path,
                reason: format!("hashed to {actual}"),
            }),
            Ok(_) => {}
            Err(e) => report.removed.push(Removed {
                path,
                reason: e.to_string(),
            }),
        }
    }
    Ok(report)
}

fn verify_layer(store: &LayerStore, key: &Sha256Digest) -> Result<(), String> {
    let rec_path = store.records_dir().join(format!("{}.json", key.hex()));
    let bytes = fs::read(&rec_path).map_err(|e| e.to_string())?;
    let rec: LayerRecord =
        serde_json::from_slice(&bytes).map_err(|e| format!("unreadable record: {e}"))?;
    let index = store.index(key).map_err(|e| e.to_string())?;
    if index.len() != rec.entries {
        return Err(format!(
            "index lists {} entries, the record says {}",
            index.len(),
            rec.entries
        ));
    }
    let path = store.cas().path(&rec.blob.digest);
    let size = fs::metadata(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if size != rec.blob.size {
        return Err(format!(
            "blob has {size} bytes, the record says {}",
            rec.blob.size
        ));
    }
    content_ok(store, &rec)?;
    stamp(store, key, &rec.blob);
    Ok(())
}

fn uncompressed_digest(path: &Path, media_type: &str) -> io::Result<Sha256Digest> {
    let file = BufReader::new(fs::File::open(path)?);
    let reader: Box<dyn Read> = if media_type.ends_with("zstd") {
        Box::new(zstd::Decoder::new(file)?)
    } else if media_type.ends_with("gzip") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    Sha256Digest::of_reader(reader)
}
