//! Streaming interop with clients nobody here wrote: the machine's kubectl 1.32 (WebSocket
//! first, and SPDY when told to) and Debian's kubectl 1.20 (SPDY only) exec, attach and
//! port-forward into berth's containers through the stand-in API server of
//! `berth_e2e::apiserver`, which forwards their upgrade requests to berthd's streaming URLs
//! as kubelet does.
//! Run: `cargo test -p berth-e2e --test kubectl -- --test-threads=1`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::apiserver::ApiServer;
use berth_e2e::ctr::*;
use berth_e2e::{required, workspace_root};

const NET: Net = Net {
    bridge: "be2eu0",
    table: "berth_e2eu",
    subnet: "10.237.0.0/16",
};
/// Local listen ports for port-forward: 18800-18899.
const LOCAL_PORT_BASE: u16 = 18800;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One kubectl and the transport it is expected to use.
struct Client {
    label: &'static str,
    bin: PathBuf,
    env: Vec<(&'static str, &'static str)>,
    /// The `Upgrade` header its exec/attach requests carry.
    stream_upgrade: &'static str,
    /// The `Upgrade` header its port-forward requests carry.
    forward_upgrade: &'static str,
    /// The exec/attach protocol kubelet would pick from its offer (the client's first that
    /// kubelet serves: v5 also over SPDY since 1.30).
    stream_protocol: &'static str,
}

fn clients() -> Option<Vec<Client>> {
    let new = PathBuf::from("/usr/bin/kubectl");
    let old = Command::new("bash")
        .arg(workspace_root().join("hack/kubectl-old.sh"))
        .stderr(Stdio::inherit())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let (Some(old), true) = (old, new.is_file()) else {
        let msg = "kubectl 1.32 at /usr/bin/kubectl and hack/kubectl-old.sh are needed";
        assert!(!required(), "{msg}");
        eprintln!("SKIP: {msg}");
        return None;
    };
    Some(vec![
        Client {
            label: "kubectl 1.32",
            bin: new.clone(),
            env: vec![],
            stream_upgrade: "websocket",
            forward_upgrade: "websocket",
            stream_protocol: "v5.channel.k8s.io",
        },
        Client {
            label: "kubectl 1.32 (SPDY)",
            bin: new,
            env: vec![
                ("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false"),
                ("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false"),
            ],
            stream_upgrade: "SPDY/3.1",
            forward_upgrade: "SPDY/3.1",
            stream_protocol: "v5.channel.k8s.io",
        },
        Client {
            label: "kubectl 1.20",
            bin: old,
            env: vec![],
            stream_upgrade: "SPDY/3.1",
            forward_upgrade: "SPDY/3.1",
            stream_protocol: "v4.channel.k8s.io",
        },
    ])
}

struct Kube {
    e: Env,
    api: ApiServer,
    clients: Vec<Client>,
    /// kubectl caches discovery under `$HOME/.kube`: every client gets a fresh home per test.
    homes: Vec<tempfile::TempDir>,
}

async fn start() -> Option<Kube> {
    // After the root and registry checks: unpacking kubectl 1.20 may need apt.
    let e = Env::start(&NET, "", &SERIAL).await?;
    let clients = clients()?;
    let api = ApiServer::start(e.rt.clone())
        .await
        .expect("stand-in apiserver");
    let homes = clients
        .iter()
        .map(|_| {
            let h = tempfile::Builder::new()
                .prefix("berth-e2e-kubehome-")
                .tempdir_in("/var/tmp")
                .expect("home");
            std::fs::write(h.path().join("kubeconfig"), api.kubeconfig("e2e")).unwrap();
            h
        })
        .collect();
    Some(Kube {
        e,
        api,
        clients,
        homes,
    })
}

impl Drop for Kube {
    /// See [`Daemon::remove_all_pods`].
    fn drop(&mut self) {
        self.e.d.remove_all_pods();
    }
}

impl Kube {
    /// A pod `name` with one running container `app` (tty and stdin as given) running `script`.
    async fn running(&mut self, name: &str, script: &str, tty: bool, stdin: bool) {
        let bb = self.e.img.get("BUSYBOX_REF");
        self.e.pull(&bb).await;
        let (pod, pc) = self.e.pod(name).await;
        let mut c = sh("app", &bb, script);
        c.tty = tty;
        c.stdin = stdin;
        self.e.run_ctr(&pod, &pc, c).await;
    }

    fn kubectl(&self, i: usize, args: &[&str]) -> Command {
        let c = &self.clients[i];
        let home = self.homes[i].path();
        let mut cmd = Command::new(&c.bin);
        cmd.args(args)
            .env("HOME", home)
            .env("KUBECONFIG", home.join("kubeconfig"))
            .env_remove("KUBECTL_REMOTE_COMMAND_WEBSOCKETS")
            .env_remove("KUBECTL_PORT_FORWARD_WEBSOCKETS")
            .envs(c.env.iter().copied());
        cmd
    }

    /// The shell line running client `i` with `args`, for `script -c`.
    fn kubectl_line(&self, i: usize, args: &str) -> String {
        let c = &self.clients[i];
        let home = self.homes[i].path();
        let env: String = c.env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        format!(
            "env -u KUBECTL_REMOTE_COMMAND_WEBSOCKETS -u KUBECTL_PORT_FORWARD_WEBSOCKETS HOME={h} KUBECONFIG={h}/kubeconfig {env}{} {args}",
            c.bin.display(),
            h = home.display()
        )
    }

    fn run(&self, i: usize, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut c = self.kubectl(i, args);
        c.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = c.spawn().expect("kubectl");
        if let Some(data) = stdin {
            let mut w = child.stdin.take().unwrap();
            let data = data.to_vec();
            std::thread::spawn(move || {
                let _ = w.write_all(&data);
            });
        }
        wait_output(child, Duration::from_secs(60))
    }

    /// Every upgrade since the last check went out the way client `i` is expected to speak.
    fn assert_upgrades(&self, i: usize, sub: &str, n: usize) {
        let c = &self.clients[i];
        let want = if sub == "portforward" {
            c.forward_upgrade
        } else {
            c.stream_upgrade
        };
        let misses = self.api.take_misses();
        assert!(misses.is_empty(), "{}: unanswered: {misses:?}", c.label);
        let ups = self.api.take_upgrades();
        assert!(ups.len() >= n, "{}: {ups:?}", c.label);
        for u in &ups {
            assert_eq!(u.subresource, sub, "{}: {u:?}", c.label);
            assert!(
                u.upgrade.eq_ignore_ascii_case(want),
                "{}: expected {want}: {u:?}",
                c.label
            );
            // What kubelet would pick from these offers.
            let proto = match (sub, want) {
                ("portforward", "websocket") => "SPDY/3.1+portforward.k8s.io",
                ("portforward", _) => "portforward.k8s.io",
                _ => c.stream_protocol,
            };
            assert!(
                u.protocols.iter().any(|p| p == proto),
                "{}: expected {proto} offered: {u:?}",
                c.label
            );
            assert_eq!(u.status, 101, "{}: {u:?}", c.label);
            assert_eq!(u.negotiated, proto, "{}: {u:?}", c.label);
        }
    }
}

fn wait_output(child: std::process::Child, limit: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("kubectl output"),
        Err(_) => {
            kill(pid);
            panic!("kubectl did not finish within {limit:?}");
        }
    }
}

/// `script` giving `line` a terminal; `SHELL` fixed so the test does not depend on the
/// caller's login shell (`script -c` runs `$SHELL`).
fn script(line: &str) -> std::process::Child {
    Command::new("script")
        .args(["-qec", line, "/dev/null"])
        .env("SHELL", "/bin/sh")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script")
}

/// Everything `r` yields, gathered by a thread as it comes.
fn tail(mut r: impl Read + Send + 'static) -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                return;
            }
            b.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

/// Kills `pid` and every process below it, children first found, so none is reparented
/// and missed.
fn kill_tree(pid: u32) {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    kill(pid);
    for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
        kill_tree(c);
    }
}

fn kill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_output_stdin_and_exit_codes() {
    let Some(mut k) = start().await else { return };
    k.running("kexec", "sleep 3600", false, false).await;
    let data: Vec<u8> = (0..1_000_000u32)
        .map(|i| b"abcdefghij\n"[(i % 11) as usize])
        .collect();
    for i in 0..k.clients.len() {
        let l = k.clients[i].label;
        let out = k.run(i, &["exec", "kexec", "--", "echo", "hello", "world"], None);
        assert_eq!(
            text(&out.stdout),
            "hello world\n",
            "{l}: {}",
            text(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0), "{l}");
        k.assert_upgrades(i, "exec", 1);

        let script = "echo out; echo err >&2; exit 7";
        let out = k.run(
            i,
            &["exec", "kexec", "-c", "app", "--", "sh", "-c", script],
            None,
        );
        assert_eq!(out.status.code(), Some(7), "{l}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "out\n", "{l}");
        assert!(
            text(&out.stderr).contains("err"),
            "{l}: {}",
            text(&out.stderr)
        );

        let out = k.run(i, &["exec", "-i", "kexec", "--", "cat"], Some(&data));
        assert_eq!(out.status.code(), Some(0), "{l}: {}", text(&out.stderr));
        assert_eq!(out.stdout.len(), data.len(), "{l}");
        assert!(out.stdout == data, "{l}: stdin came back changed");

        let out = k.run(i, &["exec", "kexec", "--", "/no/such/binary"], None);
        assert_ne!(out.status.code(), Some(0), "{l}");
        k.assert_upgrades(i, "exec", 3);

        let out = k.run(i, &["exec", "nosuchpod", "--", "true"], None);
        assert_ne!(out.status.code(), Some(0), "{l}");
        assert!(
            text(&out.stderr).contains("not found"),
            "{l}: {}",
            text(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_it_sees_the_terminal_size_and_a_resize() {
    let Some(mut k) = start().await else { return };
    k.running("ktty", "sleep 3600", false, false).await;
    for i in 0..k.clients.len() {
        let l = k.clients[i].label;
        // `script` gives kubectl a terminal; its first size goes over the resize stream when
        // the session starts, and the change two seconds in (SIGWINCH) follows.
        let inner = format!(
            "stty rows 33 cols 77; (sleep 2; stty rows 40 cols 100 </dev/tty) & {}",
            k.kubectl_line(i, "exec -it ktty -- sh -c 'stty size; sleep 4; stty size'")
        );
        let mut child = script(&inner);
        // Held open: at EOF on its stdin `script` types into the terminal, which kubectl would
        // pass on to the container.
        let keep = child.stdin.take();
        let out = wait_output(child, Duration::from_secs(60));
        drop(keep);
        let got = text(&out.stdout);
        assert_eq!(got, "33 77\r\n40 100\r\n", "{l}: {}", text(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{l}: {got:?}");
        k.assert_upgrades(i, "exec", 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_attach_it_to_a_tty_container_sets_its_size() {
    let Some(mut k) = start().await else { return };
    // An interactive shell on the container's terminal; the pod lists the container with
    // `tty: true`, without which kubectl would refuse a terminal.
    k.running("kattach", "exec sh", true, true).await;
    for i in 0..k.clients.len() {
        let l = k.clients[i].label;
        let rows = 20 + i;
        // `exec` keeps kubectl in the terminal's foreground process group whatever shell
        // `script` starts: in a background group its tcsetattr to raw mode would stop it
        // (SIGTTOU). kubectl's own log goes to a file so a failure shows what it did.
        let log = k.homes[i].path().join("attach.log");
        let inner = format!(
            "stty rows {rows} cols 55; exec {} 2>{}",
            k.kubectl_line(i, "attach -it kattach -v=6"),
            log.display()
        );
        let mut child = script(&inner);
        let mut w = child.stdin.take().unwrap();
        let seen = tail(child.stdout.take().unwrap());
        let want = format!("size={rows} 55");
        // Attaching leaves the container running, so kubectl never ends by itself: it is
        // ended once the answer came (lines typed before the shell reads are simply echoed).
        let deadline = Instant::now() + Duration::from_secs(45);
        while !text(&seen.lock().unwrap()).contains(&want) && Instant::now() < deadline {
            if w.write_all(b"echo size=$(stty size)\n").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        kill_tree(child.id());
        let _ = child.wait();
        drop(w);
        let got = text(&seen.lock().unwrap());
        assert!(
            got.contains(&want),
            "{l}: {got:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        k.assert_upgrades(i, "attach", 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_attach_sees_output_and_sends_stdin() {
    let Some(mut k) = start().await else { return };
    k.running(
        "ktick",
        "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done",
        false,
        false,
    )
    .await;
    k.running("kread", "while read l; do echo got $l; done", false, true)
        .await;
    for i in 0..k.clients.len() {
        let l = k.clients[i].label;
        let child = k
            .kubectl(i, &["attach", "ktick"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl attach");
        let pid = child.id();
        std::thread::sleep(Duration::from_millis(3000));
        kill(pid);
        let out = wait_output(child, Duration::from_secs(10));
        let got = text(&out.stdout);
        assert!(got.contains("tick "), "{l}: {got:?} {}", text(&out.stderr));
        k.assert_upgrades(i, "attach", 1);

        let mut child = k
            .kubectl(i, &["attach", "-i", "kread"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl attach -i");
        let pid = child.id();
        let mut w = child.stdin.take().unwrap();
        let word = format!("ping{i}");
        let line = format!("{word}\n");
        std::thread::spawn(move || {
            // Lines until kubectl has joined: only those after it attached come back.
            for _ in 0..40 {
                if w.write_all(line.as_bytes()).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
                let _ = tx.send(text(&seen));
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = String::new();
        while !got.contains(&format!("got {word}")) && Instant::now() < deadline {
            if let Ok(s) = rx.recv_timeout(Duration::from_millis(200)) {
                got = s;
            }
        }
        kill(pid);
        let out = wait_output(child, Duration::from_secs(10));
        assert!(
            got.contains(&format!("got {word}")),
            "{l}: {got:?} {}",
            text(&out.stderr)
        );
        k.assert_upgrades(i, "attach", 1);
    }
}

fn http_get(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the forwarded port");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    text(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_port_forward_reaches_a_server_inside_the_pod() {
    let Some(mut k) = start().await else { return };
    k.running(
        "kpf",
        "mkdir -p /w; echo inside > /w/index.html; httpd -p 127.0.0.1:8080 -h /w; sleep 3600",
        false,
        false,
    )
    .await;
    for i in 0..k.clients.len() {
        let l = k.clients[i].label;
        let local = LOCAL_PORT_BASE + i as u16;
        let child = k
            .kubectl(
                i,
                &[
                    "port-forward",
                    "--address",
                    "127.0.0.1",
                    "pod/kpf",
                    &format!("{local}:8080"),
                ],
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl port-forward");
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", local)).is_err() {
            if Instant::now() > deadline {
                kill(pid);
                let out = wait_output(child, Duration::from_secs(10));
                panic!("{l}: port-forward did not listen: {}", text(&out.stderr));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The server listens on the pod's loopback only: nothing on the host can reach it.
        for _ in 0..3 {
            let a = http_get(local);
            assert!(
                a.contains("200 OK") && a.ends_with("inside\n"),
                "{l}: {a:?}"
            );
        }
        kill(pid);
        let _ = wait_output(child, Duration::from_secs(10));
        k.assert_upgrades(i, "portforward", 1);
    }
}
