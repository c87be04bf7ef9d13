//! The runc-compatible OCI runtime binary as berthd drives it directly: `exec` for ExecSync,
//! `delete --force` and `state` for cleanup and recovery. Creating, starting and signalling a
//! container's init is the shim's job (it is init's parent).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A runtime handler: a RuntimeClass handler name mapped to a runc-compatible binary and the
/// state directory it keeps (`--root`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handler {
    pub name: String,
    pub path: PathBuf,
    pub root: PathBuf,
}

/// What ExecSync returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
    /// The deadline passed and the process tree was killed.
    pub timed_out: bool,
}

/// `runc state` as far as berth reads it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RuncState {
    pub status: String,
    pub pid: i32,
}

/// How long `runc exec` gets to go away after its process tree was killed at the deadline.
const EXEC_KILL_GRACE: Duration = Duration::from_secs(5);

impl Handler {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.arg("--root").arg(&self.root);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Whether the runtime still keeps state for `id` (its `<root>/<id>` directory, which runc
    /// creates first and removes last).
    pub fn knows(&self, id: &str) -> bool {
        !id.is_empty() && !id.contains('/') && self.root.join(id).exists()
    }

    /// `runc delete --force`: kills what is left and removes the runtime's state and cgroup.
    /// A container the runtime does not know is already deleted.
    pub fn delete_force(&self, id: &str) -> Result<()> {
        let out = self
            .command()
            .args(["delete", "--force", id])
            .stdout(Stdio::null())
            .output()
            .map_err(|e| Error::io("run", &self.path, e))?;
        if out.status.success() {
            return Ok(());
        }
        let msg = String::from_utf8_lossy(&out.stderr);
        if msg.contains("does not exist") || msg.contains("not found") {
            return Ok(());
        }
        Err(Error::Runtime {
            op: "delete",
            id: id.to_string(),
            message: msg.trim().to_string(),
        })
    }

    /// `runc state`; `Ok(None)` when the runtime does not know the container.
    /// `runc update --resources -`: applies `resources` (an OCI `linux.resources` object) to
    /// a created or running container's cgroup.
    pub fn update(&self, id: &str, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        use std::io::Write;
        let json = serde_json::to_vec(resources).map_err(|e| Error::Runtime {
            op: "update",
            id: id.to_string(),
            message: format!("encoding resources: {e}"),
        })?;
        let mut child = self
            .command()
            .args(["update", "--resources", "-", id])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io("run", &self.path, e))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(&json)
                .map_err(|e| Error::io("write resources to", &self.path, e))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io("wait for", &self.path, e))?;
        if out.status.success() {
            return Ok(());
        }
        Err(Error::Runtime {
            op: "update",
            id: id.to_string(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    pub fn state(&self, id: &str) -> Result<Option<RuncState>> {
        let out = self
            .command()
            .args(["state", id])
            .output()
            .map_err(|e| Error::io("run", &self.path, e))?;
        if !out.status.success() {
            return Ok(None);
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|e| Error::Runtime {
                op: "state",
                id: id.to_string(),
                message: format!("unreadable state: {e}"),
            })
    }

    /// Runs a process in the running container `id` (`runc exec --process`), collecting at
    /// most `cap` bytes of each output stream (the rest is read and dropped so the process is
    /// never blocked on a full pipe). At `timeout` the process and every process it started are
    /// killed and the call returns at once with `timed_out`.
    pub fn exec_sync(
        &self,
        id: &str,
        process: &serde_json::Value,
        scratch: &Path,
        timeout: Option<Duration>,
        cap: usize,
    ) -> Result<ExecOutput> {
        let tag = format!("{:016x}", rand_u64());
        let process_file = scratch.join(format!("exec-{tag}.json"));
        let pid_file = scratch.join(format!("exec-{tag}.pid"));
        let log_file = scratch.join(format!("exec-{tag}.log"));
        let _cleanup = RemoveOnDrop(vec![
            process_file.clone(),
            pid_file.clone(),
            log_file.clone(),
        ]);
        let data = serde_json::to_vec(process).map_err(|e| Error::Runtime {
            op: "exec",
            id: id.to_string(),
            message: format!("process spec: {e}"),
        })?;
        std::fs::write(&process_file, data).map_err(|e| Error::io("write", &process_file, e))?;

        let deadline = timeout.map(|t| Instant::now() + t);
        let mut cmd = Command::new(&self.path);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&log_file)
            .arg("--log-format")
            .arg("json")
            .arg("exec")
            .arg("--process")
            .arg(&process_file)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs between fork and exec and makes only raw rt_sigaction
        // syscalls, which are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                berth_sys::process::reset_ignored_signals();
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| Error::io("run", &self.path, e))?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Runtime {
                op: "exec",
                id: id.to_string(),
                message: "no output pipes".into(),
            });
        };
        let mut out = ExecOutput::default();
        let timed_out = collect(stdout, stderr, &mut out, cap, deadline);
        if timed_out {
            out.timed_out = true;
            if let Some(pid) = read_pid(&pid_file) {
                kill_tree(pid);
            }
            let grace = Instant::now() + EXEC_KILL_GRACE;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < grace => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
            out.exit_code = -1;
            return Ok(out);
        }
        let status = child
            .wait()
            .map_err(|e| Error::io("wait for", &self.path, e))?;
        // runc reports the process's own status (128 + signal when it was killed); a process
        // that never started leaves no pid file and an error in runc's log.
        if read_pid(&pid_file).is_none() {
            return Err(Error::Runtime {
                op: "exec",
                id: id.to_string(),
                message: last_runtime_error(&log_file)
                    .unwrap_or_else(|| format!("runc exec failed ({status})")),
            });
        }
        out.exit_code = status.code().unwrap_or(255);
        Ok(out)
    }
}

/// Reads both streams until both are closed or `deadline` passes (then returns true).
fn collect(
    stdout: std::process::ChildStdout,
    stderr: std::process::ChildStderr,
    out: &mut ExecOutput,
    cap: usize,
    deadline: Option<Instant>,
) -> bool {
    let mut streams: Vec<(File, bool)> = vec![
        (File::from(std::os::fd::OwnedFd::from(stdout)), true),
        (File::from(std::os::fd::OwnedFd::from(stderr)), true),
    ];
    let mut buf = vec![0u8; 64 * 1024];
    while streams.iter().any(|(_, open)| *open) {
        let wait = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return true;
                }
                PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd> = streams
                .iter()
                .filter(|(_, open)| *open)
                .map(|(f, _)| PollFd::new(f.as_fd(), PollFlags::POLLIN))
                .collect();
            match poll(&mut fds, wait) {
                Ok(_) => fds
                    .iter()
                    .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
                    .collect(),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return false,
            }
        };
        let mut k = 0;
        for (i, (f, open)) in streams.iter_mut().enumerate() {
            if !*open {
                continue;
            }
            let is_ready = ready.get(k).copied().unwrap_or(false);
            k += 1;
            if !is_ready {
                continue;
            }
            match f.read(&mut buf) {
                Ok(0) | Err(_) => *open = false,
                Ok(n) => {
                    let dst = if i == 0 {
                        &mut out.stdout
                    } else {
                        &mut out.stderr
                    };
                    let room = cap.saturating_sub(dst.len());
                    dst.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
    }
    false
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The last `"level":"error"` message runc wrote to its JSON log.
pub fn last_runtime_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == "error")
        .find_map(|v| v["msg"].as_str().map(str::to_string))
}

/// SIGKILLs `pid` and all its descendants, found through /proc, until none is left (a process
/// forking while we scan is caught by the next round).
pub fn kill_tree(pid: i32) {
    let mut killed = HashSet::new();
    for _ in 0..10 {
        let tree = descendants(pid);
        let fresh: Vec<i32> = tree.into_iter().filter(|p| !killed.contains(p)).collect();
        if fresh.is_empty() && killed.contains(&pid) {
            return;
        }
        if !killed.contains(&pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            killed.insert(pid);
        }
        for p in fresh {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            killed.insert(p);
        }
    }
}

/// Every live process below `root` in the process tree.
fn descendants(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = parent_of(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            out.push(c);
            stack.push(c);
        }
    }
    out
}

/// The parent PID from /proc/<pid>/stat (the field after the parenthesised command name, which
/// may itself contain spaces and parentheses).
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    u64::from_ne_bytes(b) ^ u64::from(std::process::id())
}

struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_of_reads_our_own_parent() {
        let me = std::process::id() as i32;
        assert_eq!(parent_of(me), Some(nix::unistd::getppid().as_raw()));
    }

    #[test]
    fn kill_tree_kills_grandchildren() {
        let mut child = Command::new("sh")
            .args(["-c", "sleep 100 & sleep 100 & wait"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(5);
        while descendants(pid).len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let grandchildren = descendants(pid);
        assert_eq!(grandchildren.len(), 2);
        kill_tree(pid);
        let _ = child.wait();
        // Reparented to init (or a subreaper) and reaped there, or a zombie: either way gone.
        // SIGKILL is delivered at once but the exit takes a moment on a loaded machine.
        let alive = |g: i32| {
            std::fs::read_to_string(format!("/proc/{g}/stat"))
                .map(|s| {
                    !s.rsplit_once(')')
                        .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(false)
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while grandchildren.iter().any(|&g| alive(g)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for g in grandchildren {
            assert!(!alive(g), "{g} survived");
        }
    }

    #[test]
    fn runtime_errors_come_from_the_json_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        std::fs::write(
            &log,
            "{\"level\":\"info\",\"msg\":\"hi\"}\n{\"level\":\"error\",\"msg\":\"exec failed: no such file\"}\nnot json\n",
        )
        .unwrap();
        assert_eq!(
            last_runtime_error(&log).as_deref(),
            Some("exec failed: no such file")
        );
    }
}
