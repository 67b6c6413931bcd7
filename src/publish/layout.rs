//! Reads an OCI image layout and plans what a push must send, leaves first.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::digest::Sha256Digest;

use super::error::{PublishError, Result};

/// OCI image manifest media type.
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
// Nested indexes deeper than this are surely a cycle or garbage.
const MAX_DEPTH: usize = 4;

#[derive(Deserialize)]
struct RawDescriptor {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawPlatform {
    architecture: String,
    os: String,
    variant: Option<String>,
}

#[derive(Deserialize)]
struct RawIndex {
    manifests: Vec<RawDescriptor>,
}

#[derive(Deserialize)]
struct RawManifest {
    config: RawDescriptor,
    #[serde(default)]
    layers: Vec<RawDescriptor>,
}

/// A content descriptor taken from the layout.
#[derive(Clone, Debug)]
pub(crate) struct Descriptor {
    pub media_type: String,
    pub digest: Sha256Digest,
    pub size: u64,
    /// `os/arch[/variant]` when the parent index says so.
    pub platform: Option<String>,
}

/// A manifest or index document, with its exact bytes.
#[derive(Clone, Debug)]
pub(crate) struct ManifestDoc {
    pub desc: Descriptor,
    pub bytes: Vec<u8>,
}

/// What pushing one image means: blobs, then manifests in order, the last being the root.
#[derive(Debug)]
pub(crate) struct PushPlan {
    pub blobs: Vec<Descriptor>,
    /// Children before parents; the last entry is the image named by the source ref.
    pub manifests: Vec<ManifestDoc>,
}

impl PushPlan {
    /// The document tags will point to.
    pub fn root(&self) -> &ManifestDoc {
        self.manifests
            .last()
            .expect("a plan always has a root manifest")
    }
}

/// Path of a blob inside a layout.
pub(crate) fn blob_path(dir: &Path, digest: &Sha256Digest) -> PathBuf {
    dir.join("blobs").join("sha256").join(digest.hex())
}

fn layout_err(dir: &Path, detail: impl Into<String>) -> PublishError {
    PublishError::Layout {
        path: dir.to_path_buf(),
        detail: detail.into(),
    }
}

fn descriptor(dir: &Path, raw: &RawDescriptor, what: &str) -> Result<Descriptor> {
    let digest: Sha256Digest = raw
        .digest
        .parse()
        .map_err(|e| layout_err(dir, format!("{what}: {e}")))?;
    let platform = raw.platform.as_ref().map(|p| {
        let mut s = format!("{}/{}", p.os, p.architecture);
        if let Some(v) = &p.variant {
            s.push('/');
            s.push_str(v);
        }
        s
    });
    Ok(Descriptor {
        media_type: raw.media_type.clone().unwrap_or_default(),
        digest,
        size: raw.size,
        platform,
    })
}

/// Plan the push of the image `source_ref` (`name:tag`, or just the bare ref.name) from `dir`.
pub(crate) fn plan(dir: &Path, source_ref: &str) -> Result<PushPlan> {
    let marker = dir.join("oci-layout");
    if !marker.is_file() {
        return Err(layout_err(
            dir,
            "not an OCI image layout (no oci-layout file)",
        ));
    }
    let index_path = dir.join("index.json");
    let bytes = fs::read(&index_path).map_err(|e| layout_err(dir, format!("index.json: {e}")))?;
    let index: RawIndex =
        serde_json::from_slice(&bytes).map_err(|e| layout_err(dir, format!("index.json: {e}")))?;
    let root = find_ref(dir, &index, source_ref)?;
    let root = descriptor(dir, root, "index.json")?;

    let mut plan = PushPlan {
        blobs: Vec::new(),
        manifests: Vec::new(),
    };
    let mut seen_blobs = HashSet::new();
    let mut seen_docs = HashSet::new();
    walk(dir, root, 0, &mut plan, &mut seen_blobs, &mut seen_docs)?;
    Ok(plan)
}

fn find_ref<'a>(dir: &Path, index: &'a RawIndex, source_ref: &str) -> Result<&'a RawDescriptor> {
    let name_of = |d: &RawDescriptor| d.annotations.get(REF_NAME).cloned();
    if let Some(d) = index
        .manifests
        .iter()
        .find(|d| name_of(d).as_deref() == Some(source_ref))
    {
        return Ok(d);
    }
    // umoci and skopeo record only the tag (`latest`) as ref.name; accept that when unambiguous.
    if let Some((_, tag)) = source_ref.rsplit_once(':') {
        let hits: Vec<_> = index
            .manifests
            .iter()
            .filter(|d| name_of(d).as_deref() == Some(tag))
            .collect();
        if hits.len() == 1 {
            return Ok(hits[0]);
        }
    }
    let available: Vec<String> = index.manifests.iter().filter_map(name_of).collect();
    Err(PublishError::RefNotFound {
        layout: dir.to_path_buf(),
        reference: source_ref.to_string(),
        available: if available.is_empty() {
            "none".into()
        } else {
            available.join(", ")
        },
    })
}

fn read_doc(dir: &Path, desc: &Descriptor) -> Result<Vec<u8>> {
    let path = blob_path(dir, &desc.digest);
    let bytes = fs::read(&path).map_err(|e| layout_err(dir, format!("{}: {e}", path.display())))?;
    let actual = Sha256Digest::of(&bytes);
    if actual != desc.digest || bytes.len() as u64 != desc.size {
        return Err(layout_err(
            dir,
            format!(
                "blob {} is corrupt: {} bytes hashing to {actual}, descriptor says {} bytes",
                desc.digest,
                bytes.len(),
                desc.size
            ),
        ));
    }
    Ok(bytes)
}

fn walk(
    dir: &Path,
    desc: Descriptor,
    depth: usize,
    plan: &mut PushPlan,
    seen_blobs: &mut HashSet<Sha256Digest>,
    seen_docs: &mut HashSet<Sha256Digest>,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(layout_err(
            dir,
            format!("image indexes nested deeper than {MAX_DEPTH}"),
        ));
    }
    if !seen_docs.insert(desc.digest) {
        return Ok(());
    }
    let bytes = read_doc(dir, &desc)?;
    match desc.media_type.as_str() {
        MEDIA_INDEX => {
            let index: RawIndex = serde_json::from_slice(&bytes)
                .map_err(|e| layout_err(dir, format!("image index {}: {e}", desc.digest)))?;
            for child in &index.manifests {
                let child = descriptor(dir, child, &format!("image index {}", desc.digest))?;
                walk(dir, child, depth + 1, plan, seen_blobs, seen_docs)?;
            }
        }
        MEDIA_MANIFEST => {
            let m: RawManifest = serde_json::from_slice(&bytes)
                .map_err(|e| layout_err(dir, format!("image manifest {}: {e}", desc.digest)))?;
            let what = format!("image manifest {}", desc.digest);
            for raw in std::iter::once(&m.config).chain(&m.layers) {
                let blob = descriptor(dir, raw, &what)?;
                if !seen_blobs.insert(blob.digest) {
                    continue;
                }
                let path = blob_path(dir, &blob.digest);
                crate::cache::verify_file(&path, &blob.digest, blob.size)
                    .map_err(|e| layout_err(dir, e.to_string()))?;
                plan.blobs.push(blob);
            }
        }
        other => {
            return Err(layout_err(
                dir,
                format!(
                    "{} has media type `{other}`; only OCI image manifests and indexes are pushed",
                    desc.digest
                ),
            ));
        }
    }
    plan.manifests.push(ManifestDoc { desc, bytes });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn put(dir: &Path, bytes: &[u8]) -> serde_json::Value {
        let d = Sha256Digest::of(bytes);
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(blob_path(dir, &d), bytes).unwrap();
        json!({"digest": d.oci(), "size": bytes.len()})
    }

    /// A layout with one image whose manifest has `media_type`, named `name`.
    fn layout(dir: &Path, media_type: &str, name: &str) -> Sha256Digest {
        let mut config = put(dir, b"{}");
        config["mediaType"] = json!("application/vnd.oci.image.config.v1+json");
        let mut layer = put(dir, b"layer");
        layer["mediaType"] = json!("application/vnd.oci.image.layer.v1.tar");
        let manifest = json!({"schemaVersion": 2, "config": config, "layers": [layer, layer]});
        let mut desc = put(dir, &serde_json::to_vec(&manifest).unwrap());
        desc["mediaType"] = json!(media_type);
        desc["annotations"] = json!({REF_NAME: name});
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        fs::write(
            dir.join("index.json"),
            json!({"schemaVersion": 2, "manifests": [desc]}).to_string(),
        )
        .unwrap();
        desc["digest"].as_str().unwrap().parse().unwrap()
    }

    #[test]
    fn plans_blobs_once_and_the_manifest_last() {
        let tmp = tempfile::tempdir().unwrap();
        let d = layout(tmp.path(), MEDIA_MANIFEST, "hakim-base:latest");
        let p = plan(tmp.path(), "hakim-base:latest").unwrap();
        assert_eq!(p.blobs.len(), 2, "config + one layer listed twice");
        assert_eq!(p.root().desc.digest, d);
    }

    #[test]
    fn accepts_a_bare_tag_ref_name_and_lists_names_when_missing() {
        let tmp = tempfile::tempdir().unwrap();
        layout(tmp.path(), MEDIA_MANIFEST, "v1");
        assert!(plan(tmp.path(), "whatever:v1").is_ok());
        let e = plan(tmp.path(), "hakim-base:latest").unwrap_err();
        assert!(e.to_string().contains("available: v1"), "{e}");
    }

    #[test]
    fn rejects_docker_media_types_corruption_and_non_layouts() {
        let tmp = tempfile::tempdir().unwrap();
        layout(
            tmp.path(),
            "application/vnd.docker.distribution.manifest.v2+json",
            "x:1",
        );
        let e = plan(tmp.path(), "x:1").unwrap_err();
        assert!(e.to_string().contains("only OCI image manifests"), "{e}");

        let tmp = tempfile::tempdir().unwrap();
        let d = layout(tmp.path(), MEDIA_MANIFEST, "x:1");
        fs::write(blob_path(tmp.path(), &d), b"{}").unwrap();
        let e = plan(tmp.path(), "x:1").unwrap_err();
        assert!(e.to_string().contains("corrupt"), "{e}");

        // A layer blob with one byte changed (same size) is caught before any upload.
        let tmp = tempfile::tempdir().unwrap();
        layout(tmp.path(), MEDIA_MANIFEST, "x:1");
        let layer = blob_path(tmp.path(), &Sha256Digest::of(b"layer"));
        fs::write(&layer, b"lAyer").unwrap();
        let e = plan(tmp.path(), "x:1").unwrap_err();
        assert!(e.to_string().contains("hakim cache verify"), "{e}");

        let empty = tempfile::tempdir().unwrap();
        let e = plan(empty.path(), "x:1").unwrap_err();
        assert!(e.to_string().contains("not an OCI image layout"), "{e}");
    }
}
