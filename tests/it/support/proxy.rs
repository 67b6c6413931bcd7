//! An HTTP/1.1 proxy on 127.0.0.1 in front of a registry: logs every request, injects faults,
//! can die mid-push, and can play a GHCR-style bearer token service.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;

/// What to do to a request instead of forwarding it.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Read the request, then close the connection without answering.
    Drop,
    /// Answer 503.
    Unavailable,
    /// Answer 429 with `Retry-After: 1`.
    TooMany,
    /// Say nothing for this long, then close (a client read timeout must fire first).
    Stall(Duration),
    /// Answer 403 DENIED to every request that writes (POST/PUT/PATCH), forever.
    DenyWrites,
}

/// One request seen by the proxy.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body_len: usize,
    pub authorization: Option<String>,
    /// Status we answered, 0 if we dropped the connection.
    pub status: u16,
    /// When the whole request had been read (so a wait the client chose shows as a gap).
    pub received: Instant,
}

impl Logged {
    /// A completed blob upload (final PUT of an upload session).
    pub fn is_blob_upload(&self) -> bool {
        self.method == "PUT" && self.path.contains("/blobs/uploads/") && self.status == 201
    }
    /// A successful cross-repo mount.
    pub fn is_mount(&self) -> bool {
        self.method == "POST" && self.query.contains("mount=") && self.status == 201
    }
    /// A manifest PUT; returns the reference.
    pub fn manifest_put(&self) -> Option<&str> {
        if self.method == "PUT" && self.status == 201 {
            self.path.split("/manifests/").nth(1)
        } else {
            None
        }
    }
}

/// GHCR-style token auth in front of an open registry.
#[derive(Clone)]
pub struct BearerMock {
    pub username: String,
    pub password: String,
    pub token: String,
}

type DiePredicate = Box<dyn Fn(&Logged) -> bool + Send + Sync>;

struct State {
    upstream: SocketAddr,
    addr: SocketAddr,
    faults: Mutex<VecDeque<Fault>>,
    log: Mutex<Vec<Logged>>,
    dead: AtomicBool,
    die_after: Option<DiePredicate>,
    bearer: Option<BearerMock>,
    /// Drop the n-th (1-based) request with this method; counts requests seen so far.
    drop_nth: Option<(String, usize)>,
    method_count: std::sync::atomic::AtomicUsize,
}

/// A running proxy; stops accepting when dropped or dead.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl Proxy {
    /// A plain logging proxy to `upstream`.
    pub fn new(upstream: SocketAddr) -> Self {
        Self::build(upstream, Vec::new(), None, None)
    }

    /// Apply `faults` to the first requests, one each, then forward normally.
    pub fn with_faults(upstream: SocketAddr, faults: Vec<Fault>) -> Self {
        Self::build(upstream, faults, None, None)
    }

    /// Die (refuse all further connections) once a request matching `pred` was answered.
    pub fn dying_after(
        upstream: SocketAddr,
        pred: impl Fn(&Logged) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self::build(upstream, Vec::new(), Some(Box::new(pred)), None)
    }

    /// Require bearer tokens from a token endpoint at `/token`.
    pub fn with_bearer(upstream: SocketAddr, bearer: BearerMock) -> Self {
        Self::build(upstream, Vec::new(), None, Some(bearer))
    }

    /// Drop the `n`-th request (1-based) whose method is `method`, without forwarding it.
    pub fn dropping_nth(upstream: SocketAddr, method: &str, n: usize) -> Self {
        Self::build_with(
            upstream,
            Vec::new(),
            None,
            None,
            Some((method.to_string(), n)),
        )
    }

    /// A logging proxy listening on `bind` (e.g. a test address inside a network namespace),
    /// optionally playing the bearer token service.
    pub fn listening_on(bind: &str, upstream: SocketAddr, bearer: Option<BearerMock>) -> Self {
        Self::build_on(bind, upstream, Vec::new(), None, bearer, None)
    }

    fn build(
        upstream: SocketAddr,
        faults: Vec<Fault>,
        die_after: Option<DiePredicate>,
        bearer: Option<BearerMock>,
    ) -> Self {
        Self::build_with(upstream, faults, die_after, bearer, None)
    }

    fn build_with(
        upstream: SocketAddr,
        faults: Vec<Fault>,
        die_after: Option<DiePredicate>,
        bearer: Option<BearerMock>,
        drop_nth: Option<(String, usize)>,
    ) -> Self {
        Self::build_on("127.0.0.1:0", upstream, faults, die_after, bearer, drop_nth)
    }

    fn build_on(
        bind: &str,
        upstream: SocketAddr,
        faults: Vec<Fault>,
        die_after: Option<DiePredicate>,
        bearer: Option<BearerMock>,
        drop_nth: Option<(String, usize)>,
    ) -> Self {
        let listener = TcpListener::bind(bind)
            .unwrap_or_else(|e| panic!("proxy cannot listen on {bind}: {e}"));
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            upstream,
            addr,
            faults: Mutex::new(faults.into()),
            log: Mutex::new(Vec::new()),
            dead: AtomicBool::new(false),
            die_after,
            bearer,
            drop_nth,
            method_count: std::sync::atomic::AtomicUsize::new(0),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.dead.load(Ordering::SeqCst) {
                    break; // dropping the listener makes further connects fail with ECONNREFUSED
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || handle(&st, conn));
            }
        });
        Self { addr, state }
    }

    /// `ADDRESS:PORT` of the proxy.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Everything seen so far.
    pub fn log(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    /// Forget the log.
    pub fn clear(&self) {
        self.state.log.lock().unwrap().clear();
    }

    /// Whether the proxy has died.
    pub fn is_dead(&self) -> bool {
        self.state.dead.load(Ordering::SeqCst)
    }

    fn kill(state: &State) {
        if !state.dead.swap(true, Ordering::SeqCst) {
            // Wake the accept loop so it sees `dead` and drops the listener.
            let _ = TcpStream::connect(state.addr);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        Self::kill(&self.state);
    }
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(conn: &TcpStream) -> Option<Request> {
    let mut r = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

fn response(status: u16, reason: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

fn handle(st: &State, mut conn: TcpStream) {
    conn.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let Some(req) = read_request(&conn) else {
        return;
    };
    if st.dead.load(Ordering::SeqCst) {
        let _ = conn.shutdown(Shutdown::Both);
        return;
    }
    let (path, query) = match req.target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (req.target.clone(), String::new()),
    };
    let mut logged = Logged {
        method: req.method.clone(),
        path: path.clone(),
        query: query.clone(),
        body_len: req.body.len(),
        authorization: req.header("authorization").map(String::from),
        status: 0,
        received: Instant::now(),
    };
    let fault = {
        let mut faults = st.faults.lock().unwrap();
        match faults.front() {
            Some(Fault::DenyWrites) if req.method == "GET" || req.method == "HEAD" => None,
            Some(Fault::DenyWrites) => Some(Fault::DenyWrites),
            _ => faults.pop_front(),
        }
    };
    let drop_this = st.drop_nth.as_ref().is_some_and(|(m, n)| {
        *m == req.method && st.method_count.fetch_add(1, Ordering::SeqCst) + 1 == *n
    });
    let fault = if drop_this { Some(Fault::Drop) } else { fault };
    let answer = match fault {
        Some(Fault::Drop) => None,
        Some(Fault::Stall(d)) => {
            std::thread::sleep(d);
            None
        }
        Some(Fault::DenyWrites) => Some(response(
            403,
            "Forbidden",
            &[],
            br#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#,
        )),
        Some(Fault::Unavailable) => Some(response(503, "Service Unavailable", &[], b"")),
        Some(Fault::TooMany) => Some(response(
            429,
            "Too Many Requests",
            &[("Retry-After", "1".into())],
            b"",
        )),
        None => serve(st, &req, &path, &query),
    };
    logged.status = answer
        .as_ref()
        .and_then(|a| {
            String::from_utf8_lossy(&a[..a.len().min(64)])
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    // Log and die before answering, so the client never sees a state the log does not show.
    let die = st.die_after.as_ref().is_some_and(|p| p(&logged));
    st.log.lock().unwrap().push(logged);
    if die {
        st.dead.store(true, Ordering::SeqCst);
    }
    if let Some(a) = answer {
        let _ = conn.write_all(&a);
    }
    let _ = conn.shutdown(Shutdown::Both);
    if die {
        // Wake the accept loop so it drops the listener.
        let _ = TcpStream::connect(st.addr);
    }
}

fn serve(st: &State, req: &Request, path: &str, query: &str) -> Option<Vec<u8>> {
    if let Some(b) = &st.bearer {
        if path == "/token" {
            let expected = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", b.username, b.password))
            );
            if req.header("authorization") != Some(expected.as_str())
                || !query.contains("scope=repository")
            {
                return Some(response(
                    401,
                    "Unauthorized",
                    &[],
                    br#"{"errors":[{"code":"DENIED"}]}"#,
                ));
            }
            let body = format!(r#"{{"token":"{}","expires_in":300}}"#, b.token);
            return Some(response(
                200,
                "OK",
                &[("Content-Type", "application/json".into())],
                body.as_bytes(),
            ));
        }
        if req.header("authorization") != Some(format!("Bearer {}", b.token).as_str()) {
            let repo = path
                .strip_prefix("/v2/")
                .and_then(|p| p.split("/blobs/").next())
                .and_then(|p| p.split("/manifests/").next())
                .unwrap_or("");
            // Like GHCR, the token service lives on the host the client asked for.
            let host = req
                .header("host")
                .map(String::from)
                .unwrap_or_else(|| st.addr.to_string());
            let challenge = format!(
                r#"Bearer realm="http://{host}/token",service="mock-ghcr",scope="repository:{repo}:pull,push""#
            );
            return Some(response(
                401,
                "Unauthorized",
                &[("WWW-Authenticate", challenge)],
                br#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
            ));
        }
    }
    forward(st, req)
}

fn forward(st: &State, req: &Request) -> Option<Vec<u8>> {
    let mut up = TcpStream::connect(st.upstream).ok()?;
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.target);
    for (k, v) in &req.headers {
        if k.eq_ignore_ascii_case("connection")
            || (st.bearer.is_some() && k.eq_ignore_ascii_case("authorization"))
        {
            continue;
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    up.write_all(head.as_bytes()).ok()?;
    up.write_all(&req.body).ok()?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp).ok()?;
    Some(resp)
}
