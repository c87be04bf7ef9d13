//! The server side of port-forward: SPDY `portforward.k8s.io` (a data and an error stream per
//! forwarded connection, paired by the `requestID` header), WebSocket channels (a data and an
//! error channel per port named in the URL), and SPDY tunneled in a WebSocket.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::remotecommand::{spawn_ws_writer_with, ws_decode, WsOut};
use crate::spdy::{self, header, Stream, StreamWriter};
use crate::{next_until_idle, Activity};
use crate::{ws, Backend};

pub const PROTOCOL: &str = "portforward.k8s.io";
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
pub const WS_V4: &str = "v4.channel.k8s.io";
pub const WS_V4_BASE64: &str = "v4.base64.channel.k8s.io";
pub const WS_PROTOCOLS: &[&str] = &[
    WS_V4,
    WS_V4_BASE64,
    "channel.k8s.io",
    "base64.channel.k8s.io",
    "",
];

/// kubelet's rule for clients that send no request ID: the error stream's own ID, and the data
/// stream's ID minus two (it is created right after its error stream).
fn request_id(s: &Stream) -> String {
    if let Some(id) = header(&s.headers, "requestid") {
        return id.to_string();
    }
    match header(&s.headers, "streamtype") {
        Some("data") => s.id.saturating_sub(2).to_string(),
        _ => s.id.to_string(),
    }
}

#[derive(Default)]
struct Pair {
    data: Option<Stream>,
    error: Option<Stream>,
    since: Option<tokio::time::Instant>,
}

pub async fn serve_spdy<IO>(
    io: IO,
    backend: Arc<dyn Backend>,
    pod: String,
    idle: Duration,
    creation_timeout: Duration,
) where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (session, mut incoming) =
        spdy::session::start(io, true, spdy::Limits::default(), Some(idle));
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            s = incoming.recv() => {
                let Some(s) = s else { break };
                let id = request_id(&s);
                let p = pairs.entry(id.clone()).or_default();
                p.since.get_or_insert_with(tokio::time::Instant::now);
                match header(&s.headers, "streamtype") {
                    Some("data") => p.data = Some(s),
                    Some("error") => p.error = Some(s),
                    other => {
                        tracing::debug!("port-forward: unexpected stream type {other:?}");
                        let _ = s.tx.reset().await;
                        continue;
                    }
                }
                if p.data.is_some() && p.error.is_some() {
                    if let Some(Pair { data: Some(d), error: Some(e), .. }) = pairs.remove(&id) {
                        tokio::spawn(forward(backend.clone(), pod.clone(), d, e));
                    }
                }
            }
            _ = tick.tick() => {
                let now = tokio::time::Instant::now();
                let stale: Vec<String> = pairs
                    .iter()
                    .filter(|(_, p)| p.since.is_some_and(|t| now - t > creation_timeout))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in stale {
                    if let Some(p) = pairs.remove(&k) {
                        for s in [p.data, p.error].into_iter().flatten() {
                            let _ = s.tx.reset().await;
                        }
                    }
                }
            }
        }
    }
    session.close().await;
}

async fn forward(backend: Arc<dyn Backend>, pod: String, data: Stream, error: Stream) {
    let port = header(&data.headers, "port").and_then(|p| p.parse::<u16>().ok());
    let Some(port) = port.filter(|p| *p > 0) else {
        let msg = format!(
            "invalid port {:?}",
            header(&data.headers, "port").unwrap_or("")
        );
        let _ = error.tx.write(Bytes::from(msg)).await;
        let _ = error.tx.close().await;
        let _ = data.tx.close().await;
        return;
    };
    match backend.port_forward(&pod, port).await {
        Ok(conn) => {
            splice_stream(conn, data.rx, data.tx).await;
        }
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {pod}: {e}");
            let _ = error.tx.write(Bytes::from(msg)).await;
            let _ = data.tx.close().await;
        }
    }
    let _ = error.tx.close().await;
}

/// Copies both ways between a TCP connection and one SPDY data stream, half-closing each side
/// as the other ends.
async fn splice_stream(conn: TcpStream, mut rx: mpsc::Receiver<Bytes>, tx: StreamWriter) {
    let (r, mut w) = conn.into_split();
    let up = async move {
        while let Some(b) = rx.recv().await {
            if w.write_all(&b).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    };
    let down = tx.copy_from(r);
    tokio::join!(up, down);
}

/// WebSocket port-forward: channel 2n is port n's data, 2n+1 its errors; each starts with the
/// port number (little-endian u16), as kubelet writes it.
pub async fn serve_ws<R, W>(
    mut reader: ws::Reader<R>,
    w: W,
    protocol: &str,
    backend: Arc<dyn Backend>,
    pod: String,
    ports: Vec<u16>,
    idle: Duration,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let base64 = protocol.contains("base64");
    let activity = Arc::new(Activity::new());
    let (out, writer) = spawn_ws_writer_with(w, base64, false, activity.clone());
    let mut inputs: Vec<Option<mpsc::Sender<Bytes>>> = Vec::new();
    let mut tasks = Vec::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let data_ch = (i * 2) as u8;
        let err_ch = data_ch + 1;
        let pb = Bytes::copy_from_slice(&port.to_le_bytes());
        let _ = out.send(WsOut::Data(data_ch, pb.clone())).await;
        let _ = out.send(WsOut::Data(err_ch, pb)).await;
        let (tx, mut rx) = mpsc::channel::<Bytes>(16);
        inputs.push(Some(tx));
        let out = out.clone();
        let backend = backend.clone();
        let pod = pod.clone();
        tasks.push(tokio::spawn(async move {
            match backend.port_forward(&pod, port).await {
                Ok(conn) => {
                    let (mut r, mut w) = conn.into_split();
                    let up = async move {
                        while let Some(b) = rx.recv().await {
                            if w.write_all(&b).await.is_err() {
                                return;
                            }
                        }
                        let _ = w.shutdown().await;
                    };
                    let down_out = out.clone();
                    let down = async move {
                        let mut buf = BytesMut::with_capacity(32 << 10);
                        loop {
                            buf.reserve(32 << 10);
                            match r.read_buf(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(_) => {
                                    let b = buf.split().freeze();
                                    if down_out.send(WsOut::Data(data_ch, b)).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    };
                    // The connection is over once the pod side closes.
                    tokio::select! {
                        _ = down => {}
                        _ = async { up.await; std::future::pending::<()>().await } => {}
                    }
                }
                Err(e) => {
                    let msg = format!("error forwarding port {port} to pod {pod}: {e}");
                    let _ = out.send(WsOut::Data(err_ch, Bytes::from(msg))).await;
                }
            }
        }));
    }
    let all_done = futures::future::join_all(tasks);
    tokio::pin!(all_done);
    loop {
        tokio::select! {
            _ = &mut all_done => break,
            m = next_until_idle(&mut reader, idle, &activity) => {
                let Some(m) = m else {
                    break;
                };
                match m {
                    ws::Message::Ping(p) => { let _ = out.send(WsOut::Pong(p)).await; }
                    ws::Message::Close => break,
                    m => {
                        if let Some((ch, data)) = ws_decode(m, base64) {
                            let i = (ch / 2) as usize;
                            if ch % 2 == 0 {
                                if let Some(Some(tx)) = inputs.get(i) {
                                    if tx.send(data).await.is_err() {
                                        inputs[i] = None;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    let _ = out.send(WsOut::Close).await;
    let _ = writer.await;
}

/// Runs SPDY port-forward over the byte stream the WebSocket's binary messages carry.
pub async fn serve_tunnel<R, W>(
    reader: ws::Reader<R>,
    w: W,
    backend: Arc<dyn Backend>,
    pod: String,
    idle: Duration,
    creation_timeout: Duration,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(256 << 10);
    let pump = tokio::spawn(tunnel_pump(reader, w, theirs, false));
    serve_spdy(ours, backend, pod, idle, creation_timeout).await;
    let _ = pump.await;
}

/// Moves bytes between a duplex pipe end and WebSocket binary messages, both ways, until either
/// side ends. Used by both the server and the client of a tunnel.
pub async fn tunnel_pump<R, W>(
    mut reader: ws::Reader<R>,
    w: W,
    pipe: tokio::io::DuplexStream,
    mask: bool,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (mut pr, mut pw) = tokio::io::split(pipe);
    let (pong_tx, mut pong_rx) = mpsc::channel::<Bytes>(4);
    let up = async move {
        while let Ok(Some(m)) = reader.next().await {
            match m {
                ws::Message::Binary(b) if pw.write_all(&b).await.is_err() => break,
                ws::Message::Ping(p) => {
                    let _ = pong_tx.send(p).await;
                }
                ws::Message::Close => break,
                _ => {}
            }
        }
        let _ = pw.shutdown().await;
    };
    let down = async move {
        let mut w = ws::Writer::new(w, mask);
        let mut buf = BytesMut::with_capacity(64 << 10);
        loop {
            buf.reserve(64 << 10);
            tokio::select! {
                n = pr.read_buf(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if w.send(ws::OP_BINARY, &buf).await.is_err() {
                            return;
                        }
                        buf.clear();
                    }
                },
                Some(p) = pong_rx.recv() => {
                    if w.send(ws::OP_PONG, &p).await.is_err() {
                        return;
                    }
                }
            }
        }
        w.close().await;
    };
    tokio::join!(up, down);
}
