//! `berth-shim run <shim.json>`: create one container and watch it until it exits.
//!
//! berthd spawns the shim with stdin on /dev/null, stdout on a pipe it reads one [`Ready`] line
//! from, and stderr on the shim's log file. The shim detaches at once (berthd reaps the first
//! process; the container's monitor is not berthd's child and survives its restarts), creates
//! the container, reports, and then serves requests until the container has exited and its
//! exit file is written (`server.rs`).

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::Context;
use berth_shim_proto::{parse_oom_kill_count, Ready, ShimConfig, PROTOCOL_VERSION};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::{chdir, dup2, fork, setsid, ForkResult};

use crate::console::{ConsoleSocket, Pipes};
use crate::log::CriLog;
use crate::runc::Runc;
use crate::server::{self, Created};
use crate::sys;

/// Runs the shim; the return value is the process's exit code.
pub(crate) fn run(config: &Path) -> i32 {
    let cfg = match load(config) {
        Ok(cfg) => cfg,
        Err(e) => {
            let message = format!("{e:#}");
            diag!("{message}");
            ready(&Ready::Failed { message });
            return 1;
        }
    };
    let signals = match detach() {
        Ok(s) => s,
        Err(e) => {
            let message = format!("detaching: {e:#}");
            diag!("{message}");
            ready(&Ready::Failed { message });
            return 1;
        }
    };
    match create(&cfg, signals) {
        Ok(created) => {
            diag!("container {} created, init pid {}", cfg.id, created.pid);
            ready(&Ready::Ok {
                pid: created.pid,
                shim_pid: std::process::id() as i32,
            });
            // berthd sees EOF after the line, and a berthd that died cannot hurt us with EPIPE.
            stdout_to_null();
            server::serve(&cfg, created);
            0
        }
        Err(message) => {
            diag!("creating container {}: {message}", cfg.id);
            ready(&Ready::Failed { message });
            1
        }
    }
}

fn load(path: &Path) -> anyhow::Result<ShimConfig> {
    #[derive(serde::Deserialize)]
    struct Version {
        protocol: u32,
    }
    let data =
        std::fs::read(path).with_context(|| format!("reading shim config {}", path.display()))?;
    // The version first: another protocol's config need not parse as ours.
    let version: Version = serde_json::from_slice(&data)
        .with_context(|| format!("parsing shim config {}", path.display()))?;
    if version.protocol != PROTOCOL_VERSION {
        anyhow::bail!(
            "shim config {} speaks protocol {}, this shim speaks {PROTOCOL_VERSION}",
            path.display(),
            version.protocol
        );
    }
    serde_json::from_slice(&data).with_context(|| format!("parsing shim config {}", path.display()))
}

/// The signals the event loop reads from a signalfd: SIGCHLD to reap, and the ones that would
/// otherwise end the shim (its life ends with the container's, which is berthd's decision).
/// Blocking, not SIG_IGN, for SIGHUP: an ignored disposition would be inherited by runc and the
/// container, while std's `Command` resets the signal mask of every child. SIGPIPE is already
/// ignored by the Rust runtime (and reset in children), so writes to a gone peer give EPIPE.
fn shim_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    set
}

/// Leaves berthd's process tree: fork, the parent exits at once, the child becomes a session
/// leader (no controlling terminal, not in berthd's process group) and the subreaper of the
/// container, whose init is re-parented to it when `runc create` exits.
fn detach() -> anyhow::Result<SignalFd> {
    // SAFETY: the shim has not started a thread, so the child is a complete copy of a
    // single-threaded process and may run any code, not only async-signal-safe calls.
    match unsafe { fork() }.context("fork")? {
        // SAFETY: _exit(2) ends the process without running anything of ours.
        ForkResult::Parent { .. } => unsafe { libc::_exit(0) },
        ForkResult::Child => {}
    }
    let signals = shim_signals();
    // Before anything can exit: a blocked SIGCHLD stays pending for the signalfd.
    signals.thread_block().context("blocking signals")?;
    setsid().context("setsid")?;
    nix::sys::prctl::set_child_subreaper(true).context("becoming a child subreaper")?;
    chdir("/").context("chdir /")?;
    SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("creating a signalfd")
}

/// Everything up to a created container, or a message for [`Ready::Failed`] with nothing left
/// behind.
fn create(cfg: &ShimConfig, signals: SignalFd) -> Result<Created, String> {
    let runc = Runc::new(cfg);
    // Before the runtime is involved, so a bad log path costs nothing to undo.
    let log = CriLog::open(cfg.log_path.as_deref()).map_err(|e| {
        let path = cfg.log_path.as_deref().unwrap_or(Path::new("")).display();
        format!("opening container log {path}: {e}")
    })?;
    if runc.state_exists() {
        // Never `delete --force` a container this shim did not create.
        return Err(format!(
            "container {} already exists in {}",
            cfg.id,
            cfg.runtime_root.display()
        ));
    }
    let undo = Undo { cfg, runc: &runc };
    let io = if cfg.tty {
        let console = ConsoleSocket::bind(&cfg.console_socket).map_err(|e| undo.fail(e))?;
        let null = || std::process::Stdio::null();
        runc.create([null(), null(), null()], Some(&cfg.console_socket))
            .map_err(|e| undo.fail_msg(e))?;
        let io = console.receive_master().map_err(|e| undo.fail(e))?;
        sys::remove_quietly(&cfg.console_socket);
        io
    } else {
        let (stdio, pipes) = Pipes::new(cfg.stdin).map_err(|e| undo.fail(e))?;
        runc.create(stdio, None).map_err(|e| undo.fail_msg(e))?;
        pipes.into_io()
    };
    let pid = read_pid(&cfg.pid_file).map_err(|e| undo.fail(e))?;
    let oom_baseline = read_oom(cfg);
    let listener = sys::bind_private(&cfg.socket)
        .with_context(|| format!("binding control socket {}", cfg.socket.display()))
        .map_err(|e| undo.fail(e))?;
    Ok(Created {
        pid,
        io,
        listener,
        log,
        oom_baseline,
        signals,
    })
}

/// Undoes a half-done create: the runtime's container (and with it runc init) and the sockets.
struct Undo<'a> {
    cfg: &'a ShimConfig,
    runc: &'a Runc<'a>,
}

impl Undo<'_> {
    fn fail(&self, e: anyhow::Error) -> String {
        self.fail_msg(format!("{e:#}"))
    }

    fn fail_msg(&self, message: String) -> String {
        if let Err(e) = self.runc.delete() {
            // Expected when create failed early: there is nothing to delete.
            diag!("cleaning up after a failed create: {e}");
        }
        sys::remove_quietly(&self.cfg.console_socket);
        sys::remove_quietly(&self.cfg.socket);
        message
    }
}

fn read_pid(path: &Path) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading pid file {}", path.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("pid file {} holds {text:?}", path.display()))?;
    if pid <= 0 {
        anyhow::bail!("pid file {} holds {pid}", path.display());
    }
    Ok(pid)
}

/// The cgroup's OOM kill count, 0 when there is no file to read (no memory controller).
pub(crate) fn read_oom(cfg: &ShimConfig) -> u64 {
    let Some(path) = &cfg.oom_file else {
        return 0;
    };
    match std::fs::read_to_string(path) {
        Ok(text) => parse_oom_kill_count(&text),
        Err(e) => {
            diag!("reading {}: {e}", path.display());
            0
        }
    }
}

fn ready(line: &Ready) {
    let mut text = serde_json::to_string(line).unwrap_or_else(|_| {
        r#"{"ready":"failed","message":"encoding the ready line"}"#.to_string()
    });
    text.push('\n');
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        diag!("writing the ready line: {e}");
    }
}

fn stdout_to_null() {
    let null = match std::fs::OpenOptions::new().write(true).open("/dev/null") {
        Ok(f) => f,
        Err(e) => {
            diag!("opening /dev/null: {e}");
            return;
        }
    };
    if let Err(e) = dup2(null.as_raw_fd(), 1) {
        diag!("pointing stdout at /dev/null: {e}");
    }
}
