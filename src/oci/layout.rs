//! OCI image layouts on disk, the one reader and writer: blobs first, `index.json` last, every
//! write atomic, and `index.json` changed read-modify-write under a lock on the layout.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::canonical;
use super::model::{
    self, Descriptor, ImageConfig, Index, MEDIA_INDEX, MEDIA_MANIFEST, Manifest, MediaType,
};
use super::model::{Platform, REF_NAME, platform_matches, platform_string};
use crate::digest::Sha256Digest;
use crate::fsutil::{self, FileLock, FsError};

/// Errors touching a layout.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// Filesystem failure.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// A manifest, config or index larger than registries and skopeo accept.
    #[error(
        "the image {what} would be {size} bytes, over the {limit}-byte limit registries enforce; \
         shorten descriptions, labels or annotations"
    )]
    Oversized {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    /// `index.json` or `oci-layout` is not what the spec says.
    #[error("{path}: not an OCI image layout: {message}")]
    Invalid { path: PathBuf, message: String },
    /// No image of that name in `index.json`.
    #[error(
        "OCI layout {layout}: no image named `{reference}` in index.json (available: {available})"
    )]
    RefNotFound {
        layout: PathBuf,
        reference: String,
        available: String,
    },
    /// The image has no manifest for the wanted platform.
    #[error("OCI layout {layout}: `{reference}` has no {platform} image (it has: {available})")]
    NoPlatform {
        layout: PathBuf,
        reference: String,
        platform: String,
        available: String,
    },
    /// A blob whose bytes do not match its descriptor.
    #[error(
        "OCI layout {layout}: blob {digest} is corrupt: {size} bytes hashing to {actual}, descriptor says {expected_size} bytes"
    )]
    Corrupt {
        layout: PathBuf,
        digest: Sha256Digest,
        actual: Sha256Digest,
        size: u64,
        expected_size: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl From<FsError> for LayoutError {
    fn from(e: FsError) -> Self {
        Self::Io {
            path: e.path,
            source: e.source,
        }
    }
}

/// An image found in a layout for one platform: its manifest and config.
#[derive(Clone, Debug)]
pub struct FoundImage {
    /// The ref name it was found under.
    pub reference: String,
    /// Descriptor of the platform's manifest.
    pub descriptor: Descriptor,
    /// The manifest.
    pub manifest: Manifest,
    /// The image config.
    pub config: ImageConfig,
}

/// An OCI image layout directory.
#[derive(Clone, Debug)]
pub struct Layout {
    dir: PathBuf,
}

/// `index.json` annotation prefix recording, per image name, the digest its refs were last
/// pointed at (refs are never dropped, so several builds of one name can stay listed).
const NEWEST: &str = "dev.hakim.newest.";

const MARKER: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

impl Layout {
    /// Open an existing layout (for reading, or for adding to).
    pub fn open(dir: &Path) -> Result<Self, LayoutError> {
        let layout = Self {
            dir: dir.to_path_buf(),
        };
        crate::janitor::register_layout(dir);
        let marker = dir.join("oci-layout");
        let text = match fs::read_to_string(&marker) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(LayoutError::Invalid {
                    path: dir.to_path_buf(),
                    message: "no oci-layout file".into(),
                });
            }
            Err(e) => return Err(io_err(&marker)(e)),
        };
        if !text.contains("\"imageLayoutVersion\"") {
            return Err(LayoutError::Invalid {
                path: marker,
                message: "bad oci-layout file".into(),
            });
        }
        layout.read_index()?;
        Ok(layout)
    }

    /// Open a layout, creating an empty one if the directory does not exist or is empty.
    pub fn open_or_create(dir: &Path) -> Result<Self, LayoutError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let layout = Self {
            dir: dir.to_path_buf(),
        };
        // Two builds may create the same layout at once: only one may write the empty index.
        let _lock = layout.lock()?;
        if dir.join("oci-layout").is_file() {
            return Self::open(dir);
        }
        if fs::read_dir(dir).map_err(io_err(dir))?.next().is_some() {
            return Err(LayoutError::Invalid {
                path: dir.to_path_buf(),
                message: "directory exists, is not empty and has no oci-layout file".into(),
            });
        }
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        let mut empty = Index::default();
        empty.set_media_type(Some(MediaType::ImageIndex));
        layout.write_index(&empty)?;
        // The marker last: a half-created layout is an empty directory plus blobs, not a layout.
        fsutil::write_atomic(&dir.join("oci-layout"), MARKER)?;
        Ok(layout)
    }

    /// Exclusive lock on the layout (a `flock` of its directory, so no extra file lands in
    /// it); waits, saying so on stderr, while another hakim holds it.
    pub fn lock(&self) -> Result<FileLock, LayoutError> {
        Ok(FileLock::acquire(&self.dir, || {
            eprintln!(
                "hakim: waiting for another hakim to release the OCI layout {}",
                self.dir.display()
            )
        })?)
    }

    /// The layout directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of a blob.
    pub fn blob_path(&self, d: &Sha256Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(d.hex())
    }

    /// Whether a blob is present.
    pub fn has_blob(&self, d: &Sha256Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Add a blob from a file already known to have digest `d` (hardlinked when possible).
    pub fn put_blob_file(&self, src: &Path, d: &Sha256Digest) -> Result<(), LayoutError> {
        let dest = self.blob_path(d);
        if keep_existing(src, &dest, d) {
            return Ok(());
        }
        let tmp = self.dir.join("blobs/sha256").join(format!(
            "{}{}",
            crate::janitor::tmp_prefix(),
            d.hex()
        ));
        let _ = fs::remove_file(&tmp);
        if fs::hard_link(src, &tmp).is_err()
            && let Err(e) = fs::copy(src, &tmp)
        {
            // A full disk must not leave a partial blob behind.
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&tmp)(e));
        }
        fs::rename(&tmp, &dest).map_err(io_err(&dest))
    }

    /// Add a blob from bytes and return its digest.
    pub fn put_blob_bytes(&self, bytes: &[u8]) -> Result<Sha256Digest, LayoutError> {
        let d = Sha256Digest::of(bytes);
        let dest = self.blob_path(&d);
        if !dest.is_file() {
            fsutil::write_atomic(&dest, bytes)?;
        }
        Ok(d)
    }

    /// Read a blob.
    pub fn read_blob(&self, d: &Sha256Digest) -> Result<Vec<u8>, LayoutError> {
        let p = self.blob_path(d);
        fs::read(&p).map_err(io_err(&p))
    }

    /// The SHA-256 digest a descriptor names (blobs are stored under no other algorithm).
    pub fn digest_of(&self, d: &Descriptor) -> Result<Sha256Digest, LayoutError> {
        model::sha256(d).map_err(|e| LayoutError::Invalid {
            path: self.dir.clone(),
            message: e.to_string(),
        })
    }

    /// Path of the blob a descriptor names.
    pub fn blob_path_of(&self, d: &Descriptor) -> Result<PathBuf, LayoutError> {
        Ok(self.blob_path(&self.digest_of(d)?))
    }

    /// Read the blob a descriptor names, checking its size and digest.
    pub fn read_verified(&self, d: &Descriptor) -> Result<Vec<u8>, LayoutError> {
        let digest = self.digest_of(d)?;
        let bytes = self.read_blob(&digest)?;
        let actual = Sha256Digest::of(&bytes);
        if actual != digest || bytes.len() as u64 != d.size() {
            return Err(LayoutError::Corrupt {
                layout: self.dir.clone(),
                digest,
                actual,
                size: bytes.len() as u64,
                expected_size: d.size(),
            });
        }
        Ok(bytes)
    }

    /// Parse the verified JSON document a descriptor names.
    pub fn read_json<T: DeserializeOwned>(&self, d: &Descriptor) -> Result<T, LayoutError> {
        let bytes = self.read_verified(d)?;
        serde_json::from_slice(&bytes).map_err(|e| LayoutError::Invalid {
            path: self.blob_path_of(d).unwrap_or_else(|_| self.dir.clone()),
            message: e.to_string(),
        })
    }

    /// Parse `index.json`.
    pub fn read_index(&self) -> Result<Index, LayoutError> {
        let p = self.dir.join("index.json");
        let bytes = fs::read(&p).map_err(io_err(&p))?;
        serde_json::from_slice(&bytes).map_err(|e| LayoutError::Invalid {
            path: p,
            message: e.to_string(),
        })
    }

    fn write_index(&self, index: &Index) -> Result<(), LayoutError> {
        fsutil::write_atomic(&self.dir.join("index.json"), &canonical::to_vec(index))?;
        Ok(())
    }

    /// Point each entry's ref name at it, replacing only entries of the same ref names; every
    /// other ref stays. Read-modify-write under the layout lock, so parallel builds into one
    /// layout each keep their refs.
    pub fn set_refs(&self, entries: Vec<Descriptor>) -> Result<(), LayoutError> {
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        let replaced: Vec<Option<String>> = entries.iter().map(ref_name).collect();
        let mut manifests = index.manifests().clone();
        manifests.retain(|d| {
            let name = ref_name(d);
            name.is_none() || !replaced.contains(&name)
        });
        let mut annotations = index.annotations().clone().unwrap_or_default();
        for e in &entries {
            if let Some((name, _)) = ref_name(e).as_deref().and_then(|r| r.rsplit_once(':')) {
                annotations.insert(format!("{NEWEST}{name}"), e.digest().to_string());
            }
        }
        manifests.extend(entries);
        manifests.sort_by_key(ref_name);
        index.set_manifests(manifests);
        index.set_annotations((!annotations.is_empty()).then_some(annotations));
        self.write_index(&index)
    }

    /// What the last [`Layout::set_refs`] pointed `name:*` refs at: of several builds under
    /// one name, the newest.
    pub fn newest(&self, name: &str) -> Result<Option<Sha256Digest>, LayoutError> {
        Ok(self
            .read_index()?
            .annotations()
            .as_ref()
            .and_then(|a| a.get(&format!("{NEWEST}{name}")))
            .and_then(|d| d.parse().ok()))
    }

    /// Every `(ref name, descriptor)` in `index.json`, in index order.
    pub fn refs(&self) -> Result<Vec<(String, Descriptor)>, LayoutError> {
        Ok(self
            .read_index()?
            .manifests()
            .iter()
            .cloned()
            .filter_map(|d| ref_name(&d).map(|n| (n, d)))
            .collect())
    }

    /// The descriptor a ref points at. A `name:tag` also finds a bare `tag` ref name (what
    /// umoci and skopeo write) when exactly one entry has it.
    pub fn resolve_ref(&self, reference: &str) -> Result<Descriptor, LayoutError> {
        let refs = self.refs()?;
        if let Some((_, d)) = refs.iter().find(|(n, _)| n == reference) {
            return Ok(d.clone());
        }
        if let Some((_, tag)) = reference.rsplit_once(':') {
            let hits: Vec<_> = refs.iter().filter(|(n, _)| n == tag).collect();
            if let [(_, d)] = hits[..] {
                return Ok(d.clone());
            }
        }
        let available: Vec<&str> = refs.iter().map(|(n, _)| n.as_str()).collect();
        Err(LayoutError::RefNotFound {
            layout: self.dir.clone(),
            reference: reference.to_string(),
            available: if available.is_empty() {
                "none".into()
            } else {
                available.join(", ")
            },
        })
    }

    /// The manifest of `reference` for `platform`, through an image index when it is one.
    pub fn image(&self, reference: &str, platform: &Platform) -> Result<FoundImage, LayoutError> {
        let top = self.resolve_ref(reference)?;
        let descriptor = if top.media_type().as_ref() == MEDIA_INDEX {
            let index: Index = self.read_json(&top)?;
            let found = index.manifests().iter().find(|d| {
                d.platform()
                    .as_ref()
                    .is_some_and(|p| platform_matches(platform, p))
            });
            match found {
                Some(d) => d.clone(),
                None => {
                    let available: Vec<String> = index
                        .manifests()
                        .iter()
                        .filter_map(|d| d.platform().as_ref())
                        .map(platform_string)
                        .collect();
                    return Err(LayoutError::NoPlatform {
                        layout: self.dir.clone(),
                        reference: reference.into(),
                        platform: platform_string(platform),
                        available: available.join(", "),
                    });
                }
            }
        } else {
            top
        };
        if descriptor.media_type().as_ref() != MEDIA_MANIFEST {
            return Err(LayoutError::Invalid {
                path: self.blob_path_of(&descriptor)?,
                message: format!(
                    "`{reference}` has media type `{}`, not an OCI image manifest",
                    descriptor.media_type()
                ),
            });
        }
        let manifest: Manifest = self.read_json(&descriptor)?;
        let config: ImageConfig = self.read_json(manifest.config())?;
        if config.architecture() != platform.architecture() {
            return Err(LayoutError::NoPlatform {
                layout: self.dir.clone(),
                reference: reference.into(),
                platform: platform_string(platform),
                available: format!("{}/{}", config.os(), config.architecture()),
            });
        }
        Ok(FoundImage {
            reference: reference.into(),
            descriptor,
            manifest,
            config,
        })
    }
}

/// Whether the layout's copy at `dest` can stay: it is `src` itself (a hardlink), or a
/// separate copy that still holds the blob. Anything else is replaced, so a cache entry
/// rebuilt after corruption also repairs the layout.
fn keep_existing(src: &Path, dest: &Path, d: &Sha256Digest) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(have), Ok(want)) = (fs::metadata(dest), fs::metadata(src)) else {
        return false;
    };
    if (have.dev(), have.ino()) == (want.dev(), want.ino()) {
        return true;
    }
    have.dev() != want.dev() && crate::cache::verify_file(dest, d, want.len()).is_ok()
}

fn ref_name(d: &Descriptor) -> Option<String> {
    model::annotation(d, REF_NAME).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn entry(layout: &Layout, name: &str, body: &[u8]) -> Descriptor {
        let digest = layout.put_blob_bytes(body).unwrap();
        let mut d = model::descriptor(MEDIA_MANIFEST, &digest, body.len() as u64);
        d.set_annotations(model::annotations(&BTreeMap::from([(
            REF_NAME.to_string(),
            name.to_string(),
        )])));
        d
    }

    #[test]
    fn set_refs_replaces_only_the_names_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::open_or_create(&dir.path().join("oci")).unwrap();
        l.set_refs(vec![
            entry(&l, "a:latest", b"1"),
            entry(&l, "a:sha-1", b"1"),
        ])
        .unwrap();
        l.set_refs(vec![entry(&l, "b:latest", b"2")]).unwrap();
        l.set_refs(vec![
            entry(&l, "a:latest", b"3"),
            entry(&l, "a:sha-2", b"3"),
        ])
        .unwrap();
        let names: Vec<String> = l.refs().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a:latest", "a:sha-1", "a:sha-2", "b:latest"]);
        assert_eq!(
            model::sha256(&l.resolve_ref("a:latest").unwrap()).unwrap(),
            Sha256Digest::of(b"3")
        );
        assert_eq!(
            model::sha256(&l.resolve_ref("a:sha-1").unwrap()).unwrap(),
            Sha256Digest::of(b"1")
        );
        assert_eq!(l.newest("a").unwrap(), Some(Sha256Digest::of(b"3")));
        assert_eq!(l.newest("b").unwrap(), Some(Sha256Digest::of(b"2")));
        assert_eq!(l.newest("c").unwrap(), None);
    }

    #[test]
    fn refs_resolve_by_full_name_or_bare_tag_and_misses_list_what_exists() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::open_or_create(dir.path()).unwrap();
        l.set_refs(vec![entry(&l, "v1", b"x")]).unwrap();
        assert!(l.resolve_ref("whatever:v1").is_ok());
        let e = l.resolve_ref("x:latest").unwrap_err().to_string();
        assert!(e.contains("available: v1"), "{e}");
        let reopened = Layout::open(dir.path()).unwrap();
        assert_eq!(reopened.refs().unwrap().len(), 1);
    }

    #[test]
    fn corrupt_blobs_and_non_layouts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::open_or_create(dir.path()).unwrap();
        let d = entry(&l, "x:1", b"{}");
        fs::write(l.blob_path_of(&d).unwrap(), b"{ }").unwrap();
        let e = l.read_verified(&d).unwrap_err().to_string();
        assert!(e.contains("corrupt"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = Layout::open(empty.path()).unwrap_err().to_string();
        assert!(e.contains("not an OCI image layout"), "{e}");
        fs::write(empty.path().join("stray"), b"").unwrap();
        assert!(Layout::open_or_create(empty.path()).is_err());
    }

    #[test]
    fn layout_files_get_the_umask_mode() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::open_or_create(dir.path()).unwrap();
        let d = l.put_blob_bytes(b"blob").unwrap();
        let want = 0o666 & !fsutil::umask();
        for p in [
            dir.path().join("index.json"),
            dir.path().join("oci-layout"),
            l.blob_path(&d),
        ] {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, want, "{}", p.display());
        }
    }
}
