//! A small OCI distribution client: auth dance, retries, blob and manifest pushes.
//!
//! Own client rather than oci-client: we need HEAD-before-upload, mount with a 202 fallback that
//! reuses the opened session, chunk size control and a retry wrapper around every request.

use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Mutex;

use reqwest::header;
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use std::time::Duration;

use crate::digest::Sha256Digest;
use crate::net::{self, NetOptions, RetryError, RetryEvent};

use super::auth::{Challenge, Credentials, Secret, parse_challenge};
use super::error::{PublishError, Result};

/// Outcome of a blob push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BlobOutcome {
    /// The repository already had it.
    Present,
    /// Mounted from another repository of the same registry.
    Mounted,
    /// Uploaded; carries the byte count.
    Uploaded(u64),
}

#[derive(Default)]
struct AuthState {
    /// What the registry asked for last time.
    challenge: Option<Challenge>,
    /// Bearer tokens by scope set.
    tokens: HashMap<String, Secret>,
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
}

/// A request we can resend verbatim (bodies are at most one chunk, kept in memory).
struct Req {
    method: Method,
    url: String,
    content_type: Option<String>,
    extra: Vec<(header::HeaderName, String)>,
    body: Option<bytes::Bytes>,
    /// Token scopes this request needs.
    scopes: Vec<String>,
}

impl Req {
    fn new(method: Method, url: String, scopes: Vec<String>) -> Self {
        Self {
            method,
            url,
            content_type: None,
            extra: Vec::new(),
            body: None,
            scopes,
        }
    }
}

/// One registry host, with its credentials and cached auth.
pub(crate) struct Registry {
    http: reqwest::Client,
    /// For requests with a body; see [`NetOptions::send_body`].
    upload_http: reqwest::Client,
    host: String,
    base: String,
    creds: Option<Credentials>,
    auth: Mutex<AuthState>,
    /// Held by the first request while it learns the auth scheme, so parallel requests do not
    /// all collect a 401 first.
    discovery: tokio::sync::Mutex<bool>,
    /// One token fetch at a time: parallel requests for the same scope share its result.
    token_fetch: tokio::sync::Mutex<()>,
    net: NetOptions,
    /// Upload chunk size; `None` sends every blob in one monolithic PUT.
    chunk_size: Option<usize>,
}

fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

/// URL without its query, which holds upload state and digests nobody needs in an error.
fn short_url(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_string()
}

/// The `OCI-Chunk-Min-Length` an upload session asks for, 0 when none.
fn min_chunk_length(resp: &reqwest::Response) -> usize {
    resp.headers()
        .get("oci-chunk-min-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

const PLAIN_HTTP_HINT: &str = "if this registry speaks only plain HTTP, use --plain-http";

/// How a TLS handshake failed, when the server may not speak TLS at all.
#[derive(Debug, PartialEq, Eq)]
enum TlsFailure {
    /// The server answered the handshake with plain text (e.g. `HTTP/1.1 400`).
    PlainText,
    /// The server closed the connection during the handshake.
    Cut,
}

fn tls_failure(detail: &str) -> Option<TlsFailure> {
    let d = detail.to_ascii_lowercase();
    // rustls's words for a handshake answered with non-TLS bytes, and for one cut short.
    if d.contains("invalidcontenttype") || d.contains("corrupt message") {
        Some(TlsFailure::PlainText)
    } else if d.contains("tls handshake eof") {
        Some(TlsFailure::Cut)
    } else {
        None
    }
}

/// The start of an error response's body, for the error message.
async fn body_excerpt(resp: reqwest::Response, stall: Duration) -> String {
    // Bounded: the upload client has no read timeout of its own.
    let body = tokio::time::timeout(stall, resp.text()).await;
    let body = body.ok().and_then(Result::ok).unwrap_or_default();
    body.chars()
        .take(300)
        .collect::<String>()
        .trim()
        .to_string()
}

impl Registry {
    /// A client for `host` spoken to over plain HTTP or HTTPS.
    pub fn new(
        host: &str,
        plain_http: bool,
        creds: Option<Credentials>,
        opts: &NetOptions,
        chunk_size: Option<usize>,
    ) -> Result<Self> {
        let http = opts.client().and_then(|c| Ok((c, opts.upload_client()?)));
        let (http, upload_http) = http.map_err(|e| PublishError::Transport {
            method: "init".into(),
            url: host.into(),
            detail: net::error_chain(&e),
            transient: false,
        })?;
        let scheme = if plain_http { "http" } else { "https" };
        Ok(Self {
            http,
            upload_http,
            host: host.to_string(),
            base: format!("{scheme}://{host}"),
            creds,
            auth: Mutex::new(AuthState::default()),
            discovery: tokio::sync::Mutex::new(false),
            token_fetch: tokio::sync::Mutex::new(()),
            net: opts.clone(),
            chunk_size,
        })
    }

    /// Run `op` until it succeeds, fails for good, or retries run out.
    pub async fn with_retry<T, F, Fut>(&self, operation: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        match self.net.retry(operation, |_| op()).await {
            Ok(v) => Ok(v),
            Err(RetryError::Exhausted { attempts, last }) if attempts > 1 => {
                Err(PublishError::RetriesExhausted {
                    operation: operation.to_string(),
                    attempts,
                    last: Box::new(last),
                })
            }
            Err(RetryError::Exhausted { last: e, .. } | RetryError::Fatal(e)) => Err(e),
        }
    }

    /// Why an authenticated request may have failed, without revealing anything secret.
    fn credential_state(&self) -> &'static str {
        if self.creds.is_some() {
            "credentials rejected"
        } else {
            "no credentials found"
        }
    }

    fn auth_error(&self, repo: &str, detail: impl Into<String>) -> PublishError {
        PublishError::Auth {
            registry: self.host.clone(),
            repository: repo.to_string(),
            detail: detail.into(),
        }
    }

    fn scope_key(scopes: &[String]) -> String {
        let mut s = scopes.to_vec();
        s.sort();
        s.dedup();
        s.join(" ")
    }

    /// The Authorization header to send up front, fetching a token if the registry wants one.
    async fn authorization(&self, repo: &str, scopes: &[String]) -> Result<Option<String>> {
        let (challenge, cached) = {
            let st = self.auth.lock().unwrap();
            (
                st.challenge.clone(),
                st.tokens.get(&Self::scope_key(scopes)).cloned(),
            )
        };
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.creds.as_ref().map(Credentials::basic_header)),
            Some(Challenge::Bearer { realm, service, .. }) => {
                let token = match cached {
                    Some(t) => t,
                    None => {
                        let _one = self.token_fetch.lock().await;
                        let again = self
                            .auth
                            .lock()
                            .unwrap()
                            .tokens
                            .get(&Self::scope_key(scopes))
                            .cloned();
                        match again {
                            Some(t) => t,
                            None => {
                                self.fetch_token(repo, &realm, service.as_deref(), scopes)
                                    .await?
                            }
                        }
                    }
                };
                Ok(Some(format!("Bearer {}", token.expose())))
            }
        }
    }

    async fn fetch_token(
        &self,
        repo: &str,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<Secret> {
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = service {
            query.push(("service", s));
        }
        let key = Self::scope_key(scopes);
        for s in key.split(' ').filter(|s| !s.is_empty()) {
            query.push(("scope", s));
        }
        let mut rb = self.http.get(realm).query(&query);
        if let Some(c) = &self.creds {
            rb = rb.header(header::AUTHORIZATION, c.basic_header());
        }
        let resp = rb.send().await.map_err(|e| PublishError::Transport {
            method: "GET".into(),
            url: short_url(realm),
            detail: self.net.describe(&e.without_url()),
            transient: true,
        })?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let who = self.credential_state();
            return Err(self.auth_error(
                repo,
                format!(
                    "token service {} answered {status} ({who})",
                    short_url(realm)
                ),
            ));
        }
        let retry_after = net::retry_after(resp.headers());
        if !status.is_success() {
            return Err(PublishError::Status {
                method: "GET".into(),
                url: short_url(realm),
                status: status.as_u16(),
                detail: body_excerpt(resp, self.net.stall_timeout).await,
                retry_after,
            });
        }
        let parsed: TokenResponse = resp.json().await.map_err(|e| PublishError::Transport {
            method: "GET".into(),
            url: short_url(realm),
            detail: format!(
                "unreadable token response: {}",
                net::error_chain(&e.without_url())
            ),
            transient: true,
        })?;
        let token = parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.auth_error(repo, "token service returned no token"))?;
        let token = Secret::new(token);
        self.auth.lock().unwrap().tokens.insert(key, token.clone());
        Ok(token)
    }

    async fn send_once(&self, req: &Req, auth: Option<&str>) -> Result<reqwest::Response> {
        let client = if req.body.is_some() {
            &self.upload_http
        } else {
            &self.http
        };
        let mut rb = client.request(req.method.clone(), &req.url);
        if let Some(a) = auth {
            rb = rb.header(header::AUTHORIZATION, a);
        }
        if let Some(ct) = &req.content_type {
            rb = rb.header(header::CONTENT_TYPE, ct);
        }
        for (k, v) in &req.extra {
            rb = rb.header(k, v);
        }
        let transport = |transient: bool, detail: String| PublishError::Transport {
            method: req.method.to_string(),
            url: short_url(&req.url),
            transient,
            detail,
        };
        let http = |e: reqwest::Error| {
            let builder = e.is_builder();
            let detail = self.net.describe(&e.without_url());
            match tls_failure(&detail) {
                // Retrying cannot help: the server is there, it just does not speak TLS.
                Some(TlsFailure::PlainText) => transport(
                    false,
                    format!("{detail} (the registry answered in plain HTTP: {PLAIN_HTTP_HINT})"),
                ),
                // A handshake cut short may be the network: retried, but say what else it may be.
                Some(TlsFailure::Cut) => transport(true, format!("{detail} ({PLAIN_HTTP_HINT})")),
                None => transport(!builder, detail),
            }
        };
        match &req.body {
            Some(b) => {
                let rb = rb.header(header::CONTENT_LENGTH, b.len());
                return match self.net.send_body(rb, b.clone()).await {
                    Ok(resp) => Ok(resp),
                    Err(net::SendError::Http(e)) => Err(http(e)),
                    Err(e @ net::SendError::UploadStalled(_)) => {
                        Err(transport(true, e.to_string()))
                    }
                };
            }
            None if req.method == Method::PUT
                || req.method == Method::POST
                || req.method == Method::PATCH =>
            {
                rb = rb.header(header::CONTENT_LENGTH, 0)
            }
            None => {}
        }
        rb.send().await.map_err(http)
    }

    /// Send once, doing the auth dance on 401; 401 after authenticating and 403 fail fast.
    async fn send(&self, repo: &str, req: &Req) -> Result<reqwest::Response> {
        let mut discovered = self.discovery.lock().await;
        if *discovered {
            drop(discovered);
            return self.send_inner(repo, req).await;
        }
        let result = self.send_inner(repo, req).await;
        // Only an answered request teaches us the auth scheme; on failure the next one tries.
        *discovered = result.is_ok();
        result
    }

    async fn send_inner(&self, repo: &str, req: &Req) -> Result<reqwest::Response> {
        let auth = self.authorization(repo, &req.scopes).await?;
        let resp = self.send_once(req, auth.as_deref()).await?;
        let resp = if resp.status() == StatusCode::UNAUTHORIZED {
            let challenge = resp
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge);
            let Some(challenge) = challenge else {
                return Err(self.auth_error(
                    repo,
                    "registry answered 401 without a usable WWW-Authenticate challenge",
                ));
            };
            if matches!(challenge, Challenge::Basic) && self.creds.is_none() {
                return Err(self.auth_error(
                    repo,
                    "registry requires authentication and no credentials were found",
                ));
            }
            let mut scopes = req.scopes.clone();
            if let Challenge::Bearer { scope: Some(s), .. } = &challenge {
                // The challenge may name several scopes separated by spaces.
                scopes.extend(s.split(' ').filter(|s| !s.is_empty()).map(String::from));
            }
            {
                let mut st = self.auth.lock().unwrap();
                st.challenge = Some(challenge);
                // A cached token was refused: it expired or lacks a scope.
                st.tokens.remove(&Self::scope_key(&req.scopes));
                st.tokens.remove(&Self::scope_key(&scopes));
            }
            let auth2 = self.authorization(repo, &scopes).await?;
            if let Some(a) = &auth2 {
                // Also file the token under the request's own scope set for the next request.
                if let Some(tok) = a.strip_prefix("Bearer ") {
                    let tok = Secret::new(tok);
                    self.auth
                        .lock()
                        .unwrap()
                        .tokens
                        .insert(Self::scope_key(&req.scopes), tok);
                }
            }
            let again = self.send_once(req, auth2.as_deref()).await?;
            if again.status() == StatusCode::UNAUTHORIZED {
                let who = self.credential_state();
                return Err(self.auth_error(
                    repo,
                    format!(
                        "{} {} answered 401 ({who})",
                        req.method,
                        short_url(&req.url)
                    ),
                ));
            }
            again
        } else {
            resp
        };
        if resp.status() == StatusCode::FORBIDDEN {
            return Err(PublishError::Denied {
                registry: self.host.clone(),
                repository: repo.to_string(),
                detail: body_excerpt(resp, self.net.stall_timeout).await,
            });
        }
        Ok(resp)
    }

    /// Fail with a Status error unless the response has one of `ok` statuses.
    async fn expect(
        &self,
        req: &Req,
        resp: reqwest::Response,
        ok: &[u16],
    ) -> Result<reqwest::Response> {
        if ok.contains(&resp.status().as_u16()) {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let retry_after = net::retry_after(resp.headers());
        Err(PublishError::Status {
            method: req.method.to_string(),
            url: short_url(&req.url),
            status,
            detail: body_excerpt(resp, self.net.stall_timeout).await,
            retry_after,
        })
    }

    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else {
            format!("{}{}", self.base, location)
        }
    }

    fn location(&self, req: &Req, resp: &reqwest::Response) -> Result<String> {
        resp.headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(|l| self.absolute(l))
            .ok_or_else(|| PublishError::Status {
                method: req.method.to_string(),
                url: short_url(&req.url),
                status: resp.status().as_u16(),
                detail: "no Location header in upload response".into(),
                retry_after: None,
            })
    }

    /// Whether `repo` already has the blob.
    pub async fn blob_exists(&self, repo: &str, digest: &Sha256Digest) -> Result<bool> {
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        let req = Req::new(Method::HEAD, url, vec![push_scope(repo)]);
        let resp = self.send(repo, &req).await?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => self.expect(&req, resp, &[]).await.map(|_| false),
        }
    }

    /// Upload one blob from `path` in a new upload session (mounts are [`Self::try_mount`]).
    pub async fn push_blob(
        &self,
        repo: &str,
        digest: &Sha256Digest,
        size: u64,
        path: &Path,
    ) -> Result<BlobOutcome> {
        let url = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let req = Req::new(Method::POST, url, vec![push_scope(repo)]);
        let resp = self.send(repo, &req).await?;
        let resp = self.expect(&req, resp, &[202]).await?;
        let location = self.location(&req, &resp)?;
        self.upload(repo, location, digest, size, path, min_chunk_length(&resp))
            .await?;
        Ok(BlobOutcome::Uploaded(size))
    }

    fn with_digest(location: &str, digest: &Sha256Digest) -> String {
        let sep = if location.contains('?') { '&' } else { '?' };
        format!("{location}{sep}digest={digest}")
    }

    async fn upload(
        &self,
        repo: &str,
        mut location: String,
        digest: &Sha256Digest,
        size: u64,
        path: &Path,
        min_chunk: usize,
    ) -> Result<()> {
        let read_chunk = |offset: u64, len: usize| -> Result<Vec<u8>> {
            let io = |e: std::io::Error| PublishError::Layout {
                path: path.to_path_buf(),
                detail: e.to_string(),
            };
            let mut f = std::fs::File::open(path).map_err(io)?;
            f.seek(SeekFrom::Start(offset)).map_err(io)?;
            let mut buf = vec![0; len];
            f.read_exact(&mut buf).map_err(io)?;
            Ok(buf)
        };
        let scopes = vec![push_scope(repo)];
        // A registry may ask for a minimum chunk size (OCI-Chunk-Min-Length); honour it.
        let chunk_size = self.chunk_size.map(|c| c.max(min_chunk));
        let final_body = match chunk_size {
            Some(c) if size > c as u64 => None,
            // Monolithic PUT: fewest round trips, what every registry but GHCR takes.
            _ => Some(read_chunk(0, size as usize)?.into()),
        };
        if final_body.is_none() {
            let chunk_size = chunk_size.expect("chunked only with a chunk size");
            let mut offset = 0u64;
            let mut resumes = 0;
            while offset < size {
                let len = (size - offset).min(chunk_size as u64) as usize;
                let chunk = read_chunk(offset, len)?;
                let mut req = Req::new(Method::PATCH, location.clone(), scopes.clone());
                req.content_type = Some("application/octet-stream".into());
                req.extra.push((
                    header::CONTENT_RANGE,
                    format!("{}-{}", offset, offset + len as u64 - 1),
                ));
                req.body = Some(chunk.into());
                let sent = match self.send(repo, &req).await {
                    Ok(resp) => self.expect(&req, resp, &[202]).await,
                    Err(e) => Err(e),
                };
                match sent {
                    Ok(resp) => {
                        location = self.location(&req, &resp)?;
                        offset += len as u64;
                    }
                    // Resume where the registry says it is instead of resending the whole blob.
                    Err(e) if e.is_transient() && resumes + 1 < self.net.retry.max_attempts => {
                        resumes += 1;
                        let wait = self.net.retry.delay(resumes, e.retry_after());
                        self.net.retry_log.report(&RetryEvent {
                            what: &format!("PATCH chunk of {digest} at byte {offset}"),
                            attempt: resumes,
                            max_attempts: self.net.retry.max_attempts,
                            reason: e.to_string(),
                            wait,
                        });
                        tokio::time::sleep(wait).await;
                        match self.upload_status(repo, &location).await {
                            Ok((loc, next)) if next <= size => (location, offset) = (loc, next),
                            // Unknown state: the caller's retry restarts this blob.
                            _ => return Err(e),
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let mut req = Req::new(Method::PUT, Self::with_digest(&location, digest), scopes);
        req.content_type = Some("application/octet-stream".into());
        req.body = final_body;
        let resp = self.send(repo, &req).await?;
        let resp = self.expect(&req, resp, &[201]).await?;
        Self::check_digest(&req, &resp, digest)
    }

    /// Where an upload session stands: its next Location and the next byte offset it expects.
    async fn upload_status(&self, repo: &str, location: &str) -> Result<(String, u64)> {
        let req = Req::new(Method::GET, location.to_string(), vec![push_scope(repo)]);
        let resp = self.send(repo, &req).await?;
        let resp = self.expect(&req, resp, &[204]).await?;
        let next = match resp
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
        {
            // `Range: 0-<last byte received>`
            Some(r) => {
                let end = r
                    .rsplit('-')
                    .next()
                    .and_then(|n| n.trim().parse::<u64>().ok());
                end.map_or(0, |e| e + 1)
            }
            None => 0,
        };
        let loc = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| location.to_string(), |l| self.absolute(l));
        Ok((loc, next))
    }

    fn check_digest(req: &Req, resp: &reqwest::Response, expected: &Sha256Digest) -> Result<()> {
        if let Some(got) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            && got != expected.oci()
        {
            return Err(PublishError::DigestMismatch {
                url: short_url(&req.url),
                expected: *expected,
                got: got.to_string(),
            });
        }
        Ok(())
    }

    /// PUT manifest bytes under `reference` (a digest or a tag), verifying the registry's digest.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
        digest: &Sha256Digest,
    ) -> Result<()> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let mut req = Req::new(Method::PUT, url, vec![push_scope(repo)]);
        req.content_type = Some(media_type.to_string());
        req.body = Some(bytes::Bytes::copy_from_slice(bytes));
        let resp = self.send(repo, &req).await?;
        let resp = self.expect(&req, resp, &[200, 201]).await?;
        Self::check_digest(&req, &resp, digest)
    }

    /// Try mounting `digest` from repository `from` into `repo`: true when mounted. A refusal
    /// (202 opens an upload session instead) cancels that session and answers false.
    pub async fn try_mount(&self, repo: &str, digest: &Sha256Digest, from: &str) -> Result<bool> {
        let url = format!(
            "{}/v2/{repo}/blobs/uploads/?mount={digest}&from={from}",
            self.base
        );
        let scopes = vec![push_scope(repo), format!("repository:{from}:pull")];
        let req = Req::new(Method::POST, url, scopes);
        let resp = self.send(repo, &req).await?;
        let resp = self.expect(&req, resp, &[201, 202]).await?;
        if resp.status().as_u16() == 201 {
            return Ok(true);
        }
        // The session would otherwise linger until the registry's upload purge.
        if let Ok(location) = self.location(&req, &resp) {
            let cancel = Req::new(Method::DELETE, location, vec![push_scope(repo)]);
            let _ = self.send(repo, &cancel).await;
        }
        Ok(false)
    }

    /// The manifest or index at `reference` (tag or digest) of `repo`: its media type and
    /// exact bytes, or `None` when the registry has no such manifest.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<(String, Vec<u8>)>> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let mut req = Req::new(Method::GET, url, vec![push_scope(repo)]);
        req.extra.push((
            header::ACCEPT,
            format!("{},{}", crate::media::MANIFEST, crate::media::INDEX),
        ));
        let resp = self.send(repo, &req).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = self.expect(&req, resp, &[200]).await?;
        let media_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = read_body(&req, resp).await?;
        Ok(Some((media_type, bytes.to_vec())))
    }

    /// Stream the blob `digest` of `repo` into `out`: false when the registry has no such
    /// blob. Large blobs (layers) never sit in memory; the caller verifies the digest.
    pub async fn download_blob(
        &self,
        repo: &str,
        digest: &Sha256Digest,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<bool> {
        let Some((req, mut resp)) = self.blob_response(repo, digest).await? else {
            return Ok(false);
        };
        let failed = |transient: bool, detail: String| PublishError::Transport {
            method: "GET".into(),
            url: short_url(&req.url),
            detail,
            transient,
        };
        loop {
            let chunk = tokio::time::timeout(self.net.stall_timeout, resp.chunk())
                .await
                .map_err(|_| failed(true, "the transfer stalled".into()))?
                .map_err(|e| failed(true, net::error_chain(&e.without_url())))?;
            let Some(chunk) = chunk else { return Ok(true) };
            // A local write failure (a full disk) is not the network's: not retried.
            out.write_all(&chunk)
                .map_err(|e| failed(false, format!("writing the download: {e}")))?;
        }
    }

    /// The blob `digest` of `repo`, or `None` when absent. Small blobs only (configs): the
    /// body is held in memory; the caller verifies the digest.
    pub async fn get_blob(&self, repo: &str, digest: &Sha256Digest) -> Result<Option<Vec<u8>>> {
        let Some((req, resp)) = self.blob_response(repo, digest).await? else {
            return Ok(None);
        };
        let bytes = read_body(&req, resp).await?;
        Ok(Some(bytes.to_vec()))
    }

    /// The answer to GET of blob `digest`, body unread; `None` when the registry lacks it.
    async fn blob_response(
        &self,
        repo: &str,
        digest: &Sha256Digest,
    ) -> Result<Option<(Req, reqwest::Response)>> {
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        let req = Req::new(Method::GET, url, vec![push_scope(repo)]);
        let resp = self.send(repo, &req).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = self.expect(&req, resp, &[200]).await?;
        Ok(Some((req, resp)))
    }
}

/// A GET response's whole body; a broken transfer is transient, so the caller retries it.
async fn read_body(req: &Req, resp: reqwest::Response) -> Result<bytes::Bytes> {
    resp.bytes().await.map_err(|e| PublishError::Transport {
        method: "GET".into(),
        url: short_url(&req.url),
        detail: net::error_chain(&e.without_url()),
        transient: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::time::Duration;

    /// A registry reached over HTTPS that speaks only HTTP is not retried, and the error says
    /// what to do.
    #[tokio::test]
    async fn a_plain_http_server_answering_tls_fails_at_once_with_a_hint() {
        // What a plain HTTP registry (Go's net/http) answers to a TLS ClientHello.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let mut served = 0;
            for conn in listener.incoming().take(1) {
                let mut conn = conn.unwrap();
                let mut buf = [0u8; 512];
                let _ = std::io::Read::read(&mut conn, &mut buf);
                let _ = std::io::Write::write_all(
                    &mut conn,
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                served += 1;
            }
            served
        });
        let reg =
            Registry::new(&addr.to_string(), false, None, &NetOptions::default(), None).unwrap();
        let digest = Sha256Digest::of(b"x");
        let err = reg
            .with_retry("HEAD", || reg.blob_exists("ns/x", &digest))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                PublishError::Transport {
                    transient: false,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("--plain-http"), "{err}");
        // One connection: the policy's six attempts were not spent on it.
        assert_eq!(server.join().unwrap(), 1);
    }

    /// Issue 13 item 12, upload side: a registry that stops reading a request body mid-way is
    /// detected by the stall timeout, which a read timeout alone never fires for.
    #[tokio::test]
    async fn a_registry_that_stops_reading_the_body_is_a_stall() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            let mut r = BufReader::new(sock);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            let mut some = [0u8; 1024];
            std::io::Read::read_exact(&mut r, &mut some).unwrap();
            // Silent for 60x the stall timeout, holding the connection open.
            std::thread::sleep(Duration::from_secs(30));
        });
        let net = NetOptions {
            stall_timeout: Duration::from_millis(500),
            ..NetOptions::default()
        };
        let reg = Registry::new(&host, true, None, &net, Some(4 << 20)).unwrap();
        // Far more than the socket buffers of both ends hold.
        let body = vec![7u8; 64 << 20];
        let digest = Sha256Digest::of(&body);
        let err = reg
            .put_manifest("ns/x", "latest", "application/octet-stream", &body, &digest)
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(err.is_transient(), "{msg}");
        assert!(
            matches!(&err, PublishError::Transport { method, .. } if method == "PUT"),
            "{msg}"
        );
        assert!(
            msg.contains("stalled: the server took no body bytes and sent no answer for 0.5s"),
            "{msg}"
        );
    }

    /// The other half: an upload that keeps flowing for longer than the stall timeout completes;
    /// only silence counts, not total time. The server reads 64 KiB per 10 ms; the client sees
    /// that progress in bursts as the socket buffers drain, ~0.2 s apart, 10x under the timeout.
    #[tokio::test]
    async fn a_slow_but_flowing_upload_is_not_a_stall() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let body = vec![7u8; 32 << 20];
        let digest = Sha256Digest::of(&body);
        let len = body.len();
        let server = std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            let mut r = BufReader::new(sock.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            let mut piece = vec![0u8; 64 << 10];
            let mut got = 0;
            while got < len {
                let n = std::io::Read::read(&mut r, &mut piece).unwrap();
                assert!(n > 0, "client hung up after {got} bytes");
                got += n;
                std::thread::sleep(Duration::from_millis(10));
            }
            let answer = format!(
                "HTTP/1.1 201 Created\r\nDocker-Content-Digest: {}\r\nContent-Length: 0\r\n\r\n",
                digest.oci()
            );
            std::io::Write::write_all(&mut &sock, answer.as_bytes()).unwrap();
            got
        });
        let net = NetOptions {
            stall_timeout: Duration::from_secs(2),
            ..NetOptions::default()
        };
        let reg = Registry::new(&host, true, None, &net, Some(4 << 20)).unwrap();
        reg.put_manifest("ns/x", "latest", "application/octet-stream", &body, &digest)
            .await
            .unwrap();
        assert_eq!(server.join().unwrap(), len);
    }
}
