//! The real `berth-shim run` binary driving the real runc, as berthd will: spawn, read the Ready
//! line, then one `berth_shim_proto::call` per request.
//!
//! Root only (runc needs it); every test skips with a message otherwise, or when runc or a
//! static busybox is missing (`apt-get install -y busybox-static`). Each test has its own
//! short temp dir (`/tmp/bs-*`: socket paths must stay under 108 bytes) with its own runc
//! `--root`; a guard kills the shim and `runc delete --force`s the container even when the
//! test fails. `BERTH_SHIM_BIN` runs another build of the shim (e.g. the static release one
//! from `hack/build-shim.sh`); `BERTH_SHIM_MAX_RSS_KB` makes the RSS test assert a limit.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_shim_proto::{
    call, read_exit_file, write_frame, Exit, Ready, Request, Response, ShimConfig, State, Status,
    PROTOCOL_VERSION,
};
use serde_json::{json, Value};

const RUNC: &str = "runc";
const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "echo", "sleep", "usleep", "cat", "dd", "true", "yes", "head",
];

fn shim_bin() -> PathBuf {
    std::env::var_os("BERTH_SHIM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_berth-shim")))
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Why this machine cannot run the root tests, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    if which(RUNC).is_none() {
        return Some("runc is not installed".into());
    }
    let file = Command::new("file").arg("-L").arg(BUSYBOX).output();
    match file {
        Ok(out) if String::from_utf8_lossy(&out.stdout).contains("statically linked") => None,
        Ok(_) => Some(format!(
            "{BUSYBOX} is not static (apt-get install -y busybox-static)"
        )),
        Err(e) => Some(format!("cannot run `file` to check {BUSYBOX}: {e}")),
    }
}

macro_rules! require_root {
    () => {
        if let Some(why) = missing_prerequisite() {
            // The test harness names each test's thread after the test.
            let test = std::thread::current().name().unwrap_or("test").to_string();
            eprintln!("skipping {test}: {why}");
            return;
        }
    };
}

/// One container's world: temp dir, bundle, runc root, shim config. Cleans up on drop.
struct Env {
    dir: tempfile::TempDir,
    id: String,
    shim_pid: Option<i32>,
}

impl Env {
    fn new(name: &str) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("bs-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let id = format!("bs-{name}-{}", std::process::id());
        Env {
            dir,
            id,
            shim_pid: None,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A bundle whose rootfs is a static busybox; `edit` changes `runc spec`'s config.json.
    fn bundle(&self, args: &[&str], tty: bool, edit: impl FnOnce(&mut Value)) {
        let bundle = self.path("bundle");
        let bin = bundle.join("rootfs/bin");
        fs::create_dir_all(&bin).unwrap();
        fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        let status = Command::new(RUNC)
            .arg("spec")
            .arg("--bundle")
            .arg(&bundle)
            .status()
            .unwrap();
        assert!(status.success(), "runc spec failed");
        let path = bundle.join("config.json");
        let mut spec: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        spec["process"]["args"] = json!(args);
        spec["process"]["terminal"] = json!(tty);
        edit(&mut spec);
        fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    }

    fn config(&self, tty: bool) -> ShimConfig {
        ShimConfig {
            protocol: PROTOCOL_VERSION,
            id: self.id.clone(),
            bundle: self.path("bundle"),
            runtime: which(RUNC).unwrap_or_else(|| PathBuf::from(RUNC)),
            runtime_root: self.path("r"),
            runtime_log: self.path("runc.log"),
            socket: self.path("s.sock"),
            console_socket: self.path("c.sock"),
            pid_file: self.path("pid"),
            log_path: Some(self.path("c.log")),
            exit_file: self.path("exit.json"),
            oom_file: None,
            tty,
            stdin: false,
            stdin_once: false,
        }
    }

    fn write_config(&self, cfg: &ShimConfig) -> PathBuf {
        let path = self.path("shim.json");
        fs::write(&path, serde_json::to_vec(cfg).unwrap()).unwrap();
        path
    }

    /// Spawns the shim as berthd does and returns its Ready line.
    fn spawn(&mut self, cfg: &ShimConfig) -> Ready {
        let config = self.write_config(cfg);
        let mut child = Command::new(shim_bin())
            .arg("run")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(self.shim_log())
            .spawn()
            .expect("spawning berth-shim");
        let ready = read_ready(child.stdout.take().unwrap());
        // The first process exits at once; the monitor is its detached child.
        let status = child.wait().unwrap();
        self.note(&ready);
        assert!(
            status.success() || matches!(ready, Ready::Failed { .. }),
            "shim exited {status}"
        );
        ready
    }

    fn note(&mut self, ready: &Ready) {
        if let Ready::Ok { shim_pid, .. } = ready {
            self.shim_pid = Some(*shim_pid);
        }
    }

    fn shim_log(&self) -> fs::File {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("shim.log"))
            .unwrap()
    }

    fn call(&self, req: Request) -> Response {
        call(&self.path("s.sock"), &req)
            .unwrap_or_else(|e| panic!("{req:?}: {e}\nshim log:\n{}", self.read("shim.log")))
    }

    fn state(&self, req: Request) -> State {
        match self.call(req.clone()) {
            Response::State(s) => s,
            Response::Error { message } => panic!("{req:?} failed: {message}"),
        }
    }

    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// (stream, tag, text) of each record of a CRI log file.
    fn log(&self, name: &str) -> Vec<(String, String, String)> {
        parse_log(&self.read(name))
    }

    fn wait_for_log(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.read("c.log").contains(what) {
            assert!(Instant::now() < deadline, "no {what:?} in the log");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn exit(&self) -> Exit {
        read_exit_file(&self.path("exit.json"))
            .unwrap()
            .expect("exit file")
    }

    /// What must be true once the shim is done: the exit file is there, the socket is not,
    /// runc knows nothing of the container, and the shim process is gone.
    fn assert_cleaned_up(&self) {
        assert!(self.path("exit.json").exists(), "no exit file");
        assert!(!self.path("s.sock").exists(), "control socket left behind");
        assert!(!self.path("c.sock").exists(), "console socket left behind");
        assert_eq!(
            runc_list(&self.path("r")),
            "",
            "runc still knows the container"
        );
        if let Some(pid) = self.shim_pid {
            let deadline = Instant::now() + Duration::from_secs(5);
            while alive(pid) {
                assert!(Instant::now() < deadline, "shim {pid} still running");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(pid) = self.shim_pid {
            if alive(pid) && is_our_shim(pid, self.dir.path()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = Command::new(RUNC)
            .arg("--root")
            .arg(self.path("r"))
            .args(["delete", "--force", &self.id])
            .stderr(Stdio::null())
            .status();
        if std::thread::panicking() {
            eprintln!(
                "shim log:\n{}\nruntime log:\n{}",
                self.read("shim.log"),
                self.read("runc.log")
            );
        }
    }
}

/// A process group leader the test started; killed with its group, also when the test fails.
/// Until it is reaped its PID (the group's ID) cannot be reused.
struct Group(std::process::Child);

impl Group {
    fn kill(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.0.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = self.0.wait();
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_ready(out: impl std::io::Read) -> Ready {
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("ready line {line:?}: {e}"))
}

fn parse_log(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let ts = f.next().unwrap();
            assert!(
                ts.len() == 30 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
                "timestamp {ts:?}"
            );
            let stream = f.next().unwrap_or_default().to_string();
            let tag = f.next().unwrap_or_default().to_string();
            (stream, tag, f.next().unwrap_or_default().to_string())
        })
        .collect()
}

fn rec(stream: &str, text: &str) -> (String, String, String) {
    (stream.into(), "F".into(), text.into())
}

fn runc_list(root: &Path) -> String {
    let out = Command::new(RUNC)
        .arg("--root")
        .arg(root)
        .args(["list", "-q"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Running, not a zombie (nobody may reap the detached shim in a test sandbox).
fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn is_our_shim(pid: i32, dir: &Path) -> bool {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy())
}

fn created(env: &mut Env, cfg: &ShimConfig) -> i32 {
    match env.spawn(cfg) {
        Ready::Ok { pid, shim_pid } => {
            assert!(pid > 0 && shim_pid > 0 && pid != shim_pid);
            pid
        }
        Ready::Failed { message } => panic!("create failed: {message}"),
    }
}

/// Creates, starts and waits for a container running `script`; returns its exit.
fn run_script(name: &str, script: &str) -> (Env, Exit) {
    let mut env = Env::new(name);
    env.bundle(&["/bin/sh", "-c", script], false, |_| {});
    let cfg = env.config(false);
    let pid = created(&mut env, &cfg);
    let state = env.state(Request::State);
    assert_eq!(
        (state.pid, state.status, state.started_at, state.exit),
        (pid, Status::Created, 0, None)
    );
    let started = env.state(Request::Start);
    assert_eq!(started.status, Status::Running);
    assert!(started.started_at > 0);
    let done = env.state(Request::Wait { timeout_ms: 20_000 });
    assert_eq!(done.status, Status::Exited);
    let exit = done.exit.clone().expect("exit in the final state");
    assert!(exit.finished_at >= started.started_at);
    assert_eq!(env.exit(), exit, "the exit file and the answer agree");
    env.assert_cleaned_up();
    (env, exit)
}

#[test]
fn a_container_logs_its_output_and_its_exit_code() {
    require_root!();
    let (env, exit) = run_script("code", "echo hello; echo oops >&2; echo; echo bye; exit 3");
    assert_eq!(
        (exit.exit_code, exit.signal, exit.oom_killed),
        (3, None, false)
    );
    let log = env.log("c.log");
    let stdout: Vec<_> = log.iter().filter(|r| r.0 == "stdout").cloned().collect();
    assert_eq!(
        stdout,
        [
            rec("stdout", "hello"),
            rec("stdout", ""),
            rec("stdout", "bye")
        ]
    );
    assert!(log.contains(&rec("stderr", "oops")));
}

#[test]
fn a_clean_exit_is_code_zero() {
    require_root!();
    let (env, exit) = run_script("zero", "echo done");
    assert_eq!((exit.exit_code, exit.signal), (0, None));
    assert_eq!(env.log("c.log"), [rec("stdout", "done")]);
}

#[test]
fn sigkill_is_exit_137() {
    require_root!();
    let mut env = Env::new("kill");
    env.bundle(&["/bin/sleep", "1000"], false, |_| {});
    let cfg = env.config(false);
    created(&mut env, &cfg);
    let started = env.state(Request::Start);
    // The shim blocks signals for its signalfd; the container must not inherit that mask, nor
    // any ignored disposition.
    let status = fs::read_to_string(format!("/proc/{}/status", started.pid)).unwrap();
    for field in ["SigBlk:", "SigIgn:"] {
        let mask = status.lines().find_map(|l| l.strip_prefix(field)).unwrap();
        assert_eq!(
            mask.trim(),
            "0000000000000000",
            "{field} of the container's init"
        );
    }
    let after = env.state(Request::Signal { signal: 9 });
    assert_eq!(after.status, Status::Running);
    let done = env.state(Request::Wait { timeout_ms: 10_000 });
    let exit = done.exit.unwrap();
    assert_eq!((exit.exit_code, exit.signal), (137, Some(9)));
    env.assert_cleaned_up();
}

#[test]
fn stop_escalates_to_sigkill_and_answers_right_after_the_exit() {
    require_root!();
    let mut env = Env::new("stop");
    env.bundle(
        &[
            "/bin/sh",
            "-c",
            "trap '' TERM; echo ready; while :; do usleep 20000; done",
        ],
        false,
        |_| {},
    );
    let cfg = env.config(false);
    created(&mut env, &cfg);
    env.state(Request::Start);
    env.wait_for_log("ready");
    let t0 = Instant::now();
    let done = env.state(Request::Stop {
        signal: 15,
        timeout_ms: 1000,
    });
    let took = t0.elapsed();
    assert_eq!(done.status, Status::Exited);
    assert_eq!(done.exit.as_ref().map(|e| e.exit_code), Some(137));
    assert!(
        took >= Duration::from_millis(1000),
        "answered after {took:?}"
    );
    assert!(
        took < Duration::from_millis(1500),
        "answered {took:?} after the stop, not right after the SIGKILL"
    );
    env.assert_cleaned_up();
}

#[test]
fn stop_lets_a_container_that_handles_the_signal_exit_gracefully() {
    require_root!();
    let mut env = Env::new("graceful");
    env.bundle(
        &[
            "/bin/sh",
            "-c",
            "trap 'echo bye; exit 0' TERM; echo ready; while :; do usleep 20000; done",
        ],
        false,
        |_| {},
    );
    let cfg = env.config(false);
    created(&mut env, &cfg);
    env.state(Request::Start);
    env.wait_for_log("ready");
    let t0 = Instant::now();
    let done = env.state(Request::Stop {
        signal: 15,
        timeout_ms: 20_000,
    });
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(done.exit.map(|e| (e.exit_code, e.signal)), Some((0, None)));
    assert!(env.log("c.log").contains(&rec("stdout", "bye")));
    env.assert_cleaned_up();
}

#[test]
fn a_never_started_container_can_be_stopped() {
    require_root!();
    let mut env = Env::new("unstarted");
    env.bundle(&["/bin/echo", "never printed"], false, |_| {});
    let cfg = env.config(false);
    created(&mut env, &cfg);
    let done = env.state(Request::Stop {
        signal: 15,
        timeout_ms: 2000,
    });
    assert_eq!(done.status, Status::Exited);
    assert_eq!(done.started_at, 0);
    // runc init handles SIGTERM itself (it exits 2); the SIGKILL would follow otherwise.
    let exit = done.exit.unwrap();
    assert_ne!(exit.exit_code, 0, "{exit:?}");
    assert_eq!(env.exit(), exit);
    assert!(env.log("c.log").is_empty());
    env.assert_cleaned_up();
}

#[test]
fn start_twice_and_start_after_exit_are_errors() {
    require_root!();
    let mut env = Env::new("twice");
    env.bundle(&["/bin/sleep", "1000"], false, |_| {});
    let cfg = env.config(false);
    created(&mut env, &cfg);
    env.state(Request::Start);
    assert!(matches!(env.call(Request::Start), Response::Error { .. }));
    env.state(Request::Stop {
        signal: 9,
        timeout_ms: 0,
    });
    env.assert_cleaned_up();
}

#[test]
fn tty_output_arrives_as_stdout_lines() {
    require_root!();
    let mut env = Env::new("tty");
    env.bundle(
        &[
            "/bin/sh",
            "-c",
            "echo hello tty; echo to stderr >&2; exit 4",
        ],
        true,
        |_| {},
    );
    let cfg = env.config(true);
    created(&mut env, &cfg);
    assert!(
        !env.path("c.sock").exists(),
        "console socket kept after use"
    );
    env.state(Request::Start);
    let done = env.state(Request::Wait { timeout_ms: 10_000 });
    assert_eq!(done.exit.map(|e| e.exit_code), Some(4));
    // A pty has one stream, and its ONLCR's \r\n ends lines like \n.
    assert_eq!(
        env.log("c.log"),
        [rec("stdout", "hello tty"), rec("stdout", "to stderr")]
    );
    env.assert_cleaned_up();
}

#[test]
fn reopen_after_rotation_loses_no_line() {
    require_root!();
    let mut env = Env::new("rotate");
    env.bundle(
        &[
            "/bin/sh",
            "-c",
            "i=0; while :; do echo line $i; i=$((i+1)); usleep 1000; done",
        ],
        false,
        |_| {},
    );
    let cfg = env.config(false);
    created(&mut env, &cfg);
    env.state(Request::Start);
    env.wait_for_log("line 20\n");
    fs::rename(env.path("c.log"), env.path("c.log.1")).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    env.state(Request::ReopenLog);
    std::thread::sleep(Duration::from_millis(50));
    env.wait_for_log("stdout F line");
    env.state(Request::Stop {
        signal: 9,
        timeout_ms: 0,
    });
    let before = env.log("c.log.1");
    let after = env.log("c.log");
    assert!(!before.is_empty() && !after.is_empty());
    let numbers: Vec<u64> = before
        .iter()
        .chain(&after)
        .map(|r| {
            assert_eq!((r.0.as_str(), r.1.as_str()), ("stdout", "F"));
            r.2.strip_prefix("line ").unwrap().parse().unwrap()
        })
        .collect();
    let expected: Vec<u64> = (0..numbers.len() as u64).collect();
    assert_eq!(numbers, expected, "a line was lost or repeated");
    env.assert_cleaned_up();
}

#[test]
fn a_runc_create_failure_reports_runc_and_leaves_nothing() {
    require_root!();
    let mut env = Env::new("badexec");
    env.bundle(&["/no/such/binary"], false, |_| {});
    let cfg = env.config(false);
    let Ready::Failed { message } = env.spawn(&cfg) else {
        panic!("create succeeded")
    };
    assert!(message.contains("/no/such/binary"), "{message}");
    assert_eq!(runc_list(&env.path("r")), "");
    assert!(!env.path("s.sock").exists());
    assert!(!env.path("exit.json").exists());
}

#[test]
fn a_bundle_without_config_fails_with_runcs_message() {
    require_root!();
    let mut env = Env::new("nobundle");
    fs::create_dir_all(env.path("bundle/rootfs")).unwrap();
    let cfg = env.config(false);
    let Ready::Failed { message } = env.spawn(&cfg) else {
        panic!("create succeeded")
    };
    assert!(message.contains("config.json"), "{message}");
    assert_eq!(runc_list(&env.path("r")), "");
    assert!(!env.path("s.sock").exists());
}

#[test]
fn the_shim_outlives_the_process_that_spawned_it() {
    require_root!();
    let mut env = Env::new("orphan");
    env.bundle(
        &[
            "/bin/sh",
            "-c",
            "i=0; while :; do echo tick $i; i=$((i+1)); usleep 20000; done",
        ],
        false,
        |_| {},
    );
    let cfg = env.config(false);
    let config = env.write_config(&cfg);
    // A stand-in for berthd: it spawns the shim, lingers, and is killed with its whole process
    // group, as a crashing berthd (or `systemctl kill`) would be.
    let mut berthd = Group(
        Command::new("/bin/sh")
            .arg("-c")
            // sleep must not hold the pipe: a shim that fails to start then shows as EOF.
            .arg(r#""$0" run "$1" || exit 1; exec sleep 1000 </dev/null >/dev/null 2>&1"#)
            .arg(shim_bin())
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(env.shim_log())
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    let ready = read_ready(berthd.0.stdout.take().unwrap());
    env.note(&ready);
    assert!(matches!(ready, Ready::Ok { .. }), "{ready:?}");
    env.state(Request::Start);
    env.wait_for_log("tick 1\n");
    berthd.kill();
    assert!(
        alive(env.shim_pid.unwrap()),
        "the shim died with its spawner"
    );
    let lines = env.log("c.log").len();
    std::thread::sleep(Duration::from_millis(300));
    assert!(env.log("c.log").len() > lines, "logging stopped");
    assert_eq!(env.state(Request::State).status, Status::Running);
    env.state(Request::Stop {
        signal: 9,
        timeout_ms: 0,
    });
    env.assert_cleaned_up();
}

#[test]
fn misbehaving_clients_do_not_hurt_the_shim() {
    require_root!();
    let mut env = Env::new("clients");
    env.bundle(&["/bin/sleep", "1000"], false, |_| {});
    let cfg = env.config(false);
    created(&mut env, &cfg);
    let socket = env.path("s.sock");
    // Half a frame, then gone.
    let mut s = UnixStream::connect(&socket).unwrap();
    s.write_all(&[0, 0]).unwrap();
    drop(s);
    // A parked Wait whose client hangs up.
    let mut s = UnixStream::connect(&socket).unwrap();
    write_frame(
        &mut s,
        &json!({"protocol": PROTOCOL_VERSION, "op": "wait", "timeout_ms": 60000}),
    )
    .unwrap();
    drop(s);
    // A request the shim cannot answer (and must not crash on): an absurd length.
    let mut s = UnixStream::connect(&socket).unwrap();
    s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    drop(s);
    // Another protocol version is refused by name.
    let mut s = UnixStream::connect(&socket).unwrap();
    write_frame(&mut s, &json!({"protocol": 99, "op": "state"})).unwrap();
    let answer: Response = berth_shim_proto::read_frame(&mut s).unwrap();
    match answer {
        Response::Error { message } => assert!(message.contains("99"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        env.call(Request::Signal { signal: 0 }),
        Response::Error { .. }
    ));
    assert_eq!(env.state(Request::State).status, Status::Created);
    env.state(Request::Start);
    // A Wait that times out answers with the state of the moment.
    let t0 = Instant::now();
    let state = env.state(Request::Wait { timeout_ms: 200 });
    assert_eq!(state.status, Status::Running);
    assert!(t0.elapsed() >= Duration::from_millis(200));
    // Several parked waits are all answered at the exit.
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || call(&socket, &Request::Wait { timeout_ms: 30_000 }))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    env.state(Request::Signal { signal: 9 });
    for w in waiters {
        match w.join().unwrap().unwrap() {
            Response::State(s) => assert_eq!(s.exit.map(|e| e.exit_code), Some(137)),
            other => panic!("{other:?}"),
        }
    }
    env.assert_cleaned_up();
}

#[test]
fn an_oom_kill_is_recorded() {
    require_root!();
    let cgroup = format!("/bs-oom-{}", std::process::id());
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let oom_file = if v2 {
        PathBuf::from(format!("/sys/fs/cgroup{cgroup}/memory.events"))
    } else {
        PathBuf::from(format!("/sys/fs/cgroup/memory{cgroup}/memory.oom_control"))
    };
    if !oom_file.parent().unwrap().parent().unwrap().exists() {
        eprintln!("skipping: no memory cgroup controller");
        return;
    }
    let mut env = Env::new("oom");
    env.bundle(
        &[
            "/bin/sh",
            "-c",
            "dd if=/dev/zero of=/dev/null bs=64M count=1; echo survived",
        ],
        false,
        |spec| {
            spec["linux"]["cgroupsPath"] = json!(cgroup);
            spec["linux"]["resources"]["memory"] = json!({"limit": 16 * 1024 * 1024});
        },
    );
    let mut cfg = env.config(false);
    cfg.oom_file = Some(oom_file.clone());
    created(&mut env, &cfg);
    env.state(Request::Start);
    let done = env.state(Request::Wait { timeout_ms: 20_000 });
    assert!(done.exit.unwrap().oom_killed, "log: {:?}", env.log("c.log"));
    assert!(!oom_file.exists(), "cgroup left behind");
    env.assert_cleaned_up();
}

#[test]
fn a_config_of_another_protocol_is_refused() {
    // No root needed: the shim refuses before it forks or runs anything.
    let env = Env::new("proto");
    let mut cfg = env.config(false);
    cfg.protocol = PROTOCOL_VERSION + 1;
    let path = env.write_config(&cfg);
    let out = Command::new(shim_bin())
        .arg("run")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let ready: Ready = serde_json::from_slice(&out.stdout).unwrap();
    let Ready::Failed { message } = ready else {
        panic!("{ready:?}")
    };
    assert!(message.contains("protocol"), "{message}");
    let out = Command::new(shim_bin())
        .arg("run")
        .arg("/nonexistent/shim.json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"ready\":\"failed\""));
}

#[test]
fn rss_of_a_shim_with_a_logging_container() {
    require_root!();
    let mut env = Env::new("rss");
    env.bundle(
        &[
            "/bin/sh",
            "-c",
            "i=0; while :; do echo \"a line of container output number $i\"; i=$((i+1)); usleep 10000; done",
        ],
        false,
        |_| {},
    );
    let cfg = env.config(false);
    created(&mut env, &cfg);
    env.state(Request::Start);
    std::thread::sleep(Duration::from_secs(3));
    let pid = env.shim_pid.unwrap();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    let rss_kb = field("VmRSS:");
    let lines = env.log("c.log").len();
    eprintln!(
        "berth-shim {}: VmRSS {rss_kb} kB (anon {} kB, file {} kB), VmHWM {} kB, after {lines} log lines",
        shim_bin().display(),
        field("RssAnon:"),
        field("RssFile:"),
        field("VmHWM:"),
    );
    assert!(lines > 100, "only {lines} lines in 3 s");
    // Asserted only on request: a debug or dynamic build is far bigger than the static release
    // one this limit is about (`BERTH_SHIM_BIN=... BERTH_SHIM_MAX_RSS_KB=1024`).
    if let Some(limit) = std::env::var("BERTH_SHIM_MAX_RSS_KB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        assert!(rss_kb <= limit, "VmRSS {rss_kb} kB exceeds {limit} kB");
    }
    env.state(Request::Stop {
        signal: 9,
        timeout_ms: 0,
    });
    env.assert_cleaned_up();
}

#[test]
fn stdin_is_held_open_only_when_asked() {
    require_root!();
    for keep in [false, true] {
        let mut env = Env::new(if keep { "stdin" } else { "nostdin" });
        env.bundle(&["/bin/sh", "-c", "cat; echo eof"], false, |_| {});
        let mut cfg = env.config(false);
        cfg.stdin = keep;
        created(&mut env, &cfg);
        env.state(Request::Start);
        let state = env.state(Request::Wait { timeout_ms: 500 });
        if keep {
            // cat waits for input on the pipe the shim keeps open for attach.
            assert_eq!(state.status, Status::Running);
            env.state(Request::Stop {
                signal: 9,
                timeout_ms: 0,
            });
            assert!(env.log("c.log").is_empty());
        } else {
            // /dev/null: cat ends at once.
            assert_eq!(state.exit.map(|e| e.exit_code), Some(0));
            assert_eq!(env.log("c.log"), [rec("stdout", "eof")]);
        }
        env.assert_cleaned_up();
    }
}

/// Without a PID namespace (a hostPID pod) the container's processes outlive its init: they
/// re-parent to the shim, the subreaper, and may keep the output pipes open.
#[test]
fn output_after_init_exits_is_drained_for_at_most_two_seconds() {
    require_root!();
    let host_pid = |spec: &mut Value| {
        let namespaces = spec["linux"]["namespaces"].as_array_mut().unwrap();
        namespaces.retain(|n| n["type"] != "pid");
    };
    let mut env = Env::new("late");
    env.bundle(
        &["/bin/sh", "-c", "(usleep 300000; echo late) & echo early"],
        false,
        host_pid,
    );
    let cfg = env.config(false);
    created(&mut env, &cfg);
    env.state(Request::Start);
    let done = env.state(Request::Wait { timeout_ms: 10_000 });
    assert_eq!(done.exit.map(|e| e.exit_code), Some(0));
    assert_eq!(
        env.log("c.log"),
        [rec("stdout", "early"), rec("stdout", "late")]
    );
    env.assert_cleaned_up();

    let mut env = Env::new("never");
    env.bundle(
        &["/bin/sh", "-c", "(sleep 30; echo never) & echo $!"],
        false,
        host_pid,
    );
    let cfg = env.config(false);
    created(&mut env, &cfg);
    env.state(Request::Start);
    let t0 = Instant::now();
    let done = env.state(Request::Wait { timeout_ms: 20_000 });
    let took = t0.elapsed();
    assert_eq!(done.exit.map(|e| e.exit_code), Some(0));
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(4),
        "drain took {took:?}"
    );
    let log = env.log("c.log");
    assert_eq!(log.len(), 1, "{log:?}");
    let straggler: i32 = log[0].2.parse().unwrap();
    env.assert_cleaned_up();
    // delete --force took the straggler with the cgroup.
    assert!(!alive(straggler), "{straggler} survived the container");
}
