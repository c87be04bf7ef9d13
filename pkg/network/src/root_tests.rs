//! Tests against the real kernel, nftables and CNI plugins. They need root and skip otherwise.
//!
//! Every test uses its own bridge (`bt<hex>`), nft table (`bt_<hex>`), /24 inside 10.250.0.0/16
//! and network namespaces pinned in a temp dir; guards remove all of it on drop, also when an
//! assertion fails. They run one at a time (SERIAL) because `init` flips the global ip_forward
//! sysctl, which each guard restores.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use super::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn is_root() -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    if !root {
        eprintln!("skipping: this test needs root (netns, veth, nftables)");
    }
    root
}

fn uniq() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:06x}", (std::process::id() ^ t ^ (n << 20)) & 0xff_ffff)
}

/// A namespace pinned by a bind mount, like the pinning crate will hand us.
struct NsPin {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl NsPin {
    fn new(kind: CloneFlags) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns");
        std::fs::File::create(&path).unwrap();
        let proc_path = if kind == CloneFlags::CLONE_NEWIPC {
            "/proc/thread-self/ns/ipc"
        } else {
            "/proc/thread-self/ns/net"
        };
        let p = path.clone();
        // unshare on a throwaway thread: the test thread itself stays in the host namespaces.
        std::thread::spawn(move || {
            unshare(kind).unwrap();
            mount(
                Some(proc_path),
                &p,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .unwrap();
        })
        .join()
        .unwrap();
        Self { _dir: dir, path }
    }

    fn net() -> Self {
        Self::new(CloneFlags::CLONE_NEWNET)
    }
}

impl Drop for NsPin {
    fn drop(&mut self) {
        let _ = umount2(&self.path, MntFlags::MNT_DETACH);
    }
}

struct Env {
    dir: tempfile::TempDir,
    mgr: NetworkManager,
    bridge: String,
    table: String,
    subnet: Ipv4Net,
    pods: Mutex<Vec<String>>,
    ip_forward: String,
    _serial: MutexGuard<'static, ()>,
}

impl Env {
    fn new(octet: u8) -> Self {
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let ip_forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap_or_default()
            .trim()
            .to_string();
        let id = uniq();
        let dir = tempfile::tempdir().unwrap();
        let subnet: Ipv4Net = format!("10.250.{octet}.0/24").parse().unwrap();
        let cfg = NetworkConfig {
            bridge: format!("bt{id}"),
            subnet,
            nft_table: format!("bt_{id}"),
            cni_conf_dir: dir.path().join("net.d"),
            cni_bin_dirs: vec!["/usr/lib/cni".into()],
            state_dir: dir.path().join("state"),
            ..Default::default()
        };
        let store = Store::open(&dir.path().join("db")).unwrap();
        let mgr = NetworkManager::new(cfg.clone(), store).unwrap();
        Self {
            dir,
            mgr,
            bridge: cfg.bridge,
            table: cfg.nft_table,
            subnet,
            pods: Mutex::new(Vec::new()),
            ip_forward,
            _serial: serial,
        }
    }

    fn req(&self, pod: &str, ns: &NsPin, pms: Vec<PortMapping>) -> PodNetworkRequest {
        self.pods.lock().unwrap().push(pod.to_string());
        PodNetworkRequest {
            pod_id: pod.into(),
            name: format!("name-{pod}"),
            namespace: "default".into(),
            uid: format!("uid-{pod}"),
            netns: ns.path.clone(),
            port_mappings: pms,
            dns: None,
            cgroup_parent: String::new(),
        }
    }

    fn leases(&self) -> usize {
        self.mgr.state().ipam.leases().count()
    }

    fn nft_table(&self) -> String {
        nft::list(&self.table).unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Ok(mut nl) = Netlink::open() {
            for pod in self.pods.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                let _ = nl.delete_link(&host_veth_name(pod));
            }
            let _ = nl.delete_link(&self.bridge);
        }
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &self.table])
            .output();
        if !self.ip_forward.is_empty() {
            let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", &self.ip_forward);
        }
    }
}

fn tcp(container_port: u16, host_port: u16) -> PortMapping {
    PortMapping {
        protocol: Protocol::Tcp,
        container_port,
        host_port,
        host_ip: None,
    }
}

/// A listener inside `ns` answering every connection with `reply`.
fn serve_in(ns: &Path, addr: &str, reply: &'static [u8]) -> SocketAddr {
    let l = in_netns(ns, || TcpListener::bind(addr)).unwrap().unwrap();
    serve(l, reply)
}

fn serve(l: TcpListener, reply: &'static [u8]) -> SocketAddr {
    let local = l.local_addr().unwrap();
    // The socket keeps its namespace after the creating thread is gone.
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(reply);
        }
    });
    local
}

fn fetch(addr: SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    Ok(buf)
}

fn host_port(offset: u16) -> u16 {
    // Spread across runs so a port left in TIME_WAIT by a previous run does not matter.
    20000 + (std::process::id() % 20000) as u16 + offset
}

#[test]
fn builtin_pod_gets_ip_route_and_reaches_gateway() {
    if !is_root() {
        return;
    }
    let env = Env::new(11);
    assert!(env
        .mgr
        .status()
        .is_err_and(|e| e.contains("does not exist")));
    env.mgr.init().unwrap();
    env.mgr.init().unwrap(); // idempotent
    env.mgr.status().unwrap();
    let ns = NsPin::net();
    let net = env.mgr.setup(&env.req("pod-a", &ns, vec![])).unwrap();
    let IpAddr::V4(ip) = net.ip else { panic!("v4") };
    assert!(env.subnet.contains(&ip));
    assert_eq!(net.gateway, Some(IpAddr::V4(env.mgr.config().gateway())));
    let (addrs, routes) = in_netns(&ns.path, || {
        let mut nl = Netlink::open().unwrap();
        (nl.addrs().unwrap(), nl.routes().unwrap())
    })
    .unwrap();
    assert!(addrs
        .iter()
        .any(|a| a.addr.addr() == ip && a.addr.prefix_len() == 24));
    assert!(routes
        .iter()
        .any(|r| r.dst.prefix_len() == 0 && r.gateway == Some(env.mgr.config().gateway())));
    env.mgr.check("pod-a", &ns.path, &net).unwrap();

    // Host-side listener on the gateway address, reached from inside the pod.
    let gw_listener = TcpListener::bind((env.mgr.config().gateway(), 0)).unwrap();
    let gw = serve(gw_listener, b"host");
    let got = in_netns(&ns.path, || fetch(gw)).unwrap().unwrap();
    assert_eq!(got, b"host");

    let view = env.mgr.debug_view("pod-a", &ns.path, &net);
    assert_eq!(view["ip"], ip.to_string());
    assert!(view["host_veth_ifindex"].is_number());

    env.mgr.teardown("pod-a", Some(&ns.path), &net).unwrap();
    assert_eq!(env.leases(), 0);
    drop(ns);
    // Removing the netns pin frees the veth pair.
    let veth = net.host_veth.clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Netlink::open()
        .unwrap()
        .link_index(&veth)
        .unwrap()
        .is_some()
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(Netlink::open()
        .unwrap()
        .link_index(&veth)
        .unwrap()
        .is_none());
}

#[test]
fn two_pods_reach_each_other_over_tcp() {
    if !is_root() {
        return;
    }
    let env = Env::new(12);
    env.mgr.init().unwrap();
    let (na, nb) = (NsPin::net(), NsPin::net());
    let a = env.mgr.setup(&env.req("pod-a", &na, vec![])).unwrap();
    let b = env.mgr.setup(&env.req("pod-b", &nb, vec![])).unwrap();
    assert_ne!(a.ip, b.ip);
    let srv = serve_in(&na.path, &format!("{}:7000", a.ip), b"from-a");
    let got = in_netns(&nb.path, || fetch(srv)).unwrap().unwrap();
    assert_eq!(got, b"from-a");
    env.mgr.teardown("pod-a", Some(&na.path), &a).unwrap();
    env.mgr.teardown("pod-b", Some(&nb.path), &b).unwrap();
}

#[test]
fn host_port_reachable_from_localhost_and_node_ip_and_conflicts_cleanly() {
    if !is_root() {
        return;
    }
    let env = Env::new(13);
    env.mgr.init().unwrap();
    let hp = host_port(0);
    let (na, nb) = (NsPin::net(), NsPin::net());
    let a = env
        .mgr
        .setup(&env.req("pod-a", &na, vec![tcp(8080, hp), tcp(8081, 0)]))
        .unwrap();
    serve_in(&na.path, "0.0.0.0:8080", b"pod-a");
    let table = env.nft_table();
    assert!(
        table.contains(&format!(
            "tcp . {hp} comment \"pod pod-a\" : {} . 8080",
            a.ip
        )),
        "{table}"
    );
    let gw = env.mgr.config().gateway();
    assert_eq!(
        fetch(SocketAddr::from(([127, 0, 0, 1], hp))).unwrap(),
        b"pod-a"
    );
    assert_eq!(fetch(SocketAddr::from((gw, hp))).unwrap(), b"pod-a");
    // The node's primary address too, when it has one outside loopback and the pod subnet.
    let node_ip = Netlink::open()
        .unwrap()
        .addrs()
        .unwrap()
        .into_iter()
        .map(|a| a.addr.addr())
        .find(|ip| !ip.is_loopback() && !env.subnet.contains(ip));
    if let Some(node_ip) = node_ip {
        assert_eq!(fetch(SocketAddr::from((node_ip, hp))).unwrap(), b"pod-a");
    }

    // Same hostPort for a second pod: AlreadyExists, and nothing of it remains.
    let err = env
        .mgr
        .setup(&env.req("pod-b", &nb, vec![tcp(80, hp)]))
        .unwrap_err();
    assert_eq!(
        berth_core::HasKind::kind(&err),
        berth_core::ErrorKind::AlreadyExists
    );
    assert_eq!(env.leases(), 1);
    assert!(Netlink::open()
        .unwrap()
        .link_index(&host_veth_name("pod-b"))
        .unwrap()
        .is_none());
    // A different protocol on the same port is fine.
    let mut udp = tcp(53, hp);
    udp.protocol = Protocol::Udp;
    let b = env.mgr.setup(&env.req("pod-b", &nb, vec![udp])).unwrap();
    assert!(env.nft_table().contains(&format!("udp . {hp}")));

    env.mgr.teardown("pod-a", Some(&na.path), &a).unwrap();
    env.mgr.teardown("pod-a", Some(&na.path), &a).unwrap(); // idempotent
    let table = env.nft_table();
    assert!(!table.contains(&format!("tcp . {hp}")), "{table}");
    assert!(table.contains(&format!("udp . {hp}")), "{table}");
    assert!(fetch(SocketAddr::from(([127, 0, 0, 1], hp))).is_err());
    env.mgr.teardown("pod-b", Some(&nb.path), &b).unwrap();
    assert!(!env.nft_table().contains(&format!(". {hp}")));
    assert_eq!(env.leases(), 0);
}

#[test]
fn teardown_without_netns_deletes_leftover_veth_and_is_idempotent() {
    if !is_root() {
        return;
    }
    let env = Env::new(14);
    env.mgr.init().unwrap();
    let ns = NsPin::net();
    let net = env.mgr.setup(&env.req("pod-a", &ns, vec![])).unwrap();
    // Keep the namespace alive through a socket inside it, then drop the pin: the netns "path"
    // is gone but the veth is still there, the case teardown must clean up.
    let keep = in_netns(&ns.path, || TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    let path = ns.path.clone();
    drop(ns);
    let veth = net.host_veth.clone().unwrap();
    assert!(Netlink::open()
        .unwrap()
        .link_index(&veth)
        .unwrap()
        .is_some());
    env.mgr.teardown("pod-a", Some(&path), &net).unwrap();
    assert!(Netlink::open()
        .unwrap()
        .link_index(&veth)
        .unwrap()
        .is_none());
    env.mgr.teardown("pod-a", None, &net).unwrap();
    assert_eq!(env.leases(), 0);
    drop(keep);
}

#[test]
fn reconcile_releases_leases_and_rules_of_gone_pods() {
    if !is_root() {
        return;
    }
    let env = Env::new(15);
    env.mgr.init().unwrap();
    let (hp1, hp2) = (host_port(1), host_port(2));
    let (na, nb) = (NsPin::net(), NsPin::net());
    let a = env
        .mgr
        .setup(&env.req("pod-a", &na, vec![tcp(80, hp1)]))
        .unwrap();
    let _b = env
        .mgr
        .setup(&env.req("pod-b", &nb, vec![tcp(80, hp2)]))
        .unwrap();
    // A restarted manager over the same store rebuilds claims from the leases.
    let cfg = env.mgr.config().clone();
    let store = Store::open(&env.dir.path().join("db")).unwrap();
    let m2 = NetworkManager::new(cfg, store).unwrap();
    assert_eq!(m2.state().ipam.leases().count(), 2);
    m2.reconcile(&[("pod-a".to_string(), a.clone())]).unwrap();
    assert!(m2.state().ipam.lease_of("pod-b").is_none());
    assert!(m2.state().ipam.lease_of("pod-a").is_some());
    let table = env.nft_table();
    assert!(table.contains(&format!("tcp . {hp1}")), "{table}");
    assert!(!table.contains(&format!("tcp . {hp2}")), "{table}");
    // pod-b's port is free again, pod-a's is still claimed.
    let nc = NsPin::net();
    let err = m2
        .setup(&env.req("pod-c", &nc, vec![tcp(80, hp1)]))
        .unwrap_err();
    assert_eq!(
        berth_core::HasKind::kind(&err),
        berth_core::ErrorKind::AlreadyExists
    );
    let c = m2
        .setup(&env.req("pod-c", &nc, vec![tcp(80, hp2)]))
        .unwrap();
    m2.teardown("pod-c", Some(&nc.path), &c).unwrap();
    m2.teardown("pod-a", Some(&na.path), &a).unwrap();
    assert_eq!(m2.state().ipam.leases().count(), 0);
}

#[test]
fn concurrent_setups_get_distinct_ips() {
    if !is_root() {
        return;
    }
    let env = Env::new(16);
    env.mgr.init().unwrap();
    let pins: Vec<NsPin> = (0..32).map(|_| NsPin::net()).collect();
    let reqs: Vec<PodNetworkRequest> = pins
        .iter()
        .enumerate()
        .map(|(i, p)| env.req(&format!("pod-{i}"), p, vec![]))
        .collect();
    let results = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        for r in &reqs {
            let (env, results) = (&env, results.clone());
            s.spawn(move || {
                let net = env.mgr.setup(r).unwrap();
                results.lock().unwrap().push((r.pod_id.clone(), net));
            });
        }
    });
    let results = results.lock().unwrap();
    let ips: HashSet<IpAddr> = results.iter().map(|(_, n)| n.ip).collect();
    assert_eq!(ips.len(), 32);
    assert_eq!(env.leases(), 32);
    for ((pod, net), pin) in results.iter().zip(&pins) {
        let _ = pin;
        env.mgr.teardown(pod, None, net).unwrap();
    }
    assert_eq!(env.leases(), 0);
}

fn pct(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    v[(v.len() * p / 100).min(v.len() - 1)]
}

#[test]
fn builtin_setup_teardown_latency() {
    if !is_root() {
        return;
    }
    let env = Env::new(17);
    env.mgr.init().unwrap();
    let n = 40;
    let pins: Vec<NsPin> = (0..n).map(|_| NsPin::net()).collect();
    for (label, with_ports) in [("no hostPort", false), ("1 hostPort", true)] {
        let (mut setup, mut teardown) = (Vec::new(), Vec::new());
        for (i, pin) in pins.iter().enumerate() {
            let pms = if with_ports {
                vec![tcp(80, host_port(100 + i as u16))]
            } else {
                vec![]
            };
            let pod = format!("lat-{with_ports}-{i}");
            let req = env.req(&pod, pin, pms);
            let t = Instant::now();
            let net = env.mgr.setup(&req).unwrap();
            setup.push(t.elapsed());
            let t = Instant::now();
            env.mgr.teardown(&pod, Some(&pin.path), &net).unwrap();
            teardown.push(t.elapsed());
            // The pin stays, so remove the veth outside the measurement before the next round.
            let _ = Netlink::open().unwrap().delete_link(&host_veth_name(&pod));
        }
        println!(
            "builtin {label}: setup p50 {:?} p90 {:?}; teardown p50 {:?} p90 {:?} (n={n})",
            pct(&mut setup, 50),
            pct(&mut setup, 90),
            pct(&mut teardown, 50),
            pct(&mut teardown, 90)
        );
    }
    // Kernel work alone: veth create with peer in the netns + in-netns configuration.
    let pin = NsPin::net();
    let (mut kernel, mut veth_only) = (Vec::new(), Vec::new());
    let ns = std::fs::File::open(&pin.path).unwrap();
    let br = Netlink::open()
        .unwrap()
        .link_index(&env.bridge)
        .unwrap()
        .unwrap();
    for i in 0..n {
        let veth = format!("btk{}{i}", &uniq()[..4]);
        let t = Instant::now();
        Netlink::open()
            .unwrap()
            .create_veth(&veth, "eth0", ns.as_raw_fd(), br, 1500)
            .unwrap();
        veth_only.push(t.elapsed());
        in_netns(&pin.path, || {
            let mut nl = Netlink::open().unwrap();
            let lo = nl.link_index("lo").unwrap().unwrap();
            nl.set_up(lo).unwrap();
            let eth = nl.link_index("eth0").unwrap().unwrap();
            nl.add_addr(eth, "10.250.17.200/24".parse().unwrap())
                .unwrap();
            nl.set_up(eth).unwrap();
            nl.add_default_route(Ipv4Addr::new(10, 250, 17, 1), eth)
                .unwrap();
        })
        .unwrap();
        kernel.push(t.elapsed());
        Netlink::open().unwrap().delete_link(&veth).unwrap();
    }
    println!(
        "kernel work (veth+addr+routes): p50 {:?} p90 {:?}; of which veth create p50 {:?}",
        pct(&mut kernel, 50),
        pct(&mut kernel, 90),
        pct(&mut veth_only, 50)
    );
    // The crash-safe lease write (fsync of file and directory) on this disk, for comparison.
    let store = Store::open(&env.dir.path().join("fsync")).unwrap();
    let (mut put, mut del) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        store
            .put(berth_store::Bucket::Leases, "10.250.17.9", &1)
            .unwrap();
        put.push(t.elapsed());
        let t = Instant::now();
        store
            .delete(berth_store::Bucket::Leases, "10.250.17.9")
            .unwrap();
        del.push(t.elapsed());
    }
    println!(
        "lease persist p50 {:?}, lease delete p50 {:?}",
        pct(&mut put, 50),
        pct(&mut del, 50)
    );
}

#[test]
fn sysctls_are_written_inside_the_pod_namespaces_only() {
    if !is_root() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let net = NsPin::net();
    let ipc = NsPin::new(CloneFlags::CLONE_NEWIPC);
    let host_port_start =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap();
    let host_shmmni = std::fs::read_to_string("/proc/sys/kernel/shmmni").unwrap();
    let list = validate_sysctls(
        &[
            (
                "net.ipv4.ip_unprivileged_port_start".to_string(),
                "123".to_string(),
            ),
            ("kernel.shmmni".to_string(), "1234".to_string()),
        ]
        .into_iter()
        .collect(),
        false,
        false,
    )
    .unwrap();
    apply_sysctls(Some(&net.path), Some(&ipc.path), &list).unwrap();
    let inside = in_netns(&net.path, || {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap()
    })
    .unwrap();
    assert_eq!(inside.trim(), "123");
    let inside = netns::in_namespace(&ipc.path, CloneFlags::CLONE_NEWIPC, || {
        std::fs::read_to_string("/proc/sys/kernel/shmmni").unwrap()
    })
    .unwrap();
    assert_eq!(inside.trim(), "1234");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap(),
        host_port_start
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/shmmni").unwrap(),
        host_shmmni
    );
}

/// Deletes the CNI bridge (the bridge plugin leaves it behind on DEL).
struct LinkGuard(String);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        if let Ok(mut nl) = Netlink::open() {
            let _ = nl.delete_link(&self.0);
        }
    }
}

#[test]
fn cni_mode_runs_the_real_plugins_add_check_del() {
    if !is_root() {
        return;
    }
    if !Path::new("/usr/lib/cni/bridge").exists() {
        eprintln!("skipping: containernetworking-plugins not installed in /usr/lib/cni");
        return;
    }
    let env = Env::new(18);
    let id = uniq();
    let cni_bridge = LinkGuard(format!("bc{id}"));
    let data_dir = env.dir.path().join("ipam");
    let conf_dir = env.dir.path().join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": format!("berth-test-{id}"),
        "plugins": [
            {
                "type": "bridge",
                "bridge": cni_bridge.0,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.250.19.0/24"}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": data_dir
                }
            }
        ]
    });
    std::fs::write(conf_dir.join("10-test.conflist"), conflist.to_string()).unwrap();
    env.mgr.status().unwrap();

    let ns = NsPin::net();
    let net = env.mgr.setup(&env.req("cnipod", &ns, vec![])).unwrap();
    assert!(matches!(net.mode, NetworkMode::Cni { .. }));
    let IpAddr::V4(ip) = net.ip else { panic!("v4") };
    assert!("10.250.19.0/24".parse::<Ipv4Net>().unwrap().contains(&ip));
    let addrs = in_netns(&ns.path, || Netlink::open().unwrap().addrs().unwrap()).unwrap();
    assert!(addrs.iter().any(|a| a.addr.addr() == ip));
    env.mgr.check("cnipod", &ns.path, &net).unwrap();
    // The pod reaches the CNI bridge's gateway address on the host.
    let gw = match net.gateway {
        Some(IpAddr::V4(g)) => g,
        other => panic!("gateway {other:?}"),
    };
    let srv = serve(TcpListener::bind((gw, 0)).unwrap(), b"cni-host");
    assert_eq!(
        in_netns(&ns.path, || fetch(srv)).unwrap().unwrap(),
        b"cni-host"
    );
    let lease_file = data_dir
        .join(conflist["name"].as_str().unwrap())
        .join(ip.to_string());
    assert!(lease_file.exists());

    // DEL after the netns is gone still releases the host-local lease.
    let path = ns.path.clone();
    drop(ns);
    env.mgr.teardown("cnipod", Some(&path), &net).unwrap();
    assert!(!lease_file.exists());
    env.mgr.teardown("cnipod", None, &net).unwrap();

    // A config naming a missing plugin makes the node not ready.
    std::fs::write(
        conf_dir.join("00-broken.conflist"),
        json!({"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "no-such-plugin"}]})
            .to_string(),
    )
    .unwrap();
    assert!(env
        .mgr
        .status()
        .is_err_and(|e| e.contains("no-such-plugin")));
}

/// Removes the iptables-nft `nat` tables (ip and ip6) the portmap plugin creates; it leaves its
/// top-level CNI-HOSTPORT-* chains behind on DEL. Only used when neither existed before.
struct NatTableGuard;

impl Drop for NatTableGuard {
    fn drop(&mut self) {
        for family in ["ip", "ip6"] {
            let _ = Command::new("nft")
                .args(["delete", "table", family, "nat"])
                .output();
        }
    }
}

fn nat_table_exists() -> bool {
    ["ip", "ip6"].iter().any(|family| {
        Command::new("nft")
            .args(["list", "table", family, "nat"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn cni_portmap_host_port_reachable_from_localhost() {
    if !is_root() {
        return;
    }
    if !Path::new("/usr/lib/cni/portmap").exists() {
        eprintln!("skipping: cni portmap plugin not installed in /usr/lib/cni");
        return;
    }
    let env = Env::new(21);
    if nat_table_exists() {
        eprintln!("skipping: a nat table exists; the portmap plugin's leftovers could not be removed safely");
        return;
    }
    let _nat = NatTableGuard;
    let id = uniq();
    let cni_bridge = LinkGuard(format!("bc{id}"));
    let conf_dir = env.dir.path().join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let conflist = json!({
        "cniVersion": "0.4.0",
        "name": format!("berth-pm-{id}"),
        "plugins": [
            {
                "type": "bridge",
                "bridge": cni_bridge.0,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.250.22.0/24"}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": env.dir.path().join("ipam")
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
        ]
    });
    std::fs::write(conf_dir.join("10-pm.conflist"), conflist.to_string()).unwrap();
    let hp = host_port(300);
    let ns = NsPin::net();
    let net = env
        .mgr
        .setup(&env.req("cnipm", &ns, vec![tcp(8080, hp)]))
        .unwrap();
    serve_in(&ns.path, "0.0.0.0:8080", b"cni-pod");
    assert_eq!(
        fetch(SocketAddr::from(([127, 0, 0, 1], hp))).unwrap(),
        b"cni-pod"
    );
    // No CHECK here: portmap 1.1.1 fails it looking for an ipv6 chain it never created
    // ("could not check ipv6 dnat"); CHECK is covered by the bridge-only test.
    env.mgr.teardown("cnipm", Some(&ns.path), &net).unwrap();
    assert!(fetch(SocketAddr::from(([127, 0, 0, 1], hp))).is_err());
}

#[test]
fn nft_batch_errors_are_reported_and_missing_table_means_nothing_to_delete() {
    if !is_root() {
        return;
    }
    let table = format!("bt_none_{}", uniq());
    let pms = [tcp(80, 8080)];
    let ip = Ipv4Addr::new(10, 250, 30, 2);
    let err = nft::add_elements(&table, "p", ip, &pms).unwrap_err();
    assert!(err.to_string().contains("No such file"), "{err}");
    nft::delete_elements(&table, "p", ip, &pms).unwrap();
}

/// The elements of `map` as nft itself reads them back from the kernel (`nft -j list table`),
/// rendered like nft's own syntax: `tcp . 8080 : 10.88.0.5 . 80 "pod a"`.
fn nft_elements(table: &str, map: &str) -> Vec<String> {
    let out = Command::new("nft")
        .args(["-j", "list", "table", "ip", table])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let concat = |v: &serde_json::Value| -> String {
        v["concat"]
            .as_array()
            .unwrap_or_else(|| panic!("not a concatenation: {v}"))
            .iter()
            .map(|p| {
                p.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| p.to_string())
            })
            .collect::<Vec<_>>()
            .join(" . ")
    };
    let mut els: Vec<String> = v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("map"))
        .filter(|m| m["name"] == map)
        .flat_map(|m| m["elem"].as_array().cloned().unwrap_or_default())
        .map(|pair| {
            let (key, data) = (&pair[0], &pair[1]);
            match key.get("elem") {
                Some(e) => format!("{} : {} {}", concat(&e["val"]), concat(data), e["comment"]),
                None => format!("{} : {}", concat(key), concat(data)),
            }
        })
        .collect();
    els.sort();
    els
}

#[test]
fn nft_elements_match_nfts_own_view() {
    if !is_root() {
        return;
    }
    let env = Env::new(31);
    // Maps only, no chains: these elements never DNAT the node's real traffic.
    nft::run(&env.table, &nft::ensure_maps_script(&env.table)).unwrap();
    let ip = Ipv4Addr::new(10, 250, 31, 7);
    let pms = [
        tcp(80, 8080),
        PortMapping {
            protocol: Protocol::Udp,
            container_port: 53,
            host_port: 5353,
            host_ip: Some("127.0.0.1".parse().unwrap()),
        },
        PortMapping {
            protocol: Protocol::Sctp,
            container_port: 9,
            host_port: 65535,
            host_ip: None,
        },
    ];
    let pod = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    nft::add_elements(&env.table, pod, ip, &pms).unwrap();
    assert_eq!(
        nft_elements(&env.table, "hp_any"),
        vec![
            format!("sctp . 65535 : 10.250.31.7 . 9 \"pod {pod}\""),
            format!("tcp . 8080 : 10.250.31.7 . 80 \"pod {pod}\""),
        ]
    );
    assert_eq!(
        nft_elements(&env.table, "hp_ip"),
        vec![format!(
            "127.0.0.1 . udp . 5353 : 10.250.31.7 . 53 \"pod {pod}\""
        )]
    );
    // Adding again is fine (a retried setup); deleting twice too (a retried teardown).
    nft::add_elements(&env.table, pod, ip, &pms).unwrap();
    nft::delete_elements(&env.table, pod, ip, &pms).unwrap();
    nft::delete_elements(&env.table, pod, ip, &pms).unwrap();
    assert!(nft_elements(&env.table, "hp_any").is_empty());
    assert!(nft_elements(&env.table, "hp_ip").is_empty());
}

#[test]
fn many_host_ports_span_batches_and_a_late_failure_leaves_nothing() {
    if !is_root() {
        return;
    }
    let env = Env::new(32);
    // Maps only, no chains: these elements never DNAT the node's real traffic.
    nft::run(&env.table, &nft::ensure_maps_script(&env.table)).unwrap();
    let ip = Ipv4Addr::new(10, 250, 32, 7);
    let pms: Vec<PortMapping> = (0..1000).map(|i| tcp(8000, 30000 + i)).collect();
    nft::add_elements(&env.table, "many", ip, &pms).unwrap();
    assert_eq!(nft_elements(&env.table, "hp_any").len(), 1000);
    nft::delete_elements(&env.table, "many", ip, &pms).unwrap();
    assert!(nft_elements(&env.table, "hp_any").is_empty());

    // An element of the same key with other data, written behind berth's back: the kernel
    // refuses the batch holding port 30900, after earlier batches already committed.
    nft::run(
        &env.table,
        &format!(
            "add element ip {} hp_any {{ tcp . 30900 : 10.250.32.99 . 1 }}\n",
            env.table
        ),
    )
    .unwrap();
    let err = nft::add_elements(&env.table, "many", ip, &pms).unwrap_err();
    assert!(err.to_string().contains("tcp/30900"), "{err}");
    assert!(err.to_string().contains("File exists"), "{err}");
    assert_eq!(
        nft_elements(&env.table, "hp_any"),
        vec!["tcp . 30900 : 10.250.32.99 . 1"]
    );
}
