//! Streaming end-to-end tests: Exec and PortForward through berthd's streaming server with
//! berthctl as the client, over SPDY and WebSocket, against real runc containers with images
//! from the local registry. Each daemon gets its own bridge, subnet and nftables table.
//! Run: `cargo test -p berth-e2e --test streaming -- --test-threads=1`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::cri::runtime_service_client::RuntimeServiceClient;
use berth_e2e::cri::{self, ContainerConfig, PodSandboxConfig};
use berth_e2e::*;
use tonic::transport::Channel;
use tonic::Code;

const BRIDGE: &str = "be2et0";
const TABLE: &str = "berth_e2et";
const SUBNET: &str = "10.234.0.0/16";
/// Local listen ports for port-forward tests: 18500-18599.
const LOCAL_PORT_BASE: u16 = 18500;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TRANSPORTS: [&str; 2] = ["spdy", "websocket"];

struct Env {
    d: Daemon,
    rt: RuntimeServiceClient<Channel>,
    img: Images,
    logs: tempfile::TempDir,
    _net: NetGuard,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

async fn start() -> Option<Env> {
    start_with("").await
}

async fn start_with(extra_config: &str) -> Option<Env> {
    let img = prerequisites()?;
    let serial = SERIAL.lock().await;
    let net = NetGuard {
        bridge: BRIDGE,
        table: TABLE,
    };
    let d = Daemon::start(DaemonOpts {
        extra_config: format!(
            "\n{extra_config}\n[network]\nbridge = \"{BRIDGE}\"\nsubnet = \"{SUBNET}\"\nnft_table = \"{TABLE}\"\ncni_conf_dir = \"/nonexistent/berth-e2e-cni\"\n"
        ),
        log_level: "info,h2=warn".into(),
        ..Default::default()
    })
    .await
    .expect("berthd");
    let rt = d.runtime().await.expect("runtime client");
    let logs = tempfile::Builder::new()
        .prefix("berth-e2e-logs-")
        .tempdir_in("/var/tmp")
        .expect("log dir");
    Some(Env {
        d,
        rt,
        img,
        logs,
        _net: net,
        _serial: serial,
    })
}

fn pod_config(name: &str, log_dir: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.join(name).display().to_string(),
        labels: HashMap::from([("pod".to_string(), name.to_string())]),
        ..Default::default()
    }
}

fn sh(name: &str, image: &str, script: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(spec(image)),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}/0.log"),
        ..Default::default()
    }
}

impl Drop for Env {
    /// See [`Daemon::remove_all_pods`].
    fn drop(&mut self) {
        self.d.remove_all_pods();
    }
}

impl Env {
    /// A pod with one running container executing `script`; returns (pod, container).
    async fn running(&mut self, name: &str, script: &str) -> (String, String) {
        let bb = self.img.get("BUSYBOX_REF");
        self.d.pull_ok(&bb).await;
        let config = pod_config(name, self.logs.path());
        let pod = self
            .rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_or_else(|s| panic!("RunPodSandbox: {s:?}\n{}", self.d.log_tail(40)))
            .into_inner()
            .pod_sandbox_id;
        let id = self
            .rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(sh("app", &bb, script)),
                sandbox_config: Some(config),
            })
            .await
            .unwrap_or_else(|s| panic!("CreateContainer: {s:?}\n{}", self.d.log_tail(40)))
            .into_inner()
            .container_id;
        self.rt
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|s| panic!("StartContainer: {s:?}\n{}", self.d.log_tail(40)));
        (pod, id)
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.d.socket.display())
    }

    fn berthctl(&self, args: &[&str]) -> Command {
        let mut c = Command::new(berthctl_bin());
        c.arg("-r").arg(self.endpoint()).args(args);
        c
    }

    fn exec(&self, transport: &str, id: &str, cmd: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut args = vec!["exec", "--transport", transport];
        if stdin.is_some() {
            args.push("-i");
        }
        args.push(id);
        args.extend_from_slice(cmd);
        let mut c = self.berthctl(&args);
        c.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = c.spawn().expect("berthctl");
        if let Some(data) = stdin {
            let mut w = child.stdin.take().unwrap();
            let data = data.to_vec();
            std::thread::spawn(move || {
                let _ = w.write_all(&data);
            });
        }
        wait_output(child, Duration::from_secs(60))
    }
}

fn wait_output(child: std::process::Child, limit: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("berthctl output"),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("berthctl did not finish within {limit:?}");
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn exec_output_exit_codes_and_stdin_over_both_transports() {
    let Some(mut e) = start().await else { return };
    let (_pod, id) = e.running("exec", "sleep 3600").await;
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| b"abcdefghij\n"[(i % 11) as usize])
        .collect();
    for t in TRANSPORTS {
        let out = e.exec(t, &id, &["echo", "hello", "world"], None);
        assert_eq!(
            text(&out.stdout),
            "hello world\n",
            "{t}: {}",
            text(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0), "{t}");

        let out = e.exec(
            t,
            &id,
            &["sh", "-c", "echo out; echo err >&2; exit 7"],
            None,
        );
        assert_eq!(out.status.code(), Some(7), "{t}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "out\n", "{t}");
        assert!(
            text(&out.stderr).contains("err"),
            "{t}: {}",
            text(&out.stderr)
        );

        let out = e.exec(t, &id, &["cat"], Some(&data));
        assert_eq!(out.status.code(), Some(0), "{t}: {}", text(&out.stderr));
        assert_eq!(out.stdout.len(), data.len(), "{t}");
        assert!(out.stdout == data, "{t}: stdin came back changed");

        let out = e.exec(t, &id, &["/no/such/binary"], None);
        assert_ne!(out.status.code(), Some(0), "{t}");
        assert!(
            text(&out.stderr).contains("no such file"),
            "{t}: {}",
            text(&out.stderr)
        );
    }
}

#[tokio::test]
async fn tty_exec_sees_the_terminal_size_and_its_changes() {
    let Some(mut e) = start().await else { return };
    let (_pod, id) = e.running("tty", "sleep 3600").await;
    for t in TRANSPORTS {
        // `script` gives berthctl a terminal of a known size; the first size goes over the
        // resize stream when the session starts.
        let inner = format!(
            "stty rows 33 cols 77; {} -r {} exec -it --transport {t} {id} stty size",
            berthctl_bin().display(),
            e.endpoint()
        );
        let child = Command::new("script")
            .args(["-qec", &inner, "/dev/null"])
            // `script -c` runs `$SHELL`: fixed, so the caller's login shell does not matter.
            .env("SHELL", "/bin/sh")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("script");
        let out = wait_output(child, Duration::from_secs(60));
        assert!(
            text(&out.stdout).contains("33 77"),
            "{t}: {:?} {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0), "{t}");
    }
}

#[tokio::test]
async fn exec_requests_are_validated_like_kubelet() {
    let Some(mut e) = start().await else { return };
    let (_pod, id) = e.running("valid", "sleep 3600").await;
    let req = |tty, stdin, stdout, stderr| cri::ExecRequest {
        container_id: id.clone(),
        cmd: vec!["true".into()],
        tty,
        stdin,
        stdout,
        stderr,
    };
    let err = e.rt.exec(req(true, false, true, true)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err =
        e.rt.exec(req(false, false, false, false))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let mut bad = req(false, false, true, false);
    bad.container_id = "nonexistent".into();
    let err = e.rt.exec(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let mut no_cmd = req(false, false, true, false);
    no_cmd.cmd.clear();
    let err = e.rt.exec(no_cmd).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err =
        e.rt.port_forward(cri::PortForwardRequest {
            pod_sandbox_id: "nonexistent".into(),
            port: vec![80],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

/// One raw upgrade request; returns the status line.
fn upgrade_status(url: &str) -> String {
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap_or(0);
    text(&buf[..n]).lines().next().unwrap_or("").to_string()
}

fn exec_request(id: &str, cmd: &[&str]) -> cri::ExecRequest {
    cri::ExecRequest {
        container_id: id.to_string(),
        cmd: cmd.iter().map(|c| c.to_string()).collect(),
        stdout: true,
        ..Default::default()
    }
}

/// A fresh streaming URL for an exec of `cmd`.
async fn exec_url(rt: &mut RuntimeServiceClient<Channel>, id: &str, cmd: &[&str]) -> String {
    rt.exec(exec_request(id, cmd))
        .await
        .unwrap()
        .into_inner()
        .url
}

#[tokio::test]
async fn bad_and_reused_tokens_are_404() {
    let Some(mut e) = start().await else { return };
    let (_pod, id) = e.running("tokens", "sleep 3600").await;
    let url = exec_url(&mut e.rt, &id, &["true"]).await;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let bad = format!("{}/exec/notatoken", &url[..url.find("/exec/").unwrap()]);
    assert!(
        upgrade_status(&bad).contains(" 404 "),
        "{}",
        upgrade_status(&bad)
    );
    assert!(upgrade_status(&url).contains(" 101 "));
    assert!(upgrade_status(&url).contains(" 404 "), "reused token");
}

fn http_get(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the forwarded port");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    text(&out)
}

#[tokio::test]
async fn port_forward_reaches_servers_inside_the_pod_on_two_ports() {
    let Some(mut e) = start().await else { return };
    let (pod, id) = e
        .running(
            "pf",
            "mkdir -p /w1 /w2; echo one > /w1/index.html; echo two > /w2/index.html; \
             httpd -p 127.0.0.1:8080 -h /w1; httpd -p 127.0.0.1:8081 -h /w2; sleep 3600",
        )
        .await;
    // Both servers up before anything is forwarded (the shell starts them a moment after
    // StartContainer returns).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = [8080, 8081].iter().all(|p| {
            e.berthctl(&[
                "exec",
                "-s",
                &id,
                "wget",
                "-q",
                "-O-",
                &format!("http://127.0.0.1:{p}/"),
            ])
            .output()
            .is_ok_and(|o| o.status.success())
        });
        if up {
            break;
        }
        assert!(Instant::now() < deadline, "the pod's servers did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, t) in TRANSPORTS.iter().enumerate() {
        let (l1, l2) = (
            LOCAL_PORT_BASE + 2 * i as u16,
            LOCAL_PORT_BASE + 2 * i as u16 + 1,
        );
        let mut child = e
            .berthctl(&[
                "port-forward",
                "--transport",
                t,
                &pod,
                &format!("{l1}:8080"),
                &format!("{l2}:8081"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("berthctl port-forward");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", l2)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{t}: port-forward did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The servers listen on the pod's loopback only: nothing on the host can reach them.
        for _ in 0..3 {
            let a = http_get(l1);
            let b = http_get(l2);
            if !(a.contains("200 OK")
                && a.ends_with("one\n")
                && b.contains("200 OK")
                && b.ends_with("two\n"))
            {
                let _ = child.kill();
                let out = child.wait_with_output().expect("port-forward output");
                panic!("{t}: {a:?} {b:?}\nberthctl: {}", text(&out.stderr));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// What berthd's descriptors point at, for a failure message.
fn fd_targets(pid: u32) -> String {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return String::new();
    };
    let mut v: Vec<String> = dir
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|t| t.display().to_string())
        .collect();
    v.sort();
    v.join(" ")
}

/// A running `sleep 3600` container and berthd's pid, once an exec of `cmd` over each
/// transport has set up what is made lazily (pools, the first connection): what berthd
/// holds afterwards is its baseline.
async fn warmed_up(e: &mut Env, name: &str, cmd: &[&str]) -> (String, u32) {
    let (_pod, id) = e.running(name, "sleep 3600").await;
    let pid = e.d.pid().expect("berthd pid");
    for t in TRANSPORTS {
        let _ = e.exec(t, &id, cmd, None);
    }
    std::thread::sleep(Duration::from_millis(500));
    (id, pid)
}

/// A number of `/proc/PID/status` (`Threads:`, `VmRSS:` in KiB, ...), 0 when missing.
fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn repeated_failing_execs_leak_no_fds_or_threads() {
    let Some(mut e) = start().await else { return };
    let (id, pid) = warmed_up(&mut e, "leak", &["/no/such/binary"]).await;
    let (fds, threads) = (fd_count(pid), proc_status(pid, "Threads:"));
    let rss = proc_status(pid, "VmRSS:");
    for i in 0..20 {
        let t = TRANSPORTS[i % 2];
        let out = e.exec(t, &id, &["/no/such/binary"], None);
        assert_ne!(out.status.code(), Some(0));
        // A child left holding the session's pipes: the exec ends with its command anyway.
        if i < 4 {
            let started = Instant::now();
            let out = e.exec(t, &id, &["sh", "-c", "sleep 31 & echo started"], None);
            assert_eq!(text(&out.stdout), "started\n", "{t}: {}", text(&out.stderr));
            assert_eq!(out.status.code(), Some(0), "{t}");
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{t}: the exec waited {:?} for the child holding its pipes",
                started.elapsed()
            );
        }
        // An attacher that goes away, and a client that leaves mid-stream (its exec is still
        // running when it is killed).
        for args in [
            vec!["attach", "--transport", t, &id],
            vec!["exec", "--transport", t, &id, "sleep", "30"],
        ] {
            let mut client = e
                .berthctl(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(100));
            let _ = client.kill();
            let _ = client.wait();
        }
    }
    // Sessions of killed clients end at once, and so do their processes.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = e
            .berthctl(&["exec", "-s", &id, "ps", "-o", "args"])
            .output()
            .expect("berthctl exec -s");
        let ps = text(&out.stdout);
        if !ps.contains("sleep 30") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "execs of gone clients still run:\n{ps}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (f, th, r) = (
            fd_count(pid),
            proc_status(pid, "Threads:"),
            proc_status(pid, "VmRSS:"),
        );
        // Memory: what allocators keep for reuse, not a per-session leak (100 sessions ran).
        if f <= fds + 2 && th <= threads + 8 && r <= rss + (16 << 10) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "berthd fds {fds} -> {f}, threads {threads} -> {th}, RSS {rss} KiB -> {r} KiB"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test]
async fn attach_sees_output_and_the_container_outlives_its_attachers() {
    let Some(mut e) = start().await else { return };
    let (_pod, id) = e
        .running(
            "attach",
            "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done",
        )
        .await;
    for t in TRANSPORTS {
        for _ in 0..2 {
            let child = e
                .berthctl(&["attach", "--transport", t, &id])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("berthctl attach");
            let pid = child.id();
            std::thread::sleep(Duration::from_millis(1500));
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let out = wait_output(child, Duration::from_secs(10));
            let got = text(&out.stdout);
            assert!(got.contains("tick "), "{t}: {got:?} {}", text(&out.stderr));
        }
        let st =
            e.rt.container_status(cri::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        assert_eq!(
            st.state,
            cri::ContainerState::ContainerRunning as i32,
            "{t}"
        );
    }
}

/// The server certificate (127.0.0.1) and CA hack/registry.sh made for the TLS registry.
fn hack_cert(name: &str) -> std::path::PathBuf {
    hack_dir().join("certs").join(name)
}

#[tokio::test]
async fn https_streaming_and_expired_tokens() {
    let (ca, cert, key) = (
        hack_cert("ca.crt"),
        hack_cert("server.crt"),
        hack_cert("server.key"),
    );
    let extra = format!(
        "[streaming]\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntoken_ttl_secs = 2\n",
        cert.display(),
        key.display()
    );
    let Some(mut e) = start_with(&extra).await else {
        return;
    };
    let (_pod, id) = e.running("tls", "sleep 3600").await;
    let ca_arg = ca.display().to_string();
    // Verified against the CA that signed the server's certificate, and crictl's way (any
    // certificate); a CA that did not sign it is refused.
    for t in TRANSPORTS {
        for pre in [vec!["--stream-ca", ca_arg.as_str()], vec![]] {
            let mut args = pre.clone();
            args.extend(["exec", "--transport", t, &id, "echo", "over tls"]);
            let out = e.berthctl(&args).output().expect("berthctl");
            assert_eq!(
                text(&out.stdout),
                "over tls\n",
                "{t} {pre:?}: {}",
                text(&out.stderr)
            );
        }
        let wrong = hack_cert("token.crt").display().to_string();
        let out = e
            .berthctl(&["--stream-ca", &wrong, "exec", "--transport", t, &id, "true"])
            .output()
            .expect("berthctl");
        assert_ne!(out.status.code(), Some(0), "{t}: a CA that did not sign it");
        assert!(
            text(&out.stderr).to_lowercase().contains("tls"),
            "{t}: {}",
            text(&out.stderr)
        );
    }
    let pem = std::fs::read(&ca).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    // A fresh token reaches the upgrade check (this request asks for none); one past its
    // two seconds is gone.
    let fresh = exec_url(&mut e.rt, &id, &["true"]).await;
    assert!(fresh.starts_with("https://127.0.0.1:"), "{fresh}");
    let stale = exec_url(&mut e.rt, &id, &["true"]).await;
    let status = http.post(&fresh).send().await.unwrap().status();
    assert_eq!(status.as_u16(), 400, "fresh token");
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let status = http.post(&stale).send().await.unwrap().status();
    assert_eq!(status.as_u16(), 404, "expired token");

    // At most 1000 unused URLs at a time; expired ones make room again.
    let mut refused = None;
    for n in 0..1001 {
        let r = e.rt.exec(exec_request(&id, &["true"])).await;
        if let Err(st) = r {
            refused = Some((n, st));
            break;
        }
    }
    let (n, st) = refused.expect("1001 pending streaming URLs were all handed out");
    assert_eq!(n, 1000, "{st:?}");
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let again = exec_url(&mut e.rt, &id, &["true"]).await;
    assert!(again.starts_with("https://"), "{again}");
}

/// The SPDY/3 header dictionary (spec 2.6.10.1), for header blocks made here by hand.
const SPDY_DICTIONARY: &[u8] = include_bytes!("../../pkg/streaming/src/spdy/dictionary.bin");

fn spdy_control(kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80, 0x03, (kind >> 8) as u8, kind as u8, 0];
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

/// A SYN_STREAM whose header block holds `headers`, compressed as SPDY/3 does.
fn spdy_syn_stream(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut raw = (headers.len() as u32).to_be_bytes().to_vec();
    for (n, v) in headers {
        raw.extend_from_slice(&(n.len() as u32).to_be_bytes());
        raw.extend_from_slice(n);
        raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
        raw.extend_from_slice(v);
    }
    let mut z = flate2::Compress::new(flate2::Compression::best(), true);
    z.set_dictionary(SPDY_DICTIONARY).unwrap();
    let mut block = Vec::with_capacity(raw.len() / 100 + 4096);
    z.compress_vec(&raw, &mut block, flate2::FlushCompress::Sync)
        .unwrap();
    while z.total_in() < raw.len() as u64 {
        block.reserve(4096);
        let done = z.total_in() as usize;
        z.compress_vec(&raw[done..], &mut block, flate2::FlushCompress::Sync)
            .unwrap();
    }
    let mut payload = 1u32.to_be_bytes().to_vec(); // stream 1
    payload.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // associated stream, priority, slot
    payload.extend_from_slice(&block);
    spdy_control(1, &payload)
}

/// A raw connection upgraded at `url` with `upgrade` headers; panics unless berthd says 101.
fn raw_upgrade(url: &str, headers: &str) -> TcpStream {
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "POST {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n").unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "upgrade answer cut short");
        head.push(b[0]);
    }
    assert!(text(&head).starts_with("HTTP/1.1 101"), "{}", text(&head));
    s
}

/// Whether the peer ends the connection within `limit` (whatever it sends first).
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = vec![0u8; 64 << 10];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

#[tokio::test]
async fn hostile_peers_are_cut_off_and_memory_stays_bounded() {
    let Some(mut e) = start().await else { return };
    let (id, pid) = warmed_up(&mut e, "hostile", &["true"]).await;
    let fds = fd_count(pid);
    // Peak memory from here on.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset VmHWM");
    let hwm_before = proc_status(pid, "VmHWM:");

    let spdy = "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n";
    let ws = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n";
    // Each inflates to 15 MiB if nothing stops it; compressed it fits a control frame.
    let bomb = spdy_syn_stream(&[(b"streamtype".to_vec(), vec![b'a'; 15 << 20])]);
    assert!(bomb.len() < 16 << 10, "bomb of {} bytes", bomb.len());
    let many: Vec<(Vec<u8>, Vec<u8>)> = (0..1000)
        .map(|i| (format!("h{i}").into_bytes(), b"v".to_vec()))
        .collect();
    let mut settings = 1000u32.to_be_bytes().to_vec();
    settings.extend(std::iter::repeat_n(0u8, 8000));
    let mut huge_settings = spdy_control(4, &[]);
    huge_settings[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    // A masked binary frame announcing 1 TiB, and a message fragmented past the 1 MiB limit.
    let mut ws_huge = vec![0x82, 0x80 | 127];
    ws_huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
    ws_huge.extend_from_slice(&[1, 2, 3, 4]);
    let ws_fragment = |first: bool| {
        let mut f = vec![if first { 0x02 } else { 0x00 }, 0x80 | 127];
        f.extend_from_slice(&(512u64 << 10).to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0]);
        f.extend(std::iter::repeat_n(0u8, 512 << 10));
        f
    };
    let attacks: Vec<(&str, &str, Vec<Vec<u8>>)> = vec![
        ("SPDY zlib header bomb", spdy, vec![bomb.clone()]),
        ("SPDY 1000 headers", spdy, vec![spdy_syn_stream(&many)]),
        (
            "SPDY SETTINGS of 1000 entries",
            spdy,
            vec![spdy_control(4, &settings)],
        ),
        (
            "SPDY SETTINGS of 16 MiB",
            spdy,
            vec![huge_settings, vec![0u8; 1 << 20]],
        ),
        (
            "WebSocket frame of 1 TiB",
            ws,
            vec![ws_huge, vec![0u8; 1 << 20]],
        ),
        (
            "WebSocket message of 4 MiB",
            ws,
            (0..8).map(|i| ws_fragment(i == 0)).collect(),
        ),
    ];
    for (what, headers, frames) in &attacks {
        // Twenty at once: unbounded parsing would hold hundreds of MiB together.
        let urls: Vec<String> = {
            let mut v = Vec::new();
            for _ in 0..20 {
                v.push(exec_url(&mut e.rt, &id, &["sleep", "30"]).await);
            }
            v
        };
        let threads: Vec<_> = urls
            .into_iter()
            .map(|url| {
                let (headers, frames) = (headers.to_string(), frames.clone());
                std::thread::spawn(move || {
                    let mut s = raw_upgrade(&url, &headers);
                    for f in &frames {
                        // Refused mid-way: the write fails once berthd has closed.
                        if s.write_all(f).is_err() {
                            break;
                        }
                    }
                    closed_within(&mut s, Duration::from_secs(10))
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap(), "{what}: the connection stayed open");
        }
    }
    let grown = proc_status(pid, "VmHWM:").saturating_sub(hwm_before);
    assert!(
        grown < 64 << 10,
        "berthd's peak memory grew by {grown} KiB under the attacks (from {hwm_before} KiB)"
    );
    // The sessions that never started leave no descriptors, and the daemon still serves.
    let deadline = Instant::now() + Duration::from_secs(15);
    while fd_count(pid) > fds + 2 {
        assert!(
            Instant::now() < deadline,
            "berthd fds {fds} -> {}: {}",
            fd_count(pid),
            fd_targets(pid)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = e.exec("spdy", &id, &["echo", "still here"], None);
    assert_eq!(text(&out.stdout), "still here\n", "{}", text(&out.stderr));
}
