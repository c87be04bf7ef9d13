//! The wire protocol between berthd and `berth-shim`, shared by both so they cannot drift.
//!
//! berthd writes a [`ShimConfig`] to `<bundle>/shim.json` and spawns `berth-shim run
//! <bundle>/shim.json` with its stdout on a pipe. The shim detaches (it is not berthd's child),
//! runs `runc create`, binds its control socket and writes one [`Ready`] JSON line to that pipe.
//! From then on berthd connects to the socket whenever it needs something: one [`Request`] per
//! connection, answered by one [`Response`]. Frames are a 4-byte big-endian length followed by
//! that many bytes of JSON. Plain blocking std I/O only: the shim links no async runtime, and
//! berthd calls [`call`] from a blocking thread.
//!
//! When the container exits the shim drains its output, records the [`Exit`] in the exit file
//! (write-then-rename), deletes the runc container (cgroup and state), answers pending waits and
//! exits itself. A berthd that restarts reconnects to live shims and reads the exit files of
//! the others.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Bumped when a message changes incompatibly; a shim answers requests of its own version only.
pub const PROTOCOL_VERSION: u32 = 1;

/// No frame is larger: requests and states are tiny, and a peer that claims more is broken.
pub const MAX_FRAME: usize = 1 << 20;

/// A CRI log line longer than this is split into `P` (partial) pieces, as kubelet expects.
pub const MAX_LOG_LINE: usize = 16 * 1024;

/// Everything the shim needs to run one container. Written by berthd as JSON next to the
/// bundle's `config.json`; every path is absolute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimConfig {
    pub protocol: u32,
    /// The container ID, as given to runc.
    pub id: String,
    /// The OCI bundle (`config.json`, rootfs mount point); `runc create --bundle`.
    pub bundle: PathBuf,
    /// The runc-compatible runtime binary.
    pub runtime: PathBuf,
    /// The runtime's `--root` (its state directory).
    pub runtime_root: PathBuf,
    /// Where the runtime writes its own messages (`--log`, JSON format); the shim reports the
    /// last error from it when `runc create` or `runc start` fails.
    pub runtime_log: PathBuf,
    /// The control socket the shim binds (short: under 108 bytes).
    pub socket: PathBuf,
    /// Where the shim listens for the pty master when `tty` is set (`--console-socket`).
    pub console_socket: PathBuf,
    /// `runc create --pid-file`.
    pub pid_file: PathBuf,
    /// The CRI log file the container's output goes to; `None` discards the output.
    pub log_path: Option<PathBuf>,
    /// Where the shim records the exit status, as JSON [`Exit`].
    pub exit_file: PathBuf,
    /// A cgroup file with an `oom_kill <n>` line: `memory.events` (cgroup v2) or
    /// `memory.oom_control` (v1). Read when the container exits to tell an OOM kill.
    pub oom_file: Option<PathBuf>,
    /// Give the container a pty (via runc's console socket) instead of pipes.
    pub tty: bool,
    /// Keep a stdin pipe (or the pty's input) open for attach; otherwise stdin is /dev/null.
    pub stdin: bool,
    /// Close stdin after the first attach session ends (CRI `stdin_once`).
    pub stdin_once: bool,
}

/// The one line the shim writes to its stdout once `runc create` has finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ready", rename_all = "snake_case")]
pub enum Ready {
    /// The container is created (its init waits for `start`); `pid` is its host PID and `shim_pid`
    /// the shim's own.
    Ok { pid: i32, shim_pid: i32 },
    /// Creation failed; nothing is left (no runc state, no socket). `message` carries the
    /// runtime's own error where there is one.
    Failed { message: String },
}

/// One request per connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Where the container is now.
    State,
    /// `runc start`: the container's process begins. Answers the state once it runs.
    Start,
    /// Sends `signal` to the container's init process.
    Signal { signal: i32 },
    /// Sends `signal`, then SIGKILL once `timeout_ms` have passed without an exit; answers as
    /// soon as the container has exited (a never-started container exits too).
    Stop { signal: i32, timeout_ms: u64 },
    /// Answers once the container has exited or `timeout_ms` have passed, with the state then.
    Wait { timeout_ms: u64 },
    /// Closes and reopens the log file at the same path (after kubelet rotated it).
    ReopenLog,
    /// Joins the container's stdio: answered with the state, after which the connection carries
    /// [`chunk`]s both ways until either side closes it. The shim sends `CHUNK_STDOUT` /
    /// `CHUNK_STDERR`; the attacher sends `CHUNK_STDIN`, `CHUNK_STDIN_CLOSE` and `CHUNK_RESIZE`
    /// (width, height as big-endian u16). Any number of attachers; output reaches all of them.
    Attach { stdin: bool },
}

pub const CHUNK_STDIN: u8 = 0;
pub const CHUNK_STDOUT: u8 = 1;
pub const CHUNK_STDERR: u8 = 2;
pub const CHUNK_STDIN_CLOSE: u8 = 3;
pub const CHUNK_RESIZE: u8 = 4;
/// The largest chunk either side sends; the shim's reads are smaller.
pub const MAX_CHUNK: usize = 64 * 1024;

/// One attach chunk: kind, 4-byte big-endian length, data.
pub fn chunk(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + data.len());
    v.push(kind);
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// Splits the first whole chunk off `buf`: `Ok(None)` until one is there, an error for a
/// length over [`MAX_CHUNK`].
pub fn take_chunk(buf: &mut Vec<u8>) -> io::Result<Option<(u8, Vec<u8>)>> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_CHUNK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("attach chunk of {len} bytes exceeds {MAX_CHUNK}"),
        ));
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    let kind = buf[0];
    let data = buf[5..5 + len].to_vec();
    buf.drain(..5 + len);
    Ok(Some((kind, data)))
}

/// The answer to every [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    State(State),
    Error { message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// `runc create` done, `runc start` not yet.
    Created,
    Running,
    Exited,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Host PID of the container's init.
    pub pid: i32,
    pub status: Status,
    /// Unix nanoseconds; 0 until started.
    pub started_at: i64,
    /// Set once `status` is `Exited`.
    pub exit: Option<Exit>,
}

/// How the container ended; also the content of the exit file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// The exit status, or 128 + the signal number for a process killed by a signal.
    pub exit_code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Unix nanoseconds.
    pub finished_at: i64,
    /// The cgroup's OOM killer killed a process of the container.
    pub oom_killed: bool,
}

/// Writes one frame: the 4-byte big-endian length, then the JSON.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    if body.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {} bytes exceeds {MAX_FRAME}", body.len()),
        ));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf)?;
    w.flush()
}

/// Reads one frame written by [`write_frame`].
pub fn read_frame<R: Read, T: for<'de> Deserialize<'de>>(r: &mut R) -> io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {MAX_FRAME}"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// How long a request may take beyond the time it asks the shim to wait itself.
const REPLY_MARGIN: Duration = Duration::from_secs(30);

/// Sends `req` to the shim listening on `socket` and returns its answer. Blocking; a shim that is
/// gone shows as `ConnectionRefused` or `NotFound`.
pub fn call(socket: &Path, req: &Request) -> io::Result<Response> {
    let waits = match req {
        Request::Stop { timeout_ms, .. } | Request::Wait { timeout_ms } => {
            Duration::from_millis(*timeout_ms)
        }
        _ => Duration::ZERO,
    };
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(waits + REPLY_MARGIN))?;
    stream.set_write_timeout(Some(REPLY_MARGIN))?;
    write_frame(
        &mut stream,
        &Envelope {
            protocol: PROTOCOL_VERSION,
            request: req.clone(),
        },
    )?;
    read_frame(&mut stream)
}

/// What travels on the socket: the request with the protocol version the sender speaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub protocol: u32,
    #[serde(flatten)]
    pub request: Request,
}

/// Reads an exit file; `Ok(None)` when the container has not exited (no file yet).
pub fn read_exit_file(path: &Path) -> io::Result<Option<Exit>> {
    match std::fs::read(path) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes an exit file so that a reader sees the whole record or none (write-then-rename). No
/// fsync: the file lives under berth's run dir and only has to outlive berthd, not the node.
pub fn write_exit_file(path: &Path, exit: &Exit) -> io::Result<()> {
    let data = serde_json::to_vec(exit).map_err(io::Error::other)?;
    berth_core::replace_file_volatile(path, &data)
}

/// The `oom_kill` count in a `memory.events` (v2) or `memory.oom_control` (v1) text.
pub fn parse_oom_kill_count(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .filter_map(|n| n.trim().parse().ok())
        .next()
        .unwrap_or(0)
}

/// The exit code a shell would report: the status, or 128 + signal.
pub fn exit_code_of(status: Option<i32>, signal: Option<i32>) -> i32 {
    match (status, signal) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 255,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_carry_the_version() {
        let mut buf = Vec::new();
        let env = Envelope {
            protocol: PROTOCOL_VERSION,
            request: Request::Stop {
                signal: 15,
                timeout_ms: 2000,
            },
        };
        write_frame(&mut buf, &env).unwrap();
        let text = String::from_utf8_lossy(&buf[4..]).into_owned();
        assert_eq!(
            text,
            r#"{"protocol":1,"op":"stop","signal":15,"timeout_ms":2000}"#
        );
        let back: Envelope = read_frame(&mut buf.as_slice()).unwrap();
        assert_eq!(back, env);
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&((MAX_FRAME as u32) + 1).to_be_bytes());
        let err = read_frame::<_, Response>(&mut buf.as_slice()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn responses_and_ready_lines_have_stable_json() {
        let r = Response::State(State {
            pid: 42,
            status: Status::Exited,
            started_at: 1,
            exit: Some(Exit {
                exit_code: 137,
                signal: Some(9),
                finished_at: 2,
                oom_killed: false,
            }),
        });
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(
            s,
            r#"{"result":"state","pid":42,"status":"exited","started_at":1,"exit":{"exit_code":137,"signal":9,"finished_at":2,"oom_killed":false}}"#
        );
        let ready: Ready = serde_json::from_str(r#"{"ready":"ok","pid":7,"shim_pid":6}"#).unwrap();
        assert_eq!(
            ready,
            Ready::Ok {
                pid: 7,
                shim_pid: 6
            }
        );
    }

    #[test]
    fn exit_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("exit.json");
        assert_eq!(read_exit_file(&p).unwrap(), None);
        let e = Exit {
            exit_code: 1,
            signal: None,
            finished_at: 5,
            oom_killed: true,
        };
        write_exit_file(&p, &e).unwrap();
        assert_eq!(read_exit_file(&p).unwrap(), Some(e));
    }

    #[test]
    fn oom_counts_parse_from_both_cgroup_versions() {
        assert_eq!(
            parse_oom_kill_count("low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\noom_group_kill 0\n"),
            1
        );
        assert_eq!(
            parse_oom_kill_count("oom_kill_disable 0\nunder_oom 0\noom_kill 4\n"),
            4
        );
        assert_eq!(parse_oom_kill_count(""), 0);
    }

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(exit_code_of(Some(3), None), 3);
        assert_eq!(exit_code_of(None, Some(9)), 137);
    }
}
