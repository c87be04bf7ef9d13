//! The OCI runtime binary (runc or a compatible one), run synchronously.
//!
//! Each invocation waits for that one child (std's `Command::status`): the shim's own reaping
//! (`waitpid(-1)`) runs only in the event loop, never while a runtime command is out, so it
//! cannot steal the runtime's exit status.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use berth_shim_proto::ShimConfig;
use serde::Deserialize;

/// Only the end of the runtime log is read for its last error; it is appended to forever.
const LOG_TAIL: u64 = 64 * 1024;

pub(crate) struct Runc<'a> {
    cfg: &'a ShimConfig,
}

impl<'a> Runc<'a> {
    pub(crate) fn new(cfg: &'a ShimConfig) -> Runc<'a> {
        Runc { cfg }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.cfg.runtime);
        cmd.arg("--root")
            .arg(&self.cfg.runtime_root)
            .arg("--log")
            .arg(&self.cfg.runtime_log)
            .arg("--log-format")
            .arg("json");
        // SAFETY: the closure runs between fork and exec and makes only raw rt_sigaction
        // syscalls, which are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                berth_sys::process::reset_ignored_signals();
                Ok(())
            });
        }
        cmd
    }

    /// `create --bundle B --pid-file P [--console-socket S] ID` with `stdio` as the runtime's
    /// (and so the container's) fds 0, 1, 2.
    pub(crate) fn create(&self, stdio: [Stdio; 3], console: Option<&Path>) -> Result<(), String> {
        let mut cmd = self.command();
        cmd.arg("create")
            .arg("--bundle")
            .arg(&self.cfg.bundle)
            .arg("--pid-file")
            .arg(&self.cfg.pid_file);
        if let Some(socket) = console {
            cmd.arg("--console-socket").arg(socket);
        }
        cmd.arg(&self.cfg.id);
        let [stdin, stdout, stderr] = stdio;
        cmd.stdin(stdin).stdout(stdout).stderr(stderr);
        self.run("create", cmd)
    }

    pub(crate) fn start(&self) -> Result<(), String> {
        let mut cmd = self.command();
        cmd.arg("start").arg(&self.cfg.id);
        self.run("start", quiet(cmd))
    }

    /// `delete --force`: kills whatever is left of the container, removes its cgroup and the
    /// runtime's state. Afterwards the runtime knows nothing of the ID.
    pub(crate) fn delete(&self) -> Result<(), String> {
        let mut cmd = self.command();
        cmd.arg("delete").arg("--force").arg(&self.cfg.id);
        self.run("delete", quiet(cmd))
    }

    /// The runtime's state directory for this ID exists: something created it already (a
    /// second shim for the same container, or a leftover). The shim must not create over it,
    /// and must not `delete --force` it either.
    pub(crate) fn state_exists(&self) -> bool {
        self.cfg.runtime_root.join(&self.cfg.id).exists()
    }

    fn run(&self, what: &str, mut cmd: Command) -> Result<(), String> {
        let log = &self.cfg.runtime_log;
        let offset = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        let runtime = self.cfg.runtime.display();
        match cmd.status() {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(read_error_since(log, offset)
                .unwrap_or_else(|| format!("{runtime} {what}: {}", describe(status)))),
            Err(e) => Err(format!("running {runtime} {what}: {e}")),
        }
    }
}

/// The runtime's stdout/stderr while the container is running: nothing on stdout is wanted,
/// its stderr goes to the shim's own log.
fn quiet(mut cmd: Command) -> Command {
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    cmd
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => status.to_string(),
    }
}

/// The last error the runtime logged after `offset` (only what this invocation wrote).
fn read_error_since(log: &Path, offset: u64) -> Option<String> {
    let mut f = File::open(log).ok()?;
    let len = f.metadata().ok()?.len();
    let start = if len < offset {
        // Truncated or replaced meanwhile: the whole (tail of the) file is new.
        len.saturating_sub(LOG_TAIL)
    } else {
        offset.max(len.saturating_sub(LOG_TAIL))
    };
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut text = Vec::new();
    f.take(LOG_TAIL).read_to_end(&mut text).ok()?;
    last_error(&String::from_utf8_lossy(&text))
}

#[derive(Deserialize)]
struct LogLine {
    #[serde(default)]
    level: String,
    #[serde(default)]
    msg: String,
}

/// The `msg` of the last `"level":"error"` JSON line (runc's `--log-format json`).
pub(crate) fn last_error(text: &str) -> Option<String> {
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<LogLine>(l).ok())
        .find(|l| l.level == "error" && !l.msg.is_empty())
        .map(|l| l.msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_error_line_is_the_message() {
        let log = concat!(
            r#"{"level":"warning","msg":"something odd","time":"2026-01-01T00:00:00Z"}"#,
            "\n",
            r#"{"level":"error","msg":"first","time":"2026-01-01T00:00:00Z"}"#,
            "\n",
            "not json at all\n",
            r#"{"level":"error","msg":"runc create failed: unable to start container process: exec: \"/nope\": stat /nope: no such file or directory","time":"2026-01-01T00:00:01Z"}"#,
            "\n",
            r#"{"level":"info","msg":"after","time":"2026-01-01T00:00:02Z"}"#,
            "\n",
        );
        assert_eq!(
            last_error(log).as_deref(),
            Some(
                r#"runc create failed: unable to start container process: exec: "/nope": stat /nope: no such file or directory"#
            )
        );
        assert_eq!(last_error(r#"{"level":"info","msg":"x"}"#), None);
        assert_eq!(last_error(""), None);
    }

    #[test]
    fn only_errors_after_the_offset_count() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("runc.log");
        let old = "{\"level\":\"error\",\"msg\":\"old failure\"}\n";
        std::fs::write(&log, old).unwrap();
        assert_eq!(read_error_since(&log, old.len() as u64), None);
        let new = format!("{old}{{\"level\":\"error\",\"msg\":\"new failure\"}}\n");
        std::fs::write(&log, new).unwrap();
        assert_eq!(
            read_error_since(&log, old.len() as u64).as_deref(),
            Some("new failure")
        );
        assert_eq!(read_error_since(&dir.path().join("missing"), 0), None);
    }
}
