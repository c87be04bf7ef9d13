//! Address leases and hostPort claims of the built-in mode.
//!
//! A lease is persisted (one store record per IP) before the address is configured anywhere, so
//! after a crash the address is either leased on disk or unused; `reconcile` then releases leases
//! whose pods did not survive. Both tables live behind the manager's mutex: allocation is a scan
//! over an in-memory map plus one fsynced write.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};

use berth_store::{Bucket, Store};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::{NetworkError, Result};
use crate::types::{first_host, PortMapping, Protocol};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Lease {
    pub ip: Ipv4Addr,
    pub pod_id: String,
    /// Kept with the lease so hostPort claims can be rebuilt on start before `reconcile`.
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
}

pub(crate) struct Ipam {
    subnet: Ipv4Net,
    by_ip: BTreeMap<Ipv4Addr, Lease>,
    /// Where the next search starts: handing out addresses round-robin keeps a just-released
    /// address from going straight to the next pod while stale conntrack entries may point at it.
    next: u32,
}

impl Ipam {
    pub fn load(store: &Store, subnet: Ipv4Net) -> Result<Self> {
        let mut by_ip = BTreeMap::new();
        for (key, lease) in store.list::<Lease>(Bucket::Leases)? {
            if key != lease.ip.to_string() {
                tracing::warn!(key, ip = %lease.ip, "lease record key does not match its ip");
            }
            by_ip.insert(lease.ip, lease);
        }
        Ok(Self {
            subnet,
            by_ip,
            next: u32::from(first_host(subnet)).wrapping_add(1),
        })
    }

    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.by_ip.values()
    }

    pub fn lease_of(&self, pod_id: &str) -> Option<&Lease> {
        self.by_ip.values().find(|l| l.pod_id == pod_id)
    }

    /// Leases a free address to `pod_id`, persisting it before returning (the manager splits
    /// this into `reserve` + `persist`).
    #[cfg(test)]
    pub fn allocate(
        &mut self,
        store: &Store,
        pod_id: &str,
        port_mappings: &[PortMapping],
    ) -> Result<Ipv4Addr> {
        let lease = self.reserve(pod_id, port_mappings)?;
        if let Err(e) = persist(store, &lease) {
            self.forget(lease.ip);
            return Err(e);
        }
        Ok(lease.ip)
    }

    /// Reserves a free address in memory only. The caller persists it with [`persist`] before
    /// using it (and calls `forget` if that fails); splitting the two lets concurrent setups
    /// fsync their leases in parallel instead of one after another under the lock.
    pub fn reserve(&mut self, pod_id: &str, port_mappings: &[PortMapping]) -> Result<Lease> {
        if let Some(l) = self.lease_of(pod_id) {
            return Err(NetworkError::LeaseExists {
                pod_id: pod_id.into(),
                ip: l.ip.to_string(),
            });
        }
        // Usable hosts: after the gateway (first host), before the broadcast address.
        let lo = u32::from(first_host(self.subnet)) + 1;
        let hi = u32::from(self.subnet.broadcast()).saturating_sub(1);
        if lo > hi {
            return Err(self.exhausted());
        }
        let span = hi - lo + 1;
        let start = if (lo..=hi).contains(&self.next) {
            self.next
        } else {
            lo
        };
        let free = (0..span)
            .map(|i| Ipv4Addr::from(lo + (start - lo + i) % span))
            .find(|ip| !self.by_ip.contains_key(ip))
            .ok_or_else(|| self.exhausted())?;
        let lease = Lease {
            ip: free,
            pod_id: pod_id.into(),
            port_mappings: port_mappings.to_vec(),
        };
        self.by_ip.insert(free, lease.clone());
        self.next = u32::from(free).wrapping_add(1);
        Ok(lease)
    }

    /// Drops an address from memory; its record must already be gone (or never written).
    pub fn forget(&mut self, ip: Ipv4Addr) {
        self.by_ip.remove(&ip);
    }

    pub fn ips_of(&self, pod_id: &str) -> Vec<Ipv4Addr> {
        self.by_ip
            .values()
            .filter(|l| l.pod_id == pod_id)
            .map(|l| l.ip)
            .collect()
    }

    fn exhausted(&self) -> NetworkError {
        NetworkError::NoFreeIp {
            subnet: self.subnet.to_string(),
        }
    }

    /// Releases every lease of `pod_id`. The record is deleted first so a failed delete keeps
    /// the address reserved rather than handing it out twice.
    pub fn release(&mut self, store: &Store, pod_id: &str) -> Result<usize> {
        let ips = self.ips_of(pod_id);
        for ip in &ips {
            unpersist(store, *ip)?;
            self.forget(*ip);
        }
        Ok(ips.len())
    }
}

pub(crate) fn persist(store: &Store, lease: &Lease) -> Result<()> {
    Ok(store.put(Bucket::Leases, &lease.ip.to_string(), lease)?)
}

pub(crate) fn unpersist(store: &Store, ip: Ipv4Addr) -> Result<()> {
    Ok(store.delete(Bucket::Leases, &ip.to_string())?)
}

/// One holder of a hostPort: the host address (`None` = all) and the pod.
type Holder = (Option<IpAddr>, String);

/// hostPort claims by (protocol, port): who holds it and on which host address.
#[derive(Default)]
pub(crate) struct Claims {
    by_port: HashMap<(Protocol, u16), Vec<Holder>>,
}

impl Claims {
    /// Claims every published mapping of `pod_id`, all or nothing. A wildcard claim conflicts
    /// with every claim of that port, because its DNAT rule would catch their traffic too.
    pub fn claim(&mut self, pod_id: &str, pms: &[PortMapping]) -> Result<()> {
        for p in pms.iter().filter(|p| p.publishes()) {
            let want = p.bound_ip();
            if let Some(holders) = self.by_port.get(&(p.protocol, p.host_port)) {
                for (ip, owner) in holders {
                    if owner != pod_id && (ip.is_none() || want.is_none() || *ip == want) {
                        return Err(NetworkError::HostPortInUse {
                            protocol: p.protocol.to_string(),
                            host_port: p.host_port,
                            host_ip: want.map_or_else(|| "*".into(), |ip| ip.to_string()),
                            owner: owner.clone(),
                        });
                    }
                }
            }
        }
        for p in pms.iter().filter(|p| p.publishes()) {
            let holders = self.by_port.entry((p.protocol, p.host_port)).or_default();
            let entry = (p.bound_ip(), pod_id.to_string());
            if !holders.contains(&entry) {
                holders.push(entry);
            }
        }
        Ok(())
    }

    pub fn release(&mut self, pod_id: &str) {
        self.by_port.retain(|_, holders| {
            holders.retain(|(_, owner)| owner != pod_id);
            !holders.is_empty()
        });
    }

    pub fn clear(&mut self) {
        self.by_port.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn allocation_skips_gateway_and_broadcast_and_never_duplicates() {
        let (_d, store) = store();
        let mut ipam = Ipam::load(&store, net("10.250.0.0/29")).unwrap();
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(ipam.allocate(&store, &format!("pod{i}"), &[]).unwrap());
        }
        let want: Vec<Ipv4Addr> = (2..=6).map(|h| Ipv4Addr::new(10, 250, 0, h)).collect();
        assert_eq!(got, want);
        let err = ipam.allocate(&store, "pod9", &[]).unwrap_err();
        assert_eq!(err.to_string(), "no free ip in 10.250.0.0/29");
        assert_eq!(
            berth_core::HasKind::kind(&err),
            berth_core::ErrorKind::ResourceExhausted
        );
        // Nothing was persisted for the failed allocation.
        assert_eq!(store.list::<Lease>(Bucket::Leases).unwrap().len(), 5);
    }

    #[test]
    fn leases_persist_across_reload_and_release() {
        let (_d, store) = store();
        let mut ipam = Ipam::load(&store, net("10.250.1.0/24")).unwrap();
        let a = ipam.allocate(&store, "a", &[]).unwrap();
        let b = ipam.allocate(&store, "b", &[]).unwrap();
        assert!(matches!(
            ipam.allocate(&store, "a", &[]),
            Err(NetworkError::LeaseExists { .. })
        ));
        let mut ipam = Ipam::load(&store, net("10.250.1.0/24")).unwrap();
        assert_eq!(ipam.lease_of("a").unwrap().ip, a);
        let c = ipam.allocate(&store, "c", &[]).unwrap();
        assert!(c != a && c != b);
        assert_eq!(ipam.release(&store, "a").unwrap(), 1);
        assert_eq!(ipam.release(&store, "a").unwrap(), 0);
        let ipam = Ipam::load(&store, net("10.250.1.0/24")).unwrap();
        assert!(ipam.lease_of("a").is_none());
        assert_eq!(ipam.leases().count(), 2);
    }

    #[test]
    fn released_address_is_not_reused_immediately() {
        let (_d, store) = store();
        let mut ipam = Ipam::load(&store, net("10.250.2.0/24")).unwrap();
        let a = ipam.allocate(&store, "a", &[]).unwrap();
        ipam.release(&store, "a").unwrap();
        let b = ipam.allocate(&store, "b", &[]).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn host_port_claims_conflict_on_overlap_only() {
        let p = |port, ip: Option<&str>, proto| PortMapping {
            protocol: proto,
            container_port: 80,
            host_port: port,
            host_ip: ip.map(|s| s.parse().unwrap()),
        };
        let mut c = Claims::default();
        c.claim("a", &[p(8080, Some("127.0.0.1"), Protocol::Tcp)])
            .unwrap();
        // Other address, other protocol, unpublished: fine.
        c.claim("b", &[p(8080, Some("10.0.0.1"), Protocol::Tcp)])
            .unwrap();
        c.claim(
            "b",
            &[p(8080, None, Protocol::Udp), p(0, None, Protocol::Tcp)],
        )
        .unwrap();
        // Wildcard overlaps both; same address overlaps; all-or-nothing.
        let err = c
            .claim(
                "c",
                &[p(9090, None, Protocol::Tcp), p(8080, None, Protocol::Tcp)],
            )
            .unwrap_err();
        assert_eq!(
            berth_core::HasKind::kind(&err),
            berth_core::ErrorKind::AlreadyExists
        );
        assert!(c.claim("d", &[p(9090, None, Protocol::Tcp)]).is_ok());
        assert!(c
            .claim("e", &[p(8080, Some("127.0.0.1"), Protocol::Tcp)])
            .is_err());
        c.release("a");
        assert!(c
            .claim("e", &[p(8080, Some("127.0.0.1"), Protocol::Tcp)])
            .is_ok());
    }
}
