//! The few kernel calls the shim needs beyond what std and nix wrap for it.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::stat::{umask, Mode};

/// Unix nanoseconds, the unit of every timestamp in the protocol.
pub(crate) fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Binds a listening unix socket only its owner may connect to. A stale file from an earlier
/// shim is removed first. The umask (not a chmod after bind) makes the socket 0600 from the
/// moment it exists; it is restored at once because runc and the container inherit it.
pub(crate) fn bind_private(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    umask(old);
    let listener = bound?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Removes a file the shim created, ignoring one that is already gone.
pub(crate) fn remove_quietly(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            diag!("removing {}: {e}", path.display());
        }
    }
}

pub(crate) fn set_nonblocking(fd: impl AsFd) -> io::Result<()> {
    let raw = fd.as_fd().as_raw_fd();
    let flags = OFlag::from_bits_truncate(fcntl(raw, FcntlArg::F_GETFL)?);
    fcntl(raw, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// kill(2) with any signal number: nix's `Signal` has no real-time signals, which a container's
/// StopSignal may name (e.g. `SIGRTMIN+3` for systemd).
pub(crate) fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether process `pid` has a handler installed for `signal` (its `SigCgt` mask in
/// /proc/<pid>/status). Unknown (unreadable) counts as caught, so nothing is sent twice.
pub(crate) fn catches(pid: i32, signal: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    caught_in(&status, signal)
}

fn caught_in(status: &str, signal: i32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_none_or(|mask| (1..=64).contains(&signal) && mask & (1u64 << (signal - 1)) != 0)
}

/// A signal number kill(2) accepts (0, the existence probe, is not a signal to send).
pub(crate) fn valid_signal(signal: i32) -> bool {
    (1..=libc::SIGRTMAX()).contains(&signal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caught_signals_come_from_the_sigcgt_mask() {
        // busybox top: SIGINT, SIGTERM and a few more.
        let status = "Name:\ttop\nSigIgn:\t0000000000000000\nSigCgt:\t0000000000004002\n";
        assert!(caught_in(status, libc::SIGTERM));
        assert!(caught_in(status, libc::SIGINT));
        assert!(!caught_in(status, libc::SIGUSR1));
        assert!(!caught_in("SigCgt:\t0000000000000000\n", libc::SIGTERM));
        // Unreadable: assume caught.
        assert!(caught_in("", libc::SIGTERM));
    }
}
