//! A layer cache in an OCI registry, shared by jobs that share no disk (`--cache-from`,
//! `--cache-to`, as buildx's registry cache).
//!
//! Each layer is one artifact manifest tagged `layer-<cache key hex>`: its config is the
//! layer's record (key, blob, entry count), its first layer is the layer blob itself and its
//! second the entry index the layers above it read. Nothing is trusted until it verifies: the
//! entry must name the key asked for, every blob must hash to its descriptor, and the layer
//! must uncompress to the recorded diff_id. Anything less is a miss, and the caller builds.

use std::collections::HashSet;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::registry::{BlobOutcome, Registry};
use super::{PublishError, Publisher, PushOptions, Target, layout};
use crate::digest::Sha256Digest;
use crate::layer::entry::Meta;
use crate::layer::store::{LayerRecord, LayerStore, StoreError};
use crate::media::MANIFEST;
use crate::oci::{canonical, model};

/// `artifactType` of a cache entry's manifest.
pub const ARTIFACT_TYPE: &str = "application/vnd.hakim.layer-cache.v1";
/// Media type of a cache entry's config: the layer's key and record.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.hakim.layer-cache.config.v1+json";
/// Media type of a cached layer's entry index.
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.hakim.layer-index.v1+json";
/// Annotation naming the layer, for people browsing the cache repository.
const LAYER_NAME: &str = "dev.hakim.layer.name";

/// The tag of the cache entry for the layer with cache key `key`.
pub fn entry_tag(key: &Sha256Digest) -> String {
    format!("layer-{}", key.hex())
}

/// Why a cache entry was not used or not written; never fatal to a build.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The registry could not be reached or refused us.
    #[error(transparent)]
    Registry(#[from] PublishError),
    /// The entry is there but is not a layer hakim can trust.
    #[error("cache entry {reference}: {detail}")]
    Invalid { reference: String, detail: String },
    /// The local layer cache could not take (or give) the layer.
    #[error("cache entry {reference}: {source}")]
    Store {
        reference: String,
        source: StoreError,
    },
}

/// The config blob of a cache entry.
#[derive(Serialize, Deserialize)]
struct EntryConfig {
    key: Sha256Digest,
    record: LayerRecord,
}

/// A blob a cache entry points at.
#[derive(Clone, Debug)]
struct Blob {
    media_type: String,
    digest: Sha256Digest,
    size: u64,
}

impl Blob {
    fn of(d: &model::Descriptor) -> Result<Self, String> {
        Ok(Self {
            media_type: d.media_type().to_string(),
            digest: model::sha256(d).map_err(|e| e.to_string())?,
            size: d.size(),
        })
    }

    fn descriptor(&self) -> model::Descriptor {
        model::descriptor(&self.media_type, &self.digest, self.size)
    }
}

/// The three blobs of a cache entry, as its manifest names them.
struct EntryBlobs {
    config: Blob,
    layer: Blob,
    index: Blob,
}

impl EntryBlobs {
    /// The entry of layer `key`: its config and index written into the blob store beside the
    /// layer blob, so all three are sent from there.
    fn write(
        store: &LayerStore,
        key: &Sha256Digest,
        record: &LayerRecord,
    ) -> Result<Self, StoreError> {
        let index = canonical::to_vec(&store.index(key)?);
        let config = canonical::to_vec(&EntryConfig {
            key: *key,
            record: record.clone(),
        });
        let cas = store.cas();
        let put = |bytes: &[u8], media_type: &str| {
            let digest = cas.insert_bytes(bytes).map_err(|e| StoreError::Corrupt {
                path: cas.root().to_path_buf(),
                message: e.to_string(),
            })?;
            Ok::<_, StoreError>(Blob {
                media_type: media_type.into(),
                digest,
                size: bytes.len() as u64,
            })
        };
        Ok(Self {
            config: put(&config, CONFIG_MEDIA_TYPE)?,
            index: put(&index, INDEX_MEDIA_TYPE)?,
            layer: Blob {
                media_type: record.blob.media_type.clone(),
                digest: record.blob.digest,
                size: record.blob.size,
            },
        })
    }

    /// The entry's manifest, naming the layer for people browsing the repository.
    fn manifest(&self, layer: &str) -> Vec<u8> {
        let mut manifest = model::manifest(
            self.config.descriptor(),
            vec![self.layer.descriptor(), self.index.descriptor()],
        );
        manifest.set_artifact_type(Some(model::MediaType::from(ARTIFACT_TYPE)));
        manifest.set_annotations(model::annotations(
            &[(LAYER_NAME.to_string(), layer.to_string())].into(),
        ));
        canonical::to_vec(&manifest)
    }

    /// The layer record a config blob holds, if it is the entry of `key` and names this
    /// entry's layer blob.
    fn record_in(&self, config: &[u8], key: &Sha256Digest) -> Result<LayerRecord, String> {
        let config: EntryConfig =
            serde_json::from_slice(config).map_err(|e| format!("config: {e}"))?;
        if config.key != *key {
            return Err(format!("it is the entry of key {}", config.key));
        }
        let (blob, layer) = (&config.record.blob, &self.layer);
        if blob.digest != layer.digest
            || blob.size != layer.size
            || blob.media_type != layer.media_type
        {
            return Err(format!(
                "its record names blob {} ({} bytes, {}), its manifest {} ({} bytes, {})",
                blob.digest, blob.size, blob.media_type, layer.digest, layer.size, layer.media_type
            ));
        }
        Ok(config.record)
    }

    fn parse(media_type: &str, bytes: &[u8]) -> Result<Self, String> {
        let bare = media_type.split(';').next().unwrap_or_default().trim();
        if bare != MANIFEST {
            return Err(format!("media type {media_type}, not {MANIFEST}"));
        }
        let m: model::Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("manifest: {e}"))?;
        let artifact = m.artifact_type().as_ref().map(ToString::to_string);
        if artifact.as_deref() != Some(ARTIFACT_TYPE) {
            return Err(format!(
                "artifactType {artifact:?}, not {ARTIFACT_TYPE}: not a hakim layer cache entry"
            ));
        }
        let config = Blob::of(m.config())?;
        let [layer, index] = m.layers().as_slice() else {
            return Err(format!("{} layers, expected 2", m.layers().len()));
        };
        let (layer, index) = (Blob::of(layer)?, Blob::of(index)?);
        if config.media_type != CONFIG_MEDIA_TYPE || index.media_type != INDEX_MEDIA_TYPE {
            return Err("config or index media type is not hakim's".into());
        }
        Ok(Self {
            config,
            layer,
            index,
        })
    }
}

/// What a lookup in the `--cache-from` repositories found.
#[derive(Debug, Default)]
pub struct Lookup {
    /// The layer's verified record, now also in the local layer cache, when a repository
    /// held a good entry.
    pub hit: Option<LayerRecord>,
    /// Entries that were there but unusable, or repositories that failed; each a warning.
    pub problems: Vec<CacheError>,
}

/// What writing one entry to `--cache-to` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Written {
    /// The repository already had this entry.
    Present,
    /// The entry was written; carries the bytes uploaded (0 when every blob was mounted or there).
    Pushed(u64),
}

/// The `--cache-from` repositories to read layers from and the `--cache-to` one to write to.
pub struct RegistryCache {
    publisher: Publisher,
    from: Vec<Target>,
    to: Option<Target>,
    /// Repositories that failed (unreachable, refused): not asked again this run, so a cache
    /// that is down costs one retry cycle, not one per layer.
    down: Mutex<HashSet<String>>,
}

/// `host/repository`.
fn name(t: &Target) -> String {
    format!("{}/{}", t.host, t.repository)
}

impl std::fmt::Debug for RegistryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCache")
            .field("from", &self.from.iter().map(name).collect::<Vec<_>>())
            .field("to", &self.to.as_ref().map(name))
            .finish()
    }
}

impl RegistryCache {
    /// A cache reading `from` (tried in order) and writing `to`, each `host/namespace/name`.
    pub fn new(opts: PushOptions, from: &[String], to: Option<&str>) -> Result<Self, PublishError> {
        Ok(Self {
            publisher: Publisher::new(opts),
            from: from
                .iter()
                .map(|r| Target::parse(r))
                .collect::<Result<_, _>>()?,
            to: to.map(Target::parse).transpose()?,
            down: Mutex::default(),
        })
    }

    fn is_down(&self, target: &Target) -> bool {
        self.down.lock().unwrap().contains(&name(target))
    }

    /// Remember a repository that failed as a registry (not one that held a bad entry).
    fn note<T>(&self, target: &Target, r: Result<T, CacheError>) -> Result<T, CacheError> {
        if let Err(CacheError::Registry(_)) = &r {
            self.down.lock().unwrap().insert(name(target));
        }
        r
    }

    /// Whether any `--cache-from` repository is set.
    pub fn reads(&self) -> bool {
        !self.from.is_empty()
    }

    /// Whether a `--cache-to` repository is set.
    pub fn writes(&self) -> bool {
        self.to.is_some()
    }

    /// Take layer `key` from the first `--cache-from` repository holding a good entry, into
    /// `store`. Unusable entries and unreachable repositories are reported, never fatal.
    pub async fn pull(&self, key: &Sha256Digest, store: &LayerStore) -> Lookup {
        let mut lookup = Lookup::default();
        for target in self.from.iter().filter(|t| !self.is_down(t)) {
            match self.note(target, self.pull_from(target, key, store).await) {
                Ok(Some(hit)) => {
                    lookup.hit = Some(hit);
                    break;
                }
                Ok(None) => {}
                Err(e) => lookup.problems.push(e),
            }
        }
        lookup
    }

    async fn pull_from(
        &self,
        target: &Target,
        key: &Sha256Digest,
        store: &LayerStore,
    ) -> Result<Option<LayerRecord>, CacheError> {
        let (reg, _) = self.publisher.registry(target)?;
        let repo = target.repository.as_str();
        let tag = entry_tag(key);
        let reference = format!("{}/{repo}:{tag}", target.host);
        let invalid = |detail: String| CacheError::Invalid {
            reference: reference.clone(),
            detail,
        };
        let found = reg
            .with_retry(&format!("GET {reference}"), || reg.get_manifest(repo, &tag))
            .await?;
        let Some((media_type, bytes)) = found else {
            return Ok(None);
        };
        let blobs = EntryBlobs::parse(&media_type, &bytes).map_err(invalid)?;
        let config = small_blob(&reg, repo, &blobs.config)
            .await?
            .map_err(|d| invalid(format!("config: {d}")))?;
        let record = blobs.record_in(&config, key).map_err(invalid)?;
        let layer = &blobs.layer;
        let index = small_blob(&reg, repo, &blobs.index)
            .await?
            .map_err(|d| invalid(format!("index: {d}")))?;
        let index: Vec<(String, Meta)> =
            serde_json::from_slice(&index).map_err(|e| invalid(format!("index: {e}")))?;
        if !store.cas().contains(&layer.digest) {
            download(&reg, repo, layer, store)
                .await?
                .map_err(|d| invalid(format!("layer blob: {d}")))?;
        }
        // Hashes the blob and its uncompressed content against the record before keeping it.
        let adopted = tokio::task::block_in_place(|| store.adopt(key, &record, &index));
        adopted.map_err(|source| CacheError::Store {
            reference: reference.clone(),
            source,
        })?;
        Ok(Some(record))
    }

    /// Write layer `key` (named `layer`, already in `store`) to the `--cache-to` repository,
    /// unless an entry for the same blob is there already.
    pub async fn push(
        &self,
        key: &Sha256Digest,
        layer: &str,
        store: &LayerStore,
        record: &LayerRecord,
    ) -> Result<Written, CacheError> {
        let Some(target) = &self.to else {
            return Ok(Written::Present);
        };
        if self.is_down(target) {
            return Err(CacheError::Invalid {
                reference: name(target),
                detail: "skipped: the repository failed earlier in this run".into(),
            });
        }
        self.note(
            target,
            self.push_to(target, key, layer, store, record).await,
        )
    }

    async fn push_to(
        &self,
        target: &Target,
        key: &Sha256Digest,
        layer: &str,
        store: &LayerStore,
        record: &LayerRecord,
    ) -> Result<Written, CacheError> {
        let (reg, _) = self.publisher.registry(target)?;
        let repo = target.repository.as_str();
        let tag = entry_tag(key);
        let reference = format!("{}/{repo}:{tag}", target.host);
        let existing = reg
            .with_retry(&format!("GET {reference}"), || reg.get_manifest(repo, &tag))
            .await?;
        if let Some((media_type, bytes)) = existing
            && EntryBlobs::parse(&media_type, &bytes)
                .is_ok_and(|b| b.layer.digest == record.blob.digest)
        {
            return Ok(Written::Present);
        }
        let blobs = EntryBlobs::write(store, key, record).map_err(|source| CacheError::Store {
            reference: reference.clone(),
            source,
        })?;
        let mut uploaded = 0;
        for b in [&blobs.layer, &blobs.index, &blobs.config] {
            let desc = layout::Descriptor {
                media_type: b.media_type.clone(),
                digest: b.digest,
                size: b.size,
                platform: None,
            };
            let (outcome, _) = self
                .publisher
                .push_blob(&reg, target, &desc, &store.cas().path(&b.digest))
                .await?;
            self.publisher.remember(target, b.digest);
            if let BlobOutcome::Uploaded(n) = outcome {
                uploaded += n;
            }
        }
        let bytes = blobs.manifest(layer);
        let digest = Sha256Digest::of(&bytes);
        reg.with_retry(&format!("PUT {reference}"), || {
            reg.put_manifest(repo, &tag, MANIFEST, &bytes, &digest)
        })
        .await?;
        Ok(Written::Pushed(uploaded))
    }
}

/// A small blob (config, index) read whole; `Err` when it is missing or does not verify.
async fn small_blob(
    reg: &Registry,
    repo: &str,
    blob: &Blob,
) -> Result<Result<Vec<u8>, String>, PublishError> {
    let got = reg
        .with_retry(&format!("GET blob {} in {repo}", blob.digest), || {
            reg.get_blob(repo, &blob.digest)
        })
        .await?;
    let Some(bytes) = got else {
        return Ok(Err(format!("blob {} is missing", blob.digest)));
    };
    let actual = Sha256Digest::of(&bytes);
    if actual != blob.digest || bytes.len() as u64 != blob.size {
        return Ok(Err(format!(
            "blob {} arrived as {actual} ({} bytes, expected {})",
            blob.digest,
            bytes.len(),
            blob.size
        )));
    }
    Ok(Ok(bytes))
}

/// Stream a layer blob into the blob store, which keeps it only if it hashes to its digest.
async fn download(
    reg: &Registry,
    repo: &str,
    blob: &Blob,
    store: &LayerStore,
) -> Result<Result<(), String>, PublishError> {
    let cas = store.cas();
    let local = |e: &dyn std::fmt::Display| PublishError::Local {
        path: cas.root().to_path_buf(),
        detail: e.to_string(),
    };
    let writer = reg
        .with_retry(&format!("GET blob {} in {repo}", blob.digest), || async {
            let mut w = cas.writer().map_err(|e| local(&e))?;
            let found = reg.download_blob(repo, &blob.digest, &mut w).await?;
            Ok(found.then_some(w))
        })
        .await?;
    let Some(writer) = writer else {
        return Ok(Err(format!("blob {} is missing", blob.digest)));
    };
    match writer.commit(Some(&blob.digest)) {
        Ok((_, len)) if len == blob.size => Ok(Ok(())),
        Ok((_, len)) => Ok(Err(format!("{len} bytes, expected {}", blob.size))),
        Err(crate::cache::CasError::Mismatch { actual, .. }) => Ok(Err(format!(
            "arrived as {actual}, expected {}; discarded",
            blob.digest
        ))),
        Err(e) => Err(local(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(artifact: &str, layers: usize) -> Vec<u8> {
        let d = |mt: &str, n: u8| model::descriptor(mt, &Sha256Digest::of(&[n]), 1);
        let mut layer_list = vec![d(crate::media::LAYER_GZIP, 1), d(INDEX_MEDIA_TYPE, 2)];
        layer_list.truncate(layers);
        let mut m = model::manifest(d(CONFIG_MEDIA_TYPE, 0), layer_list);
        m.set_artifact_type(Some(model::MediaType::from(artifact)));
        canonical::to_vec(&m)
    }

    #[test]
    fn an_entry_is_read_back_as_written() {
        let b = EntryBlobs::parse(MANIFEST, &entry(ARTIFACT_TYPE, 2)).unwrap();
        assert_eq!(b.config.digest, Sha256Digest::of(&[0]));
        assert_eq!(b.layer.digest, Sha256Digest::of(&[1]));
        assert_eq!(b.layer.media_type, crate::media::LAYER_GZIP);
        assert_eq!(b.index.digest, Sha256Digest::of(&[2]));
    }

    #[test]
    fn foreign_or_malformed_entries_are_refused() {
        let image = EntryBlobs::parse(MANIFEST, &entry("application/vnd.example", 2));
        assert!(
            image
                .err()
                .unwrap()
                .contains("not a hakim layer cache entry")
        );
        let short = EntryBlobs::parse(MANIFEST, &entry(ARTIFACT_TYPE, 1));
        assert!(short.err().unwrap().contains("1 layers, expected 2"));
        let index = EntryBlobs::parse(crate::media::INDEX, &entry(ARTIFACT_TYPE, 2));
        assert!(index.is_err());
        assert!(EntryBlobs::parse(MANIFEST, b"{").is_err());
    }

    #[test]
    fn a_config_is_trusted_only_for_its_key_and_its_manifests_blob() {
        let b = EntryBlobs::parse(MANIFEST, &entry(ARTIFACT_TYPE, 2)).unwrap();
        let key = Sha256Digest::of(b"key");
        let record = |digest: Sha256Digest| LayerRecord {
            blob: crate::layer::tarball::LayerBlob {
                digest,
                diff_id: Sha256Digest::of(b"diff"),
                size: 1,
                media_type: crate::media::LAYER_GZIP.into(),
            },
            entries: 3,
        };
        let config = |key: Sha256Digest, digest: Sha256Digest| {
            serde_json::to_vec(&EntryConfig {
                key,
                record: record(digest),
            })
            .unwrap()
        };
        let good = b.record_in(&config(key, Sha256Digest::of(&[1])), &key);
        assert_eq!(good.unwrap(), record(Sha256Digest::of(&[1])));
        let other_key = b.record_in(
            &config(Sha256Digest::of(b"other"), Sha256Digest::of(&[1])),
            &key,
        );
        assert!(other_key.unwrap_err().contains("entry of key"));
        let other_blob = b.record_in(&config(key, Sha256Digest::of(&[9])), &key);
        assert!(other_blob.unwrap_err().contains("its record names blob"));
        assert!(b.record_in(b"{}", &key).is_err());
    }

    #[test]
    fn entry_tags_are_valid_oci_tags_unique_per_key() {
        let a = entry_tag(&Sha256Digest::of(b"a"));
        crate::git::validate_tag(&a).unwrap();
        assert_ne!(a, entry_tag(&Sha256Digest::of(b"b")));
    }
}
