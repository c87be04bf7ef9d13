//! The local end of a streaming exec or attach: our stdin (raw when a TTY is asked for), our
//! stdout/stderr, and the window size on SIGWINCH.

use std::io::Read;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use anyhow::Result;
use berth_streaming::client::{self, Transport as WireTransport};
use berth_streaming::TermSize;
use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

use super::exec::Transport;

impl From<Transport> for WireTransport {
    fn from(t: Transport) -> Self {
        match t {
            Transport::Spdy => WireTransport::Spdy,
            Transport::Websocket => WireTransport::WebSocket,
        }
    }
}

/// Our stdin read on a plain thread: a tokio blocking read would keep the process from exiting
/// while it waits for a line that never comes.
struct StdinReader {
    rx: mpsc::Receiver<Bytes>,
    pending: Bytes,
}

fn stdin_reader() -> StdinReader {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 << 10];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                        return;
                    }
                }
            }
        }
    });
    StdinReader {
        rx,
        pending: Bytes::new(),
    }
}

impl AsyncRead for StdinReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pending.is_empty() {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(b)) => self.pending = b,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = self.pending.len().min(buf.remaining());
        let chunk = self.pending.split_to(n);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

/// Our stdout or stderr written in place: a terminal or pipe write is short, and the remote
/// side waits for it anyway.
struct Blocking<W>(W);

impl<W: std::io::Write + Unpin> tokio::io::AsyncWrite for Blocking<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(self.0.write(buf))
    }
    fn poll_flush(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.0.flush())
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.0.flush())
    }
}

/// Puts the terminal in raw mode until dropped.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enter() -> RawMode {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let Ok(orig) = tcgetattr(stdin.as_fd()) else {
            return RawMode(None);
        };
        let mut raw = orig.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
        RawMode(Some(orig))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin().as_fd(),
                nix::sys::termios::SetArg::TCSANOW,
                t,
            );
        }
    }
}

fn window_size() -> Option<TermSize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize to the pointer, which outlives the call.
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0).then_some(TermSize {
        width: ws.ws_col,
        height: ws.ws_row,
    })
}

/// The current size now and again at every SIGWINCH.
fn resize_events() -> mpsc::Receiver<TermSize> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        if let Some(sz) = window_size() {
            let _ = tx.send(sz).await;
        }
        let Ok(mut sig) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        else {
            return;
        };
        while sig.recv().await.is_some() {
            if let Some(sz) = window_size() {
                if tx.send(sz).await.is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Runs the session at `url` with our stdio; returns the remote exit code.
pub(crate) async fn attach_local(
    url: &str,
    trust: &client::Trust,
    transport: Transport,
    stdin: bool,
    tty: bool,
    stderr: bool,
) -> Result<i32> {
    let is_tty = tty && nix::unistd::isatty(libc::STDIN_FILENO).unwrap_or(false);
    let _raw = is_tty.then(RawMode::enter);
    let io = client::Io {
        stdin: stdin.then(|| Box::new(stdin_reader()) as client::Input),
        stdout: Some(Box::new(Blocking(std::io::stdout()))),
        stderr: stderr.then(|| Box::new(Blocking(std::io::stderr())) as client::Output),
        tty,
        resize: tty.then(resize_events),
    };
    let code = client::remote_command(client::Url { url, trust }, transport.into(), io).await?;
    Ok(code)
}
