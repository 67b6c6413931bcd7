//! Parallel, retrying, sha256-verified downloads into the content-addressed store.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use tokio::sync::Semaphore;

use crate::cache::{BlobState, Cas, CasError};
use crate::digest::Sha256Digest;
use crate::net::{self, NetOptions, RetryError, Retryable, Verdict};

/// How a [`Fetcher`] behaves.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Maximum number of downloads in flight at once.
    pub concurrency: usize,
    /// Refuse every network request; only cache hits and local files succeed.
    pub offline: bool,
    /// Retries, stall timeout and retry reporting.
    pub net: NetOptions,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            concurrency: 8,
            offline: false,
            net: NetOptions::default(),
        }
    }
}

/// One file to fetch: where from and what it must hash to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchItem {
    /// http(s) URL, `file://` URL or local path.
    pub url: String,
    /// Expected SHA-256 of the content.
    pub sha256: Sha256Digest,
    /// Expected size, when known (used for progress and to stop oversized bodies early).
    pub size: Option<u64>,
    /// Short human name for progress output.
    pub label: String,
}

/// Counters of network activity since the fetcher was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// HTTP requests sent (every attempt counts).
    pub requests: u64,
    /// Response body bytes received.
    pub bytes: u64,
}

/// Errors from fetching.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A network request was needed while offline.
    #[error("offline: {url} is not in the cache")]
    Offline {
        /// The URL that would have been requested.
        url: String,
    },
    /// The cached copy was corrupt and has been removed, and offline forbids a new download.
    #[error(
        "offline: the cached copy of {url} was corrupt (it hashed to {actual}, not {expected}) \
         and has been removed; run the same command without --offline to download it again"
    )]
    OfflineCorrupt {
        /// The URL that would have been requested.
        url: String,
        /// The digest the lock or spec pins.
        expected: Sha256Digest,
        /// What the removed copy hashed to.
        actual: Sha256Digest,
    },
    /// The server answered with a non-retryable status.
    #[error("GET {url}: HTTP {status}")]
    Status {
        /// The URL requested.
        url: String,
        /// The HTTP status code.
        status: u16,
    },
    /// Transient failures persisted through every retry.
    #[error("GET {url}: giving up after {attempts} attempts: {reason}")]
    Network {
        /// The URL requested.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last failure.
        reason: String,
    },
    /// The content did not hash to the expected digest.
    #[error("{url}: sha256 mismatch: expected {expected}, got {actual}")]
    Mismatch {
        /// Where the content came from.
        url: String,
        /// The digest the caller asked for.
        expected: Sha256Digest,
        /// The digest of what arrived.
        actual: Sha256Digest,
    },
    /// The content is longer than the expected size.
    #[error("{url}: body exceeds the expected {expected} bytes")]
    TooLarge {
        /// Where the content came from.
        url: String,
        /// The size the caller announced.
        expected: u64,
    },
    /// The URL has an unsupported form.
    #[error("{url}: unsupported URL: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// Why it is not usable.
        reason: String,
    },
    /// A local source file could not be read.
    #[error("{path}: {source}")]
    Local {
        /// The local file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Writing downloaded bytes failed (disk full, permissions).
    #[error("{url}: writing download: {source}")]
    Write {
        /// The URL being downloaded.
        url: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The cache could not be written or read.
    #[error("cache, while fetching {url}: {source}")]
    Cache {
        /// The URL being fetched.
        url: String,
        /// The store error.
        source: CasError,
    },
    /// The HTTP client could not be built.
    #[error("HTTP client setup: {0}")]
    Client(String),
}

/// Receives progress of [`Fetcher::fetch_all`].
pub trait FetchProgress: Send + Sync {
    /// A batch starts: item count and total known bytes.
    fn begin(&self, items: usize, bytes: u64);
    /// Bytes arrived from the network (or were found in the cache); retried bytes count again.
    fn advance(&self, bytes: u64);
    /// An item is in the cache, downloaded or found there already.
    fn item_done(&self, label: &str, cached: bool);
}

/// Progress sink that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl FetchProgress for NoProgress {
    fn begin(&self, _items: usize, _bytes: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn item_done(&self, _label: &str, _cached: bool) {}
}

/// Downloads into a [`Cas`] with bounded concurrency, retries and verification.
pub struct Fetcher {
    cas: Cas,
    opts: FetchOptions,
    client: reqwest::Client,
    slots: Semaphore,
    requests: AtomicU64,
    bytes: AtomicU64,
}

/// Outcome of one failed attempt.
#[derive(Debug)]
enum Failure {
    /// Worth retrying, possibly after a server-given delay.
    Transient {
        reason: String,
        after: Option<Duration>,
    },
    /// Retrying cannot help.
    Fatal(FetchError),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transient { reason, .. } => f.write_str(reason),
            Self::Fatal(e) => e.fmt(f),
        }
    }
}

impl Retryable for Failure {
    fn verdict(&self) -> Verdict {
        match self {
            Self::Transient { after, .. } => Verdict::Retry(*after),
            Self::Fatal(_) => Verdict::Stop,
        }
    }
}

impl Failure {
    /// The error a caller sees once retrying is over.
    fn settle(e: RetryError<Self>, url: &str) -> FetchError {
        let (attempts, last) = match e {
            RetryError::Fatal(Self::Fatal(e))
            | RetryError::Exhausted {
                last: Self::Fatal(e),
                ..
            } => {
                return e;
            }
            RetryError::Fatal(last) => (1, last),
            RetryError::Exhausted { attempts, last } => (attempts, last),
        };
        FetchError::Network {
            url: url.to_string(),
            attempts,
            reason: last.to_string(),
        }
    }
}

/// Where an item's bytes come from.
enum Source<'a> {
    Http(&'a str),
    Local(PathBuf),
}

impl Fetcher {
    /// A fetcher storing into `cas`.
    pub fn new(cas: Cas, opts: FetchOptions) -> Result<Self, FetchError> {
        let client = opts
            .net
            .client()
            .map_err(|e| FetchError::Client(net::error_chain(&e)))?;
        let slots = Semaphore::new(opts.concurrency.max(1));
        Ok(Self {
            cas,
            opts,
            client,
            slots,
            requests: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        })
    }

    /// The store this fetcher fills.
    pub fn cas(&self) -> &Cas {
        &self.cas
    }

    /// The options in effect.
    pub fn options(&self) -> &FetchOptions {
        &self.opts
    }

    /// Network counters so far.
    pub fn stats(&self) -> FetchStats {
        FetchStats {
            requests: self.requests.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    /// Make `item` present and verified in the cache; returns its blob path.
    pub async fn fetch(&self, item: FetchItem) -> Result<PathBuf, FetchError> {
        self.fetch_one(&item, &NoProgress).await
    }

    /// Fetch many items, at most `concurrency` at a time; paths come back in input order.
    pub async fn fetch_all(
        &self,
        items: Vec<FetchItem>,
        progress: &dyn FetchProgress,
    ) -> Result<Vec<PathBuf>, FetchError> {
        let bytes = items.iter().filter_map(|i| i.size).sum();
        progress.begin(items.len(), bytes);
        let width = self.opts.concurrency.max(1);
        futures::stream::iter(items.iter().map(|item| self.fetch_one(item, progress)))
            .buffered(width)
            .try_collect()
            .await
    }

    /// Uncached GET of a small document (e.g. InRelease), with retries.
    pub async fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        match classify(url)? {
            Source::Local(path) => {
                let p = path.clone();
                tokio::task::spawn_blocking(move || std::fs::read(&p))
                    .await
                    .map_err(|e| FetchError::Local {
                        path: path.clone(),
                        source: io::Error::other(e),
                    })?
                    .map_err(|source| FetchError::Local { path, source })
            }
            Source::Http(url) => {
                self.download(url, None, &NoProgress, || Ok(Vec::new()))
                    .await
            }
        }
    }

    async fn fetch_one(
        &self,
        item: &FetchItem,
        progress: &dyn FetchProgress,
    ) -> Result<PathBuf, FetchError> {
        let state = self.cached(item).await?;
        if state == BlobState::Good {
            // Count cached bytes too, so a progress bar sized by `begin` reaches its end.
            progress.advance(item.size.unwrap_or(0));
            progress.item_done(&item.label, true);
            return Ok(self.cas.path(&item.sha256));
        }
        match classify(&item.url)? {
            Source::Local(path) => self.copy_local(item, path).await?,
            Source::Http(url) => {
                if let (true, BlobState::Removed { actual }) = (self.opts.offline, state) {
                    return Err(FetchError::OfflineCorrupt {
                        url: url.to_string(),
                        expected: item.sha256,
                        actual,
                    });
                }
                let open = || self.cas.writer().map_err(|e| self.cache_err(url, e));
                let w = self.download(url, item.size, progress, open).await?;
                commit_to(url, w, &item.sha256)?;
            }
        }
        progress.item_done(&item.label, false);
        Ok(self.cas.path(&item.sha256))
    }

    /// Whether a verified copy is present; a corrupt copy is removed.
    async fn cached(&self, item: &FetchItem) -> Result<BlobState, FetchError> {
        let cas = self.cas.clone();
        let digest = item.sha256;
        tokio::task::spawn_blocking(move || cas.check(&digest))
            .await
            .map_err(|e| FetchError::Local {
                path: self.cas.path(&digest),
                source: io::Error::other(e),
            })?
            .map_err(|source| self.cache_err(&item.url, source))
    }

    async fn copy_local(&self, item: &FetchItem, path: PathBuf) -> Result<(), FetchError> {
        let cas = self.cas.clone();
        let expected = item.sha256;
        let url = item.url.clone();
        let job = move || -> Result<(), FetchError> {
            let mut file = std::fs::File::open(&path).map_err(|source| FetchError::Local {
                path: path.clone(),
                source,
            })?;
            let mut w = cas.writer().map_err(|source| FetchError::Cache {
                url: url.clone(),
                source,
            })?;
            io::copy(&mut file, &mut w).map_err(|source| FetchError::Local {
                path: path.clone(),
                source,
            })?;
            commit_to(&url, w, &expected)
        };
        tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| FetchError::Local {
                path: PathBuf::from(&item.url),
                source: io::Error::other(e),
            })?
    }

    fn ensure_online(&self, url: &str) -> Result<(), FetchError> {
        if self.opts.offline {
            return Err(FetchError::Offline {
                url: url.to_string(),
            });
        }
        Ok(())
    }

    fn cache_err(&self, url: &str, source: CasError) -> FetchError {
        FetchError::Cache {
            url: url.to_string(),
            source,
        }
    }

    /// GET `url` into a fresh sink from `open` per attempt, retrying transient failures.
    async fn download<W: Write>(
        &self,
        url: &str,
        limit: Option<u64>,
        progress: &dyn FetchProgress,
        mut open: impl FnMut() -> Result<W, FetchError>,
    ) -> Result<W, FetchError> {
        self.ensure_online(url)?;
        let _slot = self.slots.acquire().await.expect("semaphore never closed");
        let what = format!("GET {url}");
        self.opts
            .net
            .retry(&what, |_| {
                let sink = open();
                async move {
                    let mut sink = sink.map_err(Failure::Fatal)?;
                    self.download_once(url, &mut sink, limit, progress).await?;
                    Ok(sink)
                }
            })
            .await
            .map_err(|e| Failure::settle(e, url))
    }

    /// One GET streamed into `sink`; classifies every failure.
    async fn download_once(
        &self,
        url: &str,
        sink: &mut dyn Write,
        limit: Option<u64>,
        progress: &dyn FetchProgress,
    ) -> Result<(), Failure> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let resp = self.client.get(url).send().await.map_err(|e| {
            if e.is_builder() {
                Failure::Fatal(FetchError::BadUrl {
                    url: url.to_string(),
                    reason: e.to_string(),
                })
            } else {
                Failure::Transient {
                    reason: self.opts.net.describe(&e),
                    after: None,
                }
            }
        })?;
        let status = resp.status();
        if !status.is_success() {
            let code = status.as_u16();
            if code == 408 || code == 429 || status.is_server_error() {
                let after = net::retry_after(resp.headers());
                return Err(Failure::Transient {
                    reason: format!("HTTP {code}"),
                    after,
                });
            }
            return Err(Failure::Fatal(FetchError::Status {
                url: url.to_string(),
                status: code,
            }));
        }
        let mut received = 0u64;
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Failure::Transient {
                reason: self.opts.net.describe(&e),
                after: None,
            })?;
            let n = chunk.len() as u64;
            received += n;
            self.bytes.fetch_add(n, Ordering::Relaxed);
            if let Some(limit) = limit
                && received > limit
            {
                return Err(Failure::Fatal(FetchError::TooLarge {
                    url: url.to_string(),
                    expected: limit,
                }));
            }
            sink.write_all(&chunk).map_err(|source| {
                Failure::Fatal(FetchError::Local {
                    path: PathBuf::from("<download buffer>"),
                    source,
                })
            })?;
            progress.advance(n);
        }
        Ok(())
    }
}

fn commit_to(
    url: &str,
    w: crate::cache::CasWriter,
    expected: &Sha256Digest,
) -> Result<(), FetchError> {
    match w.commit(Some(expected)) {
        Ok(_) => Ok(()),
        Err(CasError::Mismatch { expected, actual }) => Err(FetchError::Mismatch {
            url: url.to_string(),
            expected,
            actual,
        }),
        Err(source) => Err(FetchError::Cache {
            url: url.to_string(),
            source,
        }),
    }
}

/// Decide how to read `url`.
fn classify(url: &str) -> Result<Source<'_>, FetchError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(Source::Http(url));
    }
    if let Some(rest) = url.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(FetchError::BadUrl {
                url: url.to_string(),
                reason: "file:// URLs need an absolute path".into(),
            });
        }
        return Ok(Source::Local(PathBuf::from(rest)));
    }
    if url.contains("://") {
        return Err(FetchError::BadUrl {
            url: url.to_string(),
            reason: "only http, https, file:// and local paths are supported".into(),
        });
    }
    Ok(Source::Local(Path::new(url).to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn classifies_urls() {
        assert!(matches!(
            classify("https://mirror.example/x"),
            Ok(Source::Http(_))
        ));
        assert!(
            matches!(classify("file:///tmp/x"), Ok(Source::Local(p)) if p == Path::new("/tmp/x"))
        );
        assert!(matches!(classify("rel/x"), Ok(Source::Local(_))));
        assert!(matches!(
            classify("ftp://mirror.example/x"),
            Err(FetchError::BadUrl { .. })
        ));
        assert!(matches!(
            classify("file://rel"),
            Err(FetchError::BadUrl { .. })
        ));
    }

    /// What the test server does with one request.
    enum Reply {
        Body(Vec<u8>),
        Status(u16, Option<u64>),
        /// Announce more bytes than sent, send some, then hold the connection open silently.
        Stall(Vec<u8>),
    }

    type Handler = dyn Fn(usize, &str) -> Reply + Send + Sync;

    /// A 127.0.0.1 HTTP server that counts requests and the peak number in flight.
    struct TestServer {
        base: String,
        hits: Arc<AtomicUsize>,
        peak: Arc<AtomicUsize>,
        _server: Arc<tiny_http::Server>,
    }

    fn serve(delay: Duration, handler: Arc<Handler>) -> TestServer {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let current = Arc::new(AtomicUsize::new(0));
        let (srv, h, p) = (server.clone(), hits.clone(), peak.clone());
        std::thread::spawn(move || {
            for req in srv.incoming_requests() {
                let n = h.fetch_add(1, Ordering::SeqCst);
                let (handler, p, current) = (handler.clone(), p.clone(), current.clone());
                std::thread::spawn(move || {
                    let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(delay);
                    let reply = handler(n, req.url());
                    current.fetch_sub(1, Ordering::SeqCst);
                    let _ = match reply {
                        Reply::Body(b) => req.respond(tiny_http::Response::from_data(b)),
                        Reply::Status(code, after) => {
                            let mut r = tiny_http::Response::empty(code);
                            if let Some(s) = after {
                                let h = tiny_http::Header::from_bytes("Retry-After", s.to_string())
                                    .unwrap();
                                r.add_header(h);
                            }
                            req.respond(r)
                        }
                        Reply::Stall(b) => {
                            let len = b.len() + 1000;
                            let body = Stalling(io::Cursor::new(b));
                            let r =
                                tiny_http::Response::new(200.into(), vec![], body, Some(len), None);
                            req.respond(r)
                        }
                    };
                });
            }
        });
        TestServer {
            base: format!("http://127.0.0.1:{port}"),
            hits,
            peak,
            _server: server,
        }
    }

    /// A body that sends its bytes, then goes silent for far longer (>= 10x) than any stall
    /// timeout used here, so only the client's stall detection can end the request.
    struct Stalling(io::Cursor<Vec<u8>>);
    impl io::Read for Stalling {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.read(buf)?;
            if n == 0 {
                std::thread::sleep(Duration::from_secs(30));
            }
            Ok(n)
        }
    }

    /// Every retry the fetcher reports, rendered.
    #[derive(Default)]
    struct Retries(Mutex<Vec<String>>);
    impl net::RetryObserver for Retries {
        fn retrying(&self, e: &net::RetryEvent<'_>) {
            self.0.lock().unwrap().push(e.to_string());
        }
    }

    fn fetcher(dir: &Path, opts: FetchOptions) -> Fetcher {
        Fetcher::new(Cas::open(dir).unwrap(), opts).unwrap()
    }

    fn quick() -> FetchOptions {
        FetchOptions {
            net: NetOptions {
                retry: net::RetryPolicy {
                    max_attempts: 5,
                    base_delay: Duration::from_millis(10),
                    max_delay: Duration::from_millis(50),
                    max_retry_after: Duration::from_secs(60),
                },
                stall_timeout: Duration::from_secs(3),
                retry_log: net::RetryLog::default(),
            },
            ..FetchOptions::default()
        }
    }

    fn item(url: String, content: &[u8]) -> FetchItem {
        FetchItem {
            url,
            sha256: Sha256Digest::of(content),
            size: Some(content.len() as u64),
            label: "x".into(),
        }
    }

    fn tmp_is_empty(cas: &Cas) -> bool {
        match std::fs::read_dir(cas.root().join("tmp")) {
            Ok(mut d) => d.next().is_none(),
            Err(_) => true,
        }
    }

    /// Issue 13 item 12: each retry is reported with its reason and wait, and a body that
    /// stops flowing is ended by the stall timeout (not a total-time limit).
    #[tokio::test]
    async fn survives_503_429_and_stalled_bodies_and_reports_each_retry() {
        let content = b"hello from the mirror".repeat(100);
        let body = content.clone();
        let srv = serve(
            Duration::ZERO,
            Arc::new(move |n, _| match n {
                0 => Reply::Status(503, None),
                1 => Reply::Status(429, Some(1)),
                2 => Reply::Stall(body[..50].to_vec()),
                _ => Reply::Body(body.clone()),
            }),
        );
        let dir = tempfile::tempdir().unwrap();
        let seen = Arc::new(Retries::default());
        let f = fetcher(
            dir.path(),
            FetchOptions {
                net: NetOptions {
                    stall_timeout: Duration::from_millis(500),
                    retry_log: net::RetryLog::to(seen.clone()),
                    ..quick().net
                },
                ..quick()
            },
        );
        let url = format!("{}/a", srv.base);
        let path = f.fetch(item(url.clone(), &content)).await.unwrap();
        assert_eq!(std::fs::read(path).unwrap(), content);
        let seen = seen.0.lock().unwrap().clone();
        assert_eq!(seen.len(), 3, "{seen:#?}");
        assert!(
            seen[0].starts_with(&format!(
                "GET {url}: attempt 1/5 failed (HTTP 503); retrying in"
            )),
            "{seen:#?}"
        );
        // Retry-After: 1 is honoured as the wait.
        assert_eq!(
            seen[1],
            format!("GET {url}: attempt 2/5 failed (HTTP 429); retrying in 1.0s")
        );
        assert!(
            seen[2].contains("attempt 3/5 failed (stalled: no data for 0.5s (stall timeout"),
            "{seen:#?}"
        );
        assert_eq!(f.stats().requests, 4);
        assert_eq!(srv.hits.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn retries_connections_dropped_mid_body() {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let content = b"0123456789".repeat(50);
        let body = content.clone();
        let server = std::thread::spawn(move || {
            for n in 0..3 {
                let (mut sock, _) = listener.accept().unwrap();
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).unwrap();
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                sock.write_all(head.as_bytes()).unwrap();
                // The first two connections die after a few bytes.
                let end = if n < 2 { 7 } else { body.len() };
                sock.write_all(&body[..end]).unwrap();
                sock.shutdown(std::net::Shutdown::Both).ok();
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let f = fetcher(dir.path(), quick());
        let path = f
            .fetch(item(format!("http://127.0.0.1:{port}/x"), &content))
            .await
            .unwrap();
        assert_eq!(std::fs::read(path).unwrap(), content);
        assert_eq!(f.stats().requests, 3);
        server.join().unwrap();
        assert!(tmp_is_empty(f.cas()), "partial downloads left behind");
    }

    #[tokio::test]
    async fn gives_up_after_retries_and_fails_fast_on_404() {
        let srv = serve(
            Duration::ZERO,
            Arc::new(|_, url: &str| {
                if url == "/missing" {
                    Reply::Status(404, None)
                } else {
                    Reply::Status(502, None)
                }
            }),
        );
        let dir = tempfile::tempdir().unwrap();
        let f = fetcher(
            dir.path(),
            FetchOptions {
                net: NetOptions {
                    retry: net::RetryPolicy {
                        max_attempts: 3,
                        ..quick().net.retry
                    },
                    ..quick().net
                },
                ..quick()
            },
        );
        let url = format!("{}/flaky", srv.base);
        let err = f.fetch(item(url.clone(), b"x")).await.unwrap_err();
        assert!(
            matches!(err, FetchError::Network { attempts: 3, .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains(&url) && err.to_string().contains("HTTP 502"),
            "{err}"
        );
        assert_eq!(f.stats().requests, 3);

        let url = format!("{}/missing", srv.base);
        let err = f.get(&url).await.unwrap_err();
        assert!(
            matches!(err, FetchError::Status { status: 404, .. }),
            "{err}"
        );
        assert!(err.to_string().contains(&url), "{err}");
        assert_eq!(f.stats().requests, 4);
    }

    #[tokio::test]
    async fn wrong_content_is_refused_and_not_cached() {
        let srv = serve(
            Duration::ZERO,
            Arc::new(|_, _: &str| Reply::Body(b"evil bytes".to_vec())),
        );
        let dir = tempfile::tempdir().unwrap();
        let f = fetcher(dir.path(), quick());
        let want = b"good bytes";
        let url = format!("{}/pkg.deb", srv.base);
        let err = f.fetch(item(url.clone(), want)).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, FetchError::Mismatch { .. }), "{msg}");
        assert!(msg.contains(&url), "{msg}");
        assert!(msg.contains(&Sha256Digest::of(want).hex()), "{msg}");
        assert!(
            msg.contains(&Sha256Digest::of(b"evil bytes").hex()),
            "{msg}"
        );
        assert!(!f.cas().contains(&Sha256Digest::of(want)));
        assert!(!f.cas().contains(&Sha256Digest::of(b"evil bytes")));
        assert!(tmp_is_empty(f.cas()));
        // A mismatch is not transient: exactly one request.
        assert_eq!(f.stats().requests, 1);
    }

    #[tokio::test]
    async fn corrupt_cache_entry_is_refetched_and_offline_uses_cache_only() {
        let content = b"cached content".to_vec();
        let body = content.clone();
        let srv = serve(
            Duration::ZERO,
            Arc::new(move |_, _: &str| Reply::Body(body.clone())),
        );
        let dir = tempfile::tempdir().unwrap();
        let f = fetcher(dir.path(), quick());
        let it = item(format!("{}/c", srv.base), &content);
        let path = f.fetch(it.clone()).await.unwrap();
        f.fetch(it.clone()).await.unwrap();
        assert_eq!(f.stats().requests, 1, "second fetch should be a cache hit");

        std::fs::write(&path, b"bit rot").unwrap();
        f.fetch(it.clone()).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), content);
        assert_eq!(f.stats().requests, 2);

        let off = fetcher(
            dir.path(),
            FetchOptions {
                offline: true,
                ..quick()
            },
        );
        off.fetch(it.clone()).await.unwrap();
        let missing = item(format!("{}/other", srv.base), b"not here");
        let err = off.fetch(missing).await.unwrap_err();
        assert!(err.to_string().starts_with("offline: "), "{err}");
        assert!(
            err.to_string().contains("/other is not in the cache"),
            "{err}"
        );
        let err = off
            .get(&format!("{}/InRelease", srv.base))
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Offline { .. }));
        assert_eq!(off.stats().requests, 0);
        assert_eq!(srv.hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn offline_says_a_corrupt_cached_copy_was_removed() {
        let dir = tempfile::tempdir().unwrap();
        let content = b"a cached .deb".to_vec();
        let off = fetcher(
            dir.path(),
            FetchOptions {
                offline: true,
                ..quick()
            },
        );
        let d = off.cas().insert_bytes(&content).unwrap();
        std::fs::write(off.cas().path(&d), b"a cached .deX").unwrap();
        // No server: offline must not even try one.
        let it = item("http://127.0.0.1:9/pool/x.deb".into(), &content);
        let err = off.fetch(it.clone()).await.unwrap_err().to_string();
        for want in [
            "was corrupt",
            "has been removed",
            "without --offline",
            "/pool/x.deb",
        ] {
            assert!(err.contains(want), "{want:?} missing from: {err}");
        }
        assert!(!off.cas().contains(&d), "the corrupt copy must be gone");
        // Once removed it is simply missing.
        let err = off.fetch(it).await.unwrap_err().to_string();
        assert!(err.contains("is not in the cache"), "{err}");
        assert_eq!(off.stats().requests, 0);
    }

    struct Recorder(Mutex<Vec<(String, bool)>>, AtomicU64);
    impl FetchProgress for Recorder {
        fn begin(&self, _items: usize, bytes: u64) {
            self.1.store(bytes, Ordering::SeqCst);
        }
        fn advance(&self, _bytes: u64) {}
        fn item_done(&self, label: &str, cached: bool) {
            self.0.lock().unwrap().push((label.to_string(), cached));
        }
    }

    #[tokio::test]
    async fn fetch_all_respects_concurrency_and_keeps_order() {
        let srv = serve(
            Duration::from_millis(150),
            Arc::new(|_, url: &str| Reply::Body(url.as_bytes().to_vec())),
        );
        let dir = tempfile::tempdir().unwrap();
        let f = fetcher(
            dir.path(),
            FetchOptions {
                concurrency: 3,
                ..quick()
            },
        );
        let local = dir.path().join("local.bin");
        std::fs::write(&local, b"local file").unwrap();
        let mut items: Vec<FetchItem> = (0..10)
            .map(|i| {
                let path = format!("/f{i}");
                FetchItem {
                    label: path.clone(),
                    ..item(format!("{}{path}", srv.base), path.as_bytes())
                }
            })
            .collect();
        items.push(FetchItem {
            label: "local".into(),
            ..item(format!("file://{}", local.display()), b"local file")
        });
        let rec = Recorder(Mutex::new(Vec::new()), AtomicU64::new(0));
        let paths = f.fetch_all(items.clone(), &rec).await.unwrap();
        for (p, it) in paths.iter().zip(&items) {
            assert_eq!(Sha256Digest::of(&std::fs::read(p).unwrap()), it.sha256);
        }
        let peak = srv.peak.load(Ordering::SeqCst);
        assert!(
            peak <= 3,
            "peak {peak} requests in flight with concurrency 3"
        );
        assert!(peak >= 2, "downloads did not overlap (peak {peak})");
        assert_eq!(rec.0.lock().unwrap().len(), 11);
        assert_eq!(
            rec.1.load(Ordering::SeqCst),
            items.iter().map(|i| i.size.unwrap()).sum::<u64>()
        );

        let again = f.fetch_all(items, &rec).await.unwrap();
        assert_eq!(again, paths);
        assert!(
            rec.0.lock().unwrap()[11..]
                .iter()
                .all(|(_, cached)| *cached)
        );
        assert_eq!(f.stats().requests, 10);
    }
}
