//! The server side of exec and attach over SPDY and WebSocket, as kubelet's
//! `pkg/kubelet/cri/streaming/remotecommand` serves them.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::spdy::{self, header, StreamWriter};
use crate::ws;
use crate::{next_until_idle, Activity, BackendError, Stdio, TermSize};
use std::sync::Arc;

pub const V4: &str = "v4.channel.k8s.io";
pub const V3: &str = "v3.channel.k8s.io";
pub const V2: &str = "v2.channel.k8s.io";
pub const V1: &str = "channel.k8s.io";
/// v5 adds the WebSocket close signal; over SPDY, where streams close on their own, kubelet
/// serves it as v4, and so does berth (kubectl 1.32 offers it first).
pub const V5: &str = "v5.channel.k8s.io";
/// The SPDY protocols, newest first.
pub const SPDY_PROTOCOLS: &[&str] = &[V5, V4, V3, V2, V1];
pub const WS_V4_BASE64: &str = "v4.base64.channel.k8s.io";
pub const WS_BASE64: &str = "base64.channel.k8s.io";
/// The WebSocket subprotocols ("" stands for a client that names none).
pub const WS_PROTOCOLS: &[&str] = &[V5, V4, WS_V4_BASE64, V1, WS_BASE64, ""];

pub const CH_STDIN: u8 = 0;
pub const CH_STDOUT: u8 = 1;
pub const CH_STDERR: u8 = 2;
pub const CH_ERROR: u8 = 3;
pub const CH_RESIZE: u8 = 4;
/// v5: a message on this channel carrying a channel number closes that channel.
pub const CH_CLOSE: u8 = 255;

/// The requested streams (from the CRI request, as kubelet takes them).
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// How a session ended, as it goes on the error stream.
pub enum Outcome {
    Exited(i32),
    Done,
    Failed(String),
}

pub type Run = Box<dyn FnOnce(Stdio) -> BoxFuture<'static, Outcome> + Send>;

pub fn exec_outcome(cmd: &[String], r: Result<i32, BackendError>) -> Outcome {
    match r {
        Ok(0) => Outcome::Done,
        Ok(code) => Outcome::Exited(code),
        Err(e) => Outcome::Failed(format!("error executing command {cmd:?}: {e}")),
    }
}

/// The metav1.Status v4 writes (client-go reads the exit code from `details.causes`).
pub fn status_json(o: &Outcome) -> Vec<u8> {
    let v = match o {
        Outcome::Done => serde_json::json!({"metadata": {}, "status": "Success"}),
        Outcome::Exited(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Outcome::Failed(msg) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("Internal error occurred: {msg}"),
            "reason": "InternalError",
            "details": {"causes": [{"message": msg}]},
            "code": 500,
        }),
    };
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Before v4 the error stream carries only the message of a failure.
fn status_text(o: &Outcome) -> Option<Vec<u8>> {
    match o {
        Outcome::Done => None,
        Outcome::Exited(code) => Some(
            format!("command terminated with non-zero exit code: exit status {code}").into_bytes(),
        ),
        Outcome::Failed(msg) => Some(msg.clone().into_bytes()),
    }
}

/// Turns the JSON objects of a resize stream into sizes (objects may span or share reads).
fn spawn_resize(mut rx: mpsc::Receiver<Bytes>) -> mpsc::Receiver<TermSize> {
    let (tx, out) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::new();
        while let Some(b) = rx.recv().await {
            buf.extend_from_slice(&b);
            let mut used = 0;
            let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<TermSize>();
            loop {
                match it.next() {
                    Some(Ok(sz)) => {
                        used = it.byte_offset();
                        if tx.send(sz).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(_)) => return,
                    None => {
                        used = it.byte_offset();
                        break;
                    }
                }
            }
            buf.drain(..used);
            if buf.len() > 4096 {
                return;
            }
        }
    });
    out
}

/// Forwards what the backend writes to one outgoing stream, then ends it.
fn spawn_spdy_output(tx: StreamWriter) -> (mpsc::Sender<Bytes>, JoinHandle<()>) {
    let (s, mut r) = mpsc::channel::<Bytes>(16);
    let h = tokio::spawn(async move {
        while let Some(b) = r.recv().await {
            if tx.write(b).await.is_err() {
                return;
            }
        }
        let _ = tx.close().await;
    });
    (s, h)
}

pub async fn serve_spdy<IO>(
    io: IO,
    protocol: &str,
    opts: Options,
    idle: Duration,
    creation_timeout: Duration,
    run: Run,
) where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (session, mut incoming) =
        spdy::session::start(io, true, spdy::Limits::default(), Some(idle));
    let v4 = protocol == V5 || protocol == V4;
    let resize_ok = v4 || protocol == V3;
    let expected = 1
        + opts.stdin as usize
        + opts.stdout as usize
        + opts.stderr as usize
        + (opts.tty && resize_ok) as usize;
    let (mut stdin, mut stdout, mut stderr, mut error, mut resize) = (None, None, None, None, None);
    let deadline = tokio::time::Instant::now() + creation_timeout;
    let mut got = 0;
    while got < expected {
        let s = match tokio::time::timeout_at(deadline, incoming.recv()).await {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(_) => {
                tracing::debug!("timed out waiting for the client to create streams");
                session.close().await;
                return;
            }
        };
        match header(&s.headers, "streamtype").unwrap_or("") {
            "error" => error = Some(s),
            "stdin" => stdin = Some(s),
            "stdout" => stdout = Some(s),
            "stderr" => stderr = Some(s),
            "resize" => resize = Some(s),
            other => {
                tracing::debug!("unexpected stream type {other:?}");
                continue;
            }
        }
        got += 1;
    }
    let mut pumps = Vec::new();
    let mut out = |s: Option<spdy::Stream>| {
        s.map(|s| {
            let (tx, h) = spawn_spdy_output(s.tx);
            pumps.push(h);
            tx
        })
    };
    let stdout_tx = out(stdout);
    let stderr_tx = out(stderr);
    if protocol == V1 {
        if let Some(s) = &stdin {
            let _ = s.tx.close().await;
        }
    }
    let stdio = Stdio {
        stdin: stdin.map(|s| s.rx),
        stdout: stdout_tx,
        stderr: stderr_tx,
        resize: resize.map(|s| spawn_resize(s.rx)),
        tty: opts.tty,
    };
    // A client that goes away ends the session: the backend's future is dropped, which ends
    // its process, as kubelet's server does when the connection closes.
    let outcome = tokio::select! {
        o = run(stdio) => o,
        () = async { while incoming.recv().await.is_some() {} } => {
            tracing::debug!("streaming client gone; ending the session");
            session.close().await;
            return;
        }
    };
    for p in pumps {
        let _ = p.await;
    }
    if let Some(e) = error {
        let body = if v4 {
            Some(status_json(&outcome))
        } else {
            status_text(&outcome)
        };
        if let Some(b) = body {
            let _ = e.tx.write(Bytes::from(b)).await;
        }
        let _ = e.tx.close().await;
    }
    session.close().await;
}

/// What goes to the WebSocket writer task.
pub enum WsOut {
    Data(u8, Bytes),
    Pong(Bytes),
    Close,
}

/// The writer half of a channel-multiplexed WebSocket: binary with a channel byte, or text
/// with a channel digit and base64.
pub fn spawn_ws_writer<W: AsyncWrite + Unpin + Send + 'static>(
    w: W,
    base64: bool,
    mask: bool,
) -> (mpsc::Sender<WsOut>, JoinHandle<()>) {
    spawn_ws_writer_with(w, base64, mask, Arc::new(Activity::new()))
}

/// [`spawn_ws_writer`] that records each message sent in `activity`.
pub(crate) fn spawn_ws_writer_with<W: AsyncWrite + Unpin + Send + 'static>(
    w: W,
    base64: bool,
    mask: bool,
    activity: Arc<Activity>,
) -> (mpsc::Sender<WsOut>, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<WsOut>(32);
    let h = tokio::spawn(async move {
        let mut w = ws::Writer::new(w, mask);
        while let Some(m) = rx.recv().await {
            let res = match m {
                WsOut::Data(ch, data) => {
                    if base64 {
                        let mut s = String::with_capacity(1 + data.len() * 4 / 3 + 4);
                        s.push((b'0' + ch) as char);
                        base64::engine::general_purpose::STANDARD.encode_string(&data, &mut s);
                        w.send(ws::OP_TEXT, s.as_bytes()).await
                    } else {
                        let mut v = Vec::with_capacity(1 + data.len());
                        v.push(ch);
                        v.extend_from_slice(&data);
                        w.send(ws::OP_BINARY, &v).await
                    }
                }
                WsOut::Pong(p) => w.send(ws::OP_PONG, &p).await,
                WsOut::Close => {
                    w.close().await;
                    return;
                }
            };
            if res.is_err() {
                return;
            }
            activity.touch();
        }
    });
    (tx, h)
}

/// Decodes one channel message of a WebSocket in either codec.
pub fn ws_decode(msg: ws::Message, base64: bool) -> Option<(u8, Bytes)> {
    let (data, text) = match msg {
        ws::Message::Binary(b) => (b, false),
        ws::Message::Text(b) => (b, true),
        _ => return None,
    };
    if data.is_empty() {
        return None;
    }
    if base64 || text {
        let ch = data[0].wrapping_sub(b'0');
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&data[1..])
            .ok()?;
        Some((ch, Bytes::from(raw)))
    } else {
        Some((data[0], data.slice(1..)))
    }
}

fn spawn_ws_output(ch: u8, out: mpsc::Sender<WsOut>) -> (mpsc::Sender<Bytes>, JoinHandle<()>) {
    let (s, mut r) = mpsc::channel::<Bytes>(16);
    let h = tokio::spawn(async move {
        while let Some(b) = r.recv().await {
            if out.send(WsOut::Data(ch, b)).await.is_err() {
                return;
            }
        }
    });
    (s, h)
}

pub async fn serve_ws<R, W>(
    reader: ws::Reader<R>,
    w: W,
    protocol: &str,
    opts: Options,
    idle: Duration,
    run: Run,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let base64 = protocol.contains("base64");
    let v4 = matches!(protocol, V5 | V4 | WS_V4_BASE64);
    let v5 = protocol == V5;
    let activity = Arc::new(Activity::new());
    let (out, writer) = spawn_ws_writer_with(w, base64, false, activity.clone());
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(16);
    let (resize_tx, resize_rx) = mpsc::channel::<Bytes>(4);
    let pong = out.clone();
    let want_stdin = opts.stdin;
    let reader_task = tokio::spawn(async move {
        let mut reader = reader;
        let mut stdin_tx = want_stdin.then_some(stdin_tx);
        loop {
            let Some(msg) = next_until_idle(&mut reader, idle, &activity).await else {
                break;
            };
            match msg {
                ws::Message::Ping(p) => {
                    let _ = pong.send(WsOut::Pong(p)).await;
                    continue;
                }
                ws::Message::Close => break,
                ws::Message::Pong(_) => continue,
                _ => {}
            }
            let Some((ch, data)) = ws_decode(msg, base64) else {
                continue;
            };
            match ch {
                CH_STDIN => {
                    if let Some(tx) = &stdin_tx {
                        if tx.send(data).await.is_err() {
                            stdin_tx = None;
                        }
                    }
                }
                CH_RESIZE => {
                    let _ = resize_tx.send(data).await;
                }
                CH_CLOSE if v5 && data.first() == Some(&CH_STDIN) => stdin_tx = None,
                _ => {}
            }
        }
    });
    // Tells the client the connection is up (kubelet does the same).
    let first = if opts.stdout {
        CH_STDOUT
    } else if opts.stderr {
        CH_STDERR
    } else {
        CH_ERROR
    };
    let _ = out.send(WsOut::Data(first, Bytes::new())).await;
    let mut pumps = Vec::new();
    let mut mk = |want: bool, ch: u8| {
        want.then(|| {
            let (tx, h) = spawn_ws_output(ch, out.clone());
            pumps.push(h);
            tx
        })
    };
    let stdout_tx = mk(opts.stdout, CH_STDOUT);
    let stderr_tx = mk(opts.stderr, CH_STDERR);
    let stdio = Stdio {
        stdin: opts.stdin.then_some(stdin_rx),
        stdout: stdout_tx,
        stderr: stderr_tx,
        resize: opts.tty.then(|| spawn_resize(resize_rx)),
        tty: opts.tty,
    };
    let mut reader_task = reader_task;
    let outcome = tokio::select! {
        o = run(stdio) => o,
        _ = &mut reader_task => {
            tracing::debug!("streaming client gone; ending the session");
            let _ = out.send(WsOut::Close).await;
            return;
        }
    };
    for p in pumps {
        let _ = p.await;
    }
    let body = if v4 {
        Some(status_json(&outcome))
    } else {
        status_text(&outcome)
    };
    if let Some(b) = body {
        let _ = out.send(WsOut::Data(CH_ERROR, Bytes::from(b))).await;
    }
    let _ = out.send(WsOut::Close).await;
    let _ = writer.await;
    reader_task.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_status_carries_the_exit_code_as_client_go_reads_it() {
        let v: serde_json::Value =
            serde_json::from_slice(&status_json(&Outcome::Exited(3))).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        let v: serde_json::Value = serde_json::from_slice(&status_json(&Outcome::Done)).unwrap();
        assert_eq!(v["status"], "Success");
    }

    #[tokio::test]
    async fn resize_objects_split_across_reads_are_parsed() {
        let (tx, rx) = mpsc::channel(4);
        let mut sizes = spawn_resize(rx);
        tx.send(Bytes::from_static(b"{\"Width\":80,\"Hei"))
            .await
            .unwrap();
        tx.send(Bytes::from_static(
            b"ght\":24}{\"Width\":100,\"Height\":50}",
        ))
        .await
        .unwrap();
        assert_eq!(
            sizes.recv().await,
            Some(TermSize {
                width: 80,
                height: 24
            })
        );
        assert_eq!(
            sizes.recv().await,
            Some(TermSize {
                width: 100,
                height: 50
            })
        );
    }
}
