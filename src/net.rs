//! Network policy shared by every HTTP client (the Debian fetcher, the registry client): one
//! client setup, one retry loop with jittered backoff and `Retry-After`, one error chain, and
//! a hook that reports every retry so a slow server is never silent.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// Environment variable (and `--http-timeout` flag) naming the stall timeout in seconds.
pub const STALL_TIMEOUT_ENV: &str = "HAKIM_HTTP_TIMEOUT";

/// Default time a request may go without receiving a byte before it counts as stalled.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Time allowed to establish a TCP (and TLS) connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Everything an HTTP client of hakim needs to know about the network.
#[derive(Clone, Debug)]
pub struct NetOptions {
    /// How transient failures are retried.
    pub retry: RetryPolicy,
    /// A request fails as stalled when no byte arrives for this long; a transfer that keeps
    /// flowing may take as long as it needs.
    pub stall_timeout: Duration,
    /// Where each retry is reported.
    pub retry_log: RetryLog,
}

impl Default for NetOptions {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            retry_log: RetryLog::default(),
        }
    }
}

impl NetOptions {
    /// Run `op` under these options' retry policy and log; see [`retry`].
    pub async fn retry<T, E, F, Fut>(&self, what: &str, op: F) -> Result<T, RetryError<E>>
    where
        E: Retryable,
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        retry(&self.retry, &self.retry_log, what, op).await
    }

    /// An HTTP client with this stall timeout; see [`client`].
    pub fn client(&self) -> Result<reqwest::Client, reqwest::Error> {
        client(self.stall_timeout)
    }

    /// A client for [`NetOptions::send_body`]: without a read timeout, which would also fire
    /// while a slow upload is still flowing, since the answer only starts after the body.
    pub fn upload_client(&self) -> Result<reqwest::Client, reqwest::Error> {
        client_builder(self.stall_timeout).build()
    }

    /// Why a request failed, naming a stall as such; see [`describe`].
    pub fn describe(&self, e: &reqwest::Error) -> String {
        describe(e, self.stall_timeout)
    }

    /// Send `rb` (from [`NetOptions::upload_client`]) with `body`, failing it as
    /// [`SendError::UploadStalled`] when the server takes no body bytes, or after the last one
    /// sends no answer, for the stall timeout.
    pub async fn send_body(
        &self,
        rb: reqwest::RequestBuilder,
        body: bytes::Bytes,
    ) -> Result<reqwest::Response, SendError> {
        // When the client last took a piece (or found there was none left).
        let last = Arc::new(Mutex::new(Instant::now()));
        let mark = last.clone();
        // Pieces are zero-copy slices, cut only as the client asks for them: a blob is never
        // copied, and the stall clock still ticks with the client's progress.
        let len = body.len();
        let stream = futures::stream::unfold(0usize, move |offset| {
            *mark.lock().expect("upload clock") = Instant::now();
            let piece = (offset < len).then(|| {
                let end = (offset + UPLOAD_PIECE).min(len);
                (Ok::<_, std::io::Error>(body.slice(offset..end)), end)
            });
            std::future::ready(piece)
        });
        let watchdog = async {
            loop {
                let idle = last.lock().expect("upload clock").elapsed();
                if idle >= self.stall_timeout {
                    return;
                }
                tokio::time::sleep(self.stall_timeout - idle).await;
            }
        };
        tokio::select! {
            r = rb.body(reqwest::Body::wrap_stream(stream)).send() => r.map_err(SendError::Http),
            () = watchdog => Err(SendError::UploadStalled(self.stall_timeout)),
        }
    }
}

/// Bytes handed to the HTTP client at a time; its requests for more are the upload's progress.
/// Big enough that per-piece overhead vanishes on loopback, small enough that a piece takes
/// well under the stall timeout on a slow uplink.
const UPLOAD_PIECE: usize = 1 << 20;

/// Why [`NetOptions::send_body`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The request failed as any request can.
    #[error("{}", error_chain(.0))]
    Http(reqwest::Error),
    /// The server stopped taking the request body.
    #[error(
        "stalled: the server took no body bytes and sent no answer for {:.1}s (stall timeout; set {STALL_TIMEOUT_ENV} to change it)",
        .0.as_secs_f64()
    )]
    UploadStalled(Duration),
}

/// How transient failures are retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts per operation, the first included.
    pub max_attempts: u32,
    /// Delay before the first retry; doubled each time.
    pub base_delay: Duration,
    /// Upper bound of the exponential delay.
    pub max_delay: Duration,
    /// Upper bound on a server's `Retry-After`.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(20),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based): the server's `Retry-After`
    /// (capped), else an exponential delay with "equal jitter": a random point in its upper half,
    /// so parallel clients (CI matrix jobs, concurrent downloads) do not retry in lockstep.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(self.max_retry_after);
        }
        let exp = self
            .base_delay
            .saturating_mul(1 << attempt.saturating_sub(1).min(16))
            .min(self.max_delay);
        exp / 2 + exp.mul_f64(fastrand::f64() / 2.0)
    }
}

/// Whether a failed attempt is worth repeating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Transient; wait for the server-given delay if any, else the policy's backoff.
    Retry(Option<Duration>),
    /// Repeating the same request cannot help.
    Stop,
}

/// An error that knows whether retrying could help; its `Display` is the reason shown for a retry.
pub trait Retryable: fmt::Display {
    /// Retry or stop.
    fn verdict(&self) -> Verdict;
}

/// One retry about to happen.
#[derive(Clone, Debug)]
pub struct RetryEvent<'a> {
    /// What is retried, e.g. `GET <url>` or `push blob <digest> to <repo>`.
    pub what: &'a str,
    /// The attempt that failed, 1-based.
    pub attempt: u32,
    /// Attempts allowed in all.
    pub max_attempts: u32,
    /// Why it failed.
    pub reason: String,
    /// How long we wait before the next attempt.
    pub wait: Duration,
}

impl fmt::Display for RetryEvent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: attempt {}/{} failed ({}); retrying in {:.1}s",
            self.what,
            self.attempt,
            self.max_attempts,
            self.reason,
            self.wait.as_secs_f64()
        )
    }
}

/// Receives every retry, e.g. to print it; the library itself never prints.
pub trait RetryObserver: Send + Sync {
    /// A retry is about to wait `event.wait`.
    fn retrying(&self, event: &RetryEvent<'_>);
}

/// Where retries are reported; silent by default.
#[derive(Clone, Default)]
pub struct RetryLog(Option<Arc<dyn RetryObserver>>);

impl RetryLog {
    /// Report retries to `observer`.
    pub fn to(observer: Arc<dyn RetryObserver>) -> Self {
        Self(Some(observer))
    }

    /// Report a retry that the caller schedules itself (e.g. resuming an upload session).
    pub fn report(&self, event: &RetryEvent<'_>) {
        if let Some(o) = &self.0 {
            o.retrying(event);
        }
    }
}

impl fmt::Debug for RetryLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "RetryLog(observed)"
        } else {
            "RetryLog(silent)"
        })
    }
}

/// How a retried operation failed for good.
#[derive(Debug, PartialEq, Eq)]
pub enum RetryError<E> {
    /// The error was not transient (returned on the attempt that met it).
    Fatal(E),
    /// Still transient after every attempt the policy allows.
    Exhausted {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: E,
    },
}

/// Run `op` (given the 1-based attempt number) until it succeeds, fails for good, or the policy's
/// attempts run out; each retry is reported to `log` with its reason and wait.
pub async fn retry<T, E, F, Fut>(
    policy: &RetryPolicy,
    log: &RetryLog,
    what: &str,
    mut op: F,
) -> Result<T, RetryError<E>>
where
    E: Retryable,
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        let err = match op(attempt).await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let Verdict::Retry(after) = err.verdict() else {
            return Err(RetryError::Fatal(err));
        };
        if attempt >= policy.max_attempts {
            return Err(RetryError::Exhausted {
                attempts: attempt,
                last: err,
            });
        }
        let wait = policy.delay(attempt, after);
        log.report(&RetryEvent {
            what,
            attempt,
            max_attempts: policy.max_attempts,
            reason: err.to_string(),
            wait,
        });
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

/// A `Retry-After` value, in either form RFC 9110 allows: delay-seconds or an HTTP-date
/// (relative to `now`; a date in the past means "now").
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The `Retry-After` of a response, if present and well-formed.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, SystemTime::now())
}

/// The error and its causes on one line (reqwest hides the useful part in `source()`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let part = s.to_string();
        // hyper and io errors often repeat their cause in their own message.
        if !out.ends_with(&part) {
            out.push_str(": ");
            out.push_str(&part);
        }
        cur = s.source();
    }
    out
}

/// Why a request failed, naming a stall as such: with a read timeout, a timeout means no byte
/// arrived for `stall` while the server kept the connection open.
pub fn describe(e: &reqwest::Error, stall: Duration) -> String {
    if e.is_timeout() {
        format!(
            "stalled: no data for {:.1}s (stall timeout; set {STALL_TIMEOUT_ENV} to change it)",
            stall.as_secs_f64()
        )
    } else {
        error_chain(&e)
    }
}

/// An HTTP client whose requests time out when no byte arrives for `stall`, however long a
/// transfer that keeps flowing takes.
pub fn client(stall: Duration) -> Result<reqwest::Client, reqwest::Error> {
    client_builder(stall).read_timeout(stall).build()
}

fn client_builder(stall: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(concat!("hakim/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT.min(stall.max(Duration::from_secs(1))))
}

/// Parse a stall timeout given in (possibly fractional) seconds, e.g. from [`STALL_TIMEOUT_ENV`].
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
        return Err(format!("`{s}`: give more than 0 and at most 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn retry_after_in_seconds() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn retry_after_as_http_date() {
        // RFC 9110's example date, one of the three formats a client must accept.
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let later = "Sun, 06 Nov 1994 08:50:07 GMT";
        assert_eq!(parse_retry_after(later, now), Some(Duration::from_secs(30)));
        // The obsolete RFC 850 and asctime forms.
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun Nov  6 08:49:57 1994", now),
            Some(Duration::from_secs(20))
        );
        // A date already past means: retry now.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, httpdate::fmt_http_date(now).parse().unwrap());
        assert!(retry_after(&h).is_some_and(|d| d == Duration::ZERO));
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered() {
        let p = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        for attempt in 1..=8 {
            let full = (Duration::from_millis(100) * (1 << (attempt - 1))).min(p.max_delay);
            let d = p.delay(attempt, None);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
        let draws: std::collections::BTreeSet<_> = (0..50).map(|_| p.delay(3, None)).collect();
        assert!(draws.len() > 10, "no jitter: {draws:?}");
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3600))),
            p.max_retry_after
        );
    }

    #[derive(Debug, PartialEq, Eq)]
    struct Flaky(&'static str, Verdict);
    impl fmt::Display for Flaky {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Retryable for Flaky {
        fn verdict(&self) -> Verdict {
            self.1
        }
    }

    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);
    impl RetryObserver for Seen {
        fn retrying(&self, e: &RetryEvent<'_>) {
            self.0.lock().unwrap().push(e.to_string());
        }
    }

    fn fast(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            max_retry_after: Duration::from_millis(5),
        }
    }

    #[tokio::test]
    async fn retries_transient_reports_each_and_stops_on_fatal() {
        let seen = Arc::new(Seen::default());
        let log = RetryLog::to(seen.clone());
        let calls = AtomicU32::new(0);
        let got = retry(&fast(5), &log, "GET /x", |n| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    1 => Err(Flaky("HTTP 503", Verdict::Retry(None))),
                    2 => Err(Flaky(
                        "HTTP 429",
                        Verdict::Retry(Some(Duration::from_secs(9))),
                    )),
                    _ => Ok(n),
                }
            }
        })
        .await;
        assert_eq!(got, Ok(3));
        let seen_lines = seen.0.lock().unwrap().clone();
        assert_eq!(seen_lines.len(), 2, "{seen_lines:?}");
        assert!(
            seen_lines[0].starts_with("GET /x: attempt 1/5 failed (HTTP 503); retrying in"),
            "{seen_lines:?}"
        );
        // The server's 9 s were capped at max_retry_after.
        assert_eq!(
            seen_lines[1],
            "GET /x: attempt 2/5 failed (HTTP 429); retrying in 0.0s"
        );

        let fatal = retry(&fast(5), &log, "GET /y", |_| async {
            Err::<(), _>(Flaky("HTTP 404", Verdict::Stop))
        })
        .await;
        assert_eq!(
            fatal,
            Err(RetryError::Fatal(Flaky("HTTP 404", Verdict::Stop)))
        );

        let exhausted = retry(&fast(3), &RetryLog::default(), "GET /z", |_| async {
            Err::<(), _>(Flaky("reset", Verdict::Retry(None)))
        })
        .await;
        assert_eq!(
            exhausted,
            Err(RetryError::Exhausted {
                attempts: 3,
                last: Flaky("reset", Verdict::Retry(None))
            })
        );
        assert_eq!(
            seen.0.lock().unwrap().len(),
            2,
            "fatal errors are not retried"
        );
    }

    #[test]
    fn timeouts_parse_or_explain() {
        assert_eq!(parse_timeout("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_timeout("0.5"), Ok(Duration::from_millis(500)));
        for bad in ["0", "-1", "abc", "inf", "1e9"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn error_chain_joins_causes_once() {
        let e = Wrap(std::io::Error::other("connection reset"));
        assert_eq!(error_chain(&e), "body: connection reset");
    }

    #[derive(Debug)]
    struct Wrap(std::io::Error);
    impl fmt::Display for Wrap {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("body")
        }
    }
    impl std::error::Error for Wrap {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
