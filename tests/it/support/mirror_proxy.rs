//! A counting HTTP front for the configured Debian mirrors on 127.0.0.1: `/archive/...` and
//! `/security/...` are fetched from the real mirrors and every request path is recorded, so tests
//! count requests where they arrive instead of trusting hakim's own report. It also answers a
//! snapshot service's paths (`/archive/debian[-security]/<timestamp>/...`) from the same mirrors.

use std::sync::{Arc, Mutex};

use hakim::debian::sources::{self, MirrorConfig, MirrorEnv};

/// The archive and security mirror URLs, discovered exactly as hakim does for users.
pub fn mirrors() -> (String, String) {
    let apt = std::path::Path::new(sources::HOST_APT_DIR);
    let host = sources::read_apt_sources(apt).expect("reading the host's apt sources");
    let m = sources::discover(
        &MirrorConfig::default(),
        &MirrorEnv::from_process(),
        &host,
        apt,
    )
    .expect("no Debian mirror configured: set HAKIM_DEBIAN_MIRROR or add an apt source");
    let security = m
        .security
        .first()
        .expect("no Debian security mirror configured")
        .url
        .clone();
    (m.archive[0].url.clone(), security)
}

/// The rest of `path` after `prefix` and a snapshot timestamp, e.g. `/archive/debian/`
/// `20250520T000000Z` `/dists/...`: the layout of a Debian snapshot service, served here from
/// today's mirrors (the tests count what is asked for, not what the archive held then).
fn snapshot_path<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    let (ts, rest) = rest.split_at_checked(16)?;
    let b = ts.as_bytes();
    let is_ts =
        b[8] == b'T' && b[15] == b'Z' && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit);
    (is_ts && rest.starts_with('/')).then_some(rest)
}

/// The running front; stops when dropped.
pub struct MirrorProxy {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    server: Arc<tiny_http::Server>,
}

impl MirrorProxy {
    /// Start in front of the discovered mirrors.
    pub fn start() -> Self {
        let (archive, security) = mirrors();
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let rt = Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
        );
        let client = reqwest::Client::new();
        let (s, r) = (server.clone(), requests.clone());
        std::thread::spawn(move || {
            for req in s.incoming_requests() {
                let path = req.url().to_string();
                r.lock().unwrap().push(path.clone());
                let upstream = if let Some(p) = snapshot_path(&path, "/archive/debian-security/") {
                    Some(format!("{security}{p}"))
                } else if let Some(p) = snapshot_path(&path, "/archive/debian/") {
                    Some(format!("{archive}{p}"))
                } else if let Some(p) = path.strip_prefix("/archive") {
                    Some(format!("{archive}{p}"))
                } else {
                    path.strip_prefix("/security")
                        .map(|p| format!("{security}{p}"))
                };
                let (rt, client) = (rt.clone(), client.clone());
                std::thread::spawn(move || {
                    let answer = upstream.and_then(|url| {
                        rt.block_on(async {
                            let resp = client.get(&url).send().await.ok()?;
                            let status = resp.status().as_u16();
                            Some((status, resp.bytes().await.ok()?.to_vec()))
                        })
                    });
                    let (status, body) = answer.unwrap_or((502, b"bad gateway".to_vec()));
                    let _ =
                        req.respond(tiny_http::Response::from_data(body).with_status_code(status));
                });
            }
        });
        Self {
            port,
            requests,
            server,
        }
    }

    /// Environment that points hakim at this front.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [
            (
                "HAKIM_DEBIAN_MIRROR",
                format!("http://127.0.0.1:{}/archive", self.port),
            ),
            (
                "HAKIM_DEBIAN_SECURITY_MIRROR",
                format!("http://127.0.0.1:{}/security", self.port),
            ),
        ]
    }

    /// Base URL of this front seen as a snapshot service (`<url>/archive/debian/<timestamp>`).
    pub fn snapshot_service(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests seen so far whose path ends with `suffix` (e.g. `.deb`).
    pub fn count(&self, suffix: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.ends_with(suffix))
            .count()
    }

    /// Paths of the requests seen so far that end with `suffix`, in arrival order.
    pub fn paths(&self, suffix: &str) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.ends_with(suffix))
            .cloned()
            .collect()
    }

    /// Every request seen so far.
    pub fn total(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// Forget what was seen.
    pub fn clear(&self) {
        self.requests.lock().unwrap().clear();
    }
}

impl Drop for MirrorProxy {
    fn drop(&mut self) {
        self.server.unblock();
    }
}
