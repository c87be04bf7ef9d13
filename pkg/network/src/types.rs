use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::{NetworkError, Result};

/// The subnet berth uses when nothing else is configured (the same default as podman/CRI-O's
/// `cni0` examples, so operators recognise it).
pub const DEFAULT_SUBNET: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(10, 88, 0, 0), 16) {
    Ok(n) => n,
    // Evaluated at compile time: a typo here fails the build, never a running daemon.
    Err(_) => panic!("constant subnet"),
};

/// Network settings from `/etc/berth/config.toml`; every field is optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Bridge of the built-in mode.
    pub bridge: String,
    /// Pod subnet of the built-in mode. When it is left at `DEFAULT_SUBNET` and that collides
    /// with a route of the node, `NetworkManager::new` picks another private /16 (see
    /// `choose_subnet`); an explicitly configured other subnet is used as given.
    pub subnet: Ipv4Net,
    pub mtu: u32,
    /// A `.conflist`/`.conf`/`.json` here switches pods to CNI mode.
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dirs: Vec<PathBuf>,
    /// berth's own nftables table (family `ip`) for hostPorts and masquerade.
    pub nft_table: String,
    /// Where CNI ADD results are cached for DEL/CHECK (`<state_dir>/cni/results/<pod>.json`).
    pub state_dir: PathBuf,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            bridge: "berth0".into(),
            subnet: DEFAULT_SUBNET,
            mtu: 1500,
            cni_conf_dir: "/etc/cni/net.d".into(),
            cni_bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            nft_table: "berth".into(),
            state_dir: "/var/lib/berth".into(),
        }
    }
}

impl NetworkConfig {
    /// Checks what would otherwise fail late or land in a command line (nft script, ifname).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(NetworkError::InvalidConfig(what));
        if !valid_ifname(&self.bridge) {
            return bad(format!(
                "bridge {:?} is not a valid interface name",
                self.bridge
            ));
        }
        if self.subnet.prefix_len() > 30 {
            return bad(format!("subnet {} is smaller than a /30", self.subnet));
        }
        if !(576..=65535).contains(&self.mtu) {
            return bad(format!("mtu {} is outside 576..65535", self.mtu));
        }
        let t = &self.nft_table;
        if t.is_empty()
            || t.len() > 64
            || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return bad(format!("nft_table {t:?} must be 1-64 of [A-Za-z0-9_]"));
        }
        Ok(())
    }

    /// The bridge address and the pods' default gateway: the first host of the subnet.
    pub fn gateway(&self) -> Ipv4Addr {
        first_host(self.subnet)
    }
}

pub(crate) fn first_host(net: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).wrapping_add(1))
}

pub(crate) fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// Maps the CRI `Protocol` enum value (TCP=0, UDP=1, SCTP=2); anything else is refused.
    pub fn from_cri(value: i32) -> Result<Self> {
        match value {
            0 => Ok(Protocol::Tcp),
            1 => Ok(Protocol::Udp),
            2 => Ok(Protocol::Sctp),
            v => Err(NetworkError::InvalidPortMapping {
                index: 0,
                reason: format!("unsupported protocol {v}"),
            }),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses a CRI `host_ip`: empty means all addresses; otherwise an IPv4 or IPv6 literal.
pub fn parse_host_ip(s: &str) -> Result<Option<IpAddr>> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| NetworkError::InvalidPortMapping {
            index: 0,
            reason: format!("host_ip {s:?} is not an ipv4 or ipv6 literal"),
        })
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    pub protocol: Protocol,
    pub container_port: u16,
    /// 0 means the port is only declared, not published on the node (kubelet sends every
    /// container port), so it gets no rule.
    pub host_port: u16,
    pub host_ip: Option<IpAddr>,
}

impl PortMapping {
    /// The host address the mapping is bound to; `None` for "every address".
    pub(crate) fn bound_ip(&self) -> Option<IpAddr> {
        self.host_ip.filter(|ip| !ip.is_unspecified())
    }

    pub(crate) fn publishes(&self) -> bool {
        self.host_port != 0
    }
}

/// Checks port mappings before anything is created.
pub(crate) fn validate_port_mappings(pm: &[PortMapping]) -> Result<()> {
    let mut seen = HashSet::new();
    for (index, p) in pm.iter().enumerate() {
        let bad = |reason: String| Err(NetworkError::InvalidPortMapping { index, reason });
        if p.container_port == 0 {
            return bad("container_port 0 is invalid".into());
        }
        if let Some(ip) = p.host_ip {
            if ip.is_multicast() {
                return bad(format!("host_ip {ip} is a multicast address"));
            }
            if let IpAddr::V4(v4) = ip {
                if v4.is_broadcast() {
                    return bad(format!("host_ip {ip} is the broadcast address"));
                }
            }
        }
        if p.publishes() && !seen.insert((p.protocol, p.host_port, p.bound_ip())) {
            return bad(format!(
                "host_port {}/{} is mapped twice",
                p.protocol, p.host_port
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNetworkRequest {
    pub pod_id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// The pinned network namespace (an nsfs bind mount).
    pub netns: PathBuf,
    pub port_mappings: Vec<PortMapping>,
    pub dns: Option<DnsConfig>,
    pub cgroup_parent: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum NetworkMode {
    Builtin,
    Cni { network_name: String },
}

/// What setup produced; berthd persists it in the pod record and hands it back for teardown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetwork {
    pub ip: IpAddr,
    pub gateway: Option<IpAddr>,
    pub interface: String,
    pub host_veth: Option<String>,
    pub mode: NetworkMode,
    pub port_mappings: Vec<PortMapping>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(container_port: u16, host_port: u16, host_ip: Option<&str>) -> PortMapping {
        PortMapping {
            protocol: Protocol::Tcp,
            container_port,
            host_port,
            host_ip: host_ip.map(|s| s.parse().unwrap()),
        }
    }

    #[test]
    fn port_mapping_validation() {
        assert!(validate_port_mappings(&[pm(80, 8080, None), pm(81, 0, None)]).is_ok());
        assert!(validate_port_mappings(&[pm(80, 8080, Some("::1"))]).is_ok());
        for bad in [
            vec![pm(0, 8080, None)],
            vec![pm(80, 8080, None), pm(81, 8080, None)],
            vec![pm(80, 8080, Some("224.0.0.1"))],
            vec![pm(80, 8080, Some("255.255.255.255"))],
        ] {
            let err = validate_port_mappings(&bad).unwrap_err();
            assert_eq!(
                berth_core::HasKind::kind(&err),
                berth_core::ErrorKind::InvalidArgument,
                "{err}"
            );
        }
        // The same port on different protocols or different host addresses is fine.
        let mut udp = pm(80, 8080, None);
        udp.protocol = Protocol::Udp;
        assert!(validate_port_mappings(&[pm(80, 8080, None), udp]).is_ok());
    }

    #[test]
    fn host_ip_and_protocol_parsing() {
        assert_eq!(parse_host_ip("").unwrap(), None);
        assert!(parse_host_ip("10.0.0.1").unwrap().is_some());
        assert!(parse_host_ip("fe80::1").unwrap().is_some());
        for bad in ["localhost", "10.0.0.1/24", "1.2.3", " 1.2.3.4"] {
            assert!(parse_host_ip(bad).is_err(), "{bad}");
        }
        assert_eq!(Protocol::from_cri(2).unwrap(), Protocol::Sctp);
        assert!(Protocol::from_cri(7).is_err());
    }

    #[test]
    fn config_defaults_and_partial_deserialize() {
        let c: NetworkConfig = serde_json::from_str(r#"{"bridge":"br9"}"#).unwrap();
        assert_eq!(c.bridge, "br9");
        assert_eq!(c.subnet, DEFAULT_SUBNET);
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        assert!(c.validate().is_ok());
        let bad = NetworkConfig {
            nft_table: "x; flush ruleset".into(),
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn pod_network_round_trips() {
        let n = PodNetwork {
            ip: "10.88.0.2".parse().unwrap(),
            gateway: Some("10.88.0.1".parse().unwrap()),
            interface: "eth0".into(),
            host_veth: Some("veth01234567".into()),
            mode: NetworkMode::Cni {
                network_name: "k8s".into(),
            },
            port_mappings: vec![pm(80, 8080, None)],
        };
        let s = serde_json::to_string(&n).unwrap();
        assert_eq!(serde_json::from_str::<PodNetwork>(&s).unwrap(), n);
    }
}
