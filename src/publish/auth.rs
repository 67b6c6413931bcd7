//! Registry credentials: where they come from, and parsing auth challenges.

use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::error::{PublishError, Result};

/// A password or token; never printed, never serialized.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for building an Authorization header and nothing else.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A username with its password or token.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The user name (not secret).
    pub username: String,
    /// The password or token.
    pub password: Secret,
}

impl Credentials {
    /// Credentials from a username and a password.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: Secret::new(password),
        }
    }

    /// Value of an `Authorization: Basic` header.
    pub(crate) fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password.expose());
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Where the credentials used for a registry came from (safe to print).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialOrigin {
    /// Given explicitly (`--username` / `--password-stdin`).
    Explicit,
    /// `GITHUB_TOKEN` (+ `GITHUB_ACTOR`) for ghcr.io.
    GithubEnv,
    /// A base64 `auth` entry in the docker config's `auths`.
    DockerConfig,
    /// A `docker-credential-<helper>` program.
    CredentialHelper,
    /// No credentials.
    Anonymous,
}

/// The environment credentials are looked up in; tests build it by hand.
#[derive(Clone, Debug, Default)]
pub struct CredentialContext {
    /// Directory holding `config.json` (`$DOCKER_CONFIG`, else `~/.docker`).
    pub docker_config_dir: Option<PathBuf>,
    /// `GITHUB_TOKEN`, used for ghcr.io only.
    pub github_token: Option<Secret>,
    /// `GITHUB_ACTOR`, the user name paired with `GITHUB_TOKEN`.
    pub github_actor: Option<String>,
    /// `PATH` used to find `docker-credential-*` helpers (the process's own if unset).
    pub helper_path: Option<OsString>,
}

impl CredentialContext {
    /// Read `DOCKER_CONFIG`, `HOME`, `GITHUB_TOKEN` and `GITHUB_ACTOR` from the process environment.
    pub fn from_env() -> Self {
        let non_empty = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let docker_config_dir = non_empty("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| non_empty("HOME").map(|h| Path::new(&h).join(".docker")));
        Self {
            docker_config_dir,
            github_token: non_empty("GITHUB_TOKEN").map(Secret::new),
            github_actor: non_empty("GITHUB_ACTOR"),
            helper_path: None,
        }
    }
}

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, DockerAuth>,
    #[serde(rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(rename = "credHelpers", default)]
    cred_helpers: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
struct DockerAuth {
    auth: Option<String>,
}

#[derive(Deserialize)]
struct HelperOutput {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// Pick credentials for `registry` (a `host[:port]`): explicit, then `GITHUB_TOKEN` for ghcr.io,
/// then the docker config (`credHelpers`, `auths`, `credsStore`), else anonymous.
pub fn resolve_credentials(
    registry: &str,
    explicit: Option<&Credentials>,
    ctx: &CredentialContext,
) -> Result<(Option<Credentials>, CredentialOrigin)> {
    if let Some(c) = explicit {
        return Ok((Some(c.clone()), CredentialOrigin::Explicit));
    }
    if registry == "ghcr.io"
        && let Some(token) = &ctx.github_token
    {
        // GHCR ignores the user name for token auth but wants a non-empty one.
        let user = ctx
            .github_actor
            .clone()
            .unwrap_or_else(|| "github-actions".into());
        return Ok((
            Some(Credentials {
                username: user,
                password: token.clone(),
            }),
            CredentialOrigin::GithubEnv,
        ));
    }
    if let Some(dir) = &ctx.docker_config_dir
        && let Some(found) = from_docker_config(registry, &dir.join("config.json"), ctx)?
    {
        return Ok((Some(found.0), found.1));
    }
    Ok((None, CredentialOrigin::Anonymous))
}

fn from_docker_config(
    registry: &str,
    path: &Path,
    ctx: &CredentialContext,
) -> Result<Option<(Credentials, CredentialOrigin)>> {
    let cfg_err = |detail: String| PublishError::Credentials {
        registry: registry.to_string(),
        detail: format!("{}: {detail}", path.display()),
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(cfg_err(e.to_string())),
    };
    // serde_json errors quote no input, so a malformed file cannot leak its secrets here.
    let cfg: DockerConfig = serde_json::from_slice(&bytes).map_err(|e| cfg_err(e.to_string()))?;
    if let Some(helper) = cfg.cred_helpers.get(registry) {
        return run_helper(registry, helper, ctx)
            .map(|c| c.map(|c| (c, CredentialOrigin::CredentialHelper)));
    }
    let keys = [
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ];
    for key in &keys {
        if let Some(encoded) = cfg.auths.get(key).and_then(|a| a.auth.as_deref()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    cfg_err(format!("auths.\"{key}\".auth is not base64 user:password"))
                })?;
            let (user, pass) = decoded
                .split_once(':')
                .ok_or_else(|| cfg_err(format!("auths.\"{key}\".auth has no `:`")))?;
            return Ok(Some((
                Credentials::new(user, pass),
                CredentialOrigin::DockerConfig,
            )));
        }
    }
    if let Some(store) = &cfg.creds_store {
        return run_helper(registry, store, ctx)
            .map(|c| c.map(|c| (c, CredentialOrigin::CredentialHelper)));
    }
    Ok(None)
}

/// Run `docker-credential-<helper> get` with the registry on stdin; `None` if it knows nothing.
fn run_helper(
    registry: &str,
    helper: &str,
    ctx: &CredentialContext,
) -> Result<Option<Credentials>> {
    let program = format!("docker-credential-{helper}");
    let err = |detail: String| PublishError::Credentials {
        registry: registry.to_string(),
        detail: format!("{program}: {detail}"),
    };
    let mut cmd = Command::new(&program);
    cmd.arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(path) = &ctx.helper_path {
        cmd.env("PATH", path);
    }
    // A helper just written by another thread of ours can be briefly "text file busy" while a
    // concurrently forked child still holds the write descriptor; that passes in milliseconds.
    let mut tries = 0;
    let mut child = loop {
        match cmd.spawn() {
            Ok(c) => break c,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 20 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            Err(e) => return Err(err(format!("cannot run: {e}"))),
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that answers without reading stdin closes the pipe early; its exit says more.
        if let Err(e) = stdin.write_all(registry.as_bytes())
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            return Err(err(e.to_string()));
        }
    }
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if msg.contains("credentials not found") {
            return Ok(None);
        }
        // Helper output may hold secrets only on success, so its failure text is safe to show.
        return Err(err(format!(
            "{}: {}",
            out.status,
            msg.chars().take(200).collect::<String>()
        )));
    }
    let parsed: HelperOutput = serde_json::from_slice(&out.stdout)
        .map_err(|_| err("output is not {\"Username\",\"Secret\"} JSON".into()))?;
    if parsed.username == "<token>" {
        return Err(err(
            "identity tokens (Username \"<token>\") are not supported".into(),
        ));
    }
    Ok(Some(Credentials::new(parsed.username, parsed.secret)))
}

/// A `WWW-Authenticate` challenge from a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// HTTP Basic.
    Basic,
    /// Docker token auth: fetch a token from `realm`.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parse a `WWW-Authenticate` header (`Bearer realm="…",service="…",scope="a:b:pull,push"`).
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    Some(Challenge::Bearer {
        realm: get("realm")?,
        service: get("service"),
        scope: get("scope"),
    })
}

fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect::<String>();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_with_commas_in_scope() {
        let c = parse_challenge(
            r#"Bearer realm="https://ghcr.example/token",service="ghcr.example",scope="repository:o/x:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://ghcr.example/token".into(),
                service: Some("ghcr.example".into()),
                scope: Some("repository:o/x:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
    }

    #[test]
    fn secrets_never_debug_print() {
        let c = Credentials::new("alice", "hunter2-secret");
        let dbg = format!("{c:?}");
        assert!(dbg.contains("alice") && !dbg.contains("hunter2"), "{dbg}");
        assert!(c.basic_header().starts_with("Basic "));
    }

    #[test]
    fn github_token_wins_over_the_docker_config_for_ghcr_only() {
        let dir = tempfile::tempdir().unwrap();
        let auth = |u: &str| base64::engine::general_purpose::STANDARD.encode(format!("{u}:pw"));
        let config = serde_json::json!({"auths": {
            "ghcr.io": {"auth": auth("from-config")},
            "registry.example": {"auth": auth("other")},
        }});
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        let ctx = CredentialContext {
            docker_config_dir: Some(dir.path().to_path_buf()),
            github_token: Some(Secret::new("gh-tok")),
            github_actor: None,
            ..Default::default()
        };
        let (c, o) = resolve_credentials("ghcr.io", None, &ctx).unwrap();
        assert_eq!(o, CredentialOrigin::GithubEnv);
        assert_eq!(c.unwrap().username, "github-actions");
        let (c, o) = resolve_credentials("registry.example", None, &ctx).unwrap();
        assert_eq!(o, CredentialOrigin::DockerConfig);
        assert_eq!(c.unwrap().username, "other");
        // Without the token, ghcr.io falls back to the docker config.
        let no_token = CredentialContext {
            github_token: None,
            ..ctx
        };
        let (c, o) = resolve_credentials("ghcr.io", None, &no_token).unwrap();
        assert_eq!(o, CredentialOrigin::DockerConfig);
        assert_eq!(c.unwrap().username, "from-config");
    }

    #[test]
    fn github_token_only_for_ghcr() {
        let ctx = CredentialContext {
            github_token: Some(Secret::new("gh-tok")),
            github_actor: Some("octo".into()),
            ..Default::default()
        };
        let (c, o) = resolve_credentials("ghcr.io", None, &ctx).unwrap();
        assert_eq!(o, CredentialOrigin::GithubEnv);
        assert_eq!(c.unwrap().username, "octo");
        let (c, o) = resolve_credentials("registry.example", None, &ctx).unwrap();
        assert!(c.is_none());
        assert_eq!(o, CredentialOrigin::Anonymous);
        let explicit = Credentials::new("u", "p");
        let (_, o) = resolve_credentials("ghcr.io", Some(&explicit), &ctx).unwrap();
        assert_eq!(o, CredentialOrigin::Explicit);
    }
}
