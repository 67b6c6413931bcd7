//! Plans what a push must send from an OCI layout, leaves first; [`crate::oci::Layout`] does
//! all the reading.

use std::collections::HashSet;

use crate::digest::Sha256Digest;
use crate::oci::model::{self, Index, MEDIA_INDEX, MEDIA_MANIFEST, Manifest};
use crate::oci::{Layout, LayoutError};

use super::error::{PublishError, Result};

// Nested indexes deeper than this are surely a cycle or garbage.
const MAX_DEPTH: usize = 4;

/// A content descriptor taken from the layout.
#[derive(Clone, Debug)]
pub(crate) struct Descriptor {
    pub media_type: String,
    pub digest: Sha256Digest,
    pub size: u64,
    /// `os/arch[/variant]` when the parent index says so.
    pub platform: Option<String>,
}

impl Descriptor {
    /// The layout's descriptor, whose digest the layout has already checked is SHA-256.
    fn new(d: &model::Descriptor, digest: Sha256Digest) -> Self {
        Self {
            media_type: d.media_type().to_string(),
            digest,
            size: d.size(),
            platform: d.platform().as_ref().map(model::platform_string),
        }
    }
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

impl From<LayoutError> for PublishError {
    fn from(e: LayoutError) -> Self {
        match e {
            e @ LayoutError::RefNotFound { .. } => Self::RefNotFound {
                source: Box::new(e),
            },
            other => Self::Layout {
                path: other_path(&other),
                detail: other.to_string(),
            },
        }
    }
}

fn other_path(e: &LayoutError) -> std::path::PathBuf {
    match e {
        LayoutError::Io { path, .. } | LayoutError::Invalid { path, .. } => path.clone(),
        LayoutError::RefNotFound { layout, .. }
        | LayoutError::NoPlatform { layout, .. }
        | LayoutError::Corrupt { layout, .. } => layout.clone(),
        // Only writing a document can be oversized; a push writes none.
        LayoutError::Oversized { .. } => std::path::PathBuf::new(),
    }
}

fn layout_err(layout: &Layout, detail: impl Into<String>) -> PublishError {
    PublishError::Layout {
        path: layout.dir().to_path_buf(),
        detail: detail.into(),
    }
}

/// Plan the push of the image `source_ref` (`name:tag`, or just the bare ref.name) from `layout`.
///
/// Documents are read and verified here; blobs only have their size checked, and are hashed
/// just before they are uploaded (a blob the registry already has is never read).
pub(crate) fn plan(layout: &Layout, source_ref: &str) -> Result<PushPlan> {
    let root = layout.resolve_ref(source_ref)?;
    let mut walk = Walk {
        layout,
        plan: PushPlan {
            blobs: Vec::new(),
            manifests: Vec::new(),
        },
        seen_blobs: HashSet::new(),
        seen_docs: HashSet::new(),
    };
    walk.doc(&root, 0)?;
    Ok(walk.plan)
}

struct Walk<'a> {
    layout: &'a Layout,
    plan: PushPlan,
    seen_blobs: HashSet<Sha256Digest>,
    seen_docs: HashSet<Sha256Digest>,
}

impl Walk<'_> {
    fn doc(&mut self, desc: &model::Descriptor, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(layout_err(
                self.layout,
                format!("image indexes nested deeper than {MAX_DEPTH}"),
            ));
        }
        let digest = self.layout.digest_of(desc)?;
        if !self.seen_docs.insert(digest) {
            return Ok(());
        }
        let bytes = self.layout.read_verified(desc)?;
        let parse_err = |what: &str, e: serde_json::Error| {
            layout_err(self.layout, format!("{what} {digest}: {e}"))
        };
        match desc.media_type().as_ref() {
            MEDIA_INDEX => {
                let index: Index =
                    serde_json::from_slice(&bytes).map_err(|e| parse_err("image index", e))?;
                for child in index.manifests() {
                    self.doc(child, depth + 1)?;
                }
            }
            MEDIA_MANIFEST => {
                let m: Manifest =
                    serde_json::from_slice(&bytes).map_err(|e| parse_err("image manifest", e))?;
                for blob in std::iter::once(m.config()).chain(m.layers()) {
                    self.blob(blob)?;
                }
            }
            other => {
                return Err(layout_err(
                    self.layout,
                    format!(
                        "{digest} has media type `{other}`; only OCI image manifests and indexes are pushed"
                    ),
                ));
            }
        }
        self.plan.manifests.push(ManifestDoc {
            desc: Descriptor::new(desc, digest),
            bytes,
        });
        Ok(())
    }

    /// A missing or truncated blob fails the plan, before anything is sent.
    fn blob(&mut self, blob: &model::Descriptor) -> Result<()> {
        let digest = self.layout.digest_of(blob)?;
        if !self.seen_blobs.insert(digest) {
            return Ok(());
        }
        let path = self.layout.blob_path(&digest);
        let len = std::fs::metadata(&path)
            .map_err(|e| layout_err(self.layout, format!("blob {digest}: {e}")))?
            .len();
        if len != blob.size() {
            return Err(layout_err(
                self.layout,
                format!(
                    "{}: corrupt blob {digest}: {len} bytes, expected {}",
                    path.display(),
                    blob.size()
                ),
            ));
        }
        self.plan.blobs.push(Descriptor::new(blob, digest));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::oci::model::REF_NAME;
    use std::fs;
    use std::path::Path;

    fn blob_path(dir: &Path, d: &Sha256Digest) -> std::path::PathBuf {
        dir.join("blobs/sha256").join(d.hex())
    }

    fn plan(dir: &Path, source_ref: &str) -> Result<PushPlan> {
        super::plan(&Layout::open(dir)?, source_ref)
    }

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

        // A truncated layer blob is caught by the plan (a flipped byte, when it is uploaded).
        let tmp = tempfile::tempdir().unwrap();
        layout(tmp.path(), MEDIA_MANIFEST, "x:1");
        let layer = blob_path(tmp.path(), &Sha256Digest::of(b"layer"));
        fs::write(&layer, b"laye").unwrap();
        let e = plan(tmp.path(), "x:1").unwrap_err();
        assert!(e.to_string().contains("4 bytes, expected 5"), "{e}");

        let empty = tempfile::tempdir().unwrap();
        let e = plan(empty.path(), "x:1").unwrap_err();
        assert!(e.to_string().contains("not an OCI image layout"), "{e}");
    }
}
