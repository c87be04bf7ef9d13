//! `exec <pid file> <runtime> <args…>`: runs `<runtime> <args…>` — berthd's `runc exec
//! --detach --pid-file <pid file> …` — on this process's stdio, waits for the process it
//! started, and exits as that process did (its code, or 128 + the signal that ended it; 255
//! when no process started: the runtime's log says why).
//!
//! In the foreground `runc exec` copies the process's pipes itself and exits only once every
//! holder has closed them, so a child left in the background (`sh -c 'daemon &'`) would hold
//! the session open for its whole life. Detached, the pipes are the process's own, and this
//! helper, a child subreaper, inherits the process when runc exits: the session ends with the
//! process, and berthd drains what is left for a moment only.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{dup2, Pid};

pub(crate) fn exec(pid_file: &Path, runtime: OsString, args: Vec<OsString>) -> i32 {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        diag!("becoming a child subreaper: {e}");
        return 255;
    }
    let mut runtime_cmd = std::process::Command::new(&runtime);
    runtime_cmd.args(&args);
    // Killed with this helper (the session ended while it was starting the process): runc
    // then takes its half-started `runc init` along.
    // SAFETY: the closure runs between fork and exec and makes one prctl(2) call, which is
    // async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt as _;
        runtime_cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let started = runtime_cmd.status();
    // From here the process (and what it starts) alone holds the session's pipes.
    release_stdio();
    match started {
        Ok(s) if s.success() => {}
        Ok(_) => return 255,
        Err(e) => {
            diag!("running {}: {e}", runtime.to_string_lossy());
            return 255;
        }
    }
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
        .filter(|p| *p > 0)
    else {
        return 255;
    };
    wait_for(Pid::from_raw(pid))
}

/// Reaps whatever is re-parented here until `pid` itself ends.
fn wait_for(pid: Pid) -> i32 {
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(p, code)) if p == pid => return code,
            Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => return 128 + sig as i32,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                diag!("waiting for process {pid}: {e}");
                return 255;
            }
        }
    }
}

fn release_stdio() {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    for fd in 0..3 {
        let _ = dup2(null.as_raw_fd(), fd);
    }
}
