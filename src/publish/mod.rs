//! Publishing: push images from a local OCI image layout to an OCI registry.
//!
//! Order of a push: every blob (HEAD, else cross-repo mount, else upload), then each
//! per-platform manifest by digest, then the index by digest, and only then the tags, so a
//! failed push never moves a tag.

mod auth;
mod error;
pub(crate) mod layout;
mod registry;
mod tags;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;

use crate::digest::Sha256Digest;

pub use crate::net::{NetOptions, RetryLog, RetryPolicy};
pub use auth::{CredentialContext, CredentialOrigin, Credentials, Secret, resolve_credentials};
pub use error::{PublishError, Result};
pub use tags::{TagError, TagVars, ci_tags, expand_tag, release_tags, step_summary, validate_tag};

use layout::plan;
use registry::{BlobOutcome, Registry};

/// GHCR refuses chunks above 4 MiB; no chunk is ever bigger.
pub const MAX_CHUNK_SIZE: usize = 4 * 1024 * 1024;

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
    /// Upload chunk size; capped at [`MAX_CHUNK_SIZE`]. Blobs up to this size go in one PUT.
    pub chunk_size: usize,
    /// Retries, stall timeout and retry reporting.
    pub net: NetOptions,
    /// Sibling repositories (`host/ns/name`) to try mounting blobs from when this process
    /// has not seen the blob yet, e.g. the base variant's repository in a CI matrix.
    pub mount_candidates: Vec<String>,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self {
            plain_http: false,
            credentials: None,
            credential_context: CredentialContext::default(),
            concurrency: 4,
            chunk_size: MAX_CHUNK_SIZE,
            net: NetOptions::default(),
            mount_candidates: Vec::new(),
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
    /// Blobs the repository already had.
    pub blobs_present: usize,
    /// Bytes sent in blob uploads.
    pub bytes_uploaded: u64,
    /// Where credentials came from.
    pub auth: CredentialOrigin,
    /// Wall time of the push.
    pub duration_ms: u64,
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

/// Pushes images, remembering across pushes which repository holds which blob so later pushes
/// of the same process mount instead of uploading.
pub struct Publisher {
    opts: PushOptions,
    registries: Mutex<HashMap<RegistryKey, (Arc<Registry>, CredentialOrigin)>>,
    /// host → blob → repositories known to hold it.
    known: Mutex<HashMap<String, HashMap<Sha256Digest, Vec<String>>>>,
}

impl Publisher {
    /// A publisher with these options.
    pub fn new(opts: PushOptions) -> Self {
        Self {
            opts,
            registries: Mutex::new(HashMap::new()),
            known: Mutex::new(HashMap::new()),
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
        let reg = Arc::new(Registry::new(
            &target.host,
            plain,
            creds,
            &self.opts.net,
            self.opts.chunk_size.clamp(1, MAX_CHUNK_SIZE),
        )?);
        self.registries
            .lock()
            .unwrap()
            .insert(key, (reg.clone(), origin));
        Ok((reg, origin))
    }

    /// A repository in the same registry and namespace that we believe holds `digest`.
    fn mount_source(&self, target: &Target, digest: &Sha256Digest) -> Option<String> {
        let same_ns = |repo: &str| {
            repo != target.repository
                && repo.rsplit_once('/').map_or("", |(ns, _)| ns) == target.namespace()
        };
        let known = self.known.lock().unwrap();
        if let Some(repos) = known.get(&target.host).and_then(|m| m.get(digest))
            && let Some(r) = repos.iter().find(|r| same_ns(r))
        {
            return Some(r.clone());
        }
        self.opts
            .mount_candidates
            .iter()
            .filter_map(|c| Target::parse(c).ok())
            .find(|c| c.host == target.host && same_ns(&c.repository))
            .map(|c| c.repository)
    }

    fn remember(&self, target: &Target, digest: Sha256Digest) {
        let mut known = self.known.lock().unwrap();
        let repos = known
            .entry(target.host.clone())
            .or_default()
            .entry(digest)
            .or_default();
        if !repos.contains(&target.repository) {
            repos.push(target.repository.clone());
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
        let plan = tokio::task::spawn_blocking(move || plan(&dir, &src))
            .await
            .expect("layout reader panicked")?;
        let (reg, origin) = self.registry(&target)?;
        let repo = target.repository.as_str();

        let mut blobs = plan.blobs.clone();
        // Biggest first, so the long uploads start early and overlap the small ones.
        blobs.sort_by_key(|b| std::cmp::Reverse(b.size));
        let outcomes: Vec<BlobOutcome> = futures::stream::iter(blobs.into_iter().map(|b| {
            let reg = reg.clone();
            let target = &target;
            async move {
                let exists = reg
                    .with_retry(&format!("HEAD blob {} in {repo}", b.digest), || {
                        reg.blob_exists(repo, &b.digest)
                    })
                    .await?;
                let outcome = if exists {
                    BlobOutcome::Present
                } else {
                    let from = self.mount_source(target, &b.digest);
                    let path = layout::blob_path(layout_dir, &b.digest);
                    reg.with_retry(&format!("push blob {} to {repo}", b.digest), || {
                        reg.push_blob(repo, &b.digest, b.size, &path, from.as_deref())
                    })
                    .await?
                };
                self.remember(target, b.digest);
                Ok::<_, PublishError>(outcome)
            }
        }))
        .buffer_unordered(self.opts.concurrency.max(1))
        .try_collect()
        .await?;

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
