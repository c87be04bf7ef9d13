//! Pod networking for RunPodSandbox: the built-in bridge mode (netlink veth + IPAM leases +
//! nftables hostPorts) and a CNI executor for nodes that ship a CNI config.
//!
//! Everything here is synchronous; callers on tokio run it under `spawn_blocking`. Namespaces are
//! entered only through [`in_netns`], on a dedicated thread.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use berth_store::Store;
use ipnet::Ipv4Net;
use serde_json::{json, Value};

mod cni;
mod dataplane;
mod error;
mod ipam;
mod netlink;
mod netns;
mod nft;
mod sysctl;
mod types;

#[cfg(test)]
mod root_tests;

pub use error::{NetworkError, Result};
pub use netns::in_netns;
pub use sysctl::{apply_sysctls, validate_sysctls};
pub use types::{
    parse_host_ip, DnsConfig, NetworkConfig, NetworkMode, PodNetwork, PodNetworkRequest,
    PortMapping, Protocol, DEFAULT_SUBNET,
};

use dataplane::{Dataplane, LinuxDataplane};
use error::nl_err;
use ipam::{Claims, Ipam};
use netlink::Netlink;

/// The interface name pods see.
pub const POD_IFNAME: &str = "eth0";

/// Private /16s tried, in order, when the default subnet collides with a route on the node.
const FALLBACK_SUBNETS: &[(u8, u8)] = &[(10, 89), (10, 90), (10, 91), (172, 30), (172, 31)];

/// Picks the pod subnet: `preferred` unless it overlaps one of `taken` (the node's routes, minus
/// berth's own bridge and the default route), else the first free fallback. When everything
/// collides, `preferred` is kept and the caller logs it.
pub fn choose_subnet(preferred: Ipv4Net, taken: &[Ipv4Net]) -> Ipv4Net {
    let overlaps = |a: &Ipv4Net| {
        taken
            .iter()
            .filter(|t| t.prefix_len() > 0)
            .any(|t| t.contains(&a.network()) || a.contains(&t.network()))
    };
    std::iter::once(preferred)
        .chain(
            FALLBACK_SUBNETS
                .iter()
                .filter_map(|(a, b)| Ipv4Net::new(Ipv4Addr::new(*a, *b, 0, 0), 16).ok()),
        )
        .find(|n| !overlaps(n))
        .unwrap_or(preferred)
}

/// The host end of a pod's veth: stable per pod, 12 chars (under IFNAMSIZ).
pub fn host_veth_name(pod_id: &str) -> String {
    let d = berth_core::Digest::of_bytes(pod_id.as_bytes());
    format!("veth{}", &d.hex()[..8])
}

fn valid_pod_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

struct State {
    ipam: Ipam,
    claims: Claims,
}

pub struct NetworkManager {
    cfg: NetworkConfig,
    store: Store,
    dp: Box<dyn Dataplane>,
    state: Mutex<State>,
}

impl NetworkManager {
    /// Resolves the subnet, loads the leases and rebuilds hostPort claims from them.
    pub fn new(cfg: NetworkConfig, store: Store) -> Result<Self> {
        Self::with_dataplane(cfg, store, Box::new(LinuxDataplane))
    }

    fn with_dataplane(
        mut cfg: NetworkConfig,
        store: Store,
        dp: Box<dyn Dataplane>,
    ) -> Result<Self> {
        cfg.validate()?;
        if cfg.subnet == DEFAULT_SUBNET {
            match Self::foreign_routes(&cfg.bridge) {
                Ok(taken) => {
                    let chosen = choose_subnet(cfg.subnet, &taken);
                    if taken.iter().any(|t| {
                        t.prefix_len() > 0
                            && (t.contains(&chosen.network()) || chosen.contains(&t.network()))
                    }) {
                        tracing::warn!(subnet = %chosen, "every candidate pod subnet collides with a node route");
                    } else if chosen != cfg.subnet {
                        tracing::info!(subnet = %chosen, "default pod subnet collides with a node route, using another");
                    }
                    cfg.subnet = chosen;
                }
                Err(e) => tracing::warn!(error = %e, "cannot read routes to check the pod subnet"),
            }
        }
        let ipam = Ipam::load(&store, cfg.subnet)?;
        let mut claims = Claims::default();
        for l in ipam.leases() {
            if let Err(e) = claims.claim(&l.pod_id, &l.port_mappings) {
                tracing::warn!(error = %e, pod = l.pod_id, "conflicting hostPort in leases");
            }
        }
        Ok(Self {
            cfg,
            store,
            dp,
            state: Mutex::new(State { ipam, claims }),
        })
    }

    /// The config in effect, with the subnet actually chosen.
    pub fn config(&self) -> &NetworkConfig {
        &self.cfg
    }

    fn foreign_routes(bridge: &str) -> Result<Vec<Ipv4Net>> {
        let mut nl = Netlink::open().map_err(nl_err("open", "route"))?;
        let own = nl.link_index(bridge).map_err(nl_err("get link", bridge))?;
        let routes = nl.routes().map_err(nl_err("dump", "routes"))?;
        Ok(routes
            .into_iter()
            .filter(|r| own.is_none() || r.oif != own)
            .map(|r| r.dst)
            .collect())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain maps behind, still consistent per entry.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn gateway_net(&self) -> Ipv4Net {
        // prefix_len comes from a valid Ipv4Net, so this cannot fail; fall back to a /32 anyway.
        Ipv4Net::new(self.cfg.gateway(), self.cfg.subnet.prefix_len())
            .unwrap_or_else(|_| Ipv4Net::from(self.cfg.gateway()))
    }

    /// Daemon start: bridge with the gateway address, forwarding sysctls, the nft base table.
    /// Idempotent.
    pub fn init(&self) -> Result<()> {
        // A node that ships a CNI config is networked by its plugins: leave its host networking
        // alone (no bridge, no masquerade for a subnet nobody uses).
        if let Some((path, _)) = cni::select_conf(&self.cfg.cni_conf_dir)? {
            tracing::info!(config = %path.display(), "cni mode, built-in bridge not created");
            return Ok(());
        }
        let br = &self.cfg.bridge;
        let mut nl = Netlink::open().map_err(nl_err("open", br.as_str()))?;
        nl.create_bridge(br, self.cfg.mtu)
            .map_err(nl_err("create bridge", br.as_str()))?;
        let idx = nl
            .link_index(br)
            .map_err(nl_err("get link", br.as_str()))?
            .ok_or_else(|| NetworkError::Netlink {
                op: "get link",
                target: br.clone(),
                source: std::io::Error::from_raw_os_error(libc::ENODEV),
            })?;
        nl.add_addr(idx, self.gateway_net())
            .map_err(nl_err("add address", br.as_str()))?;
        nl.set_up(idx).map_err(nl_err("set up", br.as_str()))?;
        // Forwarding is needed for egress; route_localnet only on our bridge so DNATed traffic
        // from 127.0.0.1 may leave through it without loosening the host's other interfaces.
        write_sysctl("net/ipv4/ip_forward", "1")?;
        write_sysctl(&format!("net/ipv4/conf/{br}/route_localnet"), "1")?;
        nft::run(
            &self.cfg.nft_table,
            &nft::base_script(&self.cfg.nft_table, self.cfg.subnet),
        )
    }

    /// NetworkReady: `Err("reason: message")` when pods cannot get a network.
    pub fn status(&self) -> Result<(), String> {
        let not_ready = |m: String| Err(format!("NetworkPluginNotReady: {m}"));
        match cni::select_conf(&self.cfg.cni_conf_dir) {
            Err(e) => return not_ready(e.to_string()),
            Ok(Some((path, list))) => {
                let exec = cni::Executor {
                    bin_dirs: &self.cfg.cni_bin_dirs,
                };
                if let Some(t) = exec.missing_plugin(&list) {
                    return not_ready(format!(
                        "cni plugin {t:?} of {} not found in {:?}",
                        path.display(),
                        self.cfg.cni_bin_dirs
                    ));
                }
                return Ok(());
            }
            Ok(None) => {}
        }
        let br = &self.cfg.bridge;
        match Netlink::open().and_then(|mut nl| nl.link_index(br)) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => not_ready(format!("bridge {br} does not exist")),
            Err(e) => not_ready(format!("cannot query bridge {br}: {e}")),
        }
    }

    /// Refuses bad port mappings before anything is created.
    pub fn validate_port_mappings(&self, pm: &[PortMapping]) -> Result<()> {
        types::validate_port_mappings(pm)
    }

    /// Connects the pod: CNI when a CNI config exists, else the built-in bridge. On error
    /// everything done so far is undone.
    pub fn setup(&self, req: &PodNetworkRequest) -> Result<PodNetwork> {
        if !valid_pod_id(&req.pod_id) {
            return Err(NetworkError::InvalidConfig(format!(
                "pod_id {:?} is not a valid id",
                req.pod_id
            )));
        }
        self.validate_port_mappings(&req.port_mappings)?;
        let started = std::time::Instant::now();
        let result = match cni::select_conf(&self.cfg.cni_conf_dir)? {
            Some((_, list)) => self.setup_cni(req, &list),
            None => self.setup_builtin(req),
        };
        berth_metrics::metrics().network_setup(started.elapsed(), result.is_ok());
        result
    }

    fn setup_builtin(&self, req: &PodNetworkRequest) -> Result<PodNetwork> {
        nft::ipv4_only(&req.port_mappings)?;
        let pod = req.pod_id.as_str();
        let lease = {
            let mut st = self.state();
            st.claims.claim(pod, &req.port_mappings)?;
            match st.ipam.reserve(pod, &req.port_mappings) {
                Ok(l) => l,
                Err(e) => {
                    st.claims.release(pod);
                    return Err(e);
                }
            }
        };
        // Durable before the address is configured anywhere; outside the lock so parallel
        // setups do not queue behind each other's fsync.
        if let Err(e) = ipam::persist(&self.store, &lease) {
            let mut st = self.state();
            st.ipam.forget(lease.ip);
            st.claims.release(pod);
            return Err(e);
        }
        let ip = lease.ip;
        let veth = host_veth_name(pod);
        let mut veth_created = false;
        let result = self.wire_builtin(req, ip, &veth, &mut veth_created);
        if let Err(e) = result {
            if veth_created {
                if let Err(u) = self.dp.delete_link(&veth) {
                    tracing::warn!(error = %u, veth, "undo veth after failed setup");
                }
            }
            match ipam::unpersist(&self.store, ip) {
                Ok(()) => self.state().ipam.forget(ip),
                // Keeping the reservation is safe: reconcile releases it at the next start.
                Err(u) => tracing::warn!(error = %u, pod, "undo lease after failed setup"),
            }
            self.state().claims.release(pod);
            return Err(e);
        }
        Ok(PodNetwork {
            ip: IpAddr::V4(ip),
            gateway: Some(IpAddr::V4(self.cfg.gateway())),
            interface: POD_IFNAME.into(),
            host_veth: Some(veth),
            mode: NetworkMode::Builtin,
            port_mappings: req.port_mappings.clone(),
        })
    }

    /// The kernel part of the built-in setup. hostPort rules go last so a failure there needs no
    /// rule undo; `veth_created` tells the caller what to delete on error.
    fn wire_builtin(
        &self,
        req: &PodNetworkRequest,
        ip: Ipv4Addr,
        veth: &str,
        veth_created: &mut bool,
    ) -> Result<()> {
        self.dp
            .create_pod_link(&self.cfg.bridge, veth, &req.netns, self.cfg.mtu)?;
        *veth_created = true;
        let addr = Ipv4Net::new(ip, self.cfg.subnet.prefix_len())
            .map_err(|e| NetworkError::InvalidConfig(e.to_string()))?;
        self.dp
            .configure_pod(&req.netns, addr, self.cfg.gateway())?;
        // Zero nft work for pods without hostPorts.
        if req.port_mappings.iter().any(PortMapping::publishes) {
            self.dp
                .add_hostports(&self.cfg.nft_table, &req.pod_id, ip, &req.port_mappings)?;
        }
        Ok(())
    }

    fn cni_cache_path(&self, pod_id: &str) -> PathBuf {
        self.cfg
            .state_dir
            .join("cni/results")
            .join(format!("{pod_id}.json"))
    }

    fn setup_cni(&self, req: &PodNetworkRequest, list: &cni::ConfList) -> Result<PodNetwork> {
        let exec = cni::Executor {
            bin_dirs: &self.cfg.cni_bin_dirs,
        };
        let args = cni::cni_args(&req.namespace, &req.name, &req.pod_id, &req.uid);
        let inv = cni::Invocation {
            container_id: &req.pod_id,
            netns: Some(&req.netns),
            ifname: POD_IFNAME,
            args: &args,
            port_mappings: &req.port_mappings,
            dns: req.dns.as_ref(),
        };
        let result = exec.add(list, &inv)?;
        let finish = || -> Result<PodNetwork> {
            let (ip, gateway) = cni::parse_result(&result)?;
            let cache = cni::CachedAdd {
                conflist: list.clone(),
                result: result.clone(),
                args: args.clone(),
            };
            let path = self.cni_cache_path(&req.pod_id);
            let io = |source| NetworkError::CniCache {
                path: path.clone(),
                source,
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let data = serde_json::to_vec(&cache).map_err(|e| io(e.into()))?;
            berth_core::atomic_write(&path, &data).map_err(io)?;
            Ok(PodNetwork {
                ip,
                gateway,
                interface: POD_IFNAME.into(),
                host_veth: None,
                mode: NetworkMode::Cni {
                    network_name: list.name.clone(),
                },
                port_mappings: req.port_mappings.clone(),
            })
        };
        finish().inspect_err(|_| {
            if let Err(d) = exec.del(list, &inv, Some(&result)) {
                tracing::warn!(error = %d, pod = req.pod_id, "cni DEL after failed setup");
            }
        })
    }

    fn load_cni_cache(&self, pod_id: &str) -> Option<cni::CachedAdd> {
        let path = self.cni_cache_path(pod_id);
        let data = std::fs::read(&path).ok()?;
        serde_json::from_slice(&data)
            .inspect_err(|e| tracing::warn!(error = %e, path = %path.display(), "bad cni cache"))
            .ok()
    }

    /// Disconnects the pod. Idempotent, and works when the netns is already gone.
    pub fn teardown(&self, pod_id: &str, netns: Option<&Path>, net: &PodNetwork) -> Result<()> {
        if !valid_pod_id(pod_id) {
            return Err(NetworkError::InvalidConfig(format!(
                "pod_id {pod_id:?} is not a valid id"
            )));
        }
        match &net.mode {
            NetworkMode::Builtin => self.teardown_builtin(pod_id, netns, net),
            NetworkMode::Cni { .. } => self.teardown_cni(pod_id, netns, net),
        }
    }

    fn teardown_builtin(&self, pod_id: &str, netns: Option<&Path>, net: &PodNetwork) -> Result<()> {
        // Rules go first: if removing them fails the lease stays, so the address cannot go to a
        // new pod that would then receive this pod's hostPort traffic.
        if let IpAddr::V4(ip) = net.ip {
            if net.port_mappings.iter().any(PortMapping::publishes) {
                self.dp
                    .delete_hostports(&self.cfg.nft_table, pod_id, ip, &net.port_mappings)?;
            }
        }
        // With the netns alive its veth dies with it when the pin is removed; deleting it here
        // would cost ~19 ms for nothing. Without a netns the host end can only be a leftover.
        let ns_alive = netns.is_some_and(Path::exists);
        if let (false, Some(veth)) = (ns_alive, &net.host_veth) {
            self.dp.delete_link(veth)?;
        }
        let ips = self.state().ipam.ips_of(pod_id);
        for ip in ips {
            ipam::unpersist(&self.store, ip)?;
            self.state().ipam.forget(ip);
        }
        self.state().claims.release(pod_id);
        Ok(())
    }

    fn teardown_cni(&self, pod_id: &str, netns: Option<&Path>, net: &PodNetwork) -> Result<()> {
        let cached = self.load_cni_cache(pod_id);
        let (list, result, args) = match cached {
            Some(c) => (c.conflist, Some(c.result), c.args),
            // No cache (crash between ADD and the cache write, or an old record): DEL with the
            // current config, as kubelet does, so plugins can release what they hold.
            None => match cni::select_conf(&self.cfg.cni_conf_dir)? {
                Some((_, list)) => (list, None, cni::cni_args("", "", pod_id, "")),
                None => {
                    tracing::warn!(pod = pod_id, "no cni config or cache for teardown");
                    return Ok(());
                }
            },
        };
        let exec = cni::Executor {
            bin_dirs: &self.cfg.cni_bin_dirs,
        };
        let inv = cni::Invocation {
            container_id: pod_id,
            netns,
            ifname: POD_IFNAME,
            args: &args,
            port_mappings: &net.port_mappings,
            dns: None,
        };
        exec.del(&list, &inv, result.as_ref())?;
        let path = self.cni_cache_path(pod_id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(NetworkError::CniCache { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// CNI CHECK (cniVersion 0.4.0 and later) or, for the built-in mode, a lease and address check.
    pub fn check(&self, pod_id: &str, netns: &Path, net: &PodNetwork) -> Result<()> {
        match &net.mode {
            NetworkMode::Cni { .. } => {
                let c = self
                    .load_cni_cache(pod_id)
                    .ok_or_else(|| NetworkError::CniCache {
                        path: self.cni_cache_path(pod_id),
                        source: std::io::Error::from(std::io::ErrorKind::NotFound),
                    })?;
                let exec = cni::Executor {
                    bin_dirs: &self.cfg.cni_bin_dirs,
                };
                let inv = cni::Invocation {
                    container_id: pod_id,
                    netns: Some(netns),
                    ifname: POD_IFNAME,
                    args: &c.args,
                    port_mappings: &net.port_mappings,
                    dns: None,
                };
                exec.check(&c.conflist, &inv, &c.result)
            }
            NetworkMode::Builtin => {
                let leased = self.state().ipam.lease_of(pod_id).map(|l| IpAddr::V4(l.ip));
                if leased != Some(net.ip) {
                    return Err(NetworkError::InvalidConfig(format!(
                        "pod {pod_id} has no lease for ip {}",
                        net.ip
                    )));
                }
                let addrs = in_netns(netns, || Netlink::open().and_then(|mut nl| nl.addrs()))?
                    .map_err(nl_err("dump", "addresses"))?;
                if !addrs.iter().any(|a| IpAddr::V4(a.addr.addr()) == net.ip) {
                    return Err(NetworkError::InvalidConfig(format!(
                        "ip {} is not configured in {}",
                        net.ip,
                        netns.display()
                    )));
                }
                Ok(())
            }
        }
    }

    /// After a restart: releases leases, hostPort rules, claims and CNI attachments of pods not
    /// in `live`.
    pub fn reconcile(&self, live: &[(String, PodNetwork)]) -> Result<()> {
        let ids: HashSet<&str> = live.iter().map(|(id, _)| id.as_str()).collect();
        {
            let mut st = self.state();
            let dead: Vec<String> = st
                .ipam
                .leases()
                .filter(|l| !ids.contains(l.pod_id.as_str()))
                .map(|l| l.pod_id.clone())
                .collect();
            for pod in dead {
                tracing::info!(pod, "releasing lease of a pod that is gone");
                st.ipam.release(&self.store, &pod)?;
            }
            st.claims.clear();
            for (id, net) in live {
                if net.mode == NetworkMode::Builtin {
                    if let Err(e) = st.claims.claim(id, &net.port_mappings) {
                        tracing::warn!(error = %e, pod = id, "conflicting hostPort among live pods");
                    }
                }
            }
        }
        let hostports: Vec<(String, Ipv4Addr, Vec<PortMapping>)> = live
            .iter()
            .filter(|(_, n)| n.mode == NetworkMode::Builtin)
            .filter_map(|(id, n)| match n.ip {
                IpAddr::V4(ip) => Some((id.clone(), ip, n.port_mappings.clone())),
                IpAddr::V6(_) => None,
            })
            .collect();
        // On a CNI node with no built-in pods there is no table to fix, and creating one would
        // be a needless host change.
        let builtin_active = cni::select_conf(&self.cfg.cni_conf_dir)?.is_none();
        if !builtin_active && hostports.is_empty() {
            self.reconcile_cni(&ids);
            return Ok(());
        }
        let t = &self.cfg.nft_table;
        nft::run(
            t,
            &format!(
                "{}{}",
                nft::ensure_maps_script(t),
                nft::replace_script(t, &hostports)
            ),
        )?;
        self.reconcile_cni(&ids);
        Ok(())
    }

    /// DELs cached CNI attachments of pods that are gone (their netns is gone too, which DEL
    /// tolerates), so plugin state such as host-local leases is not leaked across restarts.
    fn reconcile_cni(&self, live: &HashSet<&str>) {
        let dir = self.cfg.state_dir.join("cni/results");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pod) = name.strip_suffix(".json") else {
                continue;
            };
            if live.contains(pod) || !valid_pod_id(pod) {
                continue;
            }
            let Some(c) = self.load_cni_cache(pod) else {
                continue;
            };
            let net = PodNetwork {
                ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                gateway: None,
                interface: POD_IFNAME.into(),
                host_veth: None,
                mode: NetworkMode::Cni {
                    network_name: c.conflist.name.clone(),
                },
                port_mappings: Vec::new(),
            };
            if let Err(err) = self.teardown_cni(pod, None, &net) {
                tracing::warn!(error = %err, pod, "cni DEL of a pod that is gone");
            }
        }
    }

    /// What `berthctl netns` shows: addresses, veth, routes inside the netns, hostPort rules.
    pub fn debug_view(&self, pod_id: &str, netns: &Path, net: &PodNetwork) -> Value {
        let inside = in_netns(netns, || {
            let mut nl = Netlink::open()?;
            Ok::<_, std::io::Error>((nl.addrs()?, nl.routes()?))
        });
        let (addrs, routes) = match inside {
            Ok(Ok((a, r))) => (
                json!(a
                    .iter()
                    .map(|a| json!({"index": a.index, "address": a.addr.to_string()}))
                    .collect::<Vec<_>>()),
                json!(r
                    .iter()
                    .map(|r| json!({
                        "dst": r.dst.to_string(),
                        "gateway": r.gateway.map(|g| g.to_string()),
                        "oif": r.oif,
                    }))
                    .collect::<Vec<_>>()),
            ),
            Ok(Err(e)) => (json!({"error": e.to_string()}), Value::Null),
            Err(e) => (json!({"error": e.to_string()}), Value::Null),
        };
        let veth_index = net.host_veth.as_ref().and_then(|v| {
            Netlink::open()
                .and_then(|mut nl| nl.link_index(v))
                .ok()
                .flatten()
        });
        let lease = self.state().ipam.lease_of(pod_id).map(|l| l.ip.to_string());
        let hostports: Vec<String> = net
            .port_mappings
            .iter()
            .filter(|p| p.publishes())
            .map(|p| {
                let host = p
                    .bound_ip()
                    .map_or_else(|| "*".to_string(), |ip| ip.to_string());
                format!(
                    "{} {host}:{} -> {}:{}",
                    p.protocol, p.host_port, net.ip, p.container_port
                )
            })
            .collect();
        let mut v = json!({
            "pod_id": pod_id,
            "netns": netns.display().to_string(),
            "mode": net.mode,
            "ip": net.ip.to_string(),
            "gateway": net.gateway.map(|g| g.to_string()),
            "interface": net.interface,
            "host_veth": net.host_veth,
            "host_veth_ifindex": veth_index,
            "lease": lease,
            "addresses": addrs,
            "routes": routes,
            "hostports": hostports,
        });
        if net.mode == NetworkMode::Builtin && !hostports_empty(net) {
            v["nft_table"] =
                json!(nft::list(&self.cfg.nft_table).unwrap_or_else(|e| e.to_string()));
        }
        if let NetworkMode::Cni { .. } = net.mode {
            v["cni_result"] = self
                .load_cni_cache(pod_id)
                .map_or(Value::Null, |c| c.result);
        }
        v
    }
}

fn hostports_empty(net: &PodNetwork) -> bool {
    !net.port_mappings.iter().any(PortMapping::publishes)
}

fn write_sysctl(rel: &str, value: &str) -> Result<()> {
    let path = Path::new("/proc/sys").join(rel);
    // Skip the write when already set: the value is global and may be managed by the admin.
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(&path, value).map_err(|source| NetworkError::SysctlWrite {
        key: rel.replace('/', "."),
        value: value.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn subnet_collision_picks_the_next_free_candidate() {
        assert_eq!(choose_subnet(DEFAULT_SUBNET, &[]), DEFAULT_SUBNET);
        // The default route and unrelated routes do not count.
        let taken = [net("0.0.0.0/0"), net("192.168.1.0/24")];
        assert_eq!(choose_subnet(DEFAULT_SUBNET, &taken), DEFAULT_SUBNET);
        // A route inside 10.88/16, or one covering it, makes it collide.
        assert_eq!(
            choose_subnet(DEFAULT_SUBNET, &[net("10.88.5.0/24")]),
            net("10.89.0.0/16")
        );
        assert_eq!(
            choose_subnet(DEFAULT_SUBNET, &[net("10.0.0.0/8")]),
            net("172.30.0.0/16")
        );
        let everything = [net("10.0.0.0/8"), net("172.16.0.0/12")];
        assert_eq!(choose_subnet(DEFAULT_SUBNET, &everything), DEFAULT_SUBNET);
    }

    #[test]
    fn veth_names_fit_ifnamsiz_and_are_stable() {
        let a = host_veth_name("0123abcd");
        assert_eq!(a.len(), 12);
        assert!(a.starts_with("veth"));
        assert_eq!(a, host_veth_name("0123abcd"));
        assert_ne!(a, host_veth_name("0123abce"));
    }

    #[test]
    fn manager_refuses_bad_ids_and_ports_before_doing_anything() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let cfg = NetworkConfig {
            subnet: net("10.250.9.0/24"),
            cni_conf_dir: dir.path().join("cni"),
            state_dir: dir.path().into(),
            ..Default::default()
        };
        let m = NetworkManager::new(cfg, store.clone()).unwrap();
        let mut req = PodNetworkRequest {
            pod_id: "../x".into(),
            netns: "/nonexistent".into(),
            ..Default::default()
        };
        assert!(m.setup(&req).is_err());
        req.pod_id = "p1".into();
        req.port_mappings = vec![PortMapping {
            protocol: Protocol::Tcp,
            container_port: 0,
            host_port: 80,
            host_ip: None,
        }];
        let err = m.setup(&req).unwrap_err();
        assert_eq!(
            berth_core::HasKind::kind(&err),
            berth_core::ErrorKind::InvalidArgument
        );
        // A missing netns fails after the lease was taken: the lease must be rolled back.
        req.port_mappings.clear();
        assert!(m.setup(&req).is_err());
        assert!(store
            .list::<serde_json::Value>(berth_store::Bucket::Leases)
            .unwrap()
            .is_empty());
    }

    fn fake_manager(
        fail: Option<&'static str>,
    ) -> (
        tempfile::TempDir,
        Store,
        NetworkManager,
        std::sync::Arc<dataplane::fake::FakeDataplane>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let fake = std::sync::Arc::new(dataplane::fake::FakeDataplane::default());
        *fake.fail.lock().unwrap() = fail;
        let cfg = NetworkConfig {
            subnet: net("10.250.7.0/24"),
            cni_conf_dir: dir.path().join("cni"),
            state_dir: dir.path().into(),
            ..Default::default()
        };
        let m = NetworkManager::with_dataplane(cfg, store.clone(), Box::new(fake.clone())).unwrap();
        (dir, store, m, fake)
    }

    fn req(pod: &str, host_port: u16) -> PodNetworkRequest {
        PodNetworkRequest {
            pod_id: pod.into(),
            netns: "/proc/self/ns/net".into(),
            port_mappings: vec![PortMapping {
                protocol: Protocol::Tcp,
                container_port: 80,
                host_port,
                host_ip: None,
            }],
            ..Default::default()
        }
    }

    fn lease_count(store: &Store) -> usize {
        store
            .list::<serde_json::Value>(berth_store::Bucket::Leases)
            .unwrap()
            .len()
    }

    #[test]
    fn builtin_setup_calls_the_dataplane_in_order_and_skips_nft_without_host_ports() {
        let (_d, store, m, fake) = fake_manager(None);
        let n = m.setup(&req("p1", 0)).unwrap();
        let veth = host_veth_name("p1");
        assert_eq!(
            fake.take(),
            vec![
                format!("create_pod_link {veth}@berth0"),
                "configure_pod 10.250.7.2/24 via 10.250.7.1".to_string(),
            ]
        );
        assert_eq!(n.host_veth.as_deref(), Some(veth.as_str()));
        assert_eq!(lease_count(&store), 1);
        // Netns still there: no veth delete (it goes with the netns), no nft for no hostPorts.
        m.teardown("p1", Some(Path::new("/proc/self/ns/net")), &n)
            .unwrap();
        assert!(fake.take().is_empty());
        assert_eq!(lease_count(&store), 0);
    }

    #[test]
    fn failed_host_port_rules_roll_back_veth_lease_and_claim() {
        let (_d, store, m, fake) = fake_manager(Some("add_hostports"));
        let err = m.setup(&req("p1", 8080)).unwrap_err();
        assert!(err.to_string().contains("injected"), "{err}");
        let calls = fake.take();
        assert_eq!(
            calls.last().unwrap(),
            &format!("delete_link {}", host_veth_name("p1"))
        );
        assert_eq!(lease_count(&store), 0);
        // The claim was released too: another pod can take the port.
        *fake.fail.lock().unwrap() = None;
        m.setup(&req("p2", 8080)).unwrap();
    }

    #[test]
    fn failed_pod_configuration_rolls_back_and_failed_link_creation_deletes_nothing() {
        let (_d, store, m, fake) = fake_manager(Some("configure_pod"));
        m.setup(&req("p1", 8080)).unwrap_err();
        let calls = fake.take();
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert!(calls[2].starts_with("delete_link"));
        assert_eq!(lease_count(&store), 0);
        *fake.fail.lock().unwrap() = Some("create_pod_link");
        m.setup(&req("p1", 8080)).unwrap_err();
        assert_eq!(
            fake.take().len(),
            1,
            "nothing to delete when creation failed"
        );
        assert_eq!(lease_count(&store), 0);
    }

    #[test]
    fn teardown_removes_rules_before_the_lease_and_keeps_it_when_that_fails() {
        let (_d, store, m, fake) = fake_manager(None);
        let n = m.setup(&req("p1", 8080)).unwrap();
        fake.take();
        *fake.fail.lock().unwrap() = Some("delete_hostports");
        assert!(m.teardown("p1", None, &n).is_err());
        assert_eq!(
            lease_count(&store),
            1,
            "lease kept so the ip is not reused under a stale rule"
        );
        *fake.fail.lock().unwrap() = None;
        fake.take();
        // Without a netns the leftover host veth is deleted explicitly.
        m.teardown("p1", None, &n).unwrap();
        assert_eq!(
            fake.take(),
            vec![
                format!("delete_hostports p1 {} 1", n.ip),
                format!("delete_link {}", host_veth_name("p1")),
            ]
        );
        assert_eq!(lease_count(&store), 0);
        m.teardown("p1", None, &n).unwrap();
    }

    #[test]
    fn exhausted_subnet_leaks_nothing() {
        let (_d, store, m, fake) = fake_manager(None);
        // 10.250.7.0/24 has 253 pod addresses (.2 to .254).
        for i in 0..253 {
            m.setup(&req(&format!("p{i}"), 0)).unwrap();
        }
        fake.take();
        let err = m.setup(&req("one-too-many", 9000)).unwrap_err();
        assert_eq!(err.to_string(), "no free ip in 10.250.7.0/24");
        assert_eq!(
            berth_core::HasKind::kind(&err),
            berth_core::ErrorKind::ResourceExhausted
        );
        assert!(fake.take().is_empty());
        assert_eq!(lease_count(&store), 253);
        // Its hostPort claim was released with the failure.
        m.setup(&req("p-late", 9000)).unwrap_err();
        m.teardown(
            "p0",
            Some(Path::new("/proc/self/ns/net")),
            &PodNetwork {
                ip: "10.250.7.2".parse().unwrap(),
                gateway: None,
                interface: POD_IFNAME.into(),
                host_veth: None,
                mode: NetworkMode::Builtin,
                port_mappings: vec![],
            },
        )
        .unwrap();
        m.setup(&req("p-late", 9000)).unwrap();
    }
}
