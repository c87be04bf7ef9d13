//! berthd's side of `berth-shim`: spawning one per container, talking to it, and noticing exits.
//!
//! The shim is spawned detached (it forks and its parent exits at once), so berthd is never its
//! parent and a berthd restart does not touch it. Exits are learned without polling: each shim
//! writes `<exits dir>/<id>` by rename when its container ends, and [`watch_exits`] turns the
//! directory's inotify events into callbacks.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_shim_proto::{Exit, Ready, Request, Response, ShimConfig, State};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::{Error, Result};

/// How long `runc create` under the shim may take before berthd gives up on it.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// What a started shim reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spawned {
    /// Host PID of the container's init (waiting in `runc create` for start).
    pub pid: i32,
    pub shim_pid: i32,
}

/// Writes `config` next to the bundle and starts `shim_bin run <config>`; returns once the
/// container is created (or creation failed, with the runtime's message).
pub fn spawn(shim_bin: &Path, config: &ShimConfig, shim_log: &Path) -> Result<Spawned> {
    let cfg_path = config.bundle.join("shim.json");
    let data = serde_json::to_vec_pretty(config).map_err(|e| Error::Shim {
        id: config.id.clone(),
        message: format!("encoding its config: {e}"),
    })?;
    berth_core::replace_file_volatile(&cfg_path, &data)
        .map_err(|e| Error::io("write", &cfg_path, e))?;
    let log = File::create(shim_log).map_err(|e| Error::io("create", shim_log, e))?;
    let mut child = Command::new(shim_bin)
        .arg("run")
        .arg(&cfg_path)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .current_dir("/")
        .spawn()
        .map_err(|e| Error::io("spawn", shim_bin, e))?;
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(Error::Shim {
            id: config.id.clone(),
            message: "no stdout pipe".into(),
        });
    };
    // The direct child only forks the real shim and exits.
    let _ = child.wait();
    let line = read_line_within(stdout, READY_TIMEOUT).map_err(|e| Error::Shim {
        id: config.id.clone(),
        message: format!("waiting for it to report: {e}; its log: {}", tail(shim_log)),
    })?;
    match serde_json::from_str::<Ready>(line.trim()) {
        Ok(Ready::Ok { pid, shim_pid }) => Ok(Spawned { pid, shim_pid }),
        Ok(Ready::Failed { message }) => Err(Error::Runtime {
            op: "create",
            id: config.id.clone(),
            message,
        }),
        Err(e) => Err(Error::Shim {
            id: config.id.clone(),
            message: format!(
                "unreadable report {line:?}: {e}; its log: {}",
                tail(shim_log)
            ),
        }),
    }
}

fn read_line_within(
    stdout: std::process::ChildStdout,
    timeout: Duration,
) -> std::io::Result<String> {
    let deadline = Instant::now() + timeout;
    let fd = std::os::fd::OwnedFd::from(stdout);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "timed out",
            ));
        }
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, ms) {
            Ok(0) => continue,
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let mut line = String::new();
    BufReader::new(File::from(fd)).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the shim exited without a word",
        ));
    }
    Ok(line)
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(5);
    lines[start..].join(" | ")
}

/// Sends one request to the shim of container `id`. A shim that is gone (its container exited
/// and it finished, or it died) is [`Error::ShimGone`], for the caller to consult the exit file.
pub fn call(id: &str, socket: &Path, req: &Request) -> Result<State> {
    match berth_shim_proto::call(socket, req) {
        Ok(Response::State(s)) => Ok(s),
        Ok(Response::Error { message }) => Err(Error::Shim {
            id: id.to_string(),
            message,
        }),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            Err(Error::ShimGone { id: id.to_string() })
        }
        Err(e) => Err(Error::Shim {
            id: id.to_string(),
            message: e.to_string(),
        }),
    }
}

/// Reads the exit file of a container; `Ok(None)` while it has not exited.
pub fn read_exit(path: &Path) -> Result<Option<Exit>> {
    berth_shim_proto::read_exit_file(path).map_err(|e| Error::io("read", path, e))
}

/// Calls `on_exit(id)` for every exit file that appears in a directory, from a thread of its
/// own that lives as long as the process. Exit files are renamed into place, so `IN_MOVED_TO`
/// (and `IN_CLOSE_WRITE` for writers that do not rename) marks a complete file.
/// Files already in `dir` (created if missing) are the caller's to scan: the watch only reports
/// what appears after this returns.
pub fn watch_exits(dir: &Path, on_exit: impl Fn(&str) + Send + 'static) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    let inotify =
        Inotify::init(InitFlags::IN_CLOEXEC).map_err(|e| Error::io("inotify_init for", dir, e))?;
    inotify
        .add_watch(
            dir,
            AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE,
        )
        .map_err(|e| Error::io("watch", dir, e))?;
    std::thread::Builder::new()
            .name("exit-watcher".into())
            .spawn(move || loop {
                match inotify.read_events() {
                    Ok(events) => {
                        for ev in events {
                            let Some(name) = ev.name.as_ref().and_then(|n| n.to_str()) else {
                                continue;
                            };
                            // Temp files of the write-then-rename start with a dot.
                            if !name.starts_with('.') {
                                on_exit(name);
                            }
                        }
                    }
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "exit watcher stopped; container exits are now seen only when a container is stopped or berthd restarts");
                        return;
                    }
                }
            })
            .map_err(|e| Error::io("spawn exit watcher for", dir, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn exit_watcher_reports_renamed_files_and_skips_temp_names() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        watch_exits(dir.path(), move |id| {
            let _ = tx.lock().unwrap().send(id.to_string());
        })
        .unwrap();
        let exit = Exit {
            exit_code: 3,
            signal: None,
            finished_at: 1,
            oom_killed: false,
        };
        berth_shim_proto::write_exit_file(&dir.path().join("abc"), &exit).unwrap();
        let got = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(got, "abc");
        assert_eq!(read_exit(&dir.path().join("abc")).unwrap(), Some(exit));
        assert_eq!(read_exit(&dir.path().join("nope")).unwrap(), None);
    }

    #[test]
    fn a_missing_shim_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let err = call("c1", &dir.path().join("sock"), &Request::State).unwrap_err();
        assert!(matches!(err, Error::ShimGone { .. }), "{err}");
    }
}
