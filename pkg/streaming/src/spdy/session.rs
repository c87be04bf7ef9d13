//! One SPDY connection: a reader task that parses frames and routes data to streams, a writer
//! task that owns the compression state. Like moby/spdystream (what client-go uses) there is no
//! flow control: WINDOW_UPDATE is ignored and a slow reader of one stream holds the connection.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::frame::{self, Decoder, Encoder, Frame, Headers, Limits};
use crate::Error;

/// Streams one connection may have open at once; more are refused with RST_STREAM.
const MAX_STREAMS: usize = 128;
/// Data frames buffered per stream before the reader waits for the stream's consumer.
const STREAM_QUEUE: usize = 16;
/// Bytes asked for per read when copying into a stream, and the least a connection read asks
/// for: a GB/s then costs a few thousand reads and frames, and a frame stays far below the
/// peer's limit (ours 1 MiB, Go's spdystream 16 MiB).
pub const COPY_CHUNK: usize = 256 << 10;
/// A frame still missing at least this many bytes is read into a buffer of its own.
const DIRECT_MIN: usize = 16 << 10;
/// The most a read right after such a frame takes.
const AFTER_DIRECT: usize = 8 << 10;
/// Data at least this long goes to the socket from its own buffer (a vectored write) instead of
/// being copied behind its frame header.
const ZERO_COPY_MIN: usize = 4 << 10;

enum Cmd {
    Frame(Frame),
    /// Sends GOAWAY, flushes, and shuts the connection down.
    Close,
}

struct StreamState {
    data: Option<mpsc::Sender<Bytes>>,
    reply: Option<oneshot::Sender<()>>,
}

struct Shared {
    out: mpsc::Sender<Cmd>,
    streams: Mutex<HashMap<u32, StreamState>>,
    next_id: AtomicU32,
    closed: AtomicBool,
    activity: crate::Activity,
    reader: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Shared {
    fn touch(&self) {
        self.activity.touch();
    }

    fn idle_for(&self) -> Duration {
        self.activity.idle_for()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, StreamState>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A handle on the connection; clones share it.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
}

/// One stream: the peer's data arrives on `rx` (closed on FIN or reset), ours goes out through
/// `tx`.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    pub rx: mpsc::Receiver<Bytes>,
    pub tx: StreamWriter,
}

#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Cmd>,
}

impl StreamWriter {
    pub fn id(&self) -> u32 {
        self.id
    }

    pub async fn write(&self, data: Bytes) -> Result<(), Error> {
        self.send(Frame::Data {
            stream: self.id,
            flags: 0,
            data,
        })
        .await
    }

    /// Half-closes our side (FIN).
    pub async fn close(&self) -> Result<(), Error> {
        self.send(Frame::Data {
            stream: self.id,
            flags: frame::FLAG_FIN,
            data: Bytes::new(),
        })
        .await
    }

    /// Copies `r` into the stream until its end or an error, then half-closes the stream.
    pub async fn copy_from<R: AsyncRead + Unpin>(&self, mut r: R) {
        let mut buf = BytesMut::new();
        loop {
            buf.reserve(COPY_CHUNK);
            match r.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if self.write(buf.split().freeze()).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = self.close().await;
    }

    pub async fn reset(&self) -> Result<(), Error> {
        self.send(Frame::RstStream {
            stream: self.id,
            status: frame::RST_CANCEL,
        })
        .await
    }

    async fn send(&self, f: Frame) -> Result<(), Error> {
        self.out
            .send(Cmd::Frame(f))
            .await
            .map_err(|_| Error::Protocol("connection closed".into()))
    }
}

/// Starts a session on `io`. A server accepts the peer's streams (replying at once) and hands
/// them out on the returned receiver; a client opens its own with [`Session::open`].
pub fn start<IO>(
    io: IO,
    server: bool,
    limits: Limits,
    idle_timeout: Option<Duration>,
) -> (Session, mpsc::Receiver<Stream>)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(io);
    let (out_tx, out_rx) = mpsc::channel(64);
    let shared = Arc::new(Shared {
        out: out_tx,
        streams: Mutex::new(HashMap::new()),
        next_id: AtomicU32::new(if server { 2 } else { 1 }),
        closed: AtomicBool::new(false),
        activity: crate::Activity::new(),
        reader: Mutex::new(None),
    });
    let (incoming_tx, incoming_rx) = mpsc::channel(MAX_STREAMS);
    tokio::spawn(writer(w, out_rx, shared.clone()));
    let reader = tokio::spawn(reader(
        r,
        shared.clone(),
        incoming_tx,
        limits,
        idle_timeout,
        server,
    ));
    *shared.reader.lock().unwrap_or_else(|e| e.into_inner()) = Some(reader.abort_handle());
    (Session { shared }, incoming_rx)
}

impl Session {
    /// Opens a stream and waits for the peer's SYN_REPLY.
    pub async fn open(&self, headers: Headers, timeout: Duration) -> Result<Stream, Error> {
        let id = self.shared.next_id.fetch_add(2, Ordering::Relaxed);
        let (data_tx, data_rx) = mpsc::channel(STREAM_QUEUE);
        let (reply_tx, reply_rx) = oneshot::channel();
        self.shared.lock().insert(
            id,
            StreamState {
                data: Some(data_tx),
                reply: Some(reply_tx),
            },
        );
        let tx = StreamWriter {
            id,
            out: self.shared.out.clone(),
        };
        tx.send(Frame::SynStream {
            stream: id,
            associated: 0,
            priority: 0,
            flags: 0,
            headers: headers.clone(),
        })
        .await?;
        match tokio::time::timeout(timeout, reply_rx).await {
            Ok(Ok(())) => Ok(Stream {
                id,
                headers,
                rx: data_rx,
                tx,
            }),
            Ok(Err(_)) => Err(Error::Protocol(format!("stream {id} was reset"))),
            Err(_) => Err(Error::Timeout("waiting for the stream reply")),
        }
    }

    /// GOAWAY, flush, and close the connection; streams see their receivers end.
    pub async fn close(&self) {
        let _ = self.shared.out.send(Cmd::Close).await;
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Relaxed)
    }

    /// Waits until the connection is gone (either side closed it).
    pub async fn closed(&self) {
        while !self.is_closed() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn writer<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<Cmd>, shared: Arc<Shared>) {
    let mut enc = Encoder::new();
    // Frame headers and small frames are encoded into `buf`; big payloads join `out` as they
    // are, between the pieces of `buf` around them.
    let mut buf = BytesMut::with_capacity(64 << 10);
    let mut out: VecDeque<Bytes> = VecDeque::new();
    let mut last_good = 0u32;
    while let Some(cmd) = rx.recv().await {
        let mut close = false;
        let mut next = Some(cmd);
        let mut queued = 0usize;
        // Batch what is queued into one write.
        while let Some(cmd) = next.take() {
            match cmd {
                Cmd::Frame(Frame::Data {
                    stream,
                    flags,
                    data,
                }) if data.len() >= ZERO_COPY_MIN => {
                    frame::encode_data_header(stream, flags, data.len(), &mut buf);
                    out.push_back(buf.split().freeze());
                    queued += data.len();
                    out.push_back(data);
                }
                Cmd::Frame(f) => {
                    if let Frame::SynReply { stream, .. } = &f {
                        last_good = last_good.max(*stream);
                    }
                    enc.encode(&f, &mut buf);
                }
                Cmd::Close => {
                    enc.encode(
                        &Frame::GoAway {
                            last_stream: last_good,
                            status: 0,
                        },
                        &mut buf,
                    );
                    close = true;
                    break;
                }
            }
            if buf.len() + queued < 1 << 20 {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            out.push_back(buf.split().freeze());
        }
        if write_all_vectored(&mut w, &mut out).await.is_err() || w.flush().await.is_err() {
            break;
        }
        shared.touch();
        if close {
            break;
        }
    }
    let _ = w.shutdown().await;
    shutdown(&shared);
}

/// Writes every piece, in order, with as few calls as the socket allows.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    pieces: &mut VecDeque<Bytes>,
) -> std::io::Result<()> {
    while !pieces.is_empty() {
        let slices: Vec<std::io::IoSlice<'_>> = pieces
            .iter()
            .take(64)
            .map(|b| std::io::IoSlice::new(b))
            .collect();
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let Some(front) = pieces.front_mut() else {
                break;
            };
            if n >= front.len() {
                n -= front.len();
                pieces.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
        while pieces.front().is_some_and(|b| b.is_empty()) {
            pieces.pop_front();
        }
    }
    Ok(())
}

fn shutdown(shared: &Shared) {
    shared.closed.store(true, Ordering::Relaxed);
    shared.lock().clear();
    if let Some(h) = shared
        .reader
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        h.abort();
    }
}

async fn reader<R: AsyncRead + Unpin>(
    mut r: R,
    shared: Arc<Shared>,
    incoming: mpsc::Sender<Stream>,
    limits: Limits,
    idle: Option<Duration>,
    server: bool,
) {
    let res = read_loop(&mut r, &shared, &incoming, limits, idle, server).await;
    if let Err(e) = res {
        tracing::debug!("spdy connection ends: {e}");
        let _ = shared.out.try_send(Cmd::Frame(Frame::GoAway {
            last_stream: 0,
            status: 1,
        }));
    }
    // Closing ends the writer, which marks the session closed.
    let _ = shared.out.try_send(Cmd::Close);
    shared.closed.store(true, Ordering::Relaxed);
    shared.lock().clear();
}

async fn read_loop<R: AsyncRead + Unpin>(
    r: &mut R,
    shared: &Arc<Shared>,
    incoming: &mpsc::Sender<Stream>,
    limits: Limits,
    idle: Option<Duration>,
    server: bool,
) -> Result<(), Error> {
    let mut dec = Decoder::new(limits);
    let mut buf = BytesMut::with_capacity(64 << 10);
    let peer_parity = if server { 1 } else { 0 };
    let mut last_peer_stream = 0u32;
    let mut after_direct = false;
    shared.touch();
    loop {
        while let Some(f) = dec.decode(&mut buf)? {
            handle(f, shared, incoming, peer_parity, &mut last_peer_stream).await?;
        }
        let need = dec.needed(&buf)?;
        if let Some(total) = need.filter(|t| t - buf.len() >= DIRECT_MIN) {
            // The frames split off before still share `buf`'s memory, so growing it would
            // copy this frame's start; a buffer of the frame's own size takes the rest as it
            // comes, and its payload goes on without another copy.
            let mut frame = BytesMut::with_capacity(total);
            frame.extend_from_slice(&buf);
            buf.clear();
            while frame.len() < total {
                let left = total - frame.len();
                if read_some(r, &mut frame, left, idle, shared).await? == 0 {
                    return Ok(());
                }
            }
            if let Some(f) = dec.decode(&mut frame)? {
                handle(f, shared, incoming, peer_parity, &mut last_peer_stream).await?;
            }
            after_direct = true;
            continue;
        }
        // Right after a big frame only its successor's header and a little more: if that is
        // big too, it is read directly, with little copied.
        let max = if std::mem::take(&mut after_direct) {
            AFTER_DIRECT
        } else {
            COPY_CHUNK
        };
        let want = need.unwrap_or(8).max(buf.len() + 1);
        buf.reserve(want.saturating_sub(buf.len()).max(max));
        if read_some(r, &mut buf, max, idle, shared).await? == 0 {
            return Ok(());
        }
    }
}

/// One read of at most `max` bytes into `buf`, ending the connection after `idle` without
/// traffic either way.
async fn read_some<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
    idle: Option<Duration>,
    shared: &Shared,
) -> Result<usize, Error> {
    let mut limited = (&mut *r).take(max as u64);
    let n = match idle {
        Some(idle) => loop {
            match tokio::time::timeout(idle, limited.read_buf(buf)).await {
                Ok(n) => break n?,
                // Writes count as activity too (a long-running output-only exec).
                Err(_) if shared.idle_for() < idle => continue,
                Err(_) => return Err(Error::Timeout("connection idle")),
            }
        },
        None => limited.read_buf(buf).await?,
    };
    if n > 0 {
        shared.touch();
    }
    Ok(n)
}

async fn handle(
    f: Frame,
    shared: &Arc<Shared>,
    incoming: &mpsc::Sender<Stream>,
    peer_parity: u32,
    last_peer_stream: &mut u32,
) -> Result<(), Error> {
    let send = |f: Frame| {
        let out = shared.out.clone();
        async move {
            let _ = out.send(Cmd::Frame(f)).await;
        }
    };
    match f {
        Frame::SynStream {
            stream,
            flags,
            headers,
            ..
        } => {
            if stream == 0 || stream % 2 != peer_parity || stream <= *last_peer_stream {
                return Err(Error::Protocol(format!("invalid stream id {stream}")));
            }
            *last_peer_stream = stream;
            let (data_tx, data_rx) = mpsc::channel(STREAM_QUEUE);
            let refused = {
                let mut streams = shared.lock();
                let full = streams.len() >= MAX_STREAMS;
                if !full {
                    streams.insert(
                        stream,
                        StreamState {
                            data: (flags & frame::FLAG_FIN == 0).then_some(data_tx),
                            reply: None,
                        },
                    );
                }
                full
            };
            if refused {
                send(Frame::RstStream {
                    stream,
                    status: frame::RST_REFUSED_STREAM,
                })
                .await;
                return Ok(());
            }
            send(Frame::SynReply {
                stream,
                flags: 0,
                headers: vec![],
            })
            .await;
            let s = Stream {
                id: stream,
                headers,
                rx: data_rx,
                tx: StreamWriter {
                    id: stream,
                    out: shared.out.clone(),
                },
            };
            if incoming.try_send(s).is_err() {
                send(Frame::RstStream {
                    stream,
                    status: frame::RST_REFUSED_STREAM,
                })
                .await;
                shared.lock().remove(&stream);
            }
        }
        Frame::SynReply { stream, flags, .. } => {
            let mut streams = shared.lock();
            if let Some(st) = streams.get_mut(&stream) {
                if let Some(r) = st.reply.take() {
                    let _ = r.send(());
                }
                if flags & frame::FLAG_FIN != 0 {
                    st.data = None;
                }
            }
        }
        Frame::Data {
            stream,
            flags,
            data,
        } => {
            let tx = shared.lock().get(&stream).and_then(|s| s.data.clone());
            if let Some(tx) = tx {
                if !data.is_empty() && tx.send(data).await.is_err() {
                    // The consumer is gone; the rest of this stream is dropped.
                    if let Some(st) = shared.lock().get_mut(&stream) {
                        st.data = None;
                    }
                }
            }
            if flags & frame::FLAG_FIN != 0 {
                peer_finished(shared, stream);
            }
        }
        Frame::RstStream { stream, .. } => {
            shared.lock().remove(&stream);
        }
        Frame::Ping { id } => {
            // Echo the peer's pings; ours come back with our parity and need nothing.
            if id % 2 == peer_parity {
                send(Frame::Ping { id }).await;
            }
        }
        Frame::Headers { stream, flags, .. } => {
            if flags & frame::FLAG_FIN != 0 {
                peer_finished(shared, stream);
            }
        }
        Frame::GoAway { .. }
        | Frame::Settings { .. }
        | Frame::WindowUpdate { .. }
        | Frame::Unknown => {}
    }
    Ok(())
}

/// The peer sent its last byte on `stream`: its receiver ends, and the entry goes once nothing
/// more can arrive for it.
fn peer_finished(shared: &Shared, stream: u32) {
    let mut streams = shared.lock();
    if let Some(st) = streams.get_mut(&stream) {
        st.data = None;
        if st.reply.is_none() {
            streams.remove(&stream);
        }
    }
}
