//! Mirror discovery: variant config, then environment, then the host's apt sources.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::debian::control;

/// Mirror settings from a variant's `debian:` block.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// Base URL of a Debian archive (the directory holding `dists/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    /// Base URL of the Debian security archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_mirror: Option<String>,
    /// Snapshot timestamp `YYYYMMDDTHHMMSSZ`; pins both archives to that moment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Base URL of a snapshot service (the directory holding `archive/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_mirror: Option<String>,
}

/// Environment variable overriding the archive mirror.
pub const ENV_MIRROR: &str = "HAKIM_DEBIAN_MIRROR";
/// Environment variable overriding the security mirror.
pub const ENV_SECURITY_MIRROR: &str = "HAKIM_DEBIAN_SECURITY_MIRROR";
/// Environment variable naming the snapshot service.
pub const ENV_SNAPSHOT_MIRROR: &str = "HAKIM_DEBIAN_SNAPSHOT_MIRROR";
/// Where the host keeps its apt configuration.
pub const HOST_APT_DIR: &str = "/etc/apt";

/// Mirror settings from the environment (empty values count as unset).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MirrorEnv {
    /// `HAKIM_DEBIAN_MIRROR`.
    pub mirror: Option<String>,
    /// `HAKIM_DEBIAN_SECURITY_MIRROR`.
    pub security_mirror: Option<String>,
    /// `HAKIM_DEBIAN_SNAPSHOT_MIRROR`.
    pub snapshot_mirror: Option<String>,
}

impl MirrorEnv {
    /// Read the three variables from this process's environment.
    pub fn from_process() -> Self {
        let var = |k| {
            std::env::var(k)
                .ok()
                .filter(|v: &String| !v.trim().is_empty())
        };
        Self {
            mirror: var(ENV_MIRROR),
            security_mirror: var(ENV_SECURITY_MIRROR),
            snapshot_mirror: var(ENV_SNAPSHOT_MIRROR),
        }
    }
}

/// One enabled binary (`deb`) source from the host's apt configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AptSource {
    /// Repository base URL, without trailing slash.
    pub uri: String,
    /// Suites (distributions) listed for it.
    pub suites: Vec<String>,
    /// Components listed for it.
    pub components: Vec<String>,
    /// The file it came from.
    pub file: PathBuf,
}

/// A mirror URL to try, and where it was configured (for error messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Base URL (holds `dists/`), without trailing slash.
    pub url: String,
    /// Human description of where it came from, e.g. `HAKIM_DEBIAN_MIRROR`.
    pub from: String,
}

/// Result of discovery: candidates per archive, best first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirrors {
    /// Candidates for the Debian archive (never empty).
    pub archive: Vec<Candidate>,
    /// Candidates for the security archive (may be empty).
    pub security: Vec<Candidate>,
    /// Whether these are snapshot URLs (Valid-Until is then not enforced).
    pub snapshot: bool,
}

/// Errors from reading apt sources or choosing mirrors.
#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    /// A sources file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A sources file is malformed.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// No archive mirror anywhere.
    #[error(
        "no Debian mirror configured and none found in the apt sources under {searched}: set `mirror:` in the variant's `debian:` block or {ENV_MIRROR}=<url of a Debian archive>"
    )]
    NoMirror {
        /// The apt directory that was searched.
        searched: PathBuf,
    },
    /// `snapshot:` is not a snapshot timestamp.
    #[error("snapshot `{0}`: expected a timestamp like 20250520T000000Z (YYYYMMDDTHHMMSSZ)")]
    BadSnapshot(String),
    /// `snapshot:` without a snapshot service.
    #[error(
        "snapshot `{0}` is set but no snapshot service is configured: set `snapshot_mirror:` in the variant's `debian:` block or {ENV_SNAPSHOT_MIRROR}=<url of a snapshot service>"
    )]
    NoSnapshotMirror(String),
    /// `snapshot:` together with explicit mirrors.
    #[error(
        "`snapshot:` cannot be combined with `mirror:` or `security_mirror:`; remove one of them"
    )]
    SnapshotConflict,
}

/// Read every enabled `deb` entry under an apt directory (normally `/etc/apt`).
///
/// Reads `sources.list`, `sources.list.d/*.list` and `sources.list.d/*.sources`; files with
/// `.disabled` in their name, `deb-src` entries and `Enabled: no` stanzas are skipped.
pub fn read_apt_sources(apt_dir: &Path) -> Result<Vec<AptSource>, SourcesError> {
    let mut files = vec![apt_dir.join("sources.list")];
    let dir = apt_dir.join("sources.list.d");
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            let mut names: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    !name.contains(".disabled")
                        && (name.ends_with(".list") || name.ends_with(".sources"))
                })
                .collect();
            names.sort();
            files.extend(names);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(SourcesError::Io { path: dir, source }),
    }
    let mut out = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(SourcesError::Io { path: file, source }),
        };
        if file.extension().is_some_and(|e| e == "sources") {
            out.extend(parse_deb822_sources(&text, &file)?);
        } else {
            out.extend(parse_one_line_sources(&text, &file)?);
        }
    }
    Ok(out)
}

/// Parse a deb822 `.sources` file.
pub fn parse_deb822_sources(text: &str, file: &Path) -> Result<Vec<AptSource>, SourcesError> {
    let paras = control::parse(text).map_err(|e| SourcesError::Parse {
        path: file.to_path_buf(),
        line: e.line,
        message: format!("malformed field `{}`", e.text),
    })?;
    let mut out = Vec::new();
    for p in paras {
        let words = |name| {
            p.get(name)
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        if !words("Types").iter().any(|t| t == "deb") {
            continue;
        }
        if p.get("Enabled")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("no"))
        {
            continue;
        }
        let uris = words("URIs");
        if uris.is_empty() {
            return Err(SourcesError::Parse {
                path: file.to_path_buf(),
                line: p.line,
                message: "stanza has no URIs field".into(),
            });
        }
        for uri in uris {
            out.push(AptSource {
                uri: trim_url(&uri),
                suites: words("Suites"),
                components: words("Components"),
                file: file.to_path_buf(),
            });
        }
    }
    Ok(out)
}

/// Parse a one-line-style `.list` file.
pub fn parse_one_line_sources(text: &str, file: &Path) -> Result<Vec<AptSource>, SourcesError> {
    let mut out = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        let mut tokens = line.split_whitespace();
        if tokens.next() != Some("deb") {
            continue;
        }
        let mut rest: Vec<&str> = tokens.collect();
        if rest.first().is_some_and(|t| t.starts_with('[')) {
            let end =
                rest.iter()
                    .position(|t| t.ends_with(']'))
                    .ok_or_else(|| SourcesError::Parse {
                        path: file.to_path_buf(),
                        line: idx + 1,
                        message: "unterminated `[options]`".into(),
                    })?;
            rest.drain(..=end);
        }
        let [uri, suite, components @ ..] = rest.as_slice() else {
            return Err(SourcesError::Parse {
                path: file.to_path_buf(),
                line: idx + 1,
                message: "expected `deb [options] URI SUITE [COMPONENT...]`".into(),
            });
        };
        out.push(AptSource {
            uri: trim_url(uri),
            suites: vec![suite.to_string()],
            components: components.iter().map(|c| c.to_string()).collect(),
            file: file.to_path_buf(),
        });
    }
    Ok(out)
}

/// Release codenames and aliases that identify the Debian archive in a host source.
const DEBIAN_SUITES: &[&str] = &[
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "experimental",
    "stable",
    "testing",
    "unstable",
    "oldstable",
    "oldoldstable",
];

fn base_suite(suite: &str) -> &str {
    suite.split('-').next().unwrap_or(suite)
}

fn is_security(src: &AptSource) -> bool {
    src.suites.iter().any(|s| s.ends_with("-security")) || src.uri.ends_with("/debian-security")
}

fn is_archive(src: &AptSource) -> bool {
    !is_security(src)
        && (src.uri.ends_with("/debian")
            || src
                .suites
                .iter()
                .any(|s| DEBIAN_SUITES.contains(&base_suite(s))))
}

/// Choose mirror candidates: the variant's keys win, then the environment, then host sources.
///
/// Host candidates are only guesses; the caller must accept one only after its Release
/// proves `Origin: Debian` under a valid signature.
pub fn discover(
    cfg: &MirrorConfig,
    env: &MirrorEnv,
    host: &[AptSource],
    apt_dir: &Path,
) -> Result<Mirrors, SourcesError> {
    if let Some(ts) = &cfg.snapshot {
        return snapshot_mirrors(cfg, env, ts);
    }
    let archive = if let Some(m) = &cfg.mirror {
        vec![candidate(m, "`mirror:` in the variant")]
    } else if let Some(m) = &env.mirror {
        vec![candidate(m, ENV_MIRROR)]
    } else {
        host_candidates(host, is_archive)
    };
    if archive.is_empty() {
        return Err(SourcesError::NoMirror {
            searched: apt_dir.to_path_buf(),
        });
    }
    let security = if let Some(m) = &cfg.security_mirror {
        vec![candidate(m, "`security_mirror:` in the variant")]
    } else if let Some(m) = &env.security_mirror {
        vec![candidate(m, ENV_SECURITY_MIRROR)]
    } else {
        let mut found = host_candidates(host, is_security);
        // Most archives keep security next door; a guess that must still pass verification.
        for a in &archive {
            if let Some(parent) = a.url.strip_suffix("/debian") {
                let url = format!("{parent}/debian-security");
                if !found.iter().any(|c| c.url == url) {
                    found.push(Candidate {
                        url,
                        from: format!("next to {} ({})", a.url, a.from),
                    });
                }
            }
        }
        found
    };
    Ok(Mirrors {
        archive,
        security,
        snapshot: false,
    })
}

fn snapshot_mirrors(
    cfg: &MirrorConfig,
    env: &MirrorEnv,
    ts: &str,
) -> Result<Mirrors, SourcesError> {
    if cfg.mirror.is_some() || cfg.security_mirror.is_some() {
        return Err(SourcesError::SnapshotConflict);
    }
    if !is_snapshot_timestamp(ts) {
        return Err(SourcesError::BadSnapshot(ts.to_string()));
    }
    let (service, from) = match (&cfg.snapshot_mirror, &env.snapshot_mirror) {
        (Some(m), _) => (trim_url(m), "`snapshot_mirror:` in the variant"),
        (None, Some(m)) => (trim_url(m), ENV_SNAPSHOT_MIRROR),
        (None, None) => return Err(SourcesError::NoSnapshotMirror(ts.to_string())),
    };
    let c = |archive: &str| Candidate {
        url: format!("{service}/archive/{archive}/{ts}"),
        from: format!("snapshot {ts} from {from}"),
    };
    Ok(Mirrors {
        archive: vec![c("debian")],
        security: vec![c("debian-security")],
        snapshot: true,
    })
}

fn is_snapshot_timestamp(ts: &str) -> bool {
    let b = ts.as_bytes();
    b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
}

fn host_candidates(host: &[AptSource], keep: fn(&AptSource) -> bool) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    for src in host.iter().filter(|s| keep(s)) {
        if !out.iter().any(|c| c.url == src.uri) {
            out.push(Candidate {
                url: src.uri.clone(),
                from: src.file.display().to_string(),
            });
        }
    }
    out
}

fn candidate(url: &str, from: &str) -> Candidate {
    Candidate {
        url: trim_url(url),
        from: from.to_string(),
    }
}

fn trim_url(url: &str) -> String {
    url.trim().trim_end_matches('/').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn host_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "sources.list.d/debian.sources",
            "Types: deb deb-src\n# comment\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
             Types: deb\nURIs: http://security.mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n\
             Types: deb\nEnabled: no\nURIs: http://off.mirror.example/debian\nSuites: trixie\nComponents: main\n\n\
             Types: deb-src\nURIs: http://src.mirror.example/debian\nSuites: trixie\nComponents: main\n",
        );
        write(
            dir.path(),
            "sources.list.d/vendor.sources",
            "Types: deb\nURIs: https://vendor.example/node\nSuites: nodistro\nComponents: main\n",
        );
        write(
            dir.path(),
            "sources.list.d/old.list.disabled-by-admin",
            "deb http://disabled.example/debian trixie main\n",
        );
        write(
            dir.path(),
            "sources.list",
            "# deb http://commented.example/debian trixie main\ndeb-src http://src.example/debian trixie main\n\
             deb [arch=amd64 signed-by=/k.gpg] http://mirror2.example/debian/ trixie main contrib # trailing\n\
             deb https://registry.example/apt cloud-sdk main\n",
        );
        dir
    }

    #[test]
    fn reads_both_formats_and_skips_disabled_entries() {
        let dir = host_dir();
        let srcs = read_apt_sources(dir.path()).unwrap();
        let uris: Vec<&str> = srcs.iter().map(|s| s.uri.as_str()).collect();
        assert_eq!(
            uris,
            [
                "http://mirror2.example/debian",
                "https://registry.example/apt",
                "http://mirror.example/debian",
                "http://security.mirror.example/debian-security",
                "https://vendor.example/node",
            ]
        );
        assert_eq!(srcs[0].components, ["main", "contrib"]);
        assert_eq!(srcs[2].suites, ["bookworm", "bookworm-updates"]);
        assert!(srcs[2].file.ends_with("sources.list.d/debian.sources"));
    }

    #[test]
    fn host_sources_give_archive_and_security_candidates() {
        let dir = host_dir();
        let host = read_apt_sources(dir.path()).unwrap();
        let m = discover(
            &MirrorConfig::default(),
            &MirrorEnv::default(),
            &host,
            dir.path(),
        )
        .unwrap();
        let urls = |cs: &[Candidate]| cs.iter().map(|c| c.url.clone()).collect::<Vec<_>>();
        assert_eq!(
            urls(&m.archive),
            [
                "http://mirror2.example/debian",
                "http://mirror.example/debian"
            ]
        );
        assert_eq!(
            urls(&m.security),
            [
                "http://security.mirror.example/debian-security",
                "http://mirror2.example/debian-security",
                "http://mirror.example/debian-security",
            ]
        );
        assert!(!m.snapshot);
    }

    #[test]
    fn config_beats_env_beats_host() {
        let dir = host_dir();
        let host = read_apt_sources(dir.path()).unwrap();
        let env = MirrorEnv {
            mirror: Some("http://env.mirror.example/debian".into()),
            security_mirror: Some("http://env.mirror.example/debian-security/".into()),
            snapshot_mirror: None,
        };
        let m = discover(&MirrorConfig::default(), &env, &host, dir.path()).unwrap();
        assert_eq!(
            m.archive,
            [candidate("http://env.mirror.example/debian", ENV_MIRROR)]
        );
        assert_eq!(
            m.security[0].url,
            "http://env.mirror.example/debian-security"
        );
        assert_eq!(m.security.len(), 1);

        let cfg = MirrorConfig {
            mirror: Some("http://yaml.mirror.example/debian".into()),
            ..Default::default()
        };
        let m = discover(&cfg, &env, &host, dir.path()).unwrap();
        assert_eq!(m.archive.len(), 1);
        assert_eq!(m.archive[0].url, "http://yaml.mirror.example/debian");
        assert_eq!(m.security[0].from, ENV_SECURITY_MIRROR);
    }

    #[test]
    fn missing_mirror_says_what_to_set() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "sources.list",
            "deb https://registry.example/apt cloud-sdk main\n",
        );
        let host = read_apt_sources(dir.path()).unwrap();
        let err = discover(
            &MirrorConfig::default(),
            &MirrorEnv::default(),
            &host,
            dir.path(),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("`mirror:` in the variant's `debian:` block"),
            "{msg}"
        );
        assert!(
            msg.contains("HAKIM_DEBIAN_MIRROR=<url of a Debian archive>"),
            "{msg}"
        );
    }

    #[test]
    fn snapshot_urls_and_errors() {
        let cfg = MirrorConfig {
            snapshot: Some("20250520T000000Z".into()),
            snapshot_mirror: Some("http://snapshot.example/".into()),
            ..Default::default()
        };
        let m = discover(&cfg, &MirrorEnv::default(), &[], Path::new("/nonexistent")).unwrap();
        assert!(m.snapshot);
        assert_eq!(
            m.archive[0].url,
            "http://snapshot.example/archive/debian/20250520T000000Z"
        );
        assert_eq!(
            m.security[0].url,
            "http://snapshot.example/archive/debian-security/20250520T000000Z"
        );

        let env = MirrorEnv {
            snapshot_mirror: Some("http://snap.env.example".into()),
            ..Default::default()
        };
        let cfg_env = MirrorConfig {
            snapshot_mirror: None,
            ..cfg.clone()
        };
        let m = discover(&cfg_env, &env, &[], Path::new("/x")).unwrap();
        assert!(
            m.archive[0]
                .url
                .starts_with("http://snap.env.example/archive/debian/")
        );

        let err = discover(&cfg_env, &MirrorEnv::default(), &[], Path::new("/x")).unwrap_err();
        assert!(
            err.to_string().contains("HAKIM_DEBIAN_SNAPSHOT_MIRROR"),
            "{err}"
        );
        let bad = MirrorConfig {
            snapshot: Some("2025-05-20".into()),
            ..cfg.clone()
        };
        assert!(matches!(
            discover(&bad, &env, &[], Path::new("/x")),
            Err(SourcesError::BadSnapshot(_))
        ));
        let both = MirrorConfig {
            mirror: Some("http://mirror.example/debian".into()),
            ..cfg
        };
        assert!(matches!(
            discover(&both, &env, &[], Path::new("/x")),
            Err(SourcesError::SnapshotConflict)
        ));
    }

    #[test]
    fn config_parses_from_yaml_and_rejects_unknown_keys() {
        let cfg: MirrorConfig = serde_saphyr::from_str(
            "mirror: http://mirror.example/debian\nsnapshot_mirror: http://s.example\n",
        )
        .unwrap();
        assert_eq!(cfg.mirror.as_deref(), Some("http://mirror.example/debian"));
        assert!(serde_saphyr::from_str::<MirrorConfig>("mirrror: x\n").is_err());
    }

    #[test]
    fn malformed_one_line_entry_names_file_and_line() {
        let err = parse_one_line_sources(
            "\ndeb http://mirror.example/debian\n",
            Path::new("/etc/apt/x.list"),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string().split(':').take(2).collect::<Vec<_>>(),
            ["/etc/apt/x.list", "2"]
        );
    }
}
