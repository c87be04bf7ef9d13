//! The distribution API client: manifests and blobs over the hosts hosts.toml configures.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use berth_core::{Digest, ErrorKind, HasKind};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use reqwest::header::{
    HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE, RANGE, WWW_AUTHENTICATE,
};
use reqwest::StatusCode;

use crate::auth::{parse_challenges, Challenge, Credentials, TokenCache};
use crate::error::{chain, RegistryError};
use crate::hosts::{hosts_for, ClientCert, RegistryHost};
use crate::manifest::{manifest_media_type, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES};
use crate::reference::Reference;

const STATUS_BODY_SNIPPET: usize = 512;

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// Whole-request limit for manifests and tokens, and the limit for response headers of blobs.
    pub request_timeout: Duration,
    /// Longest wait for the next byte of a response body.
    pub progress_timeout: Duration,
    pub user_agent: String,
    /// Honour `HTTP(S)_PROXY`/`NO_PROXY` from the environment, as containerd does.
    pub use_env_proxy: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            progress_timeout: Duration::from_secs(30),
            user_agent: format!("berth/{}", env!("CARGO_PKG_VERSION")),
            use_env_proxy: true,
        }
    }
}

/// A manifest (or index) fetched and verified against its digest.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
    /// The host that served it.
    pub host: RegistryHost,
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// A blob body being downloaded. The caller hashes what it reads: the client does not verify
/// blob digests.
pub struct BlobStream {
    /// Where the data starts: the requested offset if the server honoured `Range`, else 0.
    pub offset: u64,
    /// The full blob size, if the server said.
    pub total: Option<u64>,
    url: String,
    host: RegistryHost,
    progress_timeout: Duration,
    body: ByteStream,
}

impl fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStream")
            .field("offset", &self.offset)
            .field("total", &self.total)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl BlobStream {
    /// The next piece of the body, `None` at the end. Fails with `DeadlineExceeded` when no byte
    /// arrives within the progress timeout, so a stalled mirror cannot hang a pull forever.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, RegistryError> {
        match tokio::time::timeout(self.progress_timeout, self.body.next()).await {
            Err(_) => Err(RegistryError::Stalled {
                url: self.url.clone(),
                after: self.progress_timeout,
            }),
            Ok(None) => Ok(None),
            Ok(Some(Ok(b))) => Ok(Some(b)),
            Ok(Some(Err(e))) => Err(network_error(&self.url, e, self.progress_timeout)),
        }
    }

    /// The URL the data comes from, after redirects.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn host(&self) -> &RegistryHost {
        &self.host
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct TlsKey {
    ca_files: Vec<PathBuf>,
    client_certs: Vec<ClientCert>,
    skip_verify: bool,
}

struct Inner {
    config_path: PathBuf,
    opts: ClientOptions,
    http: Mutex<HashMap<TlsKey, reqwest::Client>>,
    /// The last challenge each host sent, so later requests authenticate up front.
    challenges: Mutex<HashMap<String, Challenge>>,
    tokens: TokenCache,
    /// Fallback hosts found to speak plain HTTP.
    plain_http: Mutex<HashSet<String>>,
}

/// Registry client; clones share connections, tokens and TLS settings.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("config_path", &self.inner.config_path)
            .field("opts", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy)]
enum Need {
    Resolve,
    Pull,
}

struct Call<'a> {
    host: &'a RegistryHost,
    repo: &'a str,
    path: String,
    accept: Option<String>,
    range_from: Option<u64>,
    whole_timeout: bool,
    creds: Option<&'a Credentials>,
}

enum SendFailure {
    Http(reqwest::Error),
    HeaderTimeout,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn network_error(url: &str, e: reqwest::Error, timeout: Duration) -> RegistryError {
    if e.is_timeout() {
        RegistryError::Timeout {
            url: url.to_string(),
            after: timeout,
        }
    } else {
        // `url` is already in the message, without a pre-signed query.
        RegistryError::Network {
            url: url.to_string(),
            reason: chain(&e.without_url()),
        }
    }
}

/// Whether a connection failed in the TLS layer (e.g. the server answered in plain HTTP), the
/// only case where falling back to http is safe.
fn is_tls_failure(e: &reqwest::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<rustls::Error>() {
            return true;
        }
        cur = match err.downcast_ref::<std::io::Error>() {
            // io::Error::source skips the wrapped error itself, so descend with get_ref.
            Some(io) => match io.get_ref() {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => None,
            },
            None => err.source(),
        };
    }
    false
}

/// When every host failed, report the most telling failure: an auth or integrity error beats
/// "not found", which beats a mirror being unreachable.
fn keep_most_relevant(best: &mut Option<RegistryError>, e: RegistryError) {
    let rank = |e: &RegistryError| match e.kind() {
        ErrorKind::Unavailable | ErrorKind::DeadlineExceeded => 1,
        ErrorKind::NotFound => 2,
        _ => 3,
    };
    if best.as_ref().is_none_or(|b| rank(&e) > rank(b)) {
        *best = Some(e);
    }
}

fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let total = total.trim().parse().ok();
    Some((start, total))
}

impl RegistryClient {
    pub fn new(config_path: PathBuf, opts: ClientOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                config_path,
                opts,
                http: Mutex::default(),
                challenges: Mutex::default(),
                tokens: TokenCache::default(),
                plain_http: Mutex::default(),
            }),
        }
    }

    /// Resolves a reference (by tag, or by digest when it has one) to its manifest.
    pub async fn resolve(
        &self,
        r: &Reference,
        creds: Option<&Credentials>,
    ) -> Result<Resolved, RegistryError> {
        let need = if r.digest.is_some() {
            Need::Pull
        } else {
            Need::Resolve
        };
        self.get_manifest(r, &r.tag_or_digest(), r.digest.as_ref(), need, creds)
            .await
    }

    /// Fetches the manifest `digest` of `r`'s repository, e.g. a platform manifest of an index.
    pub async fn fetch_manifest(
        &self,
        r: &Reference,
        digest: &Digest,
        creds: Option<&Credentials>,
    ) -> Result<Resolved, RegistryError> {
        let by_digest = r.with_digest(digest.clone());
        self.get_manifest(
            &by_digest,
            &digest.to_string(),
            Some(digest),
            Need::Pull,
            creds,
        )
        .await
    }

    /// Fetches a small blob (an image config) whole, verified against `digest`.
    pub async fn fetch_blob_bytes(
        &self,
        r: &Reference,
        digest: &Digest,
        max: usize,
        creds: Option<&Credentials>,
    ) -> Result<Bytes, RegistryError> {
        let mut best = None;
        for host in self.hosts(r, Need::Pull)? {
            let result = async {
                let resp = self.blob_response(&host, r, digest, None, creds).await?;
                let url = display_url(resp.url());
                let body = self.read_capped(resp, max, "blob", &url).await?;
                let actual = Digest::of_bytes(&body);
                if actual != *digest {
                    return Err(RegistryError::DigestMismatch {
                        what: "blob",
                        url,
                        expected: digest.to_string(),
                        actual: actual.to_string(),
                    });
                }
                Ok(body)
            }
            .await;
            match result {
                Ok(b) => return Ok(b),
                Err(e) => {
                    tracing::debug!(host = %host.host, error = %e, "blob fetch failed, trying next host");
                    keep_most_relevant(&mut best, e);
                }
            }
        }
        Err(best.unwrap_or_else(|| no_hosts(r, "pull")))
    }

    /// Opens a blob for streaming from `offset` (resuming a partial download).
    pub async fn fetch_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        offset: u64,
        creds: Option<&Credentials>,
    ) -> Result<BlobStream, RegistryError> {
        let mut best = None;
        for host in self.hosts(r, Need::Pull)? {
            match self
                .blob_response(&host, r, digest, Some(offset), creds)
                .await
            {
                Ok(resp) => {
                    let url = display_url(resp.url());
                    let (start, total) = if resp.status() == StatusCode::PARTIAL_CONTENT {
                        let range = resp
                            .headers()
                            .get(CONTENT_RANGE)
                            .and_then(|v| v.to_str().ok())
                            .and_then(parse_content_range);
                        match range {
                            Some((start, total)) => (start, total),
                            None => (offset, None),
                        }
                    } else {
                        (0, resp.content_length())
                    };
                    return Ok(BlobStream {
                        offset: start,
                        total,
                        url,
                        host: self.effective_host(&host),
                        progress_timeout: self.inner.opts.progress_timeout,
                        body: Box::pin(resp.bytes_stream()),
                    });
                }
                Err(e) => {
                    tracing::debug!(host = %host.host, error = %e, "blob fetch failed, trying next host");
                    keep_most_relevant(&mut best, e);
                }
            }
        }
        Err(best.unwrap_or_else(|| no_hosts(r, "pull")))
    }

    fn hosts(&self, r: &Reference, need: Need) -> Result<Vec<RegistryHost>, RegistryError> {
        let hosts: Vec<RegistryHost> = hosts_for(&self.inner.config_path, &r.registry)?
            .into_iter()
            .filter(|h| match need {
                Need::Resolve => h.capabilities.resolve,
                Need::Pull => h.capabilities.pull,
            })
            .collect();
        if hosts.is_empty() {
            let capability = match need {
                Need::Resolve => "resolve",
                Need::Pull => "pull",
            };
            return Err(no_hosts(r, capability));
        }
        Ok(hosts)
    }

    async fn get_manifest(
        &self,
        r: &Reference,
        reference: &str,
        expect: Option<&Digest>,
        need: Need,
        creds: Option<&Credentials>,
    ) -> Result<Resolved, RegistryError> {
        let mut best = None;
        for host in self.hosts(r, need)? {
            match self
                .get_manifest_from(&host, r, reference, expect, creds)
                .await
            {
                Ok(res) => return Ok(res),
                Err(e) => {
                    tracing::debug!(host = %host.host, error = %e, "manifest fetch failed, trying next host");
                    keep_most_relevant(&mut best, e);
                }
            }
        }
        Err(best.unwrap_or_else(|| no_hosts(r, "resolve")))
    }

    async fn get_manifest_from(
        &self,
        host: &RegistryHost,
        r: &Reference,
        reference: &str,
        expect: Option<&Digest>,
        creds: Option<&Credentials>,
    ) -> Result<Resolved, RegistryError> {
        let call = Call {
            host,
            repo: &r.repository,
            path: format!("/manifests/{reference}"),
            accept: Some(MANIFEST_ACCEPT.join(", ")),
            range_from: None,
            whole_timeout: true,
            creds,
        };
        let resp = self.send(&call).await?;
        let url = display_url(resp.url());
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound {
                what: "image",
                reference: r.to_string(),
            });
        }
        if !resp.status().is_success() {
            return Err(self.status_error(resp, &url).await);
        }
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header(CONTENT_TYPE.as_str());
        let served_digest = header("docker-content-digest");
        let body = self
            .read_capped(resp, MAX_MANIFEST_BYTES, "manifest", &url)
            .await?;
        let digest = Digest::of_bytes(&body);
        match expect {
            Some(want) if *want != digest => {
                return Err(RegistryError::DigestMismatch {
                    what: "manifest",
                    url,
                    expected: want.to_string(),
                    actual: digest.to_string(),
                })
            }
            Some(_) => {}
            None => {
                // Some registries report the digest of a different encoding of the manifest;
                // the bytes we hold are what later fetches by digest will be checked against.
                if let Some(served) = served_digest.filter(|d| *d != digest.to_string()) {
                    tracing::warn!(%url, %served, computed = %digest, "Docker-Content-Digest does not match the manifest body; using the computed digest");
                }
            }
        }
        let media_type = manifest_media_type(content_type.as_deref(), &body);
        Ok(Resolved {
            digest,
            media_type,
            body,
            host: self.effective_host(host),
        })
    }

    async fn blob_response(
        &self,
        host: &RegistryHost,
        r: &Reference,
        digest: &Digest,
        range_from: Option<u64>,
        creds: Option<&Credentials>,
    ) -> Result<reqwest::Response, RegistryError> {
        let call = Call {
            host,
            repo: &r.repository,
            path: format!("/blobs/{digest}"),
            accept: None,
            range_from,
            whole_timeout: false,
            creds,
        };
        let resp = self.send(&call).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound {
                what: "blob",
                reference: format!("{}@{digest}", r.name()),
            });
        }
        if !resp.status().is_success() {
            let url = display_url(resp.url());
            return Err(self.status_error(resp, &url).await);
        }
        Ok(resp)
    }

    /// Sends a request, answering one authentication challenge.
    async fn send(&self, call: &Call<'_>) -> Result<reqwest::Response, RegistryError> {
        let client = self.http_client(call.host)?;
        let scope = format!("repository:{}:pull", call.repo);
        let mut auth = self
            .authorization(&client, call.host, &scope, call.creds, false)
            .await?;
        let mut answered = false;
        loop {
            let resp = self.execute(&client, call, auth.as_deref()).await?;
            match resp.status() {
                StatusCode::UNAUTHORIZED if !answered => {
                    let challenges: Vec<Challenge> = resp
                        .headers()
                        .get_all(WWW_AUTHENTICATE)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .flat_map(parse_challenges)
                        .collect();
                    let chosen = challenges
                        .iter()
                        .find(|c| c.scheme == "bearer")
                        .or_else(|| challenges.iter().find(|c| c.scheme == "basic"))
                        .cloned();
                    let Some(challenge) = chosen else {
                        return Err(self.unauthenticated(
                            call,
                            "the registry sent no supported authentication challenge",
                        ));
                    };
                    lock(&self.inner.challenges).insert(call.host.host.clone(), challenge);
                    auth = self
                        .authorization(&client, call.host, &scope, call.creds, true)
                        .await?;
                    if auth.is_none() {
                        return Err(self.unauthenticated(
                            call,
                            "authentication required and no credentials given",
                        ));
                    }
                    answered = true;
                }
                StatusCode::UNAUTHORIZED => {
                    let reason = if call.creds.is_some() {
                        "credentials rejected, or the repository does not exist"
                    } else {
                        "repository does not exist or may require authorization"
                    };
                    return Err(self.unauthenticated(call, reason));
                }
                StatusCode::FORBIDDEN => {
                    return Err(RegistryError::PermissionDenied {
                        host: call.host.host.clone(),
                        repository: call.repo.to_string(),
                    })
                }
                _ => return Ok(resp),
            }
        }
    }

    /// `host` as actually used: a fallback host that turned out to speak plain HTTP says so.
    fn effective_host(&self, host: &RegistryHost) -> RegistryHost {
        let mut h = host.clone();
        if h.http_fallback && lock(&self.inner.plain_http).contains(&h.host) {
            h.scheme = "http".to_string();
        }
        h
    }

    fn unauthenticated(&self, call: &Call<'_>, reason: &str) -> RegistryError {
        RegistryError::Unauthenticated {
            host: call.host.host.clone(),
            repository: call.repo.to_string(),
            reason: reason.to_string(),
        }
    }

    async fn authorization(
        &self,
        client: &reqwest::Client,
        host: &RegistryHost,
        scope: &str,
        creds: Option<&Credentials>,
        refresh: bool,
    ) -> Result<Option<String>, RegistryError> {
        if let Some(token) = creds
            .map(|c| c.registry_token.as_str())
            .filter(|t| !t.is_empty())
        {
            return Ok(Some(format!("Bearer {token}")));
        }
        let challenge = lock(&self.inner.challenges).get(&host.host).cloned();
        match challenge {
            None => Ok(None),
            Some(c) if c.scheme == "basic" => Ok(creds.and_then(Credentials::basic_header)),
            Some(c) => self
                .inner
                .tokens
                .bearer(
                    client,
                    &c,
                    scope,
                    creds,
                    self.inner.opts.request_timeout,
                    refresh,
                )
                .await
                .map(Some),
        }
    }

    /// Sends once, falling back from https to http for hosts that allow it.
    async fn execute(
        &self,
        client: &reqwest::Client,
        call: &Call<'_>,
        auth: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        let host = call.host;
        let plain = host.http_fallback && lock(&self.inner.plain_http).contains(&host.host);
        let scheme = if plain { "http" } else { host.scheme.as_str() };
        let url = request_url(call, scheme);
        match self.send_once(client, &url, call, auth).await {
            Err(SendFailure::Http(e)) if host.http_fallback && !plain && is_tls_failure(&e) => {
                tracing::debug!(host = %host.host, error = %chain(&e), "tls failed, falling back to http");
                lock(&self.inner.plain_http).insert(host.host.clone());
                let url = request_url(call, "http");
                self.send_once(client, &url, call, auth)
                    .await
                    .map_err(|f| self.failure(&url, f))
            }
            r => r.map_err(|f| self.failure(&url, f)),
        }
    }

    fn failure(&self, url: &str, f: SendFailure) -> RegistryError {
        let timeout = self.inner.opts.request_timeout;
        match f {
            SendFailure::Http(e) => network_error(url, e, timeout),
            SendFailure::HeaderTimeout => RegistryError::Timeout {
                url: url.to_string(),
                after: timeout,
            },
        }
    }

    async fn send_once(
        &self,
        client: &reqwest::Client,
        url: &str,
        call: &Call<'_>,
        auth: Option<&str>,
    ) -> Result<reqwest::Response, SendFailure> {
        let mut rb = client.get(url);
        for (k, v) in &call.host.headers {
            rb = rb.header(k.as_str(), v.as_str());
        }
        if let Some(a) = &call.accept {
            rb = rb.header(ACCEPT, a.as_str());
        }
        if let Some(off) = call.range_from.filter(|o| *o > 0) {
            rb = rb.header(RANGE, format!("bytes={off}-"));
        }
        if let Some(a) = auth {
            if let Ok(mut v) = HeaderValue::from_str(a) {
                v.set_sensitive(true);
                rb = rb.header(AUTHORIZATION, v);
            }
        }
        let timeout = self.inner.opts.request_timeout;
        if call.whole_timeout {
            rb = rb.timeout(timeout);
        }
        match tokio::time::timeout(timeout, rb.send()).await {
            Err(_) => Err(SendFailure::HeaderTimeout),
            Ok(r) => r.map_err(SendFailure::Http),
        }
    }

    async fn read_capped(
        &self,
        resp: reqwest::Response,
        limit: usize,
        what: &'static str,
        url: &str,
    ) -> Result<Bytes, RegistryError> {
        let too_large = || RegistryError::TooLarge {
            what,
            url: url.to_string(),
            limit,
        };
        if resp.content_length().is_some_and(|l| l > limit as u64) {
            return Err(too_large());
        }
        let progress = self.inner.opts.progress_timeout;
        let mut buf = BytesMut::new();
        let mut stream = resp.bytes_stream();
        loop {
            match tokio::time::timeout(progress, stream.next()).await {
                Err(_) => {
                    return Err(RegistryError::Stalled {
                        url: url.to_string(),
                        after: progress,
                    })
                }
                Ok(None) => return Ok(buf.freeze()),
                Ok(Some(Err(e))) => {
                    return Err(network_error(url, e, self.inner.opts.request_timeout))
                }
                Ok(Some(Ok(chunk))) => {
                    if buf.len() + chunk.len() > limit {
                        return Err(too_large());
                    }
                    buf.extend_from_slice(&chunk);
                }
            }
        }
    }

    async fn status_error(&self, resp: reqwest::Response, url: &str) -> RegistryError {
        let status = resp.status().as_u16();
        let body = self
            .read_capped(resp, STATUS_BODY_SNIPPET * 8, "error body", url)
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body[..body.len().min(STATUS_BODY_SNIPPET)])
            .trim()
            .to_string();
        RegistryError::Status {
            url: url.to_string(),
            status,
            detail: if text.is_empty() {
                String::new()
            } else {
                format!(": {text}")
            },
        }
    }

    /// One reqwest client per distinct TLS setting: reqwest fixes TLS roots and identities at
    /// build time, and sharing a client keeps connection pooling.
    fn http_client(&self, host: &RegistryHost) -> Result<reqwest::Client, RegistryError> {
        let key = TlsKey {
            ca_files: host.ca_files.clone(),
            client_certs: host.client_certs.clone(),
            skip_verify: host.skip_verify,
        };
        if let Some(c) = lock(&self.inner.http).get(&key) {
            return Ok(c.clone());
        }
        let client = build_http_client(&self.inner.opts, host)?;
        Ok(lock(&self.inner.http).entry(key).or_insert(client).clone())
    }
}

/// A URL for messages, without the query: redirect targets are often pre-signed storage URLs
/// whose query is a credential.
fn display_url(u: &reqwest::Url) -> String {
    let mut u = u.clone();
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

fn request_url(call: &Call<'_>, scheme: &str) -> String {
    format!(
        "{scheme}://{}{}/{}{}",
        call.host.host, call.host.path_prefix, call.repo, call.path
    )
}

fn no_hosts(r: &Reference, capability: &'static str) -> RegistryError {
    RegistryError::NoHosts {
        registry: r.registry.clone(),
        capability,
    }
}

fn read_file(path: &PathBuf) -> Result<Vec<u8>, RegistryError> {
    std::fs::read(path).map_err(|source| RegistryError::Io {
        path: path.clone(),
        source,
    })
}

fn build_http_client(
    opts: &ClientOptions,
    host: &RegistryHost,
) -> Result<reqwest::Client, RegistryError> {
    let tls_err = |reason: String| RegistryError::Tls {
        host: host.host.clone(),
        reason,
    };
    // reqwest's default redirect policy follows up to 10 hops and drops Authorization when the
    // host or port changes, so blob redirects to a CDN never see registry credentials.
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(opts.connect_timeout)
        .user_agent(opts.user_agent.as_str());
    if !opts.use_env_proxy {
        b = b.no_proxy();
    }
    for ca in &host.ca_files {
        let pem = read_file(ca)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| tls_err(format!("{}: {}", ca.display(), chain(&e))))?;
        if certs.is_empty() {
            return Err(tls_err(format!("no certificates in {}", ca.display())));
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    if host.skip_verify {
        b = b.danger_accept_invalid_certs(true);
    }
    if let Some(cc) = host.client_certs.first() {
        let mut pem = read_file(&cc.cert)?;
        if let Some(key) = &cc.key {
            pem.push(b'\n');
            pem.extend(read_file(key)?);
        }
        let id = reqwest::Identity::from_pem(&pem)
            .map_err(|e| tls_err(format!("{}: {}", cc.cert.display(), chain(&e))))?;
        b = b.identity(id);
        if host.client_certs.len() > 1 {
            tracing::warn!(host = %host.host, "several client certificates configured; only the first is used");
        }
    }
    b.build().map_err(|e| tls_err(chain(&e)))
}

#[cfg(test)]
mod tests;
