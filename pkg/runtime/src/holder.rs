//! The PID-namespace holder of a pod whose containers share one PID namespace: `berth-shim
//! pause` running as PID 1 of a new PID namespace, inside the pod's pinned net/ipc/uts
//! namespaces and cgroup. It is not a child of berthd (a double fork re-parents it to the
//! host's init, so berthd can restart while the pod lives; if berthd ever becomes a child
//! subreaper it inherits the holder and must reap it). Its PID namespace is additionally pinned
//! at `<ns dir>/pid` for runc to join.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_sys::mount::LinuxMounter;
use berth_sys::ns::{self, NsKind, PinnedNamespaces};
use serde::{Deserialize, Serialize};

use crate::{cgroup, Error, Result};

/// A running holder. Persist it with the pod: `pid` is its host PID, `pidns` the pinned PID
/// namespace (also the identity check against PID reuse after a berthd restart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: i32,
    pub pidns: PathBuf,
}

/// How long a holder gets after SIGKILL before we call it stuck.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How often SIGTERM is repeated while waiting (see `stop_holder`).
const TERM_RESEND: Duration = Duration::from_millis(50);

/// Starts `shim_bin pause` as PID 1 of a new PID namespace, joined to the pod's pinned
/// namespaces in `pinned` and (if given) to the cgroup `cgroup` in every hierarchy, in its own
/// session with stdio on /dev/null. Pins its PID namespace at `ns_dir/pid`.
pub fn spawn_holder(
    shim_bin: &Path,
    ns_dir: &Path,
    pinned: &PinnedNamespaces,
    cgroup: Option<&str>,
) -> Result<Holder> {
    // Everything the forked child needs is opened here: between fork and exec only
    // async-signal-safe calls are allowed, so no allocation and no path lookups beyond this point.
    let mut ns_files = Vec::new();
    for kind in [NsKind::Net, NsKind::Ipc, NsKind::Uts] {
        if let Some(p) = pinned.get(kind) {
            let f = File::open(p).map_err(|e| Error::io("open", p, e))?;
            ns_files.push((f, kind.clone_flag().bits()));
        }
    }
    let mut cg_files = Vec::new();
    if let Some(cg) = cgroup {
        for p in cgroup::cgroup_procs_files(cg)? {
            let f = OpenOptions::new()
                .write(true)
                .open(&p)
                .map_err(|e| Error::io("open", &p, e))?;
            cg_files.push(f);
        }
    }
    let (pid_r, pid_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::Holder {
            reason: format!("pipe: {e}"),
        })?;

    let ns_raw: Vec<(RawFd, libc::c_int)> = ns_files
        .iter()
        .map(|(f, flag)| (f.as_raw_fd(), *flag))
        .collect();
    let cg_raw: Vec<RawFd> = cg_files.iter().map(|f| f.as_raw_fd()).collect();
    let w = pid_w.as_raw_fd();

    let mut cmd = Command::new(shim_bin);
    cmd.arg("pause")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/");
    // SAFETY: the closure runs in the forked child of a possibly multi-threaded process, so it
    // only makes raw syscalls (setns, setsid, write, unshare, fork, _exit) on file descriptors
    // opened above, reads the two Vecs without allocating, and builds errors with
    // last_os_error (no allocation).
    unsafe {
        cmd.pre_exec(move || {
            for &(fd, flag) in &ns_raw {
                if libc::setns(fd, flag) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Joined before the fork so the holder inherits the cgroup; "0" means "the writer".
            for &fd in &cg_raw {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Own session: a signal to berthd's process group or a closing terminal must not
            // reach the pod.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // CLONE_NEWPID applies to the caller's future children only, hence the fork: the
            // grandchild is PID 1 of the new namespace.
            if libc::unshare(libc::CLONE_NEWPID) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            match libc::fork() {
                -1 => Err(std::io::Error::last_os_error()),
                0 => Ok(()), // the holder: go on to exec
                pid => {
                    // The intermediate: report the holder's host PID and leave, so the holder is
                    // re-parented away from berthd. std sees the exec result through its own
                    // CLOEXEC pipe, which the holder still holds until it execs.
                    let bytes = pid.to_ne_bytes();
                    let ok =
                        libc::write(w, bytes.as_ptr().cast(), bytes.len()) == bytes.len() as isize;
                    if !ok {
                        // Nobody would ever learn this PID: do not leave an orphan holder.
                        libc::kill(pid, libc::SIGKILL);
                    }
                    libc::_exit(if ok { 0 } else { 1 })
                }
            }
        });
    }
    let mut child = cmd.spawn().map_err(|e| Error::io("spawn", shim_bin, e))?;
    drop(pid_w);
    // The intermediate exits right after the fork; reaping it is quick.
    let status = child
        .wait()
        .map_err(|e| Error::io("wait for", shim_bin, e))?;
    let mut buf = [0u8; 4];
    let read = File::from(pid_r).read_exact(&mut buf);
    if !status.success() || read.is_err() {
        return Err(Error::Holder {
            reason: format!("intermediate process failed ({status})"),
        });
    }
    let pid = i32::from_ne_bytes(buf);

    let pidns = ns_dir.join(NsKind::Pid.name());
    let src = PathBuf::from(format!("/proc/{pid}/ns/pid"));
    if let Err(e) = ns::pin_existing(&LinuxMounter, &src, &pidns) {
        // SAFETY: kill(2) with a PID we just created and nobody else has reaped (its parent is
        // init); at worst it fails with ESRCH.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        return Err(e.into());
    }
    Ok(Holder { pid, pidns })
}

/// Whether `holder.pid` is still the holder: the process exists and lives in the pinned PID
/// namespace (a recycled PID after a berthd restart does not).
pub fn is_holder_alive(holder: &Holder) -> bool {
    let proc_ns = PathBuf::from(format!("/proc/{}/ns/pid", holder.pid));
    match (ns::ns_id(&proc_ns), ns::ns_id(&holder.pidns)) {
        (Ok(a), Ok(b)) => a == b && !is_zombie(holder.pid),
        _ => false,
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
        })
        .is_none_or(|state| state == 'Z' || state == 'X')
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a PID and flags and returns a new fd or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn pidfd_signal(fd: &OwnedFd, sig: libc::c_int) -> std::io::Result<()> {
    // SAFETY: a valid pidfd, a signal number, no siginfo (NULL is allowed) and flags 0.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until the process behind `fd` has exited (a pidfd polls readable then).
fn pidfd_wait(fd: &OwnedFd, timeout: Duration) -> std::io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    loop {
        // SAFETY: one valid pollfd that lives across the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r >= 0 {
            return Ok(r > 0);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Sends `sig` and waits up to `wait` for the exit. `Ok(true)` once the holder is gone.
fn signal_and_wait(
    holder: &Holder,
    fd: &OwnedFd,
    sig: libc::c_int,
    wait: Duration,
) -> Result<bool> {
    let proc_path = || PathBuf::from(format!("/proc/{}", holder.pid));
    match pidfd_signal(fd, sig) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(true),
        Err(e) => return Err(Error::io("signal", proc_path(), e)),
    }
    pidfd_wait(fd, wait).map_err(|e| Error::io("poll pidfd of", proc_path(), e))
}

/// Stops a holder: SIGTERM, up to `timeout` for it to exit, then SIGKILL. Signals go through a
/// pidfd, so a PID recycled meanwhile is never hit. A holder that is already gone (or whose PID
/// now belongs to another process) is success. The pinned PID namespace stays until the pod's
/// namespaces are unpinned.
pub fn stop_holder(holder: &Holder, timeout: Duration) -> Result<()> {
    let fd = match pidfd_open(holder.pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(()),
        Err(e) => return Err(Error::io("pidfd_open", format!("/proc/{}", holder.pid), e)),
    };
    // Checked after pidfd_open: if the PID is ours now, the pidfd pins that very process.
    if !is_holder_alive(holder) {
        return Ok(());
    }
    // SIGTERM is repeated: until the holder has blocked it (right after exec), the kernel drops
    // SIGTERM sent to a PID 1 without a handler, so a stop racing a fresh spawn would otherwise
    // always wait for the full timeout.
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let now = std::time::Instant::now();
        if now >= deadline {
            break;
        }
        if signal_and_wait(
            holder,
            &fd,
            libc::SIGTERM,
            (deadline - now).min(TERM_RESEND),
        )? {
            return Ok(());
        }
    }
    tracing::warn!(pid = holder.pid, "holder ignored SIGTERM, sending SIGKILL");
    if signal_and_wait(holder, &fd, libc::SIGKILL, KILL_GRACE)? {
        return Ok(());
    }
    Err(Error::HolderStuck { pid: holder.pid })
}

/// Holder processes as a trait, for an `Arc<dyn HolderManager>` in the CRI layer and
/// [`FakeHolders`] in its tests.
pub trait HolderManager: Send + Sync {
    fn spawn(
        &self,
        ns_dir: &Path,
        pinned: &PinnedNamespaces,
        cgroup: Option<&str>,
    ) -> Result<Holder>;
    fn stop(&self, holder: &Holder, timeout: Duration) -> Result<()>;
    fn is_alive(&self, holder: &Holder) -> bool;
}

/// The real thing: `shim_bin pause` per pod.
#[derive(Debug, Clone)]
pub struct ShimHolders {
    pub shim_bin: PathBuf,
}

impl HolderManager for ShimHolders {
    fn spawn(
        &self,
        ns_dir: &Path,
        pinned: &PinnedNamespaces,
        cgroup: Option<&str>,
    ) -> Result<Holder> {
        spawn_holder(&self.shim_bin, ns_dir, pinned, cgroup)
    }

    fn stop(&self, holder: &Holder, timeout: Duration) -> Result<()> {
        stop_holder(holder, timeout)
    }

    fn is_alive(&self, holder: &Holder) -> bool {
        is_holder_alive(holder)
    }
}

/// A fake that hands out increasing PIDs, remembers which are "running" and can fail spawns.
#[derive(Debug, Default)]
pub struct FakeHolders {
    pub running: std::sync::Mutex<std::collections::BTreeSet<i32>>,
    pub next_pid: std::sync::atomic::AtomicI32,
    pub fail_spawn: std::sync::atomic::AtomicBool,
}

impl HolderManager for FakeHolders {
    fn spawn(
        &self,
        ns_dir: &Path,
        _pinned: &PinnedNamespaces,
        _cgroup: Option<&str>,
    ) -> Result<Holder> {
        use std::sync::atomic::Ordering;
        if self.fail_spawn.load(Ordering::SeqCst) {
            return Err(Error::Holder {
                reason: "injected failure".into(),
            });
        }
        let pid = 1000 + self.next_pid.fetch_add(1, Ordering::SeqCst);
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pid);
        Ok(Holder {
            pid,
            pidns: ns_dir.join(NsKind::Pid.name()),
        })
    }

    fn stop(&self, holder: &Holder, _timeout: Duration) -> Result<()> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&holder.pid);
        Ok(())
    }

    fn is_alive(&self, holder: &Holder) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&holder.pid)
    }
}

#[cfg(test)]
mod tests;
