//! Exec, Attach and PortForward: each RPC validates its request and trades it for a single-use
//! URL on the streaming server (pkg/streaming); [`StreamBackend`] then serves the streams.
//!
//! Exec runs `runc exec` from berthd (in the foreground, on a pty of ours when `tty`), not
//! from the container's shim: see docs/architecture.md for why. Port-forward dials from a
//! thread that entered the pod's network namespace, so the socket lives there.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_runtime::runc::{kill_tree, last_runtime_error};
use berth_streaming::{
    AttachRequest, Backend, BackendError, ExecRequest, PortForwardRequest, Stdio, TermSize,
};
use bytes::Bytes;
use futures::future::BoxFuture;
use k8s_cri::v1;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Status;

use super::record::{ContainerRecord, ContainerState};
use super::ContainerManager;
use crate::edge::invalid;
use crate::runtime::RuntimeApi;
use crate::sandbox::PodState;

/// How long output is still read after `runc exec` returned: a process the command left behind
/// may hold the pipes or the pty open forever.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// How long a TTY exec waits for the client's first window size before starting.
const FIRST_SIZE_WAIT: Duration = Duration::from_millis(200);
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

fn running(mgr: &ContainerManager, id: &str) -> Result<ContainerRecord, Status> {
    if id.is_empty() {
        return Err(invalid("container_id", "must not be empty"));
    }
    let rec = mgr.get(id)?;
    if rec.state != ContainerState::Running {
        return Err(Status::failed_precondition(format!(
            "container {} is not running",
            rec.id
        )));
    }
    Ok(rec)
}

/// kubelet's rules (pkg/kubelet/cri/streaming/server.go).
fn check_streams(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<(), Status> {
    if tty && stderr {
        return Err(invalid(
            "stderr",
            "tty and stderr cannot both be true (a terminal has one output)",
        ));
    }
    if !stdin && !stdout && !stderr {
        return Err(invalid(
            "stdin",
            "one of stdin, stdout, or stderr must be set",
        ));
    }
    Ok(())
}

fn url_status(e: berth_streaming::Error) -> Status {
    if e.is_resource_exhausted() {
        Status::resource_exhausted(e.to_string())
    } else {
        Status::internal(e.to_string())
    }
}

impl RuntimeApi {
    fn streaming(&self) -> Result<&berth_streaming::Server, Status> {
        self.streaming
            .get()
            .ok_or_else(|| Status::unavailable("the streaming server is not running"))
    }

    pub(crate) async fn exec(&self, req: v1::ExecRequest) -> Result<v1::ExecResponse, Status> {
        if req.cmd.is_empty() {
            return Err(invalid("cmd", "must not be empty"));
        }
        check_streams(req.tty, req.stdin, req.stdout, req.stderr)?;
        let rec = running(&self.containers, &req.container_id)?;
        let url = self
            .streaming()?
            .get_exec(ExecRequest {
                container_id: rec.id,
                cmd: req.cmd,
                tty: req.tty,
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
            })
            .map_err(url_status)?;
        Ok(v1::ExecResponse { url })
    }

    pub(crate) async fn attach(
        &self,
        req: v1::AttachRequest,
    ) -> Result<v1::AttachResponse, Status> {
        check_streams(req.tty, req.stdin, req.stdout, req.stderr)?;
        let rec = running(&self.containers, &req.container_id)?;
        let url = self
            .streaming()?
            .get_attach(AttachRequest {
                container_id: rec.id,
                tty: req.tty,
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
            })
            .map_err(url_status)?;
        Ok(v1::AttachResponse { url })
    }

    pub(crate) async fn port_forward(
        &self,
        req: v1::PortForwardRequest,
    ) -> Result<v1::PortForwardResponse, Status> {
        if req.pod_sandbox_id.is_empty() {
            return Err(invalid("pod_sandbox_id", "must not be empty"));
        }
        let pod = self.pods.get(&req.pod_sandbox_id)?;
        if pod.state != PodState::Ready {
            return Err(Status::failed_precondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        let ports = req
            .port
            .iter()
            .map(|p| {
                u16::try_from(*p)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| invalid("port", format!("{p} is not a valid port")))
            })
            .collect::<Result<Vec<u16>, Status>>()?;
        let url = self
            .streaming()?
            .get_port_forward(PortForwardRequest {
                pod_id: pod.id,
                ports,
            })
            .map_err(url_status)?;
        Ok(v1::PortForwardResponse { url })
    }
}

/// The daemon's side of the streams.
pub struct StreamBackend {
    containers: Arc<ContainerManager>,
}

impl StreamBackend {
    pub fn new(containers: Arc<ContainerManager>) -> Self {
        Self { containers }
    }
}

fn backend_err(s: Status) -> BackendError {
    BackendError(s.message().to_string())
}

impl Backend for StreamBackend {
    fn exec(&self, req: ExecRequest, io: Stdio) -> BoxFuture<'static, Result<i32, BackendError>> {
        let mgr = self.containers.clone();
        Box::pin(async move { run_exec(mgr, req, io).await })
    }

    fn attach(
        &self,
        req: AttachRequest,
        io: Stdio,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        let mgr = self.containers.clone();
        Box::pin(async move { run_attach(mgr, req, io).await })
    }

    fn port_forward(
        &self,
        pod_id: &str,
        port: u16,
    ) -> BoxFuture<'static, Result<tokio::net::TcpStream, BackendError>> {
        let pod = self.containers.pods().get(pod_id);
        Box::pin(async move {
            let pod = pod.map_err(backend_err)?;
            // A host-network pod's namespace is the host's own.
            let netns = if pod.host.network {
                None
            } else {
                Some(
                    pod.pinned
                        .as_ref()
                        .and_then(|p| p.net.clone())
                        .ok_or_else(|| {
                            BackendError(format!("pod {} has no network namespace", pod.id))
                        })?,
                )
            };
            let sock = tokio::task::spawn_blocking(move || match netns {
                Some(ns) => {
                    berth_sys::ns::in_namespace(&ns, berth_sys::ns::NsKind::Net, || dial(port))
                        .map_err(|e| BackendError(e.to_string()))?
                }
                None => dial(port),
            })
            .await
            .map_err(|e| BackendError(e.to_string()))??;
            sock.set_nonblocking(true)
                .map_err(|e| BackendError(e.to_string()))?;
            let _ = sock.set_nodelay(true);
            tokio::net::TcpStream::from_std(sock).map_err(|e| BackendError(e.to_string()))
        })
    }
}

/// Connects to the pod's loopback, IPv4 first, as containerd does.
fn dial(port: u16) -> Result<std::net::TcpStream, BackendError> {
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    match std::net::TcpStream::connect_timeout(&v4, DIAL_TIMEOUT) {
        Ok(s) => Ok(s),
        Err(e4) => {
            let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
            std::net::TcpStream::connect_timeout(&v6, DIAL_TIMEOUT)
                .map_err(|_| BackendError(format!("dial tcp 127.0.0.1:{port}: {e4}")))
        }
    }
}

/// Joins the container's stdio through its shim (`Attach` on the shim socket): the shim fans the
/// output out to every attacher and keeps the container running when they leave.
async fn run_attach(
    mgr: Arc<ContainerManager>,
    req: AttachRequest,
    mut io: Stdio,
) -> Result<(), BackendError> {
    use berth_shim_proto as sp;
    let rec = running(&mgr, &req.container_id).map_err(backend_err)?;
    let mut sock = tokio::net::UnixStream::connect(&rec.paths.socket)
        .await
        .map_err(|e| BackendError(format!("connecting to the shim of {}: {e}", rec.id)))?;
    let env = sp::Envelope {
        protocol: sp::PROTOCOL_VERSION,
        // Input for a container created without stdin has nowhere to go; its output still does.
        request: sp::Request::Attach {
            stdin: req.stdin && rec.stdin,
        },
    };
    let body = serde_json::to_vec(&env).map_err(|e| BackendError(e.to_string()))?;
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    let io_err = |e: std::io::Error| BackendError(format!("shim of {}: {e}", rec.id));
    sock.write_all(&frame).await.map_err(io_err)?;
    let mut len = [0u8; 4];
    sock.read_exact(&mut len).await.map_err(io_err)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > sp::MAX_FRAME {
        return Err(BackendError("oversized shim reply".into()));
    }
    let mut body = vec![0u8; len];
    sock.read_exact(&mut body).await.map_err(io_err)?;
    match serde_json::from_slice::<sp::Response>(&body) {
        Ok(sp::Response::State(st)) if st.status == sp::Status::Running => {}
        Ok(sp::Response::State(_)) => {
            return Err(BackendError(format!("container {} is not running", rec.id)))
        }
        Ok(sp::Response::Error { message }) => return Err(BackendError(message)),
        Err(e) => return Err(BackendError(format!("shim reply: {e}"))),
    }
    let (mut r, mut w) = sock.into_split();
    let (stdout, stderr) = (io.stdout.take(), io.stderr.take());
    let closed_probe = stdout.clone().or_else(|| stderr.clone());
    let output = async move {
        let mut head = [0u8; 5];
        loop {
            if r.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if len > sp::MAX_CHUNK {
                return;
            }
            let mut data = vec![0u8; len];
            if r.read_exact(&mut data).await.is_err() {
                return;
            }
            let dst = match head[0] {
                sp::CHUNK_STDOUT => stdout.as_ref(),
                sp::CHUNK_STDERR => stderr.as_ref(),
                _ => None,
            };
            if let Some(tx) = dst {
                if tx.send(Bytes::from(data)).await.is_err() {
                    return;
                }
            }
        }
    };
    let (mut stdin, mut resize) = (io.stdin.take(), io.resize.take());
    let input = async move {
        loop {
            tokio::select! {
                b = async { match stdin.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                    let msg = match b {
                        Some(b) => sp::chunk(sp::CHUNK_STDIN, &b),
                        None => {
                            stdin = None;
                            sp::chunk(sp::CHUNK_STDIN_CLOSE, &[])
                        }
                    };
                    if w.write_all(&msg).await.is_err() {
                        return;
                    }
                }
                sz = async { match resize.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                    let Some(sz) = sz else {
                        resize = None;
                        continue;
                    };
                    let mut d = sz.width.to_be_bytes().to_vec();
                    d.extend_from_slice(&sz.height.to_be_bytes());
                    if w.write_all(&sp::chunk(sp::CHUNK_RESIZE, &d)).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    // The session ends when the container's output ends (it exited) or the client is gone.
    let client_gone = async move {
        match closed_probe {
            Some(tx) => tx.closed().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = output => {}
        _ = client_gone => {}
        _ = async { input.await; std::future::pending::<()>().await } => {}
    }
    Ok(())
}

struct Scratch(Vec<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

async fn run_exec(
    mgr: Arc<ContainerManager>,
    req: ExecRequest,
    mut io: Stdio,
) -> Result<i32, BackendError> {
    let rec = running(&mgr, &req.container_id).map_err(backend_err)?;
    let handler = mgr.handler(&rec.handler).map_err(backend_err)?.clone();
    let mut process = super::exec::exec_process(&rec, &req.cmd).map_err(backend_err)?;
    if let Some(obj) = process.as_object_mut() {
        obj.insert("terminal".into(), serde_json::Value::Bool(req.tty));
    }
    let tag = format!("{:08x}", rand::random::<u32>());
    let dir = &rec.paths.bundle;
    let process_file = dir.join(format!("exec-{tag}.json"));
    let pid_file = dir.join(format!("exec-{tag}.pid"));
    let log_file = dir.join(format!("exec-{tag}.log"));
    let _scratch = Scratch(vec![
        process_file.clone(),
        pid_file.clone(),
        log_file.clone(),
    ]);
    // runc hands a console socket the pty only when it detaches, and a detached process is
    // reaped by nobody here. In the foreground runc makes the container's pty itself and
    // copies it to its own stdio, which is our pty's slave; a resize is set on our pty and
    // SIGWINCH makes runc copy it across.
    let pty = if req.tty {
        let p = nix::pty::openpty(None, None).map_err(|e| BackendError(format!("openpty: {e}")))?;
        if let Some(rx) = io.resize.as_mut() {
            // kubectl sends the size right away; runc reads it once when it starts.
            if let Ok(Some(sz)) = tokio::time::timeout(FIRST_SIZE_WAIT, rx.recv()).await {
                set_size(&p.master, sz);
                // runc sizes the container's pty before the process starts; its own copy of
                // our size comes only after, too late for a command that asks at once.
                if let Some(obj) = process.as_object_mut() {
                    obj.insert(
                        "consoleSize".into(),
                        serde_json::json!({"height": sz.height, "width": sz.width}),
                    );
                }
            }
        }
        Some(p)
    } else {
        None
    };
    let data = serde_json::to_vec(&process).map_err(|e| BackendError(e.to_string()))?;
    std::fs::write(&process_file, data)
        .map_err(|e| BackendError(format!("writing {}: {e}", process_file.display())))?;

    // On pipes runc runs detached under `berth-shim exec`, which waits for the process
    // itself: in the foreground runc would not exit before every holder of the pipes (a
    // child left in the background) had closed them. A terminal stays with runc in the
    // foreground, which makes the container's pty and copies it to ours.
    let mut cmd = if req.tty {
        tokio::process::Command::new(&handler.path)
    } else {
        let mut c = tokio::process::Command::new(mgr.shim_bin());
        c.arg("exec").arg(&pid_file).arg(&handler.path);
        c
    };
    cmd.arg("--root")
        .arg(&handler.root)
        .arg("--log")
        .arg(&log_file)
        .arg("--log-format")
        .arg("json")
        .arg("exec");
    if !req.tty {
        cmd.arg("--detach");
    }
    cmd.arg("--process")
        .arg(&process_file)
        .arg("--pid-file")
        .arg(&pid_file);
    cmd.arg(&rec.id);
    let piped = |want: bool| {
        if want && !req.tty {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        }
    };
    match &pty {
        Some(p) => {
            let slave = |p: &nix::pty::OpenptyResult| {
                p.slave
                    .try_clone()
                    .map(std::process::Stdio::from)
                    .map_err(|e| BackendError(format!("pty: {e}")))
            };
            cmd.stdin(slave(p)?).stdout(slave(p)?).stderr(slave(p)?);
        }
        None => {
            cmd.stdin(piped(io.stdin.is_some()))
                .stdout(piped(io.stdout.is_some()))
                .stderr(piped(io.stderr.is_some()));
        }
    }
    // SAFETY: the closure runs between fork and exec and makes only raw rt_sigaction
    // syscalls, which are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            berth_sys::process::reset_ignored_signals();
            Ok(())
        });
    }
    // A session dropped before its process ended (the client went away) ends the process:
    // runc first (kill_on_drop), then what runc started, found by its pid file.
    cmd.kill_on_drop(true);
    let mut unfinished = Unfinished(Some(pid_file.clone()));
    let mut child = cmd
        .spawn()
        .map_err(|e| BackendError(format!("running {}: {e}", handler.path.display())))?;
    // Our copies of the slave go, so the master reads EIO once runc is gone.
    drop(cmd);
    let runc_pid = child.id().map(|p| p as i32);

    let mut tasks: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let mut input: Option<tokio::task::JoinHandle<()>> = None;
    let mut resizer: Option<tokio::task::JoinHandle<()>> = None;
    if let Some(p) = pty {
        drop(p.slave);
        let master = Arc::new(async_master(p.master)?);
        if let Some(tx) = io.stdout.take() {
            tasks.push(tokio::spawn(pty_output(master.clone(), tx)));
        }
        if let Some(rx) = io.stdin.take() {
            input = Some(tokio::spawn(pty_input(master.clone(), rx)));
        }
        if let Some(rx) = io.resize.take() {
            resizer = Some(tokio::spawn(pty_resize(master.clone(), rx, runc_pid)));
        }
    } else {
        if let (Some(mut rx), Some(mut w)) = (io.stdin.take(), child.stdin.take()) {
            input = Some(tokio::spawn(async move {
                while let Some(b) = rx.recv().await {
                    if w.write_all(&b).await.is_err() {
                        break;
                    }
                }
            }));
        }
        if let (Some(tx), Some(r)) = (io.stdout.take(), child.stdout.take()) {
            tasks.push(tokio::spawn(pipe_output(r, tx)));
        }
        if let (Some(tx), Some(r)) = (io.stderr.take(), child.stderr.take()) {
            tasks.push(tokio::spawn(pipe_output(r, tx)));
        }
    }
    // Dropped with the session (the client went away), the copies end too: they would
    // otherwise hold the pipes for as long as the process keeps them open.
    let _copies = AbortOnDrop(
        tasks
            .iter()
            .chain(input.iter())
            .chain(resizer.iter())
            .map(|t| t.abort_handle())
            .collect(),
    );
    let status = child
        .wait()
        .await
        .map_err(|e| BackendError(format!("waiting for runc exec: {e}")))?;
    unfinished.0 = None;
    // Output the process wrote before it exited is delivered; what a leftover holder of the
    // pipes writes later is not waited for.
    let drain = futures::future::join_all(tasks.iter_mut());
    if tokio::time::timeout(DRAIN_LIMIT, drain).await.is_err() {
        for t in &tasks {
            t.abort();
        }
    }
    for t in [input, resizer].into_iter().flatten() {
        t.abort();
    }
    if read_pid(&pid_file).is_none() {
        return Err(exec_failure(&rec.id, &pid_file, &log_file));
    }
    // runc reports the process's status; killed processes come back as 128 + signal.
    Ok(status.code().unwrap_or(255))
}

/// Kills the exec'd process named by the pid file when dropped while still set.
struct Unfinished(Option<std::path::PathBuf>);

/// How long a session dropped while runc was still starting its process waits for the pid
/// file runc writes once the process runs.
const LATE_PID_WAIT: Duration = Duration::from_secs(5);

impl Drop for Unfinished {
    fn drop(&mut self) {
        let Some(pid_file) = self.0.take() else {
            return;
        };
        if let Some(pid) = read_pid(&pid_file) {
            kill_tree(pid);
            return;
        }
        // runc may still be starting it: the process is killed once it shows up.
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + LATE_PID_WAIT;
            while std::time::Instant::now() < deadline {
                if let Some(pid) = read_pid(&pid_file) {
                    kill_tree(pid);
                    let _ = std::fs::remove_file(&pid_file);
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    }
}

struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

fn exec_failure(id: &str, pid_file: &Path, log_file: &Path) -> BackendError {
    if let Some(pid) = read_pid(pid_file) {
        kill_tree(pid);
    }
    BackendError(
        last_runtime_error(log_file)
            .unwrap_or_else(|| format!("runc exec in container {id} failed")),
    )
}

fn async_master(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>, BackendError> {
    let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)
        .map_err(|e| BackendError(e.to_string()))?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))
        .map_err(|e| BackendError(e.to_string()))?;
    // SAFETY: an OwnedFd is open for its whole life and always reports the same descriptor.
    unsafe { AsyncFd::register(fd) }.map_err(|e| BackendError(e.to_string()))
}

async fn pty_output(master: Arc<AsyncFd<OwnedFd>>, tx: tokio::sync::mpsc::Sender<Bytes>) {
    let mut buf = vec![0u8; 32 << 10];
    loop {
        let Ok(mut guard) = master.readable().await else {
            return;
        };
        match guard
            .try_io(|fd| nix::unistd::read(fd.as_raw_fd(), &mut buf).map_err(std::io::Error::from))
        {
            // EIO: every slave end is closed.
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => {
                if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    return;
                }
            }
            Err(_would_block) => continue,
        }
    }
}

async fn pty_input(master: Arc<AsyncFd<OwnedFd>>, mut rx: tokio::sync::mpsc::Receiver<Bytes>) {
    while let Some(b) = rx.recv().await {
        let mut off = 0;
        while off < b.len() {
            let Ok(mut guard) = master.writable().await else {
                return;
            };
            match guard.try_io(|fd| {
                nix::unistd::write(fd.get_ref(), &b[off..]).map_err(std::io::Error::from)
            }) {
                Ok(Ok(n)) => off += n,
                Ok(Err(_)) => return,
                Err(_would_block) => continue,
            }
        }
    }
}

async fn pty_resize(
    master: Arc<AsyncFd<OwnedFd>>,
    mut rx: tokio::sync::mpsc::Receiver<TermSize>,
    runc: Option<i32>,
) {
    while let Some(sz) = rx.recv().await {
        set_size(master.get_ref(), sz);
        if let Some(pid) = runc {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGWINCH,
            );
        }
    }
}

fn set_size(fd: &OwnedFd, sz: TermSize) {
    let ws = libc::winsize {
        ws_row: sz.height,
        ws_col: sz.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
    unsafe {
        libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws);
    }
}

async fn pipe_output<R: tokio::io::AsyncRead + Unpin>(
    mut r: R,
    tx: tokio::sync::mpsc::Sender<Bytes>,
) {
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_combinations_follow_kubelet() {
        assert!(check_streams(true, true, true, true).is_err());
        assert!(check_streams(false, false, false, false).is_err());
        assert!(check_streams(true, true, true, false).is_ok());
        assert!(check_streams(false, false, false, true).is_ok());
        let e = check_streams(true, false, true, true).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("stderr"));
    }
}
