//! The client side (for berthctl): exec/attach over SPDY or WebSocket and port-forward over SPDY
//! or SPDY tunneled in a WebSocket, speaking what kubelet's streaming server expects, so it
//! works against containerd's and CRI-O's servers as well as ours.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::portforward::{self, tunnel_pump};
use crate::remotecommand::{self, spawn_ws_writer, ws_decode, WsOut};
use crate::spdy::{self, Headers};
use crate::{ws, Error, TermSize};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Spdy,
    WebSocket,
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "spdy" => Ok(Transport::Spdy),
            "websocket" | "ws" => Ok(Transport::WebSocket),
            other => Err(format!("unknown transport {other:?} (spdy or websocket)")),
        }
    }
}

pub type Input = Box<dyn AsyncRead + Send + Unpin>;
pub type Output = Box<dyn AsyncWrite + Send + Unpin>;

/// The local ends of an exec or attach session.
pub struct Io {
    pub stdin: Option<Input>,
    pub stdout: Option<Output>,
    pub stderr: Option<Output>,
    pub tty: bool,
    pub resize: Option<mpsc::Receiver<TermSize>>,
}

const STREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// A plain or TLS connection to the streaming server.
trait Conn: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Conn for T {}
type BoxConn = Box<dyn Conn>;

struct Upgraded {
    sock: BoxConn,
    headers: Vec<(String, String)>,
    leftover: BytesMut,
}

struct Target {
    tls: bool,
    host: String,
    path: String,
}

fn split_url(url: &str) -> Result<Target, Error> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(Error::Refused(format!(
            "{url}: streaming URLs are http:// or https://"
        )));
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok(Target {
        tls,
        host: host.to_string(),
        path: path.to_string(),
    })
}

/// A streaming URL (what the CRI call returned) and how to trust its server if it is https.
#[derive(Debug, Clone, Copy)]
pub struct Url<'a> {
    pub url: &'a str,
    pub trust: &'a Trust,
}

/// How an https streaming server is trusted.
#[derive(Debug, Clone, Default)]
pub enum Trust {
    /// Any certificate, as crictl does: the URL came from the runtime over its local socket,
    /// and runtimes serve self-signed certificates made at start.
    #[default]
    AnyCertificate,
    /// Only certificates chaining to the CA certificates in this PEM file.
    CaFile(std::path::PathBuf),
}

fn tls_config(trust: &Trust) -> Result<rustls::ClientConfig, Error> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(format!("protocol versions: {e}")))?;
    let cfg = match trust {
        Trust::AnyCertificate => builder
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
        Trust::CaFile(path) => {
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?;
            for c in certs {
                let c = c.map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?;
                roots
                    .add(c)
                    .map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(cfg)
}

/// Accepts any server certificate but still checks the handshake signatures, so the session
/// is at least bound to the key the server presented.
#[derive(Debug)]
struct AnyCertificate(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn connect(t: &Target, trust: &Trust) -> Result<BoxConn, Error> {
    let sock = TcpStream::connect(&t.host).await?;
    let _ = sock.set_nodelay(true);
    if !t.tls {
        return Ok(Box::new(sock));
    }
    // The name without its port; an IP literal (in brackets for v6) is checked as an IP.
    let name = match t.host.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => t.host.as_str(),
    }
    .trim_start_matches('[')
    .trim_end_matches(']');
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string())
        .map_err(|e| Error::Tls(format!("server name {name:?}: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls_config(trust)?));
    let tls = connector
        .connect(server_name, sock)
        .await
        .map_err(|e| Error::Tls(format!("{}: {e}", t.host)))?;
    Ok(Box::new(tls))
}

/// Sends the upgrade request and reads the response head; anything but 101 is an error
/// carrying the status and body.
async fn upgrade(url: &Url<'_>, headers: &[(&str, String)]) -> Result<Upgraded, Error> {
    let t = split_url(url.url)?;
    let mut sock = connect(&t, url.trust).await?;
    let (host, path) = (&t.host, &t.path);
    // RFC 6455 upgrades with GET (kubelet's server refuses anything else with 405, as
    // containerd's does); SPDY upgrades are POSTs, as client-go sends them.
    let websocket = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("upgrade") && v.eq_ignore_ascii_case("websocket"));
    let method = if websocket { "GET" } else { "POST" };
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    sock.write_all(req.as_bytes()).await?;
    let mut buf = BytesMut::with_capacity(4096);
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 << 10 {
            return Err(Error::Protocol("response head too large".into()));
        }
        if sock.read_buf(&mut buf).await? == 0 {
            return Err(Error::Protocol("connection closed during upgrade".into()));
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let leftover = buf.split_off(end + 4);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let code: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if code != 101 {
        let mut body = leftover.to_vec();
        let _ = tokio::time::timeout(Duration::from_secs(1), sock.read_to_end(&mut body)).await;
        return Err(Error::Refused(format!(
            "{status_line}: {}",
            String::from_utf8_lossy(&body).trim()
        )));
    }
    Ok(Upgraded {
        sock,
        headers,
        leftover,
    })
}

fn get<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn ws_headers(protocols: &[&str]) -> (Vec<(&'static str, String)>, String) {
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    (
        vec![
            ("Upgrade", "websocket".into()),
            ("Connection", "Upgrade".into()),
            ("Sec-WebSocket-Version", "13".into()),
            ("Sec-WebSocket-Key", key.clone()),
            ("Sec-WebSocket-Protocol", protocols.join(", ")),
        ],
        key,
    )
}

async fn ws_upgrade(url: &Url<'_>, protocols: &[&str]) -> Result<(Upgraded, String), Error> {
    let (hs, key) = ws_headers(protocols);
    let up = upgrade(url, &hs).await?;
    if get(&up.headers, "sec-websocket-accept") != Some(ws::accept_key(&key).as_str()) {
        return Err(Error::Protocol("bad Sec-WebSocket-Accept".into()));
    }
    let proto = get(&up.headers, "sec-websocket-protocol")
        .unwrap_or("")
        .to_string();
    Ok((up, proto))
}

/// Reads the error stream's content into a result: the exit code, or the server's message.
fn outcome(protocol_v4: bool, body: &[u8]) -> Result<i32, Error> {
    if body.is_empty() {
        return Ok(0);
    }
    if !protocol_v4 {
        return Err(Error::Refused(String::from_utf8_lossy(body).into_owned()));
    }
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Error::Protocol(format!("unreadable status: {e}")))?;
    if v["status"] == "Success" {
        return Ok(0);
    }
    if v["reason"] == "NonZeroExitCode" {
        if let Some(causes) = v["details"]["causes"].as_array() {
            for c in causes {
                if c["reason"] == "ExitCode" {
                    if let Some(code) = c["message"].as_str().and_then(|m| m.parse().ok()) {
                        return Ok(code);
                    }
                }
            }
        }
    }
    Err(Error::Refused(
        v["message"].as_str().unwrap_or("unknown error").to_string(),
    ))
}

/// Runs an exec or attach session at `url` (the URL the CRI Exec/Attach call returned) and
/// returns the remote exit code.
pub async fn remote_command(url: Url<'_>, transport: Transport, io: Io) -> Result<i32, Error> {
    match transport {
        Transport::Spdy => spdy_remote_command(&url, io).await,
        Transport::WebSocket => ws_remote_command(&url, io).await,
    }
}

fn stream_headers(kind: &str) -> Headers {
    vec![("streamtype".to_string(), kind.to_string())]
}

async fn copy_out(mut rx: mpsc::Receiver<Bytes>, mut dst: Output) {
    while let Some(b) = rx.recv().await {
        if dst.write_all(&b).await.is_err() || dst.flush().await.is_err() {
            break;
        }
    }
}

async fn spdy_remote_command(url: &Url<'_>, io: Io) -> Result<i32, Error> {
    let mut hs: Vec<(&str, String)> = remotecommand::SPDY_PROTOCOLS
        .iter()
        .map(|p| ("X-Stream-Protocol-Version", p.to_string()))
        .collect();
    hs.push(("Upgrade", "SPDY/3.1".into()));
    hs.push(("Connection", "Upgrade".into()));
    let up = upgrade(url, &hs).await?;
    let proto = get(&up.headers, "x-stream-protocol-version")
        .unwrap_or(remotecommand::V1)
        .to_string();
    let v4 = proto == remotecommand::V5 || proto == remotecommand::V4;
    let io_stream = Prefixed::new(up.sock, up.leftover);
    let (session, _incoming) =
        spdy::session::start(io_stream, false, spdy::Limits::default(), None);
    let mut error = session
        .open(stream_headers("error"), STREAM_TIMEOUT)
        .await?;
    let mut tasks = Vec::new();
    // Every stream exists before any data flows: the server reads no stream's data until it
    // has them all (kubelet's waitForStreams), so early stdin could fill its queue first.
    let stdin_stream = match &io.stdin {
        Some(_) => Some(
            session
                .open(stream_headers("stdin"), STREAM_TIMEOUT)
                .await?,
        ),
        None => None,
    };
    if let Some(out) = io.stdout {
        let s = session
            .open(stream_headers("stdout"), STREAM_TIMEOUT)
            .await?;
        tasks.push(tokio::spawn(copy_out(s.rx, out)));
    }
    if let Some(out) = io.stderr.filter(|_| !io.tty) {
        let s = session
            .open(stream_headers("stderr"), STREAM_TIMEOUT)
            .await?;
        tasks.push(tokio::spawn(copy_out(s.rx, out)));
    }
    if io.tty && (v4 || proto == remotecommand::V3) {
        let s = session
            .open(stream_headers("resize"), STREAM_TIMEOUT)
            .await?;
        if let Some(mut sizes) = io.resize {
            tokio::spawn(async move {
                while let Some(sz) = sizes.recv().await {
                    let b = serde_json::to_vec(&sz).unwrap_or_default();
                    if s.tx.write(Bytes::from(b)).await.is_err() {
                        return;
                    }
                }
            });
        }
    }
    if let (Some(stdin), Some(s)) = (io.stdin, stdin_stream) {
        tokio::spawn(async move { s.tx.copy_from(stdin).await });
    }
    let mut body = Vec::new();
    while let Some(b) = error.rx.recv().await {
        if body.len() < 64 << 10 {
            body.extend_from_slice(&b);
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    session.close().await;
    outcome(v4, &body)
}

async fn ws_remote_command(url: &Url<'_>, io: Io) -> Result<i32, Error> {
    let (up, proto) = ws_upgrade(url, &[remotecommand::V5, remotecommand::V4]).await?;
    let v5 = proto == remotecommand::V5;
    let v4 = v5 || proto == remotecommand::V4;
    let (r, w) = tokio::io::split(up.sock);
    let mut reader = ws::Reader::new(r, up.leftover, ws::MAX_MESSAGE);
    let (out, writer) = spawn_ws_writer(w, false, true);
    if let Some(mut stdin) = io.stdin {
        let out = out.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(32 << 10);
            loop {
                buf.reserve(32 << 10);
                match stdin.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let b = buf.split().freeze();
                        if out
                            .send(WsOut::Data(remotecommand::CH_STDIN, b))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
            if v5 {
                let close = Bytes::from_static(&[remotecommand::CH_STDIN]);
                let _ = out.send(WsOut::Data(remotecommand::CH_CLOSE, close)).await;
            }
        });
    }
    if let Some(mut sizes) = io.resize.filter(|_| io.tty) {
        let out = out.clone();
        tokio::spawn(async move {
            while let Some(sz) = sizes.recv().await {
                let b = Bytes::from(serde_json::to_vec(&sz).unwrap_or_default());
                if out
                    .send(WsOut::Data(remotecommand::CH_RESIZE, b))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
    let (mut stdout, mut stderr) = (io.stdout, io.stderr);
    let mut body = Vec::new();
    loop {
        let m = match reader.next().await {
            Ok(Some(m)) => m,
            _ => break,
        };
        match m {
            ws::Message::Close => break,
            ws::Message::Ping(p) => {
                let _ = out.send(WsOut::Pong(p)).await;
                continue;
            }
            ws::Message::Pong(_) => continue,
            _ => {}
        }
        let Some((ch, data)) = ws_decode(m, false) else {
            continue;
        };
        let dst = match ch {
            remotecommand::CH_STDOUT => stdout.as_mut(),
            remotecommand::CH_STDERR => stderr.as_mut(),
            remotecommand::CH_ERROR => {
                if body.len() < 64 << 10 {
                    body.extend_from_slice(&data);
                }
                None
            }
            _ => None,
        };
        if let Some(d) = dst {
            if d.write_all(&data).await.is_err() || d.flush().await.is_err() {
                break;
            }
        }
    }
    let _ = out.send(WsOut::Close).await;
    drop(out);
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    outcome(v4, &body)
}

/// One port-forward connection to the server: each forwarded TCP connection becomes a data and
/// an error stream on it.
pub struct PortForwarder {
    session: spdy::Session,
    next_request: AtomicU32,
}

impl PortForwarder {
    /// Connects to the URL the CRI PortForward call returned.
    pub async fn connect(url: Url<'_>, transport: Transport) -> Result<PortForwarder, Error> {
        let session = match transport {
            Transport::Spdy => {
                let hs = vec![
                    (
                        "X-Stream-Protocol-Version",
                        portforward::PROTOCOL.to_string(),
                    ),
                    ("Upgrade", "SPDY/3.1".into()),
                    ("Connection", "Upgrade".into()),
                ];
                let up = upgrade(&url, &hs).await?;
                spdy::session::start(
                    Prefixed::new(up.sock, up.leftover),
                    false,
                    spdy::Limits::default(),
                    None,
                )
                .0
            }
            Transport::WebSocket => {
                let (up, proto) = ws_upgrade(&url, &[portforward::TUNNEL_PROTOCOL]).await?;
                if proto != portforward::TUNNEL_PROTOCOL {
                    return Err(Error::Refused(format!(
                        "server chose {proto:?}, not {}",
                        portforward::TUNNEL_PROTOCOL
                    )));
                }
                let (r, w) = tokio::io::split(up.sock);
                let reader = ws::Reader::new(r, up.leftover, ws::MAX_MESSAGE);
                let (ours, theirs) = tokio::io::duplex(256 << 10);
                tokio::spawn(tunnel_pump(reader, w, theirs, true));
                spdy::session::start(ours, false, spdy::Limits::default(), None).0
            }
        };
        Ok(PortForwarder {
            session,
            next_request: AtomicU32::new(0),
        })
    }

    /// Forwards one local connection to `port` in the pod until either side closes. An error
    /// the server reports (nothing listening, say) is returned.
    pub async fn forward<C>(&self, port: u16, conn: C) -> Result<(), Error>
    where
        C: AsyncRead + AsyncWrite + Send + 'static,
    {
        let id = self
            .next_request
            .fetch_add(1, Ordering::Relaxed)
            .to_string();
        let h = |kind: &str| -> Headers {
            vec![
                ("streamtype".into(), kind.into()),
                ("port".into(), port.to_string()),
                ("requestid".into(), id.clone()),
            ]
        };
        let mut error = self.session.open(h("error"), STREAM_TIMEOUT).await?;
        let data = self.session.open(h("data"), STREAM_TIMEOUT).await?;
        let (r, mut w) = tokio::io::split(conn);
        let tx = data.tx.clone();
        let up = async move { tx.copy_from(r).await };
        let mut rx = data.rx;
        let down = async move {
            while let Some(b) = rx.recv().await {
                if w.write_all(&b).await.is_err() {
                    break;
                }
            }
            let _ = w.shutdown().await;
        };
        let err = async move {
            let mut body = Vec::new();
            while let Some(b) = error.rx.recv().await {
                body.extend_from_slice(&b);
            }
            body
        };
        let up = tokio::spawn(up);
        let (_, body) = tokio::join!(down, err);
        up.abort();
        if body.is_empty() {
            Ok(())
        } else {
            Err(Error::Refused(String::from_utf8_lossy(&body).into_owned()))
        }
    }

    pub async fn close(&self) {
        self.session.close().await;
    }

    pub fn is_closed(&self) -> bool {
        self.session.is_closed()
    }
}

/// A connection whose first bytes were already read with the response head.
struct Prefixed {
    sock: BoxConn,
    prefix: BytesMut,
}

impl Prefixed {
    fn new(sock: BoxConn, prefix: BytesMut) -> Self {
        Self { sock, prefix }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.sock).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.sock).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.sock).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.sock).poll_shutdown(cx)
    }
}
