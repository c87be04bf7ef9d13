//! The shim's event loop: one thread, one poll(2) over the control socket, its connections,
//! the container's output and a signalfd; timers (Stop's SIGKILL, Wait's timeout, the output
//! drain) are the poll timeout.
//!
//! Each connection carries one request and gets one response. Stop and Wait park their
//! connection until the exit is recorded (or Wait's time is up); any number may be parked.
//!
//! When the container's init is reaped the shim drains the output for at most
//! [`DRAIN_LIMIT`], deletes the runtime's container, writes the exit file and only then
//! removes its socket, so a berthd that finds the socket gone always finds the exit file.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant, SystemTime};

use berth_shim_proto::{
    chunk, exit_code_of, take_chunk, write_exit_file, write_frame, Envelope, Exit, Request,
    Response, ShimConfig, State, Status, CHUNK_RESIZE, CHUNK_STDERR, CHUNK_STDIN,
    CHUNK_STDIN_CLOSE, CHUNK_STDOUT, PROTOCOL_VERSION,
};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::Deserialize;

use crate::console::ContainerIo;
use crate::log::{CriLog, Lines, Stream};
use crate::run::read_oom;
use crate::runc::Runc;
use crate::sys::{self, now_nanos};

/// How long output is still read after the container's init exited. A process that inherited
/// its stdout (a daemon in a pod sharing the PID namespace) may keep the pipe open forever.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// The one read buffer, shared by all outputs.
const READ_BUF: usize = 32 * 1024;
/// Requests are a few dozen bytes; anything near this is not berthd.
const MAX_REQUEST: usize = 64 * 1024;
/// A client that connected but sends no whole request in this time is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections beyond this are closed at once rather than exhausting fds.
const MAX_CONNS: usize = 64;
/// How long a reply may take to write before the client is given up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a stopping init that had no handler for its stop signal is looked at again.
const RESEND_CHECK: Duration = Duration::from_millis(20);
/// At the end, how long a connection that has not sent its whole request yet is waited for.
const FINAL_READ_TIMEOUT: Duration = Duration::from_millis(200);

/// A created container, handed over by `run.rs`.
pub(crate) struct Created {
    pub(crate) pid: i32,
    pub(crate) io: ContainerIo,
    pub(crate) listener: UnixListener,
    pub(crate) log: CriLog,
    pub(crate) oom_baseline: u64,
    pub(crate) signals: SignalFd,
}

struct Output {
    stream: Stream,
    file: File,
    lines: Lines,
}

struct Conn {
    stream: UnixStream,
    phase: Phase,
    /// Reading: dropped then. Waiting: answered then.
    deadline: Option<Instant>,
}

enum Phase {
    Reading(Vec<u8>),
    /// Stop, or Wait during the output drain: answered once the exit file is written.
    UntilExit,
    /// Wait: answered at the exit or at the deadline.
    Waiting,
    /// Attach: gets the output as chunks, sends stdin and resizes; `buf` holds a partial chunk.
    Attached {
        buf: Vec<u8>,
        stdin: bool,
    },
}

/// What a request leads to.
enum Action {
    Reply(Response),
    /// Reply with the state, then keep the connection as an attacher.
    Attach {
        stdin: bool,
    },
    Park(Phase, Option<Instant>),
}

struct Shim<'a> {
    cfg: &'a ShimConfig,
    runc: Runc<'a>,
    pid: i32,
    status: Status,
    started_at: i64,
    /// Recorded when init is reaped; final (OOM re-read) once `done`.
    exit: Option<Exit>,
    oom_baseline: u64,
    listener: UnixListener,
    conns: Vec<Conn>,
    outputs: Vec<Output>,
    /// Held, never written yet: attach comes later.
    stdin: Option<OwnedFd>,
    signals: SignalFd,
    log: CriLog,
    buf: Vec<u8>,
    /// When Stop's grace period ends and SIGKILL follows.
    kill_at: Option<Instant>,
    /// A stop signal init had no handler for when it was sent, and when to look again.
    resend: Option<(i32, Instant)>,
    /// When the output drain after the exit gives up.
    drain_until: Option<Instant>,
    /// The exit file is written; every request is answered at once.
    done: bool,
}

/// Serves the container until it has exited and everything is recorded.
pub(crate) fn serve(cfg: &ShimConfig, created: Created) {
    let Created {
        pid,
        io,
        listener,
        log,
        oom_baseline,
        signals,
    } = created;
    let mut shim = Shim {
        cfg,
        runc: Runc::new(cfg),
        pid,
        status: Status::Created,
        started_at: 0,
        exit: None,
        oom_baseline,
        listener,
        conns: Vec::new(),
        outputs: io
            .outputs
            .into_iter()
            .map(|(stream, file)| Output {
                stream,
                file,
                lines: Lines::default(),
            })
            .collect(),
        stdin: io.stdin,
        signals,
        log,
        buf: vec![0; READ_BUF],
        kill_at: None,
        resend: None,
        drain_until: None,
        done: false,
    };
    shim.run();
    shim.finish();
}

impl Shim<'_> {
    fn run(&mut self) {
        loop {
            let now = Instant::now();
            self.timers(now);
            if let Some(until) = self.drain_until {
                if self.outputs.is_empty() || now >= until {
                    return;
                }
            }
            let timeout = match self.next_deadline() {
                None => PollTimeout::NONE,
                Some(at) => {
                    let left = at.saturating_duration_since(now);
                    // Rounded up: waking a little late is fine, spinning until the deadline is not.
                    let ms = left.as_nanos().div_ceil(1_000_000);
                    PollTimeout::try_from(ms.min(i32::MAX as u128) as u32)
                        .unwrap_or(PollTimeout::MAX)
                }
            };
            let revents = match self.poll(timeout) {
                Ok(r) => r,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    // Not expected with valid fds; avoid a hot loop while still serving.
                    diag!("poll: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            self.dispatch(&revents);
        }
    }

    /// Polls every fd; returns the events in the order signals, listener, outputs, connections.
    fn poll(&self, timeout: PollTimeout) -> nix::Result<Vec<PollFlags>> {
        let input = PollFlags::POLLIN;
        let mut fds = Vec::with_capacity(2 + self.outputs.len() + self.conns.len());
        fds.push(PollFd::new(self.signals.as_fd(), input));
        fds.push(PollFd::new(self.listener.as_fd(), input));
        for o in &self.outputs {
            fds.push(PollFd::new(o.file.as_fd(), input));
        }
        for c in &self.conns {
            fds.push(PollFd::new(c.stream.as_fd(), input));
        }
        poll(&mut fds, timeout)?;
        Ok(fds
            .iter()
            .map(|f| f.revents().unwrap_or(PollFlags::empty()))
            .collect())
    }

    fn dispatch(&mut self, revents: &[PollFlags]) {
        let ready = |i: usize| revents.get(i).is_some_and(|r| !r.is_empty());
        let outputs = self.outputs.len();
        let conns = self.conns.len();
        // Output first: the log should hold what was written before an exit is reported.
        for i in (0..outputs).rev() {
            if ready(2 + i) {
                self.read_output(i);
            }
        }
        if ready(0) {
            self.read_signals();
        }
        // Backwards, so removing a connection leaves the indices still to visit valid.
        for i in (0..conns).rev() {
            if ready(2 + outputs + i) {
                self.read_conn(i);
            }
        }
        if ready(1) {
            self.accept();
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let conns = self.conns.iter().filter_map(|c| c.deadline);
        [
            self.kill_at,
            self.drain_until,
            self.resend.map(|(_, at)| at),
        ]
        .into_iter()
        .flatten()
        .chain(conns)
        .min()
    }

    fn timers(&mut self, now: Instant) {
        if let Some((signal, at)) = self.resend.filter(|(_, at)| *at <= now) {
            self.resend = None;
            if self.exit.is_none() && self.kill_at.is_some() {
                if sys::catches(self.pid, signal) {
                    // The handler is there now; the first signal went nowhere.
                    diag!(
                        "init {} set up its handler: sending signal {signal} again",
                        self.pid
                    );
                    if let Err(e) = sys::kill(self.pid, signal) {
                        diag!("stop: signal {signal} to {}: {e}", self.pid);
                    }
                } else {
                    self.resend = Some((signal, at + RESEND_CHECK));
                }
            }
        }
        if self.kill_at.is_some_and(|at| at <= now) {
            self.kill_at = None;
            if self.exit.is_none() {
                diag!("grace period over, killing init {}", self.pid);
                if let Err(e) = sys::kill(self.pid, libc::SIGKILL) {
                    diag!("SIGKILL {}: {e}", self.pid);
                }
            }
        }
        for i in (0..self.conns.len()).rev() {
            if self.conns[i].deadline.is_some_and(|at| at <= now) {
                let conn = self.conns.swap_remove(i);
                if let Phase::Waiting = conn.phase {
                    reply(conn.stream, &Response::State(self.state()));
                }
                // A connection still reading its request is dropped.
            }
        }
    }

    fn read_output(&mut self, i: usize) {
        let Shim {
            outputs, log, buf, ..
        } = self;
        let out = &mut outputs[i];
        match out.file.read(buf) {
            Ok(0) => {}
            Ok(n) => {
                log.chunk(out.stream, &mut out.lines, &buf[..n], SystemTime::now());
                let kind = match out.stream {
                    Stream::Stdout => CHUNK_STDOUT,
                    Stream::Stderr => CHUNK_STDERR,
                };
                let msg = chunk(kind, &buf[..n]);
                // An attacher that cannot take the output at once is dropped: the container's
                // output (and its log) must never wait for a slow client.
                self.conns.retain_mut(|c| match c.phase {
                    Phase::Attached { .. } => {
                        matches!(c.stream.write(&msg), Ok(w) if w == msg.len())
                    }
                    _ => true,
                });
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            // EIO is how a pty master reports that the last slave fd closed.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {}
            Err(e) => diag!("reading container {}: {e}", out.stream.name()),
        }
        log.eof(out.stream, &mut out.lines, SystemTime::now());
        outputs.swap_remove(i);
    }

    /// Input from an attacher: stdin for the container, a stdin close, or a terminal size.
    fn read_attached(&mut self, i: usize) {
        let mut tmp = [0u8; 16 * 1024];
        let n = match self.conns[i].stream.read(&mut tmp) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(_) => 0,
        };
        let mut chunks = Vec::new();
        let mut gone = n == 0;
        let mut had_stdin = false;
        if let Phase::Attached { buf, stdin } = &mut self.conns[i].phase {
            had_stdin = *stdin;
            buf.extend_from_slice(&tmp[..n]);
            loop {
                match take_chunk(buf) {
                    Ok(Some(c)) => chunks.push(c),
                    Ok(None) => break,
                    Err(_) => {
                        gone = true;
                        break;
                    }
                }
            }
        }
        for (kind, data) in chunks {
            match kind {
                CHUNK_STDIN if had_stdin => self.write_stdin(&data),
                CHUNK_STDIN_CLOSE if had_stdin && self.cfg.stdin_once => self.close_stdin(),
                CHUNK_RESIZE if data.len() == 4 => {
                    let (w, h) = (
                        u16::from_be_bytes([data[0], data[1]]),
                        u16::from_be_bytes([data[2], data[3]]),
                    );
                    self.resize(w, h);
                }
                _ => {}
            }
        }
        if gone {
            self.conns.swap_remove(i);
            if had_stdin && self.cfg.stdin_once {
                self.close_stdin();
            }
        }
    }

    /// The container's input: its stdin pipe, or the pty master of a tty container.
    fn stdin_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        if self.cfg.tty {
            self.outputs.first().map(|o| o.file.as_fd())
        } else {
            self.stdin.as_ref().map(|f| f.as_fd())
        }
    }

    fn write_stdin(&mut self, data: &[u8]) {
        let Some(fd) = self.stdin_fd() else { return };
        // Non-blocking: a container that does not read its stdin loses input rather than
        // stopping the shim.
        let _ = sys::set_nonblocking(fd);
        let mut off = 0;
        while off < data.len() {
            match nix::unistd::write(fd, &data[off..]) {
                Ok(n) => off += n,
                Err(Errno::EINTR) => {}
                Err(e) => {
                    diag!("stdin: {e}, {} bytes dropped", data.len() - off);
                    return;
                }
            }
        }
    }

    fn close_stdin(&mut self) {
        if !self.cfg.tty {
            self.stdin = None;
        }
    }

    fn resize(&self, width: u16, height: u16) {
        if !self.cfg.tty {
            return;
        }
        if let Some(o) = self.outputs.first() {
            let ws = libc::winsize {
                ws_row: height,
                ws_col: width,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
            unsafe {
                libc::ioctl(
                    std::os::fd::AsRawFd::as_raw_fd(&o.file),
                    libc::TIOCSWINSZ,
                    &ws,
                );
            }
        }
    }

    fn read_signals(&mut self) {
        loop {
            match self.signals.read_signal() {
                Ok(Some(info)) => {
                    let signo = info.ssi_signo as i32;
                    if signo == libc::SIGCHLD {
                        self.reap();
                    } else {
                        diag!("ignoring signal {signo}: the container's life is berthd's decision");
                    }
                }
                Ok(None) => return,
                Err(Errno::EINTR) => {}
                Err(e) => {
                    diag!("reading the signalfd: {e}");
                    return;
                }
            }
        }
    }

    /// Reaps every child: the container's init, and orphans re-parented to the shim as their
    /// subreaper (a pod sharing the host's PID namespace).
    fn reap(&mut self) {
        loop {
            let (pid, status, signal) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG))
            {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Some(code), None),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, None, Some(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    diag!("waitpid: {e}");
                    return;
                }
            };
            if pid.as_raw() == self.pid && self.exit.is_none() {
                self.exited(status, signal);
            }
        }
    }

    fn exited(&mut self, status: Option<i32>, signal: Option<i32>) {
        let exit = Exit {
            exit_code: exit_code_of(status, signal),
            signal,
            finished_at: now_nanos(),
            oom_killed: read_oom(self.cfg) > self.oom_baseline,
        };
        diag!(
            "container {} exited: code {}, signal {:?}",
            self.cfg.id,
            exit.exit_code,
            exit.signal
        );
        self.exit = Some(exit);
        self.status = Status::Exited;
        self.kill_at = None;
        self.resend = None;
        self.stdin = None;
        self.drain_until = Some(Instant::now() + DRAIN_LIMIT);
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.conns.len() >= MAX_CONNS {
                        diag!("too many connections, closing one");
                        continue;
                    }
                    if let Err(e) = stream.set_nonblocking(true) {
                        diag!("connection: {e}");
                        continue;
                    }
                    self.conns.push(Conn {
                        stream,
                        phase: Phase::Reading(Vec::new()),
                        deadline: Some(Instant::now() + REQUEST_TIMEOUT),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // ECONNABORTED and friends concern one client; EMFILE clears as others close.
                    diag!("accept: {e}");
                    return;
                }
            }
        }
    }

    fn read_conn(&mut self, i: usize) {
        if matches!(self.conns[i].phase, Phase::Attached { .. }) {
            self.read_attached(i);
            return;
        }
        let conn = &mut self.conns[i];
        let Phase::Reading(buf) = &mut conn.phase else {
            // A parked client sends nothing more: readable means it hung up (or broke the
            // protocol). Either way it no longer wants the answer.
            self.conns.swap_remove(i);
            return;
        };
        match read_request(&mut conn.stream, buf) {
            Ok(None) => {}
            Ok(Some(request)) => {
                let conn = self.conns.swap_remove(i);
                self.answer(conn.stream, request);
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    diag!("dropping a connection: {e}");
                }
                self.conns.swap_remove(i);
            }
        }
    }

    fn answer(&mut self, stream: UnixStream, request: Result<Request, String>) {
        let action = match request {
            Ok(request) => self.handle(request),
            Err(message) => Action::Reply(Response::Error { message }),
        };
        match action {
            Action::Reply(response) => reply(stream, &response),
            Action::Park(phase, deadline) => self.conns.push(Conn {
                stream,
                phase,
                deadline,
            }),
            Action::Attach { stdin } => {
                let mut stream = stream;
                let ok = stream
                    .set_nonblocking(false)
                    .and_then(|()| stream.set_write_timeout(Some(REPLY_TIMEOUT)))
                    .and_then(|()| write_frame(&mut stream, &Response::State(self.state())))
                    .and_then(|()| stream.set_nonblocking(true));
                if ok.is_ok() {
                    self.conns.push(Conn {
                        stream,
                        phase: Phase::Attached {
                            buf: Vec::new(),
                            stdin,
                        },
                        deadline: None,
                    });
                }
            }
        }
    }

    fn handle(&mut self, request: Request) -> Action {
        match request {
            Request::State => self.reply_state(),
            Request::Start => self.start(),
            Request::Signal { signal } => {
                if self.exit.is_some() {
                    return self.reply_state();
                }
                if !sys::valid_signal(signal) {
                    return error(format!("invalid signal {signal}"));
                }
                match sys::kill(self.pid, signal) {
                    Ok(()) => self.reply_state(),
                    Err(e) => error(format!("signal {signal} to {}: {e}", self.pid)),
                }
            }
            Request::Stop { signal, timeout_ms } => {
                if self.done {
                    return self.reply_state();
                }
                if self.exit.is_none() {
                    if !sys::valid_signal(signal) {
                        return error(format!("invalid signal {signal}"));
                    }
                    // A created container's init (runc init) dies of the signal too, or of the
                    // SIGKILL after the grace period.
                    //
                    // The kernel drops a signal sent to the PID 1 of a namespace that has no
                    // handler for it. A process stopped right after it started may not have
                    // set its handler up yet (kubelet and critest stop containers a few ms
                    // after StartContainer returns): the signal is sent again once the handler
                    // shows, and only then, so a process that had it all along gets it once.
                    let caught = sys::catches(self.pid, signal);
                    if let Err(e) = sys::kill(self.pid, signal) {
                        diag!("stop: signal {signal} to {}: {e}", self.pid);
                    }
                    if !caught {
                        self.resend = Some((signal, Instant::now() + RESEND_CHECK));
                    }
                    let at = Instant::now() + Duration::from_millis(timeout_ms);
                    self.kill_at = Some(self.kill_at.map_or(at, |k| k.min(at)));
                }
                Action::Park(Phase::UntilExit, None)
            }
            Request::Wait { timeout_ms } => {
                if self.done || timeout_ms == 0 {
                    return self.reply_state();
                }
                if self.exit.is_some() {
                    // Exited, output still draining: answer once the exit file is written.
                    return Action::Park(Phase::UntilExit, None);
                }
                let at = Instant::now() + Duration::from_millis(timeout_ms);
                Action::Park(Phase::Waiting, Some(at))
            }
            Request::Attach { stdin } => {
                if self.exit.is_some() {
                    return self.reply_state();
                }
                Action::Attach { stdin }
            }
            Request::ReopenLog => match self.log.reopen() {
                Ok(()) => self.reply_state(),
                Err(e) => error(format!("reopening the container log: {e}")),
            },
        }
    }

    fn start(&mut self) -> Action {
        if self.exit.is_some() {
            return error("the container has exited".to_string());
        }
        if self.status != Status::Created {
            return error("the container is already started".to_string());
        }
        match self.runc.start() {
            Ok(()) => {
                self.status = Status::Running;
                self.started_at = now_nanos();
                self.reply_state()
            }
            Err(message) => error(message),
        }
    }

    fn state(&self) -> State {
        State {
            pid: self.pid,
            status: self.status,
            started_at: self.started_at,
            exit: self.exit.clone(),
        }
    }

    fn reply_state(&self) -> Action {
        Action::Reply(Response::State(self.state()))
    }

    /// The container has exited and the output is drained (or given up on): record the exit,
    /// answer everyone, remove the sockets.
    fn finish(&mut self) {
        let now = SystemTime::now();
        for mut out in self.outputs.drain(..) {
            self.log.eof(out.stream, &mut out.lines, now);
        }
        let mut exit = self.exit.clone().unwrap_or(Exit {
            exit_code: 255,
            signal: None,
            finished_at: now_nanos(),
            oom_killed: false,
        });
        // Again after the drain (the kill may be counted late) and before delete removes the
        // cgroup.
        exit.oom_killed |= read_oom(self.cfg) > self.oom_baseline;
        if let Err(e) = self.runc.delete() {
            diag!("deleting container {}: {e}", self.cfg.id);
        }
        if let Err(e) = write_exit_file(&self.cfg.exit_file, &exit) {
            diag!("writing exit file {}: {e}", self.cfg.exit_file.display());
        }
        self.exit = Some(exit);
        self.done = true;
        // Unlinked before the last accept: a client that finds the path connects before it
        // and is in the backlog; one that comes later gets ENOENT and reads the exit file.
        sys::remove_quietly(&self.cfg.socket);
        self.accept();
        for conn in std::mem::take(&mut self.conns) {
            match conn.phase {
                Phase::Reading(mut buf) => {
                    let mut stream = conn.stream;
                    let request = stream
                        .set_nonblocking(false)
                        .and_then(|()| stream.set_read_timeout(Some(FINAL_READ_TIMEOUT)))
                        // Blocking now: "would block" means the read timeout passed.
                        .and_then(|()| {
                            read_request(&mut stream, &mut buf)?
                                .ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))
                        });
                    if let Ok(request) = request {
                        self.answer(stream, request);
                    }
                }
                Phase::UntilExit | Phase::Waiting => {
                    reply(conn.stream, &Response::State(self.state()));
                }
                // The container is gone: its attachers see the connection close.
                Phase::Attached { .. } => {}
            }
        }
        // Anything `answer` parked (it parks nothing once done, but be sure) is answered too.
        for conn in std::mem::take(&mut self.conns) {
            reply(conn.stream, &Response::State(self.state()));
        }
        sys::remove_quietly(&self.cfg.console_socket);
        diag!("container {} done", self.cfg.id);
    }
}

fn error(message: String) -> Action {
    Action::Reply(Response::Error { message })
}

/// Reads what is there; `Some` once a whole frame is in `buf`, decoded (or the reason it
/// could not be). EOF before that is an `UnexpectedEof` error.
fn read_request(
    stream: &mut UnixStream,
    buf: &mut Vec<u8>,
) -> io::Result<Option<Result<Request, String>>> {
    let mut chunk = [0u8; 512];
    loop {
        if let Some(frame) = frame(buf)? {
            return Ok(Some(decode(frame)));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The body of the frame in `buf` once it is complete (4-byte big-endian length, then JSON).
fn frame(buf: &[u8]) -> io::Result<Option<&[u8]>> {
    let Some(len) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > MAX_REQUEST {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("request of {len} bytes"),
        ));
    }
    Ok(buf.get(4..4 + len))
}

#[derive(Deserialize)]
struct Version {
    protocol: u32,
}

/// The request, once its protocol version is known to be ours: a newer berthd's request may
/// not parse as any of ours, and should hear about the version, not a parse error.
fn decode(body: &[u8]) -> Result<Request, String> {
    let version: Version =
        serde_json::from_slice(body).map_err(|e| format!("malformed request: {e}"))?;
    if version.protocol != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} is not supported (this shim speaks {PROTOCOL_VERSION})",
            version.protocol
        ));
    }
    serde_json::from_slice::<Envelope>(body)
        .map(|e| e.request)
        .map_err(|e| format!("malformed request: {e}"))
}

/// Writes the response; a client that is gone or does not read is simply dropped.
fn reply(mut stream: UnixStream, response: &Response) {
    let _ = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_write_timeout(Some(REPLY_TIMEOUT)))
        .and_then(|()| write_frame(&mut stream, response));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_decode_and_foreign_versions_are_named() {
        assert_eq!(
            decode(br#"{"protocol":1,"op":"stop","signal":15,"timeout_ms":10}"#),
            Ok(Request::Stop {
                signal: 15,
                timeout_ms: 10
            })
        );
        let err = decode(br#"{"protocol":2,"op":"teleport"}"#).unwrap_err();
        assert!(err.contains("protocol version 2"), "{err}");
        let err = decode(br#"{"protocol":1,"op":"teleport"}"#).unwrap_err();
        assert!(err.starts_with("malformed request"), "{err}");
        assert!(decode(b"\xff").is_err());
    }

    #[test]
    fn frames_are_complete_only_with_their_whole_body() {
        let mut buf = Vec::new();
        write_frame(
            &mut buf,
            &Envelope {
                protocol: PROTOCOL_VERSION,
                request: Request::State,
            },
        )
        .unwrap();
        for cut in 0..buf.len() {
            assert_eq!(frame(&buf[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(frame(&buf).unwrap(), Some(&buf[4..]));
        let huge = ((MAX_REQUEST + 1) as u32).to_be_bytes();
        assert!(frame(&huge).is_err());
    }

    #[test]
    fn a_request_arriving_in_pieces_is_read_whole() {
        let (mut client, mut server) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut frame = Vec::new();
        write_frame(
            &mut frame,
            &Envelope {
                protocol: PROTOCOL_VERSION,
                request: Request::Wait { timeout_ms: 5 },
            },
        )
        .unwrap();
        let mut buf = Vec::new();
        use std::io::Write;
        client.write_all(&frame[..3]).unwrap();
        assert_eq!(read_request(&mut server, &mut buf).unwrap(), None);
        client.write_all(&frame[3..]).unwrap();
        assert_eq!(
            read_request(&mut server, &mut buf).unwrap(),
            Some(Ok(Request::Wait { timeout_ms: 5 }))
        );
        drop(client);
        let mut buf = Vec::new();
        let err = read_request(&mut server, &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
