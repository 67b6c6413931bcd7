//! Writes small but real OCI image layouts (tar layers, configs, manifests, indexes).

use std::path::{Path, PathBuf};

use hakim::digest::Sha256Digest;
use serde_json::{Value, json};

pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// A layout under construction.
pub struct Layout {
    pub dir: PathBuf,
    refs: Vec<Value>,
}

/// A descriptor we wrote: its JSON and digest.
#[derive(Clone, Debug)]
pub struct Desc {
    pub json: Value,
    pub digest: Sha256Digest,
}

/// A tar with the given files (deterministic headers).
pub fn tar_layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// `n` bytes that do not compress and differ per `seed`.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

impl Layout {
    /// Start a layout in `dir` (created).
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        Self {
            dir: dir.to_path_buf(),
            refs: Vec::new(),
        }
    }

    /// Store a blob; returns its descriptor.
    pub fn blob(&self, media_type: &str, bytes: &[u8]) -> Desc {
        let digest = Sha256Digest::of(bytes);
        std::fs::write(self.dir.join("blobs/sha256").join(digest.hex()), bytes).unwrap();
        Desc {
            json: json!({"mediaType": media_type, "digest": digest.oci(), "size": bytes.len()}),
            digest,
        }
    }

    /// An image manifest for `arch` with these uncompressed tar layers.
    pub fn image(&self, arch: &str, layers: &[Vec<u8>]) -> Desc {
        let descs: Vec<Desc> = layers.iter().map(|l| self.blob(LAYER_TAR, l)).collect();
        let config = json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Env": ["PATH=/usr/bin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": descs.iter().map(|d| d.digest.oci()).collect::<Vec<_>>()},
        });
        let config = self.blob(CONFIG, &serde_json::to_vec(&config).unwrap());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": config.json,
            "layers": descs.iter().map(|d| d.json.clone()).collect::<Vec<_>>(),
        });
        self.blob(MANIFEST, &serde_json::to_vec(&manifest).unwrap())
    }

    /// An image index over `(arch, manifest)` pairs.
    pub fn index(&self, manifests: &[(&str, Desc)]) -> Desc {
        let entries: Vec<Value> = manifests
            .iter()
            .map(|(arch, d)| {
                let mut j = d.json.clone();
                j["platform"] = json!({"architecture": arch, "os": "linux"});
                j
            })
            .collect();
        let index = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries});
        self.blob(INDEX, &serde_json::to_vec(&index).unwrap())
    }

    /// Name `desc` as `name:tag` in index.json and (re)write index.json + oci-layout.
    pub fn tag(&mut self, name_tag: &str, desc: &Desc) {
        let mut j = desc.json.clone();
        j["annotations"] = json!({"org.opencontainers.image.ref.name": name_tag});
        self.refs.push(j);
        std::fs::write(
            self.dir.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let index = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": self.refs});
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }
}
