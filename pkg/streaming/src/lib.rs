//! Streaming exec / attach / port-forward the way kubelet's CRI streaming server speaks it:
//! SPDY/3.1 (`v4.channel.k8s.io` … `channel.k8s.io`, `portforward.k8s.io`), WebSocket
//! (`v5.channel.k8s.io` … and the base64 variants, port-forward channels) and SPDY tunneled in
//! a WebSocket (`SPDY/3.1+portforward.k8s.io`), server and client.
//!
//! The daemon supplies a [`Backend`] that runs exec/attach processes and dials pod ports; this
//! crate knows nothing of the CRI or of containers.

pub mod client;
mod portforward;
mod remotecommand;
pub mod server;
mod sha1;
pub mod spdy;
pub mod ws;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

pub use server::{Config, Server, TlsFiles};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("maximum number of in-flight streaming requests ({0}) reached")]
    TooManyInFlight(usize),
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("upgrade refused: {0}")]
    Refused(String),
    #[error("tls: {0}")]
    Tls(String),
}

impl Error {
    /// Kinds the CRI layer maps to gRPC codes.
    pub fn is_resource_exhausted(&self) -> bool {
        matches!(self, Error::TooManyInFlight(_))
    }
}

/// When a connection last carried anything either way: a session that only sends (a
/// long-running output-only exec) or only receives is not idle.
pub(crate) struct Activity {
    epoch: std::time::Instant,
    last_ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            epoch: std::time::Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub(crate) fn touch(&self) {
        self.last_ms.store(
            self.epoch.elapsed().as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    pub(crate) fn idle_for(&self) -> std::time::Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_ms.load(std::sync::atomic::Ordering::Relaxed);
        std::time::Duration::from_millis(now.saturating_sub(last))
    }
}

/// The next message of a WebSocket, or `None` at its end, on an error, or once nothing went
/// either way for `idle`.
pub(crate) async fn next_until_idle<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut ws::Reader<R>,
    idle: std::time::Duration,
    activity: &Activity,
) -> Option<ws::Message> {
    loop {
        // `next` keeps a partly read frame in the reader, so giving up on it loses nothing.
        match tokio::time::timeout(idle, reader.next()).await {
            Ok(Ok(Some(m))) => {
                activity.touch();
                return Some(m);
            }
            Ok(_) => return None,
            Err(_) if activity.idle_for() < idle => continue,
            Err(_) => return None,
        }
    }
}

/// A terminal size as the resize stream carries it (`{"Width":80,"Height":24}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TermSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// An exec as the CRI Exec request described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    pub container_id: String,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForwardRequest {
    pub pod_id: String,
    pub ports: Vec<u16>,
}

/// The streams of one exec or attach session, as the backend sees them. Stdin ends (the
/// channel closes) when the client closes it; the session is over for the client once the
/// backend has dropped its output senders and returned.
pub struct Stdio {
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<mpsc::Sender<Bytes>>,
    pub stderr: Option<mpsc::Sender<Bytes>>,
    pub resize: Option<mpsc::Receiver<TermSize>>,
    pub tty: bool,
}

/// Why a backend could not do what was asked; the message reaches the client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

/// What the daemon implements: run processes, join a container's stdio, dial a pod's port.
pub trait Backend: Send + Sync + 'static {
    /// Runs the command and returns its exit code.
    fn exec(&self, req: ExecRequest, io: Stdio) -> BoxFuture<'static, Result<i32, BackendError>>;
    /// Joins the container's stdio until the container exits or the client leaves.
    fn attach(&self, req: AttachRequest, io: Stdio)
        -> BoxFuture<'static, Result<(), BackendError>>;
    /// A connection to `port` inside the pod's network namespace.
    fn port_forward(
        &self,
        pod_id: &str,
        port: u16,
    ) -> BoxFuture<'static, Result<tokio::net::TcpStream, BackendError>>;
}
