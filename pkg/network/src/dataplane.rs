//! The kernel side of the built-in mode behind a small trait, so setup/teardown ordering and
//! rollback are unit-tested with a recording fake, and the Linux implementation by root tests.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;

use ipnet::Ipv4Net;

use crate::error::{nl_err, NetworkError, Result};
use crate::netlink::Netlink;
use crate::netns::in_netns;
use crate::nft;
use crate::types::PortMapping;
use crate::POD_IFNAME;

pub(crate) trait Dataplane: Send + Sync {
    /// Creates the veth pair: host end `veth` attached to `bridge` and up, peer `eth0` directly
    /// inside `netns`.
    fn create_pod_link(&self, bridge: &str, veth: &str, netns: &Path, mtu: u32) -> Result<()>;
    /// Inside `netns`: lo up, eth0 with `addr` and up, default route via `gw`.
    fn configure_pod(&self, netns: &Path, addr: Ipv4Net, gw: Ipv4Addr) -> Result<()>;
    /// Deletes a host link; a missing one is fine.
    fn delete_link(&self, name: &str) -> Result<()>;
    fn add_hostports(
        &self,
        table: &str,
        pod_id: &str,
        ip: Ipv4Addr,
        pms: &[PortMapping],
    ) -> Result<()>;
    /// Removes the pod's hostPort rules; absent rules are fine.
    fn delete_hostports(
        &self,
        table: &str,
        pod_id: &str,
        ip: Ipv4Addr,
        pms: &[PortMapping],
    ) -> Result<()>;
}

fn no_dev(op: &'static str, target: &str) -> NetworkError {
    nl_err(op, target)(io::Error::from_raw_os_error(libc::ENODEV))
}

pub(crate) struct LinuxDataplane;

impl Dataplane for LinuxDataplane {
    fn create_pod_link(&self, bridge: &str, veth: &str, netns: &Path, mtu: u32) -> Result<()> {
        let ns = File::open(netns).map_err(|source| NetworkError::Namespace {
            path: netns.to_path_buf(),
            source,
        })?;
        let mut nl = Netlink::open().map_err(nl_err("open", veth))?;
        let master = nl
            .link_index(bridge)
            .map_err(nl_err("get link", bridge))?
            .ok_or_else(|| no_dev("get link", bridge))?;
        match nl.create_veth(veth, POD_IFNAME, ns.as_raw_fd(), master, mtu) {
            // A host end with this pod's name is a leftover of a setup interrupted by a crash
            // (its netns kept alive elsewhere): replace it instead of failing every retry.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                tracing::warn!(veth, "replacing leftover veth");
                nl.delete_link(veth).map_err(nl_err("delete link", veth))?;
                nl.create_veth(veth, POD_IFNAME, ns.as_raw_fd(), master, mtu)
                    .map_err(nl_err("create veth", veth))?
            }
            r => r.map_err(nl_err("create veth", veth))?,
        }
        // Hairpin: a pod reaching itself through its hostPort (or a Service that picks it)
        // comes back out of the bridge port it came in on, which bridges refuse by default.
        // kubelet's "hairpin-veth" mode does the same; one sysfs write, no process.
        let hairpin = format!("/sys/class/net/{veth}/brport/hairpin_mode");
        std::fs::write(&hairpin, b"1").map_err(nl_err("set hairpin mode", veth))
    }

    fn configure_pod(&self, netns: &Path, addr: Ipv4Net, gw: Ipv4Addr) -> Result<()> {
        in_netns(netns, || -> Result<()> {
            let mut nl = Netlink::open().map_err(nl_err("open", "pod netns"))?;
            let lo = nl
                .link_index("lo")
                .map_err(nl_err("get link", "lo"))?
                .ok_or_else(|| no_dev("get link", "lo"))?;
            nl.set_up(lo).map_err(nl_err("set up", "lo"))?;
            let eth = nl
                .link_index(POD_IFNAME)
                .map_err(nl_err("get link", POD_IFNAME))?
                .ok_or_else(|| no_dev("get link", POD_IFNAME))?;
            nl.add_addr(eth, addr)
                .map_err(nl_err("add address", POD_IFNAME))?;
            nl.set_up(eth).map_err(nl_err("set up", POD_IFNAME))?;
            nl.add_default_route(gw, eth)
                .map_err(nl_err("add default route", POD_IFNAME))
        })?
    }

    fn delete_link(&self, name: &str) -> Result<()> {
        Netlink::open()
            .and_then(|mut nl| nl.delete_link(name))
            .map_err(nl_err("delete link", name))
    }

    fn add_hostports(
        &self,
        table: &str,
        pod_id: &str,
        ip: Ipv4Addr,
        pms: &[PortMapping],
    ) -> Result<()> {
        nft::add_elements(table, pod_id, ip, pms)
    }

    fn delete_hostports(
        &self,
        table: &str,
        pod_id: &str,
        ip: Ipv4Addr,
        pms: &[PortMapping],
    ) -> Result<()> {
        nft::delete_elements(table, pod_id, ip, pms)
    }
}

#[cfg(test)]
pub(crate) mod fake {
    use std::sync::Mutex;

    use super::*;

    /// Records every call as a short string and fails the call whose name is in `fail`.
    #[derive(Default)]
    pub(crate) struct FakeDataplane {
        pub calls: Mutex<Vec<String>>,
        pub fail: Mutex<Option<&'static str>>,
    }

    impl FakeDataplane {
        fn record(&self, name: &'static str, detail: String) -> Result<()> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("{name} {detail}").trim_end().to_string());
            if *self.fail.lock().unwrap() == Some(name) {
                return Err(NetworkError::Nft {
                    table: "fake".into(),
                    message: format!("injected failure in {name}"),
                });
            }
            Ok(())
        }

        pub fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.calls.lock().unwrap())
        }
    }

    /// Tests keep one handle to inspect calls while the manager owns the other.
    impl Dataplane for std::sync::Arc<FakeDataplane> {
        fn create_pod_link(&self, bridge: &str, veth: &str, _: &Path, _: u32) -> Result<()> {
            self.as_ref()
                .record("create_pod_link", format!("{veth}@{bridge}"))
        }
        fn configure_pod(&self, _: &Path, addr: Ipv4Net, gw: Ipv4Addr) -> Result<()> {
            self.as_ref()
                .record("configure_pod", format!("{addr} via {gw}"))
        }
        fn delete_link(&self, name: &str) -> Result<()> {
            self.as_ref().record("delete_link", name.into())
        }
        fn add_hostports(
            &self,
            _: &str,
            pod: &str,
            ip: Ipv4Addr,
            pms: &[PortMapping],
        ) -> Result<()> {
            self.as_ref()
                .record("add_hostports", format!("{pod} {ip} {}", pms.len()))
        }
        fn delete_hostports(
            &self,
            _: &str,
            pod: &str,
            ip: Ipv4Addr,
            pms: &[PortMapping],
        ) -> Result<()> {
            self.as_ref()
                .record("delete_hostports", format!("{pod} {ip} {}", pms.len()))
        }
    }
}
