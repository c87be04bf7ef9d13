//! CRI pod sandbox end-to-end tests: real namespaces, veths, nftables and CNI plugins, against a
//! real berthd. Each daemon gets its own bridge, subnet and nftables table so nothing collides
//! with a node's real pod network, and a guard removes them even when a test fails.
//! Run: `hack/test.sh` or `cargo test -p berth-e2e --test pods -- --test-threads=1`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_e2e::cri::runtime_service_client::RuntimeServiceClient;
use berth_e2e::cri::{self, PodSandboxConfig};
use berth_e2e::*;
use tonic::transport::Channel;
use tonic::Code;

const BRIDGE: &str = "be2e0";
const TABLE: &str = "berth_e2e";
const SUBNET: &str = "10.231.0.0/16";
const GATEWAY: &str = "10.231.0.1";

fn have_root() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: pod e2e tests need root");
        return false;
    }
    if !berthd_bin().is_file() {
        assert!(
            !required(),
            "berthd binary {} missing",
            berthd_bin().display()
        );
        eprintln!("SKIP: berthd binary missing (cargo build --bins)");
        return false;
    }
    true
}

fn opts(cni_dir: &Path) -> DaemonOpts {
    DaemonOpts {
        extra_config: format!(
            "\n[network]\nbridge = \"{BRIDGE}\"\nsubnet = \"{SUBNET}\"\nnft_table = \"{TABLE}\"\ncni_conf_dir = \"{}\"\n",
            cni_dir.display()
        ),
        log_level: "info,h2=warn".into(),
        ..Default::default()
    }
}

/// Every test here uses the same bridge, table and test-host names, so they take turns even
/// when cargo runs tests in parallel.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Pods {
    daemon: Daemon,
    rt: RuntimeServiceClient<Channel>,
    _cni: tempfile::TempDir,
    _net: NetGuard,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

async fn start() -> Option<Pods> {
    start_with(|_| {}).await
}

async fn start_with(prepare_cni: impl FnOnce(&Path)) -> Option<Pods> {
    if !have_root() {
        return None;
    }
    let serial = SERIAL.lock().await;
    let net = NetGuard {
        bridge: BRIDGE,
        table: TABLE,
    };
    let cni = tempfile::tempdir().expect("cni dir");
    prepare_cni(cni.path());
    let daemon = Daemon::start(opts(cni.path())).await.expect("berthd");
    let rt = daemon.runtime().await.expect("runtime client");
    Some(Pods {
        daemon,
        rt,
        _cni: cni,
        _net: net,
        _serial: serial,
    })
}

fn pod_config(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        ..Default::default()
    }
}

fn with_host_port(mut c: PodSandboxConfig, container: i32, host: i32) -> PodSandboxConfig {
    c.port_mappings.push(cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: container,
        host_port: host,
        host_ip: String::new(),
    });
    c
}

impl Pods {
    async fn run(&mut self, config: PodSandboxConfig) -> Result<String, tonic::Status> {
        self.rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .map(|r| r.into_inner().pod_sandbox_id)
    }

    async fn status(
        &mut self,
        id: &str,
    ) -> Result<(cri::PodSandboxStatus, serde_json::Value), tonic::Status> {
        let r = self
            .rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: true,
            })
            .await?
            .into_inner();
        let info = r
            .info
            .get("info")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(serde_json::Value::Null);
        Ok((r.status.expect("status"), info))
    }

    /// Starts `n` pods at once, each RunPodSandbox on its own task; returns their IDs.
    async fn run_concurrently(&self, prefix: &str, n: usize) -> Vec<String> {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let mut rt = self.rt.clone();
                let config = pod_config(&format!("{prefix}-{i}"));
                tokio::spawn(async move {
                    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                        config: Some(config),
                        runtime_handler: String::new(),
                    })
                    .await
                    .map(|r| r.into_inner().pod_sandbox_id)
                })
            })
            .collect();
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.expect("join").expect("concurrent RunPodSandbox"));
        }
        ids
    }

    async fn ip(&mut self, id: &str) -> String {
        let (st, _) = self.status(id).await.expect("status");
        st.network.expect("network status").ip
    }

    async fn netns(&mut self, id: &str) -> PathBuf {
        let (_, info) = self.status(id).await.expect("status");
        PathBuf::from(
            info["namespaces"]["net"]
                .as_str()
                .expect("net namespace path in verbose info"),
        )
    }

    async fn stop(&mut self, id: &str) {
        self.rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .expect("stop");
    }

    async fn remove(&mut self, id: &str) {
        self.rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .expect("remove");
    }

    async fn list(&mut self, filter: Option<cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
        self.rt
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter })
            .await
            .expect("list")
            .into_inner()
            .items
    }

    /// What pods left on the node. The kernel frees a namespace (and the veth inside it)
    /// asynchronously after its last reference goes, so this waits a little for that.
    fn leftovers(&self) -> Vec<String> {
        settled(|| self.leftovers_now())
    }

    /// What a pod leaves on the node: veths on our bridge, pinned namespaces, leases, rules.
    fn leftovers_now(&self) -> Vec<String> {
        let mut out = Vec::new();
        let links = cmd_out("ip", &["-o", "link", "show", "master", BRIDGE]);
        if !links.trim().is_empty() {
            out.push(format!("veths on {BRIDGE}: {links}"));
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let state = self.daemon.state.display().to_string();
        for l in mounts
            .lines()
            .filter(|l| l.contains(&state) && l.contains("/ns/"))
        {
            out.push(format!("mount: {l}"));
        }
        let leases = self.daemon.root.join("store/leases");
        if let Ok(rd) = std::fs::read_dir(&leases) {
            for e in rd.flatten() {
                out.push(format!("lease: {}", e.path().display()));
            }
        }
        let rules = cmd_out("nft", &["list", "table", "ip", TABLE]);
        if rules.contains("pod ") {
            out.push(format!("nft elements: {rules}"));
        }
        out
    }
}

fn cmd_out(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn in_netns_ok(netns: &Path, args: &[&str]) -> bool {
    let netns_arg = format!("--net={}", netns.display());
    Command::new("nsenter")
        .arg(&netns_arg)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A Python server started under `wrapper` (nsenter into a pod, `ip netns exec` into a test
/// host); ready once it printed `ready`, killed when dropped, also when a test fails.
struct Server(std::process::Child);

impl Server {
    fn start(wrapper: &[String], script: &str) -> Server {
        let mut child = Command::new(&wrapper[0])
            .args(&wrapper[1..])
            .args(["python3", "-c", script])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn test server");
        let mut ready = [0u8; 6];
        child
            .stdout
            .as_mut()
            .expect("stdout")
            .read_exact(&mut ready)
            .expect("server ready");
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn in_pod(netns: &Path) -> Vec<String> {
    vec!["nsenter".into(), format!("--net={}", netns.display())]
}

/// A TCP server inside the pod's network namespace that answers `hello <tag>`.
fn serve_in_netns(netns: &Path, port: u16, tag: &str) -> Server {
    let script = format!(
        "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0',{port}))\ns.listen(8)\nprint('ready', flush=True)\nwhile True:\n  c,_=s.accept()\n  c.sendall(b'hello {tag}\\n')\n  c.close()\n"
    );
    Server::start(&in_pod(netns), &script)
}

fn fetch(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(3)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The node's own primary address (not one of the pod bridges').
fn node_ip() -> Option<String> {
    cmd_out("ip", &["-4", "-o", "addr", "show", "scope", "global"])
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|dev| !dev.starts_with("b") && !dev.starts_with("cni"))
        })
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|cidr| cidr.split('/').next())
        .map(str::to_string)
        .next()
}

fn in_subnet(ip: &str) -> bool {
    ip.parse::<Ipv4Addr>()
        .map(|a| a.octets()[0] == 10 && a.octets()[1] == 231)
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_lifecycle_status_list_and_idempotent_teardown() {
    let Some(mut p) = start().await else { return };
    let mut config = pod_config("life");
    config.hostname = "life".into();
    config.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["e2e.svc.cluster.local".into(), "svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    let id = p.run(config).await.expect("run");
    let (st, info) = p.status(&id).await.expect("status");
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    let cfg =
        p.rt.runtime_config(cri::RuntimeConfigRequest {})
            .await
            .expect("RuntimeConfig")
            .into_inner();
    assert_eq!(
        cfg.linux.map(|l| l.cgroup_driver),
        Some(cri::CgroupDriver::Cgroupfs as i32)
    );
    let cgroup = info["cgroupPath"]
        .as_str()
        .expect("cgroup path")
        .to_string();
    let cgroup_dirs: Vec<PathBuf> = [
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ]
    .iter()
    .map(|root| PathBuf::from(format!("{root}{cgroup}")))
    .filter(|p| p.is_dir())
    .collect();
    assert!(!cgroup_dirs.is_empty(), "pod cgroup {cgroup} not found");
    let ip = st.network.as_ref().expect("network").ip.clone();
    assert!(in_subnet(&ip), "pod IP {ip} outside {SUBNET}");
    let netns = PathBuf::from(info["namespaces"]["net"].as_str().expect("netns"));
    assert!(in_netns_ok(&netns, &["ip", "-4", "addr", "show", "eth0"]));
    let hostname = cmd_out(
        "nsenter",
        &[
            &format!("--uts={}", info["namespaces"]["uts"].as_str().expect("uts")),
            "hostname",
        ],
    );
    assert_eq!(hostname.trim(), "life");
    let resolv = info["files"]["resolv_conf"]
        .as_str()
        .expect("resolv.conf path");
    let resolv_text = std::fs::read_to_string(resolv).expect("resolv.conf");
    assert!(
        resolv_text.contains("nameserver 10.96.0.10"),
        "{resolv_text}"
    );
    assert!(
        resolv_text.contains("search e2e.svc.cluster.local svc.cluster.local"),
        "{resolv_text}"
    );
    assert!(resolv_text.contains("options ndots:5"), "{resolv_text}");
    let hosts = std::fs::read_to_string(info["files"]["hosts"].as_str().expect("hosts path"))
        .expect("hosts");
    assert!(
        hosts.contains(&format!("{ip}\tlife")) || hosts.contains(&format!("{ip} life")),
        "{hosts}"
    );

    // Same metadata again: ALREADY_EXISTS naming the holder.
    let dup = p.run(pod_config("life")).await.expect_err("duplicate");
    assert_eq!(dup.code(), Code::AlreadyExists);
    assert!(dup.message().contains(&id), "{}", dup.message());

    // Filters: id prefix, state, labels.
    let other = p.run(pod_config("other")).await.expect("run other");
    assert_eq!(p.list(None).await.len(), 2);
    let by_label = p
        .list(Some(cri::PodSandboxFilter {
            label_selector: HashMap::from([("app".into(), "life".into())]),
            ..Default::default()
        }))
        .await;
    assert_eq!(by_label.len(), 1);
    assert_eq!(by_label[0].id, id);
    let by_id = p
        .list(Some(cri::PodSandboxFilter {
            id: id[..12].into(),
            ..Default::default()
        }))
        .await;
    assert_eq!(by_id.len(), 1);

    p.stop(&id).await;
    p.stop(&id).await;
    let (st, _) = p.status(&id).await.expect("status after stop");
    assert_eq!(st.state, cri::PodSandboxState::SandboxNotready as i32);
    let ready = p
        .list(Some(cri::PodSandboxFilter {
            state: Some(cri::PodSandboxStateValue {
                state: cri::PodSandboxState::SandboxReady as i32,
            }),
            ..Default::default()
        }))
        .await;
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0].id, other);
    assert!(!netns.exists(), "netns pin must go with stop");

    p.remove(&id).await;
    p.remove(&id).await;
    for dir in &cgroup_dirs {
        assert!(!dir.exists(), "pod cgroup {} left", dir.display());
    }
    // Remove of a running pod stops it first.
    p.remove(&other).await;
    assert!(p.list(None).await.is_empty());
    let err = p.status(&id).await.expect_err("gone");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(p.leftovers(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_reach_each_other_and_the_node() {
    let Some(mut p) = start().await else { return };
    let a = p.run(pod_config("a")).await.expect("run a");
    let b = p.run(pod_config("b")).await.expect("run b");
    let (ip_a, ip_b) = (p.ip(&a).await, p.ip(&b).await);
    assert_ne!(ip_a, ip_b);
    let (ns_a, ns_b) = (p.netns(&a).await, p.netns(&b).await);
    assert!(
        in_netns_ok(&ns_a, &["ping", "-c", "1", "-W", "3", &ip_b]),
        "a cannot ping b"
    );
    assert!(
        in_netns_ok(&ns_b, &["ping", "-c", "1", "-W", "3", &ip_a]),
        "b cannot ping a"
    );
    assert!(
        in_netns_ok(&ns_a, &["ping", "-c", "1", "-W", "3", GATEWAY]),
        "a cannot ping the gateway"
    );

    // A server on the node, reached from the pod through the gateway.
    let listener = TcpListener::bind((GATEWAY, 0)).expect("bind on gateway");
    let port = listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        if let Ok((mut c, _)) = listener.accept() {
            let _ = c.write_all(b"node says hi\n");
        }
    });
    let netns_arg = format!("--net={}", ns_a.display());
    let out = Command::new("nsenter")
        .args([&netns_arg, "python3", "-c", &format!("import socket;s=socket.create_connection(('{GATEWAY}',{port}),3);print(s.recv(100).decode())")])
        .output()
        .expect("client in pod");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("node says hi"),
        "{out:?}"
    );
    let _ = server.join();

    p.remove(&a).await;
    p.remove(&b).await;
    assert_eq!(p.leftovers(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_port_reaches_pod_from_loopback_and_node_ip_and_conflicts_cleanly() {
    let Some(mut p) = start().await else { return };
    let host_port = 18080;
    let id = p
        .run(with_host_port(pod_config("web"), 8080, host_port))
        .await
        .expect("run with hostPort");
    let netns = p.netns(&id).await;
    let server = serve_in_netns(&netns, 8080, "from-pod");
    let via_lo = fetch(&format!("127.0.0.1:{host_port}"));
    let via_gateway = fetch(&format!("{GATEWAY}:{host_port}"));
    let via_node = node_ip().map(|ip| fetch(&format!("{ip}:{host_port}")));
    drop(server);
    assert_eq!(via_lo.as_deref(), Some("hello from-pod\n"), "via 127.0.0.1");
    assert_eq!(
        via_gateway.as_deref(),
        Some("hello from-pod\n"),
        "via the bridge address"
    );
    if let Some(via_node) = via_node {
        assert_eq!(
            via_node.as_deref(),
            Some("hello from-pod\n"),
            "via the node IP"
        );
    }

    // Same hostPort/protocol again fails and leaves nothing of the second pod.
    let before = p.list(None).await.len();
    let err = p
        .run(with_host_port(pod_config("web2"), 80, host_port))
        .await
        .expect_err("hostPort conflict");
    assert!(
        matches!(
            err.code(),
            Code::AlreadyExists | Code::FailedPrecondition | Code::ResourceExhausted
        ),
        "{err:?}"
    );
    assert_eq!(p.list(None).await.len(), before);
    // The name is free again after the failure.
    let retry = p
        .run(pod_config("web2"))
        .await
        .expect("name reusable after failure");

    p.remove(&id).await;
    p.remove(&retry).await;
    assert_eq!(p.leftovers(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sysctls_and_bad_ports_are_invalid_and_leave_the_host_untouched() {
    let Some(mut p) = start().await else { return };
    let core_pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    let bad_sysctls: &[(&str, &str)] = &[
        ("kernel.core_pattern", "|/tmp/x"),
        ("net.ipv4.ip_forward+", "1"),
        ("net.ipv4.conf.all.forwarding", "1\nkernel.core_pattern=x"),
        ("net/ipv4/../../kernel/core_pattern", "x"),
        ("kernel.domainname=x", "y"),
    ];
    // Network sysctls make no sense for a pod in the node's network namespace.
    let mut c = pod_config("hostnet-sysctl");
    c.linux = Some(cri::LinuxPodSandboxConfig {
        sysctls: HashMap::from([("net.ipv4.ip_forward".to_string(), "0".to_string())]),
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = p
        .run(c)
        .await
        .expect_err("net sysctl on a host-network pod");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    for (k, v) in bad_sysctls {
        let mut c = pod_config("sys");
        c.linux = Some(cri::LinuxPodSandboxConfig {
            sysctls: HashMap::from([(k.to_string(), v.to_string())]),
            ..Default::default()
        });
        let err = p.run(c).await.expect_err("bad sysctl");
        assert_eq!(err.code(), Code::InvalidArgument, "{k}={v:?}: {err:?}");
    }
    for (cp, hp, proto, ip) in [
        (80, 70000, 0, ""),
        (0, 8080, 0, ""),
        (80, 8080, 7, ""),
        (80, 8080, 0, "nope"),
    ] {
        let mut c = pod_config("ports");
        c.port_mappings.push(cri::PortMapping {
            protocol: proto,
            container_port: cp,
            host_port: hp,
            host_ip: ip.into(),
        });
        let err = p.run(c).await.expect_err("bad port");
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{cp} {hp} {proto} {ip}: {err:?}"
        );
        assert!(err.message().contains("port_mappings"), "{}", err.message());
    }
    // A good namespaced sysctl lands inside the pod only.
    let mut c = pod_config("goodsys");
    c.linux = Some(cri::LinuxPodSandboxConfig {
        sysctls: HashMap::from([(
            "net.ipv4.ip_unprivileged_port_start".to_string(),
            "79".to_string(),
        )]),
        ..Default::default()
    });
    let host_value = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .unwrap_or_default();
    let id = p.run(c).await.expect("good sysctl");
    let netns = p.netns(&id).await;
    let inside = cmd_out(
        "nsenter",
        &[
            &format!("--net={}", netns.display()),
            "cat",
            "/proc/sys/net/ipv4/ip_unprivileged_port_start",
        ],
    );
    assert_eq!(inside.trim(), "79");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .unwrap_or_default(),
        host_value
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default(),
        core_pattern
    );
    p.remove(&id).await;
    assert!(p.list(None).await.is_empty());
    assert_eq!(p.leftovers(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_pods_get_distinct_ips_and_leave_nothing() {
    let Some(p) = start().await else { return };
    let ids = p.run_concurrently("many", 50).await;
    let mut p = p;
    let mut ips = std::collections::HashSet::new();
    for id in &ids {
        assert!(ips.insert(p.ip(id).await), "duplicate IP");
    }
    assert_eq!(ips.len(), 50);
    let mut tasks = Vec::new();
    for id in ids {
        let mut rt = p.rt.clone();
        tasks.push(tokio::spawn(async move {
            rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("remove");
    }
    assert!(p.list(None).await.is_empty());
    assert_eq!(p.leftovers(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_with_running_pods_then_restart_keeps_them() {
    let Some(mut p) = start().await else { return };
    let a = p
        .run(with_host_port(pod_config("k1"), 80, 18181))
        .await
        .expect("run");
    let b = p.run(pod_config("k2")).await.expect("run");
    let (ip_a, ip_b) = (p.ip(&a).await, p.ip(&b).await);
    p.daemon.kill9();
    p.daemon.start_again().await.expect("restart");
    p.rt = p.daemon.runtime().await.expect("client");
    let pods = p.list(None).await;
    assert_eq!(pods.len(), 2);
    assert!(pods
        .iter()
        .all(|x| x.state == cri::PodSandboxState::SandboxReady as i32));
    assert_eq!(p.ip(&a).await, ip_a);
    assert_eq!(p.ip(&b).await, ip_b);
    // The restarted daemon hands out a different IP to a new pod.
    let c = p.run(pod_config("k3")).await.expect("run after restart");
    let ip_c = p.ip(&c).await;
    assert!(ip_c != ip_a && ip_c != ip_b);
    for id in [&a, &b, &c] {
        p.stop(id).await;
        p.remove(id).await;
    }
    assert_eq!(p.leftovers(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_and_shared_pid_pods() {
    let Some(mut p) = start().await else { return };
    let mut c = pod_config("hostnet");
    c.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                pid: cri::NamespaceMode::Pod as i32,
                ipc: cri::NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = p.run(c).await.expect("host network pod");
    let (st, info) = p.status(&id).await.expect("status");
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    assert!(
        info["namespaces"]["net"].is_null(),
        "host network pod must not get a netns"
    );
    let pid = info["pid"]
        .as_i64()
        .expect("pid holder for a shared PID namespace");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("holder alive");
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .unwrap_or_default()
        .to_string();
    assert!(
        nspid.trim_end().ends_with("\t1") || nspid.trim_end().ends_with(" 1"),
        "holder is PID 1 of its namespace: {nspid}"
    );
    p.remove(&id).await;
    // The holder is not berthd's child (it must outlive daemon restarts), so once dead it may
    // linger as a zombie until the node's init reaps it; it must not be running.
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let running = state
        .rsplit_once(") ")
        .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'));
    assert!(!running, "holder must be gone: {state}");
}

const CNI_CONFLIST: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "e2e-cni",
  "plugins": [
    {"type": "bridge", "bridge": "be2ecni0", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.232.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "DATADIR"}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_plugins_give_ips_and_clean_up() {
    if !Path::new("/usr/lib/cni/bridge").exists() {
        assert!(!required(), "containernetworking-plugins not installed");
        eprintln!("SKIP: containernetworking-plugins not installed");
        return;
    }
    let data = tempfile::tempdir().expect("ipam dir");
    let data_path = data.path().to_path_buf();
    let Some(mut p) = start_with(|dir| {
        std::fs::write(
            dir.join("10-e2e.conflist"),
            CNI_CONFLIST.replace("DATADIR", &data_path.display().to_string()),
        )
        .expect("conflist");
    })
    .await
    else {
        return;
    };
    struct CniBridge;
    impl Drop for CniBridge {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["link", "del", "be2ecni0"])
                .stderr(Stdio::null())
                .status();
        }
    }
    let _cni_bridge = CniBridge;
    let a = p
        .run(with_host_port(pod_config("cni-a"), 8080, 18282))
        .await
        .expect("run a");
    let b = p.run(pod_config("cni-b")).await.expect("run b");
    let (ip_a, ip_b) = (p.ip(&a).await, p.ip(&b).await);
    assert!(
        ip_a.starts_with("10.232.0.") && ip_b.starts_with("10.232.0."),
        "{ip_a} {ip_b}"
    );
    let ns_a = p.netns(&a).await;
    assert!(
        in_netns_ok(&ns_a, &["ping", "-c", "1", "-W", "3", &ip_b]),
        "a cannot ping b over CNI"
    );

    // hostPort through the portmap plugin (portMappings capability).
    let server = serve_in_netns(&ns_a, 8080, "cni-pod");
    let via_lo = fetch("127.0.0.1:18282");
    drop(server);
    assert_eq!(
        via_lo.as_deref(),
        Some("hello cni-pod\n"),
        "hostPort via portmap"
    );

    // Concurrency through the plugins: distinct IPs from host-local.
    let many = p.run_concurrently("cni-many", 20).await;
    let mut ips = std::collections::HashSet::from([ip_a.clone(), ip_b.clone()]);
    for id in &many {
        assert!(ips.insert(p.ip(id).await), "duplicate CNI IP");
    }
    for id in many.iter().chain([&a, &b]) {
        p.remove(id).await;
    }
    let leases: Vec<_> = walkdir(&data_path)
        .into_iter()
        .filter(|f| {
            f.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("10.232."))
        })
        .collect();
    assert!(leases.is_empty(), "host-local leases left: {leases:?}");
    assert!(p.list(None).await.is_empty());
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk(dir, &mut |p| out.push(p.to_path_buf()));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_client_timeout_gets_the_pod_created_for_it() {
    let Some(mut p) = start().await else { return };
    let mut req = tonic::Request::new(cri::RunPodSandboxRequest {
        config: Some(pod_config("late")),
        runtime_handler: String::new(),
    });
    // Far shorter than RunPodSandbox takes: the client gives up while berthd is still working.
    req.set_timeout(Duration::from_micros(200));
    let first = p.rt.run_pod_sandbox(req).await;
    eprintln!(
        "first RunPodSandbox: {:?}",
        first.as_ref().map(|_| "ok").map_err(|s| s.code())
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let retry = p.run(pod_config("late")).await;
    let pods = p.list(None).await;
    assert_eq!(pods.len(), 1, "exactly one pod for one name: {pods:?}");
    match first {
        Ok(r) => {
            // The first call beat its deadline; the retry must then see the name as taken.
            let err = retry.expect_err("second run of a live pod");
            assert_eq!(err.code(), Code::AlreadyExists);
            p.remove(&r.into_inner().pod_sandbox_id).await;
        }
        Err(status) => {
            assert!(
                matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
                "{status:?}"
            );
            let id = retry.expect("the retry is answered with the pod created after the timeout");
            assert_eq!(id, pods[0].id);
            p.remove(&id).await;
        }
    }
    assert_eq!(p.leftovers(), Vec::<String>::new());
}

/// A second "host" on the node's network: its own netns, joined to the node by a veth pair.
/// Removes both on drop.
struct OtherHost {
    name: String,
}

impl OtherHost {
    const NODE_SIDE: &'static str = "10.239.0.1";
    const HOST_SIDE: &'static str = "10.239.0.2";

    fn create() -> OtherHost {
        let name = format!("be2ehost{}", std::process::id() % 10000);
        let me = OtherHost { name };
        let n = &me.name;
        let veth = "be2ehv0";
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), n.clone()],
            vec![
                "link".into(),
                "add".into(),
                veth.into(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                "eth0".into(),
                "netns".into(),
                n.clone(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{}/30", Self::NODE_SIDE),
                "dev".into(),
                veth.into(),
            ],
            vec!["link".into(), "set".into(), veth.into(), "up".into()],
            vec![
                "-n".into(),
                n.clone(),
                "addr".into(),
                "add".into(),
                format!("{}/30", Self::HOST_SIDE),
                "dev".into(),
                "eth0".into(),
            ],
            vec![
                "-n".into(),
                n.clone(),
                "link".into(),
                "set".into(),
                "eth0".into(),
                "up".into(),
            ],
            vec![
                "-n".into(),
                n.clone(),
                "link".into(),
                "set".into(),
                "lo".into(),
                "up".into(),
            ],
        ];
        for args in steps {
            let ok = Command::new("ip")
                .args(&args)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "ip {args:?} failed");
        }
        me
    }

    fn wrapper(&self) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.name.clone(),
        ]
    }

    /// Connects from the other host to `addr` and returns what the server said.
    fn fetch(&self, ip: &str, port: u16) -> String {
        let script = format!(
            "import socket;s=socket.create_connection(('{ip}',{port}),3);print(s.recv(100).decode(),end='')"
        );
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "python3", "-c", &script])
            .output()
            .expect("client on the other host");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for OtherHost {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", "be2ehv0"])
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_port_is_reachable_from_another_host() {
    let Some(mut p) = start().await else { return };
    let other = OtherHost::create();
    let id = p
        .run(with_host_port(pod_config("public"), 8080, 18383))
        .await
        .expect("run with hostPort");
    let netns = p.netns(&id).await;
    let server = serve_in_netns(&netns, 8080, "to-the-world");
    // Arrives on the node's interface from elsewhere: the prerouting DNAT path.
    let got = other.fetch(OtherHost::NODE_SIDE, 18383);
    drop(server);
    assert_eq!(got, "hello to-the-world\n");
    p.remove(&id).await;
    assert_eq!(p.leftovers(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_from_a_pod_is_masqueraded_to_the_node_address() {
    let Some(mut p) = start().await else { return };
    let other = OtherHost::create();
    // The other host has no route to the pod subnet: only a masqueraded connection can answer.
    let script = "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0',19090))\ns.listen(1)\nprint('ready', flush=True)\nc,a=s.accept()\nc.sendall(a[0].encode())\nc.close()\n";
    let server = Server::start(&other.wrapper(), script);
    let id = p.run(pod_config("egress")).await.expect("run");
    let netns = p.netns(&id).await;
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args([
            "python3",
            "-c",
            &format!(
                "import socket;s=socket.create_connection(('{}',19090),3);print(s.recv(100).decode(),end='')",
                OtherHost::HOST_SIDE
            ),
        ])
        .output()
        .expect("client in pod");
    drop(server);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        OtherHost::NODE_SIDE,
        "the other host must see the node's address, not the pod's: {out:?}"
    );
    p.remove(&id).await;
    assert_eq!(p.leftovers(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_host_port_answers_from_loopback_and_another_host() {
    let Some(mut p) = start().await else { return };
    let other = OtherHost::create();
    let mut config = pod_config("udp");
    config.port_mappings.push(cri::PortMapping {
        protocol: cri::Protocol::Udp as i32,
        container_port: 5353,
        host_port: 18484,
        host_ip: String::new(),
    });
    let id = p.run(config).await.expect("run with a UDP hostPort");
    let netns = p.netns(&id).await;
    let script = "import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',5353))\nprint('ready', flush=True)\nwhile True:\n  d,a=s.recvfrom(100)\n  s.sendto(b'pong '+d,a)\n";
    let server = Server::start(&in_pod(&netns), script);
    let client = |ip: &str| {
        format!(
            "import socket;s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);s.settimeout(3);s.sendto(b'ping',('{ip}',18484));print(s.recvfrom(100)[0].decode(),end='')"
        )
    };
    let local = Command::new("python3")
        .args(["-c", &client("127.0.0.1")])
        .output()
        .expect("local client");
    let remote = Command::new("ip")
        .args([
            "netns",
            "exec",
            &other.name,
            "python3",
            "-c",
            &client(OtherHost::NODE_SIDE),
        ])
        .output()
        .expect("remote client");
    drop(server);
    assert_eq!(
        String::from_utf8_lossy(&local.stdout),
        "pong ping",
        "{local:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&remote.stdout),
        "pong ping",
        "{remote:?}"
    );
    p.remove(&id).await;
    assert_eq!(p.leftovers(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_reaches_itself_and_another_pod_through_host_ports() {
    let Some(mut p) = start().await else { return };
    let a = p
        .run(with_host_port(pod_config("hairpin-a"), 8080, 18585))
        .await
        .expect("run a");
    let b = p.run(pod_config("hairpin-b")).await.expect("run b");
    let (ns_a, ns_b) = (p.netns(&a).await, p.netns(&b).await);
    let server = serve_in_netns(&ns_a, 8080, "hairpin");
    let client = format!(
        "import socket;s=socket.create_connection(('{GATEWAY}',18585),3);print(s.recv(100).decode(),end='')"
    );
    let mut answers = Vec::new();
    for ns in [&ns_a, &ns_b] {
        let out = Command::new("nsenter")
            .args(in_pod(ns).get(1))
            .args(["python3", "-c", &client])
            .output()
            .expect("client in pod");
        answers.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    drop(server);
    assert_eq!(
        answers[0], "hello hairpin\n",
        "pod to its own hostPort (hairpin)"
    );
    assert_eq!(
        answers[1], "hello hairpin\n",
        "pod to another pod's hostPort"
    );
    p.remove(&a).await;
    p.remove(&b).await;
    assert_eq!(p.leftovers(), Vec::<String>::new());
}

/// The elements of one of berth's hostPort maps, as nft reads them back (`nft -j`).
fn map_elements(map: &str) -> Vec<serde_json::Value> {
    let out = cmd_out("nft", &["-j", "list", "map", "ip", TABLE, map]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["map"]["elem"].as_array())
        .flatten()
        .cloned()
        .collect()
}

/// Deletes an element added behind berth's back, also when the test fails.
struct ForeignElement(&'static str);

impl Drop for ForeignElement {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "element", "ip", TABLE, "hp_any", self.0])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_host_ports_work_and_a_late_failure_leaves_no_element() {
    let Some(mut p) = start().await else { return };
    // 500 elements do not fit one nftables batch message: setup and teardown take several.
    let many = |name: &str| {
        (0..500).fold(pod_config(name), |c, i| {
            with_host_port(c, 8000 + i, 20000 + i)
        })
    };
    let id = p.run(many("ports")).await.expect("run with 500 hostPorts");
    assert_eq!(map_elements("hp_any").len(), 500);
    let netns = p.netns(&id).await;
    for (container, host) in [(8000, 20000), (8250, 20250), (8499, 20499)] {
        let server = serve_in_netns(&netns, container, &format!("p{container}"));
        let got = fetch(&format!("127.0.0.1:{host}"));
        drop(server);
        assert_eq!(
            got.as_deref(),
            Some(format!("hello p{container}\n").as_str()),
            "hostPort {host} via 127.0.0.1"
        );
    }
    p.remove(&id).await;
    assert!(
        map_elements("hp_any").is_empty(),
        "elements left after remove"
    );
    assert_eq!(p.leftovers(), Vec::<String>::new());

    // An element for port 20450 that berth did not add, with other data: the kernel refuses the
    // batch holding it, after the batches before it were committed. Those must be undone.
    let foreign = ForeignElement("{ tcp . 20450 }");
    let added = Command::new("nft")
        .args([
            "add",
            "element",
            "ip",
            TABLE,
            "hp_any",
            "{ tcp . 20450 : 10.231.255.254 . 1 }",
        ])
        .status()
        .expect("nft");
    assert!(added.success(), "add the foreign element");
    let err = p
        .run(many("ports2"))
        .await
        .expect_err("a clash in the nft map fails the setup");
    assert!(
        err.message().contains("tcp/20450") && err.message().contains("exists"),
        "{err:?}"
    );
    let left = map_elements("hp_any");
    assert_eq!(left.len(), 1, "only the foreign element stays: {left:?}");
    assert_eq!(p.list(None).await.len(), 0);
    drop(foreign);
    assert!(map_elements("hp_any").is_empty());
    assert_eq!(p.leftovers(), Vec::<String>::new());
}
