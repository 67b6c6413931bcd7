//! Publishing: push images from a local OCI image layout to an OCI registry.
//!
//! Order of a push: every blob (HEAD, else cross-repo mount, else upload), then each
//! per-platform manifest by digest, then the index by digest, and only then the tags, so a
//! failed push never moves a tag.

mod auth;
pub mod cache;
mod error;
pub(crate) mod layout;
mod locations;
mod merge;
mod registry;
mod tags;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;

use crate::digest::Sha256Digest;

pub use crate::git::{TagError, TagVars, ci_tags, expand_tag, release_tags, validate_tag};
pub use crate::net::{NetOptions, RetryLog, RetryPolicy};
pub use auth::{CredentialContext, CredentialOrigin, Credentials, Secret, resolve_credentials};
pub use error::{PublishError, Result};
pub use locations::BlobLocations;
pub use merge::arch_tag;
pub use tags::step_summary;

use registry::{BlobOutcome, Registry};

/// GHCR refuses chunks above 4 MiB.
pub const GHCR_MAX_CHUNK_SIZE: usize = 4 * 1024 * 1024;

/// Mount attempts per blob before it is uploaded.
const MAX_MOUNT_TRIES: usize = 3;

/// The chunk size a registry host needs: GHCR's cap for GHCR, else `None` (one monolithic PUT,
/// the fewest round trips; a registry's `OCI-Chunk-Min-Length` is honoured when chunking).
pub fn default_chunk_size(host: &str) -> Option<usize> {
    let bare = host.rsplit_once(':').map_or(host, |(h, _)| h);
    (bare == "ghcr.io").then_some(GHCR_MAX_CHUNK_SIZE)
}

/// How to push.
#[derive(Clone, Debug)]
pub struct PushOptions {
    /// Speak plain HTTP even to non-loopback registries (loopback always uses HTTP).
    pub plain_http: bool,
    /// Explicit credentials (`--username` / `--password-stdin`); they win over every other source.
    pub credentials: Option<Credentials>,
    /// Where else to look for credentials; use [`CredentialContext::from_env`] in the CLI.
    pub credential_context: CredentialContext,
    /// Blobs pushed at once.
    pub concurrency: usize,
    /// Upload chunk size; `None` picks [`default_chunk_size`] for the registry. Blobs up to
    /// this size go in one PUT.
    pub chunk_size: Option<usize>,
    /// Retries, stall timeout and retry reporting.
    pub net: NetOptions,
    /// Sibling repositories (`host/ns/name`) to try mounting blobs from when this process
    /// has not seen the blob yet, e.g. the base variant's repository in a CI matrix.
    pub mount_candidates: Vec<String>,
    /// Where blob locations are remembered across invocations (see [`BlobLocations`]).
    pub locations_dir: Option<PathBuf>,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self {
            plain_http: false,
            credentials: None,
            credential_context: CredentialContext::default(),
            concurrency: 4,
            chunk_size: None,
            net: NetOptions::default(),
            mount_candidates: Vec::new(),
            locations_dir: None,
        }
    }
}

impl PushOptions {
    /// Defaults, with credentials looked up in the process environment.
    pub fn from_env() -> Self {
        Self {
            credential_context: CredentialContext::from_env(),
            ..Self::default()
        }
    }
}

/// One manifest or index that was pushed.
#[derive(Clone, Debug, Serialize)]
pub struct PushedManifest {
    /// Its digest (equal to the layout's).
    pub digest: Sha256Digest,
    /// OCI media type.
    pub media_type: String,
    /// Size in bytes.
    pub size: u64,
    /// `os/arch[/variant]` for per-platform manifests of an index.
    pub platform: Option<String>,
}

/// What one push did; serializable for `--json`, free of secrets.
#[derive(Clone, Debug, Serialize)]
pub struct PushReport {
    /// The image in the layout (`name:tag`).
    pub source: String,
    /// Target repository, `host/namespace/name`.
    pub repository: String,
    /// Digest the tags point to.
    pub digest: Sha256Digest,
    /// Media type of that root (manifest or index).
    pub media_type: String,
    /// Tags set, in order.
    pub tags: Vec<String>,
    /// `repository:tag@digest` for every tag.
    pub references: Vec<String>,
    /// Every manifest pushed, children first, the root last.
    pub manifests: Vec<PushedManifest>,
    /// Blobs uploaded.
    pub blobs_uploaded: usize,
    /// Blobs mounted from a sibling repository.
    pub blobs_mounted: usize,
    /// Each mounted blob and the repository it came from.
    pub mounts: Vec<MountedBlob>,
    /// Blobs the repository already had.
    pub blobs_present: usize,
    /// Bytes sent in blob uploads.
    pub bytes_uploaded: u64,
    /// Where credentials came from.
    pub auth: CredentialOrigin,
    /// Wall time of the push.
    pub duration_ms: u64,
}

/// A blob mounted instead of uploaded.
#[derive(Clone, Debug, Serialize)]
pub struct MountedBlob {
    /// The blob.
    pub digest: Sha256Digest,
    /// Repository (same registry) it was mounted from.
    pub from: String,
}

/// A parsed `host[:port]/path/name` target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Registry host with optional port.
    pub host: String,
    /// Repository path inside the registry.
    pub repository: String,
}

impl Target {
    /// Parse `registry/namespace/name`; the registry part is mandatory.
    pub fn parse(target: &str) -> Result<Self> {
        let bad = |reason: &str| PublishError::BadTarget {
            target: target.into(),
            reason: reason.into(),
        };
        let (host, repo) = target
            .split_once('/')
            .ok_or_else(|| bad("expected <registry>/<namespace>/<name>"))?;
        let host_ok = host.contains('.') || host.contains(':') || host == "localhost";
        if host.is_empty() || !host_ok {
            return Err(bad(
                "the first path segment must be a registry host (with a `.` or a port)",
            ));
        }
        if repo.contains(':') || repo.contains('@') {
            return Err(bad("give tags separately, not in the repository"));
        }
        let component = regex::Regex::new(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*$").unwrap();
        if !repo.split('/').all(|c| component.is_match(c)) {
            return Err(bad(
                "repository path components must be lowercase [a-z0-9] separated by . _ -",
            ));
        }
        Ok(Self {
            host: host.into(),
            repository: repo.into(),
        })
    }

    /// Whether this registry is on the loopback interface (plain HTTP by default).
    pub fn is_loopback(&self) -> bool {
        let h = &self.host;
        let bare = if let Some(rest) = h.strip_prefix('[') {
            rest.split(']').next().unwrap_or("")
        } else {
            h.rsplit_once(':').map_or(h.as_str(), |(a, _)| a)
        };
        bare == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// Whether to speak plain HTTP: always for loopback, elsewhere only when forced.
    pub fn plain_http(&self, force: bool) -> bool {
        force || self.is_loopback()
    }

    fn namespace(&self) -> &str {
        self.repository.rsplit_once('/').map_or("", |(ns, _)| ns)
    }
}

/// A registry host and whether it is spoken to over plain HTTP.
type RegistryKey = (String, bool);

/// Pushes images, remembering which repository holds which blob (in this process and, with
/// [`PushOptions::locations_dir`], across invocations) so later pushes mount instead of uploading.
pub struct Publisher {
    opts: PushOptions,
    registries: Mutex<HashMap<RegistryKey, (Arc<Registry>, CredentialOrigin)>>,
    /// host → blob → repositories known to hold it, most recent first.
    known: Mutex<HashMap<String, HashMap<Sha256Digest, Vec<String>>>>,
    /// blob → repositories (`host/ns/name`) that should hold it, e.g. sibling variants.
    hints: Mutex<HashMap<Sha256Digest, Vec<String>>>,
    memory: Option<BlobLocations>,
    /// One lock per (host, blob): pushes of sibling images running at once send a shared blob
    /// once, and the others mount it from the repository that got it.
    blob_locks: BlobLocks,
}

type BlobLocks = Mutex<HashMap<(String, Sha256Digest), Arc<tokio::sync::Mutex<()>>>>;

impl Publisher {
    /// A publisher with these options.
    pub fn new(opts: PushOptions) -> Self {
        let memory = opts.locations_dir.clone().map(BlobLocations::new);
        Self {
            opts,
            registries: Mutex::new(HashMap::new()),
            known: Mutex::new(HashMap::new()),
            hints: Mutex::new(HashMap::new()),
            memory,
            blob_locks: Mutex::new(HashMap::new()),
        }
    }

    /// Suggest repositories (`host/ns/name`) that should hold `digest`, tried as mount sources
    /// after the ones known to hold it.
    pub fn suggest_mounts(&self, digest: Sha256Digest, repos: impl IntoIterator<Item = String>) {
        let mut hints = self.hints.lock().unwrap();
        let list = hints.entry(digest).or_default();
        for r in repos {
            if !list.contains(&r) {
                list.push(r);
            }
        }
    }

    fn registry(&self, target: &Target) -> Result<(Arc<Registry>, CredentialOrigin)> {
        let plain = target.plain_http(self.opts.plain_http);
        let key = (target.host.clone(), plain);
        if let Some(r) = self.registries.lock().unwrap().get(&key) {
            return Ok(r.clone());
        }
        let (creds, origin) = resolve_credentials(
            &target.host,
            self.opts.credentials.as_ref(),
            &self.opts.credential_context,
        )?;
        let chunk = match self.opts.chunk_size {
            Some(c) => Some(c.max(1)),
            None => default_chunk_size(&target.host),
        };
        let reg = Arc::new(Registry::new(
            &target.host,
            plain,
            creds,
            &self.opts.net,
            chunk,
        )?);
        self.registries
            .lock()
            .unwrap()
            .insert(key, (reg.clone(), origin));
        Ok((reg, origin))
    }

    /// Repositories in the same registry and namespace to try mounting `digest` from: those
    /// known to hold it (this process, then the on-disk memory), then hints and candidates.
    fn mount_sources(&self, target: &Target, digest: &Sha256Digest) -> Vec<String> {
        let same_ns = |repo: &str| {
            repo != target.repository
                && repo.rsplit_once('/').map_or("", |(ns, _)| ns) == target.namespace()
        };
        let mut out: Vec<String> = Vec::new();
        let mut add = |repo: String| {
            if same_ns(&repo) && !out.contains(&repo) {
                out.push(repo);
            }
        };
        let seen = self
            .known
            .lock()
            .unwrap()
            .get(&target.host)
            .and_then(|m| m.get(digest))
            .cloned()
            .unwrap_or_default();
        seen.into_iter().for_each(&mut add);
        if let Some(m) = &self.memory {
            m.get(&target.host, digest).into_iter().for_each(&mut add);
        }
        let hinted = self
            .hints
            .lock()
            .unwrap()
            .get(digest)
            .cloned()
            .unwrap_or_default();
        hinted
            .iter()
            .chain(&self.opts.mount_candidates)
            .filter_map(|c| Target::parse(c).ok())
            .filter(|c| c.host == target.host)
            .for_each(|c| add(c.repository));
        out.truncate(MAX_MOUNT_TRIES);
        out
    }

    fn remember(&self, target: &Target, digest: Sha256Digest) {
        {
            let mut known = self.known.lock().unwrap();
            let repos = known
                .entry(target.host.clone())
                .or_default()
                .entry(digest)
                .or_default();
            repos.retain(|r| r != &target.repository);
            repos.insert(0, target.repository.clone());
        }
        if let Some(m) = &self.memory {
            // A hint only: failing to save it costs a later upload, not this push.
            let _ = m.record(&target.host, &digest, &target.repository);
        }
    }

    fn forget(&self, target: &Target, digest: &Sha256Digest, repo: &str) {
        if let Some(repos) = self
            .known
            .lock()
            .unwrap()
            .get_mut(&target.host)
            .and_then(|m| m.get_mut(digest))
        {
            repos.retain(|r| r != repo);
        }
        if let Some(m) = &self.memory {
            let _ = m.forget(&target.host, digest, repo);
        }
    }

    /// Why a registry refused an upload, when the local blob is to blame: hashed only then,
    /// since the registry itself checks every upload against its digest.
    async fn blame_local_blob(&self, b: &layout::Descriptor, path: &Path) -> Result<()> {
        let (p, digest, size) = (path.to_path_buf(), b.digest, b.size);
        tokio::task::spawn_blocking(move || crate::cache::verify_file(&p, &digest, size))
            .await
            .expect("blob hashing panicked")
            .map_err(|e| PublishError::Local {
                path: path.to_path_buf(),
                detail: match e {
                    crate::cache::CasError::Corrupt { expected, why, .. } => {
                        format!("corrupt blob {expected}: {why}")
                    }
                    other => other.to_string(),
                },
            })
    }

    /// HEAD, else mount from the first sibling that has it, else upload.
    async fn push_blob(
        &self,
        reg: &Registry,
        target: &Target,
        b: &layout::Descriptor,
        path: &Path,
    ) -> Result<(BlobOutcome, Option<String>)> {
        let repo = target.repository.as_str();
        let lock = self
            .blob_locks
            .lock()
            .unwrap()
            .entry((target.host.clone(), b.digest))
            .or_default()
            .clone();
        let _sending = lock.lock().await;
        let exists = reg
            .with_retry(&format!("HEAD blob {} in {repo}", b.digest), || {
                reg.blob_exists(repo, &b.digest)
            })
            .await?;
        if exists {
            return Ok((BlobOutcome::Present, None));
        }
        for from in self.mount_sources(target, &b.digest) {
            let mounted = reg
                .with_retry(&format!("mount blob {} from {from}", b.digest), || {
                    reg.try_mount(repo, &b.digest, &from)
                })
                .await;
            match mounted {
                Ok(true) => return Ok((BlobOutcome::Mounted, Some(from))),
                // Refused, or not allowed to read `from`: the upload below still works.
                Ok(false) | Err(PublishError::Denied { .. } | PublishError::Auth { .. }) => {
                    self.forget(target, &b.digest, &from)
                }
                Err(e) => return Err(e),
            }
        }
        // Not hashed first: the registry verifies the digest of what it receives (a mismatch
        // never lands), which spares a pass over every byte of every push.
        let outcome = reg
            .with_retry(&format!("push blob {} to {repo}", b.digest), || {
                reg.push_blob(repo, &b.digest, b.size, path)
            })
            .await;
        match outcome {
            Ok(o) => Ok((o, None)),
            Err(e) => {
                self.blame_local_blob(b, path).await?;
                Err(e)
            }
        }
    }

    /// Push image `source_ref` of the layout at `layout_dir` to `target` (`host/ns/name`) and
    /// set `tags` (the source ref's tag when empty).
    pub async fn push(
        &self,
        layout_dir: &Path,
        source_ref: &str,
        target: &str,
        tags: &[String],
    ) -> Result<PushReport> {
        let started = Instant::now();
        let target = Target::parse(target)?;
        let tags: Vec<String> = if tags.is_empty() {
            vec![
                source_ref
                    .rsplit_once(':')
                    .map_or("latest", |(_, t)| t)
                    .to_string(),
            ]
        } else {
            tags.to_vec()
        };
        for t in &tags {
            validate_tag(t)?;
        }
        let dir = layout_dir.to_path_buf();
        let src = source_ref.to_string();
        let (layout, plan) = tokio::task::spawn_blocking(move || {
            let layout = crate::oci::Layout::open(&dir)?;
            let plan = layout::plan(&layout, &src)?;
            Ok::<_, PublishError>((layout, plan))
        })
        .await
        .expect("layout reader panicked")?;
        let (reg, origin) = self.registry(&target)?;
        let repo = target.repository.as_str();

        let layout = &layout;
        let mut blobs = plan.blobs.clone();
        // Biggest first, so the long uploads start early and overlap the small ones.
        blobs.sort_by_key(|b| std::cmp::Reverse(b.size));
        let outcomes: Vec<(BlobOutcome, Option<String>)> =
            futures::stream::iter(blobs.clone().into_iter().map(|b| {
                let reg = reg.clone();
                let target = &target;
                async move {
                    let path = layout.blob_path(&b.digest);
                    let outcome = self.push_blob(&reg, target, &b, &path).await?;
                    self.remember(target, b.digest);
                    Ok::<_, PublishError>(outcome)
                }
            }))
            .buffered(self.opts.concurrency.max(1))
            .try_collect()
            .await?;
        let mounts = blobs
            .iter()
            .zip(&outcomes)
            .filter_map(|(b, (_, from))| {
                from.as_ref().map(|f| MountedBlob {
                    digest: b.digest,
                    from: f.clone(),
                })
            })
            .collect();
        let outcomes: Vec<BlobOutcome> = outcomes.into_iter().map(|(o, _)| o).collect();

        let mut manifests = Vec::new();
        for doc in &plan.manifests {
            let d = &doc.desc;
            let by_digest = d.digest.oci();
            reg.with_retry(&format!("push manifest {} to {repo}", d.digest), || {
                reg.put_manifest(repo, &by_digest, &d.media_type, &doc.bytes, &d.digest)
            })
            .await?;
            manifests.push(PushedManifest {
                digest: d.digest,
                media_type: d.media_type.clone(),
                size: d.size,
                platform: d.platform.clone(),
            });
        }

        let root = plan.root();
        let mut references = Vec::new();
        for tag in &tags {
            reg.with_retry(&format!("tag {repo}:{tag}"), || {
                reg.put_manifest(
                    repo,
                    tag,
                    &root.desc.media_type,
                    &root.bytes,
                    &root.desc.digest,
                )
            })
            .await?;
            references.push(format!(
                "{}/{}:{tag}@{}",
                target.host, repo, root.desc.digest
            ));
        }

        let count = |f: fn(&BlobOutcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
        Ok(PushReport {
            source: source_ref.to_string(),
            repository: format!("{}/{}", target.host, repo),
            digest: root.desc.digest,
            media_type: root.desc.media_type.clone(),
            tags,
            references,
            manifests,
            blobs_uploaded: count(|o| matches!(o, BlobOutcome::Uploaded(_))),
            blobs_mounted: count(|o| matches!(o, BlobOutcome::Mounted)),
            mounts,
            blobs_present: count(|o| matches!(o, BlobOutcome::Present)),
            bytes_uploaded: outcomes
                .iter()
                .map(|o| {
                    if let BlobOutcome::Uploaded(n) = o {
                        *n
                    } else {
                        0
                    }
                })
                .sum(),
            auth: origin,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }
}

/// Push one image with a fresh [`Publisher`]; see [`Publisher::push`].
pub async fn push(
    layout_dir: &Path,
    source_ref: &str,
    target: &str,
    tags: &[String],
    opts: &PushOptions,
) -> Result<PushReport> {
    Publisher::new(opts.clone())
        .push(layout_dir, source_ref, target, tags)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_futures_can_be_spawned() {
        fn assert_send_sync<T: Send + Sync>(_: &T) {}
        fn assert_send<T: Send>(_: T) {}
        let p = Publisher::new(PushOptions::default());
        assert_send_sync(&p);
        assert_send(p.push(Path::new("/nonexistent"), "a:b", "registry.example/a", &[]));
    }

    #[test]
    fn parses_targets_and_spots_loopback() {
        let t = Target::parse("127.0.0.1:5000/ns/hakim-base").unwrap();
        assert_eq!(
            (t.host.as_str(), t.repository.as_str()),
            ("127.0.0.1:5000", "ns/hakim-base")
        );
        assert!(t.is_loopback());
        assert_eq!(t.namespace(), "ns");
        assert!(Target::parse("localhost/x").unwrap().is_loopback());
        assert!(Target::parse("[::1]:5000/a/b").unwrap().is_loopback());
        assert!(
            !Target::parse("ghcr.io/owner/hakim-base")
                .unwrap()
                .is_loopback()
        );
        assert!(
            !Target::parse("registry.example:443/a")
                .unwrap()
                .is_loopback()
        );
        assert!(t.plain_http(false));
        let ghcr = Target::parse("ghcr.io/o/x").unwrap();
        assert!(!ghcr.plain_http(false) && ghcr.plain_http(true));
        for bad in [
            "hakim-base",
            "owner/hakim",
            "ghcr.io/Owner/x",
            "ghcr.io/o/x:tag",
            "ghcr.io/",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
