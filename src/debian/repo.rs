//! Verified repository access: mirror choice, signed InRelease, then hash-checked Packages indexes.

use std::io::Read;
use std::path::PathBuf;

use time::OffsetDateTime;

use crate::debian::release::{self, Keyring, Release, ReleaseError};
use crate::debian::sources::{self, Candidate, MirrorConfig, MirrorEnv, SourcesError};
use crate::digest::Sha256Digest;
use crate::fetch::{FetchError, FetchItem, Fetcher};

/// Which parts of a Debian release to load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoSpec {
    /// Codename or suite, e.g. `trixie`.
    pub suite: String,
    /// Components, e.g. `main`.
    pub components: Vec<String>,
    /// Debian architectures, e.g. `amd64`.
    pub archs: Vec<String>,
    /// Also load `<suite>-updates` from the archive mirror.
    pub updates: bool,
    /// Also load `<suite>-security` from the security mirror.
    pub security: bool,
    /// Mirror settings from the variant.
    pub mirror: MirrorConfig,
    /// Keyring to verify InRelease with; [`release::DEFAULT_KEYRING`] when unset.
    pub keyring: Option<PathBuf>,
}

/// Verified indexes of every loaded suite, in load order (suite, updates, security).
#[derive(Clone, Debug)]
pub struct RepoIndexes {
    /// One entry per suite.
    pub suites: Vec<SuiteIndex>,
}

/// One verified suite.
#[derive(Clone, Debug)]
pub struct SuiteIndex {
    /// Suite as requested, e.g. `trixie-security`.
    pub suite: String,
    /// Mirror base URL (holds `dists/` and `pool/`).
    pub base_url: String,
    /// SHA-256 of the InRelease bytes that were verified (also stored in the CAS).
    pub inrelease_sha256: Sha256Digest,
    /// The Release `Date` exactly as signed.
    pub date: String,
    /// The parsed, verified Release.
    pub release: Release,
    /// Packages indexes, one per component × architecture.
    pub packages: Vec<PackagesFile>,
}

/// One decompressed Packages index.
#[derive(Clone, Debug)]
pub struct PackagesFile {
    /// Component, e.g. `main`.
    pub component: String,
    /// Architecture, e.g. `amd64`.
    pub arch: String,
    /// Path below the suite directory that was fetched, e.g. `main/binary-amd64/Packages.xz`.
    pub path: String,
    /// SHA-256 of the fetched (compressed) file, as listed in the Release.
    pub sha256: Sha256Digest,
    /// The Packages text.
    pub text: String,
}

/// Errors from loading a repository.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// Mirror discovery failed.
    #[error(transparent)]
    Sources(#[from] SourcesError),
    /// Keyring, signature or Release check failed.
    #[error(transparent)]
    Release(#[from] ReleaseError),
    /// A download failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// Security updates were requested but no security mirror is known.
    #[error(
        "no Debian security mirror configured: set `security_mirror:` in the variant's `debian:` block or {}=<url of the Debian security archive>",
        sources::ENV_SECURITY_MIRROR
    )]
    NoSecurityMirror,
    /// Every discovered candidate failed verification.
    #[error(
        "no usable mirror for suite `{suite}`; tried:\n{tried}\nset `{key}:` in the variant's `debian:` block or {env}=<url>"
    )]
    NoUsableMirror {
        /// The suite.
        suite: String,
        /// One line per candidate with its failure.
        tried: String,
        /// The YAML key to set.
        key: &'static str,
        /// The environment variable to set.
        env: &'static str,
    },
    /// A requested component or architecture is not in the Release.
    #[error("{url}: suite `{suite}` has no {what} `{name}` (available: {available})")]
    NotOffered {
        /// InRelease URL.
        url: String,
        /// The suite.
        suite: String,
        /// `component` or `architecture`.
        what: &'static str,
        /// What was asked for.
        name: String,
        /// What the Release lists.
        available: String,
    },
    /// The Release lists no Packages index for a component/architecture.
    #[error("{url}: suite `{suite}` lists no Packages index for {component}/binary-{arch}")]
    NoIndex {
        /// InRelease URL.
        url: String,
        /// The suite.
        suite: String,
        /// Component.
        component: String,
        /// Architecture.
        arch: String,
    },
    /// A Packages file could not be decompressed or is not text.
    #[error("{url}: {message}")]
    BadIndex {
        /// Where it came from.
        url: String,
        /// What is wrong.
        message: String,
    },
}

/// What `load` needs from the host besides the spec (tests substitute their own).
#[derive(Clone, Debug)]
pub struct HostContext {
    /// `HAKIM_DEBIAN_*` variables.
    pub env: MirrorEnv,
    /// apt configuration directory, normally `/etc/apt`.
    pub apt_dir: PathBuf,
    /// The time Valid-Until is checked against.
    pub now: OffsetDateTime,
}

impl HostContext {
    /// This process's environment, `/etc/apt` and the current time.
    pub fn current() -> Self {
        Self {
            env: MirrorEnv::from_process(),
            apt_dir: PathBuf::from(sources::HOST_APT_DIR),
            now: OffsetDateTime::now_utc(),
        }
    }
}

/// URL of a pool file (`Filename:` field of a Packages stanza) on a suite's mirror.
pub fn deb_url(base_url: &str, filename: &str) -> String {
    format!(
        "{}/{}",
        base_url.trim_end_matches('/'),
        filename.trim_start_matches('/')
    )
}

/// Load and verify every suite of `spec` using the host's environment and apt sources.
pub async fn load(spec: &RepoSpec, fetcher: &Fetcher) -> Result<RepoIndexes, RepoError> {
    load_with(spec, fetcher, &HostContext::current()).await
}

/// A suite whose InRelease was verified, before its indexes are fetched.
struct Accepted {
    suite: String,
    base_url: String,
    inrelease_sha256: Sha256Digest,
    release: Release,
}

/// [`load`] with an explicit host context.
pub async fn load_with(
    spec: &RepoSpec,
    fetcher: &Fetcher,
    ctx: &HostContext,
) -> Result<RepoIndexes, RepoError> {
    let explicit =
        spec.mirror.mirror.is_some() || spec.mirror.snapshot.is_some() || ctx.env.mirror.is_some();
    let host = match sources::read_apt_sources(&ctx.apt_dir) {
        Ok(h) => h,
        // A broken, unrelated host file must not fail a build whose mirror is configured.
        Err(_) if explicit => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let mirrors = sources::discover(&spec.mirror, &ctx.env, &host, &ctx.apt_dir)?;
    let keyring_path = spec
        .keyring
        .clone()
        .unwrap_or_else(|| PathBuf::from(release::DEFAULT_KEYRING));
    let keyring = Keyring::load(&keyring_path)?;
    let verifier = Verifier {
        fetcher,
        keyring: &keyring,
        now: ctx.now,
        enforce_valid_until: !mirrors.snapshot,
    };

    let main = verifier
        .first_good(&spec.suite, &mirrors.archive, "mirror", sources::ENV_MIRROR)
        .await?;
    let mut accepted = Vec::new();
    if spec.updates {
        let suite = format!("{}-updates", spec.suite);
        // Updates must come from the archive that already proved itself.
        let same = [Candidate {
            url: main.base_url.clone(),
            from: "the archive mirror".into(),
        }];
        accepted.push(
            verifier
                .first_good(&suite, &same, "mirror", sources::ENV_MIRROR)
                .await?,
        );
    }
    accepted.insert(0, main);
    if spec.security {
        if mirrors.security.is_empty() {
            return Err(RepoError::NoSecurityMirror);
        }
        let suite = format!("{}-security", spec.suite);
        let sec = verifier
            .first_good(
                &suite,
                &mirrors.security,
                "security_mirror",
                sources::ENV_SECURITY_MIRROR,
            )
            .await?;
        accepted.push(sec);
    }

    let mut suites = Vec::new();
    for a in accepted {
        let packages = fetch_indexes(spec, fetcher, &a).await?;
        suites.push(SuiteIndex {
            date: a.release.date_text.clone(),
            suite: a.suite,
            base_url: a.base_url,
            inrelease_sha256: a.inrelease_sha256,
            release: a.release,
            packages,
        });
    }
    Ok(RepoIndexes { suites })
}

struct Verifier<'a> {
    fetcher: &'a Fetcher,
    keyring: &'a Keyring,
    now: OffsetDateTime,
    enforce_valid_until: bool,
}

impl Verifier<'_> {
    /// The first candidate whose InRelease verifies; an explicit single choice reports its own error.
    async fn first_good(
        &self,
        suite: &str,
        candidates: &[Candidate],
        key: &'static str,
        env: &'static str,
    ) -> Result<Accepted, RepoError> {
        let mut tried = Vec::new();
        for c in candidates {
            match self.try_candidate(suite, &c.url).await {
                Ok(a) => return Ok(a),
                Err(e) if candidates.len() == 1 => return Err(e),
                Err(e) => tried.push(format!("  {} (from {}): {e}", c.url, c.from)),
            }
        }
        Err(RepoError::NoUsableMirror {
            suite: suite.to_string(),
            tried: tried.join("\n"),
            key,
            env,
        })
    }

    async fn try_candidate(&self, suite: &str, base_url: &str) -> Result<Accepted, RepoError> {
        let url = format!("{base_url}/dists/{suite}/InRelease");
        let bytes = self.fetcher.get(&url).await?;
        let text = release::verify_inrelease(self.keyring, &bytes, &url)?;
        let release = Release::parse(&text, &url)?;
        release.check(suite, self.now, self.enforce_valid_until, &url)?;
        // Keep the exact verified bytes so a lock file's digest can be re-checked offline.
        let cas = self.fetcher.cas().clone();
        let inrelease_sha256 = tokio::task::spawn_blocking(move || cas.insert_bytes(&bytes))
            .await
            .map_err(|e| FetchError::Client(e.to_string()))?
            .map_err(|source| FetchError::Cache {
                url: url.clone(),
                source,
            })?;
        Ok(Accepted {
            suite: suite.to_string(),
            base_url: base_url.to_string(),
            inrelease_sha256,
            release,
        })
    }
}

/// Compressed forms to look for, best first.
const INDEX_NAMES: &[&str] = &["Packages.xz", "Packages.gz", "Packages"];

async fn fetch_indexes(
    spec: &RepoSpec,
    fetcher: &Fetcher,
    a: &Accepted,
) -> Result<Vec<PackagesFile>, RepoError> {
    let dists = format!("{}/dists/{}", a.base_url, a.suite);
    let inrelease = format!("{dists}/InRelease");
    let r = &a.release;
    let mut wanted = Vec::new();
    for component in &spec.components {
        if !r.has_component(component) {
            return Err(not_offered(
                &inrelease,
                a,
                "component",
                component,
                &r.components,
            ));
        }
        for arch in &spec.archs {
            if !r.has_architecture(arch) {
                return Err(not_offered(
                    &inrelease,
                    a,
                    "architecture",
                    arch,
                    &r.architectures,
                ));
            }
            let dir = format!("{component}/binary-{arch}");
            let Some((path, entry)) = INDEX_NAMES.iter().find_map(|n| {
                let p = format!("{dir}/{n}");
                r.file(&p).map(|e| (p, *e))
            }) else {
                return Err(RepoError::NoIndex {
                    url: inrelease.clone(),
                    suite: a.suite.clone(),
                    component: component.clone(),
                    arch: arch.clone(),
                });
            };
            wanted.push((component.clone(), arch.clone(), path, entry));
        }
    }
    let jobs = wanted.into_iter().map(|(component, arch, path, entry)| {
        let dists = dists.clone();
        async move {
            let plain = format!("{dists}/{path}");
            let item = FetchItem {
                url: plain.clone(),
                sha256: entry.sha256,
                size: Some(entry.size),
                label: format!("{} {path}", a.suite),
            };
            let blob = if r.acquire_by_hash {
                let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                let by_hash = format!("{dists}/{dir}/by-hash/SHA256/{}", entry.sha256.hex());
                match fetcher
                    .fetch(FetchItem {
                        url: by_hash,
                        ..item.clone()
                    })
                    .await
                {
                    // Some mirrors prune by-hash early; the plain path is checked by the same digest.
                    Err(FetchError::Status { status: 404, .. }) => fetcher.fetch(item).await?,
                    other => other?,
                }
            } else {
                fetcher.fetch(item).await?
            };
            let uncompressed = r
                .file(&format!("{component}/binary-{arch}/Packages"))
                .copied();
            let text = decompress(blob, plain.clone(), uncompressed).await?;
            Ok::<_, RepoError>(PackagesFile {
                component,
                arch,
                path,
                sha256: entry.sha256,
                text,
            })
        }
    });
    futures::future::try_join_all(jobs).await
}

fn not_offered(
    url: &str,
    a: &Accepted,
    what: &'static str,
    name: &str,
    available: &[String],
) -> RepoError {
    RepoError::NotOffered {
        url: url.to_string(),
        suite: a.suite.clone(),
        what,
        name: name.to_string(),
        available: available.join(" "),
    }
}

/// Decompress by file name; the result is checked against the Release's uncompressed entry when listed.
async fn decompress(
    blob: PathBuf,
    url: String,
    uncompressed: Option<release::ReleaseFile>,
) -> Result<String, RepoError> {
    let job = move || -> Result<String, RepoError> {
        let bad = |message: String| RepoError::BadIndex {
            url: url.clone(),
            message,
        };
        let file =
            std::fs::File::open(&blob).map_err(|e| bad(format!("{}: {e}", blob.display())))?;
        let mut reader: Box<dyn Read> = if url.ends_with(".xz") {
            Box::new(liblzma::read::XzDecoder::new(std::io::BufReader::new(file)))
        } else if url.ends_with(".gz") {
            Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
        } else {
            Box::new(file)
        };
        let mut bytes = Vec::new();
        reader
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("decompressing: {e}")))?;
        if let Some(expected) = uncompressed {
            let actual = Sha256Digest::of(&bytes);
            if actual != expected.sha256 {
                return Err(bad(format!(
                    "decompressed index hashes to {actual}, Release lists {}",
                    expected.sha256
                )));
            }
        }
        String::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8: {e}")))
    };
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| RepoError::BadIndex {
            url: String::new(),
            message: e.to_string(),
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb_urls_join_cleanly() {
        assert_eq!(
            deb_url(
                "http://mirror.example/debian/",
                "/pool/main/b/bash/bash_5.2_amd64.deb"
            ),
            "http://mirror.example/debian/pool/main/b/bash/bash_5.2_amd64.deb"
        );
        assert_eq!(
            deb_url("http://mirror.example/debian", "pool/x.deb"),
            "http://mirror.example/debian/pool/x.deb"
        );
    }

    #[tokio::test]
    async fn missing_mirror_says_what_to_set() {
        let apt = tempfile::tempdir().unwrap();
        let cas = crate::cache::Cas::open(apt.path().join("cas")).unwrap();
        let f = Fetcher::new(cas, crate::fetch::FetchOptions::default()).unwrap();
        let ctx = HostContext {
            env: MirrorEnv::default(),
            apt_dir: apt.path().to_path_buf(),
            now: OffsetDateTime::now_utc(),
        };
        let spec = RepoSpec {
            suite: "trixie".into(),
            components: vec!["main".into()],
            archs: vec!["amd64".into()],
            updates: false,
            security: true,
            mirror: MirrorConfig::default(),
            keyring: None,
        };
        let err = load_with(&spec, &f, &ctx).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("HAKIM_DEBIAN_MIRROR=<url of a Debian archive>"),
            "{err}"
        );
        assert_eq!(f.stats().requests, 0);
    }
}
