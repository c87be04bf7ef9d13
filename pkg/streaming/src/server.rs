//! The streaming HTTP server: single-use tokens handed out by the CRI layer, redeemed by the
//! client's upgrade request, as kubelet's `pkg/kubelet/cri/streaming/server.go` does it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::{Bytes, BytesMut};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::remotecommand::{self, Options, Outcome, Run};
use crate::{portforward, ws, AttachRequest, Backend, Error, ExecRequest, PortForwardRequest};

/// kubelet's limits: at most this many tokens wait to be redeemed, each for this long.
pub const MAX_IN_FLIGHT: usize = 1000;
pub const TOKEN_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    pub tls: Option<TlsFiles>,
    /// A connection with no traffic either way for this long is closed (kubelet: 4 h).
    pub idle_timeout: Duration,
    /// A client that has not created all its streams this long after the upgrade is dropped.
    pub stream_creation_timeout: Duration,
    /// An unused streaming URL stops working this long after the call that made it.
    pub token_ttl: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: None,
            idle_timeout: Duration::from_secs(4 * 3600),
            stream_creation_timeout: Duration::from_secs(30),
            token_ttl: TOKEN_TTL,
        }
    }
}

#[derive(Debug, Clone)]
enum Pending {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

struct TokenCache {
    entries: Mutex<HashMap<String, (Instant, Pending)>>,
    ttl: Duration,
    max: usize,
}

impl TokenCache {
    fn insert(&self, p: Pending) -> Result<String, Error> {
        let mut m = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        m.retain(|_, (t, _)| now.duration_since(*t) < self.ttl);
        if m.len() >= self.max {
            return Err(Error::TooManyInFlight(self.max));
        }
        loop {
            let raw: [u8; 16] = rand::random();
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
            if !m.contains_key(&token) {
                m.insert(token.clone(), (now, p));
                return Ok(token);
            }
        }
    }

    /// Takes the token's request; an unknown, used or expired token yields nothing.
    fn consume(&self, token: &str) -> Option<Pending> {
        let mut m = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (t, p) = m.remove(token)?;
        (t.elapsed() < self.ttl).then_some(p)
    }
}

struct State {
    cache: TokenCache,
    backend: Arc<dyn Backend>,
    config: Config,
}

/// A running server; the CRI layer asks it for URLs.
#[derive(Clone)]
pub struct Server {
    state: Arc<State>,
    base: String,
    addr: SocketAddr,
}

impl Server {
    /// Binds and starts serving in the background.
    pub async fn start(config: Config, backend: Arc<dyn Backend>) -> Result<Server, Error> {
        let listener = TcpListener::bind(config.addr).await?;
        let addr = listener.local_addr()?;
        let tls = match &config.tls {
            Some(files) => Some(tls_acceptor(files)?),
            None => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base = format!("{scheme}://{addr}");
        let state = Arc::new(State {
            cache: TokenCache {
                entries: Mutex::new(HashMap::new()),
                ttl: config.token_ttl,
                max: MAX_IN_FLIGHT,
            },
            backend,
            config,
        });
        let pool = Arc::new(Pool::start(pool_size())?);
        tokio::spawn(accept_loop(listener, tls, state.clone(), pool));
        Ok(Server { state, base, addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn get_exec(&self, req: ExecRequest) -> Result<String, Error> {
        self.url("exec", Pending::Exec(req))
    }

    pub fn get_attach(&self, req: AttachRequest) -> Result<String, Error> {
        self.url("attach", Pending::Attach(req))
    }

    pub fn get_port_forward(&self, req: PortForwardRequest) -> Result<String, Error> {
        self.url("portforward", Pending::PortForward(req))
    }

    fn url(&self, kind: &str, p: Pending) -> Result<String, Error> {
        let token = self.state.cache.insert(p)?;
        Ok(format!("{}/{kind}/{token}", self.base))
    }
}

fn tls_acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls = |what: &str, e: &dyn std::fmt::Display| Error::Tls(format!("{what}: {e}"));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| tls(&files.cert.display().to_string(), &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls(&files.cert.display().to_string(), &e))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| tls(&files.key.display().to_string(), &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls("protocol versions", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls("certificate", &e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// Threads serving streaming connections: as many as there are cores, up to 4 (a node runs
/// few streams at once, and they should not crowd out the CRI calls).
fn pool_size() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4)
}

/// Single-thread runtimes, each serving whole connections. A session is a chain of copies
/// between its tasks (socket reader, stream queue, socket writer); kept on one thread, each
/// hand-off is a queue push instead of waking another thread, which on loopback was most of
/// the difference between a port-forward and plain TCP relayed through the same hops.
struct Pool {
    handles: Vec<tokio::runtime::Handle>,
    next: std::sync::atomic::AtomicUsize,
}

impl Pool {
    fn start(n: usize) -> Result<Pool, Error> {
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            std::thread::Builder::new()
                .name(format!("berth-stream-{i}"))
                .spawn(move || rt.block_on(std::future::pending::<()>()))?;
        }
        Ok(Pool {
            handles,
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn pick(&self) -> &tokio::runtime::Handle {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.handles[i % self.handles.len()]
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<State>,
    pool: Arc<Pool>,
) {
    loop {
        let (sock, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("streaming server accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        // Moved to the chosen thread's reactor.
        let sock = match sock.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("streaming server accept: {e}");
                continue;
            }
        };
        let state = state.clone();
        let tls = tls.clone();
        pool.pick().spawn(async move {
            let Ok(sock) = tokio::net::TcpStream::from_std(sock) else {
                return;
            };
            let svc = hyper::service::service_fn(move |req| handle(req, state.clone()));
            let builder = hyper::server::conn::http1::Builder::new();
            let res = match tls {
                Some(acc) => {
                    match tokio::time::timeout(Duration::from_secs(10), acc.accept(sock)).await {
                        Ok(Ok(s)) => {
                            builder
                                .serve_connection(TokioIo::new(s), svc)
                                .with_upgrades()
                                .await
                        }
                        _ => return,
                    }
                }
                None => {
                    builder
                        .serve_connection(TokioIo::new(sock), svc)
                        .with_upgrades()
                        .await
                }
            };
            if let Err(e) = res {
                tracing::debug!("streaming connection: {e}");
            }
        });
    }
}

fn plain(code: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{msg}\n"))));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Every value of a header that may repeat or hold a comma-separated list.
fn list(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn has_token(h: &HeaderMap, name: &str, want: &str) -> bool {
    list(h, name).iter().any(|v| v.eq_ignore_ascii_case(want))
}

/// The client's first choice that the server supports (kubelet negotiates in client order).
fn negotiate(client: &[String], server: &[&str]) -> Option<String> {
    client
        .iter()
        .find(|c| server.contains(&c.as_str()))
        .cloned()
}

fn upgrade_response(headers: &[(&'static str, String)]) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(v) {
            r.headers_mut().append(*k, v);
        }
    }
    r
}

enum Transport {
    Spdy(String),
    WebSocket(String),
}

async fn handle(
    mut req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::POST {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"));
    }
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let pending = match state.cache.consume(token) {
        Some(p) => p,
        None => return Ok(plain(StatusCode::NOT_FOUND, "404 page not found")),
    };
    let matches = matches!(
        (kind, &pending),
        ("exec", Pending::Exec(_))
            | ("attach", Pending::Attach(_))
            | ("portforward", Pending::PortForward(_))
    );
    if !matches {
        return Ok(plain(StatusCode::NOT_FOUND, "404 page not found"));
    }
    let h = req.headers().clone();
    let ws_request =
        has_token(&h, "upgrade", "websocket") && has_token(&h, "connection", "upgrade");
    let spdy_request =
        has_token(&h, "upgrade", "SPDY/3.1") && has_token(&h, "connection", "upgrade");
    let is_pf = matches!(pending, Pending::PortForward(_));
    let (transport, resp) = if ws_request {
        let Some(key) = h.get("sec-websocket-key").and_then(|v| v.to_str().ok()) else {
            return Ok(plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key"));
        };
        let mut offered = list(&h, "sec-websocket-protocol");
        if offered.is_empty() {
            offered.push(String::new());
        }
        let supported: Vec<&str> = if is_pf {
            let mut v = vec![portforward::TUNNEL_PROTOCOL];
            v.extend_from_slice(portforward::WS_PROTOCOLS);
            v
        } else {
            remotecommand::WS_PROTOCOLS.to_vec()
        };
        let Some(proto) = negotiate(&offered, &supported) else {
            return Ok(plain(
                StatusCode::FORBIDDEN,
                &format!(
                    "requested protocol(s) are not supported: {offered:?}; supports {supported:?}"
                ),
            ));
        };
        let mut hs = vec![
            ("upgrade", "websocket".to_string()),
            ("connection", "Upgrade".to_string()),
            ("sec-websocket-accept", ws::accept_key(key)),
        ];
        if !proto.is_empty() {
            hs.push(("sec-websocket-protocol", proto.clone()));
        }
        (Transport::WebSocket(proto), upgrade_response(&hs))
    } else if spdy_request {
        let offered = list(&h, "x-stream-protocol-version");
        let supported: &[&str] = if is_pf {
            &[portforward::PROTOCOL]
        } else {
            remotecommand::SPDY_PROTOCOLS
        };
        let proto = if offered.is_empty() {
            String::new()
        } else {
            match negotiate(&offered, supported) {
                Some(p) => p,
                None => {
                    let mut r = plain(
                        StatusCode::FORBIDDEN,
                        &format!("unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {supported:?}"),
                    );
                    for s in supported {
                        r.headers_mut().append(
                            "x-accepted-stream-protocol-versions",
                            HeaderValue::from_static(s),
                        );
                    }
                    return Ok(r);
                }
            }
        };
        let mut hs = vec![
            ("connection", "Upgrade".to_string()),
            ("upgrade", "SPDY/3.1".to_string()),
        ];
        if !proto.is_empty() {
            hs.push(("x-stream-protocol-version", proto.clone()));
        }
        (Transport::Spdy(proto), upgrade_response(&hs))
    } else {
        return Ok(plain(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request",
        ));
    };
    let query_ports: Vec<u16> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == "port" || *k == "ports")
        .flat_map(|(_, v)| v.split(',').map(str::to_string).collect::<Vec<_>>())
        .filter_map(|v| v.parse().ok())
        .collect();
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let io = match upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::debug!("streaming upgrade: {e}");
                return;
            }
        };
        serve(io, transport, pending, state, query_ports).await;
    });
    Ok(resp)
}

async fn serve<IO>(
    io: IO,
    transport: Transport,
    pending: Pending,
    state: Arc<State>,
    query_ports: Vec<u16>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let cfg = &state.config;
    let (idle, creation) = (cfg.idle_timeout, cfg.stream_creation_timeout);
    let backend = state.backend.clone();
    // Open from the upgrade to the end of the connection, whatever ends it.
    let _open = berth_metrics::metrics().streaming_session(match &pending {
        Pending::Exec(_) => "exec",
        Pending::Attach(_) => "attach",
        Pending::PortForward(_) => "portforward",
    });
    match pending {
        Pending::PortForward(pf) => match transport {
            Transport::Spdy(_) => {
                portforward::serve_spdy(io, backend, pf.pod_id, idle, creation).await
            }
            Transport::WebSocket(proto) => {
                let (r, w) = tokio::io::split(io);
                let reader = ws::Reader::new(r, BytesMut::new(), ws::MAX_MESSAGE);
                if proto == portforward::TUNNEL_PROTOCOL {
                    portforward::serve_tunnel(reader, w, backend, pf.pod_id, idle, creation).await
                } else {
                    let ports = if query_ports.is_empty() {
                        pf.ports
                    } else {
                        query_ports
                    };
                    portforward::serve_ws(reader, w, &proto, backend, pf.pod_id, ports, idle).await
                }
            }
        },
        Pending::Exec(ex) => {
            let opts = Options {
                stdin: ex.stdin,
                stdout: ex.stdout,
                stderr: ex.stderr && !ex.tty,
                tty: ex.tty,
            };
            let run: Run = Box::new(move |stdio| {
                Box::pin(async move {
                    let cmd = ex.cmd.clone();
                    remotecommand::exec_outcome(&cmd, backend.exec(ex, stdio).await)
                })
            });
            remote(io, transport, opts, idle, creation, run).await
        }
        Pending::Attach(at) => {
            let opts = Options {
                stdin: at.stdin,
                stdout: at.stdout,
                stderr: at.stderr && !at.tty,
                tty: at.tty,
            };
            let run: Run = Box::new(move |stdio| {
                Box::pin(async move {
                    match backend.attach(at, stdio).await {
                        Ok(()) => Outcome::Done,
                        Err(e) => Outcome::Failed(e.0),
                    }
                })
            });
            remote(io, transport, opts, idle, creation, run).await
        }
    }
}

async fn remote<IO>(
    io: IO,
    transport: Transport,
    opts: Options,
    idle: Duration,
    creation: Duration,
    run: Run,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    match transport {
        Transport::Spdy(proto) => {
            remotecommand::serve_spdy(io, &proto, opts, idle, creation, run).await
        }
        Transport::WebSocket(proto) => {
            let (r, w) = tokio::io::split(io);
            let reader = ws::Reader::new(r, BytesMut::new(), ws::MAX_MESSAGE);
            remotecommand::serve_ws(reader, w, &proto, opts, idle, run).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(ttl: Duration) -> TokenCache {
        TokenCache {
            entries: Mutex::new(HashMap::new()),
            ttl,
            max: 3,
        }
    }

    fn pf() -> Pending {
        Pending::PortForward(PortForwardRequest {
            pod_id: "p".into(),
            ports: vec![],
        })
    }

    #[test]
    fn tokens_are_single_use_and_bounded() {
        let c = cache(Duration::from_secs(60));
        let t = c.insert(pf()).unwrap();
        assert!(c.consume(&t).is_some());
        assert!(c.consume(&t).is_none());
        for _ in 0..3 {
            c.insert(pf()).unwrap();
        }
        assert!(c.insert(pf()).unwrap_err().is_resource_exhausted());
    }

    #[test]
    fn expired_tokens_are_refused_and_make_room() {
        let c = cache(Duration::from_millis(20));
        let t = c.insert(pf()).unwrap();
        for _ in 0..2 {
            c.insert(pf()).unwrap();
        }
        std::thread::sleep(Duration::from_millis(30));
        assert!(c.consume(&t).is_none());
        c.insert(pf()).unwrap();
    }

    #[test]
    fn negotiation_follows_the_clients_order() {
        let client = vec![
            "v4.channel.k8s.io".to_string(),
            "v5.channel.k8s.io".to_string(),
        ];
        assert_eq!(
            negotiate(&client, remotecommand::WS_PROTOCOLS).as_deref(),
            Some("v4.channel.k8s.io")
        );
    }
}
