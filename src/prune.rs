//! `hakim cache prune`: reclaim space, like `docker builder prune --keep-storage`.
//!
//! First the leftovers of interrupted runs go ([`crate::janitor::sweep`]). With a budget,
//! whole cache entries are then removed, least recently used first, until the cache fits:
//! a layer (record, index, blob and its unpacked tree) or a downloaded file.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use crate::digest::Sha256Digest;
use crate::layer::store::{LayerRecord, LayerStore};

/// A size that is not `<number>[K|M|G|T][B]`.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a size (examples: 500M, 10GB, 1073741824)")]
pub struct BadSize(pub String);

/// Parse `10GB`, `500M`, `1.5G` or a plain number of bytes (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, BadSize> {
    let t = s.trim().to_ascii_uppercase();
    let t = t
        .strip_suffix("IB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(&t);
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let exp = "KMGT".find(c).ok_or_else(|| BadSize(s.into()))? as i32 + 1;
            (&t[..i], 1024f64.powi(exp))
        }
        _ => (t, 1.0),
    };
    let n: f64 = num.trim().parse().map_err(|_| BadSize(s.into()))?;
    if !n.is_finite() || n < 0.0 {
        return Err(BadSize(s.into()));
    }
    Ok((n * mult) as u64)
}

/// What a prune did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    /// Leftovers of interrupted runs that were removed.
    pub leftovers: usize,
    /// Overlay mounts of interrupted runs that were detached.
    pub unmounted: usize,
    /// Cache entries removed to meet the budget.
    pub entries: usize,
    /// Bytes freed in all.
    pub freed: u64,
    /// Bytes the cache holds afterwards.
    pub remaining: u64,
}

struct Item {
    used: SystemTime,
    bytes: u64,
    paths: Vec<PathBuf>,
    layer: Option<Sha256Digest>,
}

/// Sweep leftovers, then (with `keep`) remove least recently used entries until the cache
/// holds at most `keep` bytes.
pub fn prune(cache_dir: &Path, keep: Option<u64>) -> io::Result<PruneReport> {
    // Sweep before opening the store (which would sweep too, without telling us).
    let swept = crate::janitor::sweep(cache_dir, &[]);
    let store = LayerStore::open(cache_dir).map_err(io::Error::other)?;
    let mut report = PruneReport {
        leftovers: swept.removed.len(),
        unmounted: swept.unmounted.len(),
        freed: swept.bytes,
        ..Default::default()
    };
    let mut items = items(&store, cache_dir)?;
    let mut total: u64 = items.iter().map(|i| i.bytes).sum();
    if let Some(keep) = keep {
        items.sort_by_key(|i| i.used);
        for item in items {
            if total <= keep {
                break;
            }
            if let Some(key) = item.layer {
                store.evict(&key);
            }
            for p in &item.paths {
                let _ = if p.is_dir() {
                    fs::remove_dir_all(p)
                } else {
                    fs::remove_file(p)
                };
            }
            total -= item.bytes;
            report.freed += item.bytes;
            report.entries += 1;
        }
    }
    report.remaining = total;
    Ok(report)
}

fn mtime(p: &Path) -> SystemTime {
    fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn size(p: &Path) -> u64 {
    fs::symlink_metadata(p).map_or(0, |m| m.len())
}

/// Every removable entry: layers (with blob and unpacked tree, when no other layer shares
/// them) and the downloads no layer refers to.
fn items(store: &LayerStore, cache_dir: &Path) -> io::Result<Vec<Item>> {
    let mut layers: BTreeMap<Sha256Digest, (PathBuf, LayerRecord)> = BTreeMap::new();
    for e in fs::read_dir(cache_dir.join("layers"))?.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(key) = name
            .strip_suffix(".json")
            .filter(|k| !k.ends_with(".index"))
            .and_then(|k| k.parse::<Sha256Digest>().ok())
        else {
            continue;
        };
        if let Some(rec) = fs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice::<LayerRecord>(&b).ok())
        {
            layers.insert(key, (p, rec));
        }
    }
    let mut users: BTreeMap<Sha256Digest, usize> = BTreeMap::new();
    for (_, rec) in layers.values() {
        *users.entry(rec.blob.digest).or_default() += 1;
    }
    let rootfs = crate::rootfs::RootfsCache::new(cache_dir);
    let mut out = Vec::new();
    let mut owned: BTreeSet<Sha256Digest> = BTreeSet::new();
    for (key, (record, rec)) in &layers {
        owned.insert(rec.blob.digest);
        let mut paths = Vec::new();
        let mut bytes = 0;
        // A blob shared by two records goes with the last of them.
        let uses = users.get_mut(&rec.blob.digest).expect("counted above");
        *uses -= 1;
        if *uses == 0 {
            let blob = store.cas().path(&rec.blob.digest);
            bytes += size(&blob);
            paths.push(blob);
            let tree = rootfs.path(&rec.blob.diff_id);
            if tree.is_dir() {
                bytes += crate::janitor::tree_bytes(&tree);
                paths.push(tree);
            }
        }
        out.push(Item {
            used: mtime(record),
            bytes,
            paths,
            layer: Some(*key),
        });
    }
    for e in fs::read_dir(store.cas().root().join("sha256"))?.flatten() {
        let p = e.path();
        let Ok(d) = e.file_name().to_string_lossy().parse::<Sha256Digest>() else {
            continue;
        };
        if owned.contains(&d) {
            continue;
        }
        out.push(Item {
            used: mtime(&p),
            bytes: size(&p),
            paths: vec![p],
            layer: None,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("2k").unwrap(), 2048);
        assert_eq!(parse_size("10GB").unwrap(), 10 << 30);
        assert_eq!(parse_size("1.5M").unwrap(), 3 << 19);
        assert_eq!(parse_size("3MiB").unwrap(), 3 << 20);
        for bad in ["", "x", "-1", "5Q", "1e999"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
