//! berth's own nftables table: egress masquerade and hostPort DNAT.
//!
//! hostPorts are elements of two maps (`hp_any`: proto . port, `hp_ip`: daddr . proto . port,
//! both mapping to pod ip . port), looked up by two fixed DNAT rules. A pod's rules are exactly
//! its elements (commented `pod <id>`), so setup and teardown only add or delete those elements,
//! over netlink without an nft process (`wire`), and cannot disturb another pod or another
//! table. Chains have accept policies and only DNAT exact matches, so nothing in other tables
//! is shadowed. The base table (daemon start) and the reconcile rewrite are rare and use
//! `nft -f -` for readability.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;

use crate::error::{NetworkError, Result};
use crate::netlink::Socket;
use crate::types::PortMapping;
use wire::SetElemOp;

mod wire;

/// The base table. `add` is idempotent for tables, chains and maps, and the chains are flushed
/// and refilled in the same transaction, so re-running at daemon start updates the rules while
/// keeping the hostPort elements of running pods.
pub(crate) fn base_script(table: &str, subnet: Ipv4Net) -> String {
    format!(
        "add table ip {t}
add map ip {t} hp_any {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}
add map ip {t} hp_ip {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }}
add chain ip {t} hostports
add chain ip {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}
add chain ip {t} output {{ type nat hook output priority -100; policy accept; }}
add chain ip {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
flush chain ip {t} hostports
flush chain ip {t} prerouting
flush chain ip {t} output
flush chain ip {t} postrouting
add rule ip {t} hostports meta l4proto {{ tcp, udp, sctp }} dnat ip to ip daddr . meta l4proto . th dport map @hp_ip
add rule ip {t} hostports meta l4proto {{ tcp, udp, sctp }} dnat ip to meta l4proto . th dport map @hp_any
add rule ip {t} prerouting fib daddr type local jump hostports
add rule ip {t} output fib daddr type local jump hostports
add rule ip {t} postrouting ip saddr {s} ip daddr != {s} masquerade
add rule ip {t} postrouting ct status dnat ip saddr 127.0.0.0/8 masquerade
add rule ip {t} postrouting ct status dnat ip saddr {s} ip daddr {s} masquerade
",
        t = table,
        s = subnet
    )
}

fn element(
    pod_id: &str,
    pod_ip: Ipv4Addr,
    p: &PortMapping,
    with_comment: bool,
) -> (String, String) {
    let comment = if with_comment {
        // Pod ids are hex in practice; filter anyway since this lands in a script.
        let id: String = pod_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(64)
            .collect();
        format!(" comment \"pod {id}\"")
    } else {
        String::new()
    };
    let value = format!("{pod_ip} . {}", p.container_port);
    match p.bound_ip() {
        Some(ip) => (
            "hp_ip".into(),
            format!("{ip} . {} . {}{comment} : {value}", p.protocol, p.host_port),
        ),
        None => (
            "hp_any".into(),
            format!("{} . {}{comment} : {value}", p.protocol, p.host_port),
        ),
    }
}

/// Creates the table and maps if missing (idempotent), so element deletes during teardown or
/// reconcile succeed even when the table was flushed by someone else or init has not run yet.
pub(crate) fn ensure_maps_script(table: &str) -> String {
    format!(
        "add table ip {t}
add map ip {t} hp_any {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}
add map ip {t} hp_ip {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }}
",
        t = table
    )
}

/// Adds the pod's hostPort elements.
pub(crate) fn add_script(
    table: &str,
    pod_id: &str,
    pod_ip: Ipv4Addr,
    pms: &[PortMapping],
) -> String {
    let mut s = String::new();
    for p in pms.iter().filter(|p| p.publishes()) {
        let (map, el) = element(pod_id, pod_ip, p, true);
        s.push_str(&format!("add element ip {table} {map} {{ {el} }}\n"));
    }
    s
}

/// Register layout of a map key: ip (4) . proto (padded to 4) . port (big-endian, padded to 4).
fn key_bytes(p: &PortMapping) -> (&'static str, Vec<u8>) {
    let proto = match p.protocol {
        crate::types::Protocol::Tcp => libc::IPPROTO_TCP,
        crate::types::Protocol::Udp => libc::IPPROTO_UDP,
        crate::types::Protocol::Sctp => libc::IPPROTO_SCTP,
    } as u8;
    let port = p.host_port.to_be_bytes();
    let tail = [proto, 0, 0, 0, port[0], port[1], 0, 0];
    match p.bound_ip() {
        Some(IpAddr::V4(ip)) => {
            let mut k = ip.octets().to_vec();
            k.extend_from_slice(&tail);
            ("hp_ip", k)
        }
        // IPv6 host addresses are refused before setup (`ipv4_only`); treat as wildcard here.
        _ => ("hp_any", tail.to_vec()),
    }
}

fn elem_ops(
    table: &str,
    pod_id: &str,
    pod_ip: Ipv4Addr,
    pms: &[PortMapping],
    add: bool,
) -> Vec<SetElemOp> {
    let adds: Vec<SetElemOp> = pms
        .iter()
        .filter(|p| p.publishes())
        .map(|p| {
            let (set, key) = key_bytes(p);
            let mut data = pod_ip.octets().to_vec();
            let port = p.container_port.to_be_bytes();
            data.extend_from_slice(&[port[0], port[1], 0, 0]);
            SetElemOp {
                add: true,
                table: table.into(),
                set: set.into(),
                key,
                data: Some(data),
                comment: Some(format!("pod {pod_id}")),
            }
        })
        .collect();
    if add {
        adds
    } else {
        delete_ops(&adds)
    }
}

/// Adds the pod's hostPort elements over netlink (no nft process: spawning nft costs 7-17 ms,
/// a netlink batch well under one). A pod with more elements than fit one batch datagram gets
/// several batches, each its own transaction; if one fails, the elements the earlier ones added
/// are deleted again, so the call adds all or nothing.
pub(crate) fn add_elements(
    table: &str,
    pod_id: &str,
    pod_ip: Ipv4Addr,
    pms: &[PortMapping],
) -> Result<()> {
    let ops = elem_ops(table, pod_id, pod_ip, pms, true);
    if ops.is_empty() {
        return Ok(());
    }
    let published: Vec<&PortMapping> = pms.iter().filter(|p| p.publishes()).collect();
    let err = |message: String| NetworkError::Nft {
        table: table.into(),
        message,
    };
    let mut sock = Socket::open(netlink_sys::protocols::NETLINK_NETFILTER)
        .map_err(|e| err(format!("netlink: {e}")))?;
    for range in wire::chunks(&ops, wire::BATCH_MAX) {
        let start = range.start;
        let Err(e) = wire::apply(&mut sock, &ops[range]) else {
            continue;
        };
        if start > 0 {
            // A fresh socket: after a failed batch the old one may hold unread replies.
            let undo = Socket::open(netlink_sys::protocols::NETLINK_NETFILTER)
                .map_err(|source| wire::BatchError { op: None, source })
                .and_then(|mut s| apply_all(&mut s, &delete_ops(&ops[..start])));
            if let Err(u) = undo {
                tracing::warn!(table, pod_id, error = %u.source, "undo hostPort elements of a failed setup");
            }
        }
        let what = match e.op.and_then(|i| published.get(start + i)) {
            Some(p) => format!(
                "add hostPort {}/{}{}: {}",
                p.protocol,
                p.host_port,
                p.bound_ip()
                    .map(|ip| format!(" on {ip}"))
                    .unwrap_or_default(),
                e.source
            ),
            None => format!("add hostPort elements: {}", e.source),
        };
        return Err(err(format!("netlink: {what}")));
    }
    Ok(())
}

/// Deletes the pod's hostPort elements. A missing table or map means there is nothing to
/// delete. Each batch is idempotent, so a failure midway is retried whole by the caller's
/// next teardown.
pub(crate) fn delete_elements(
    table: &str,
    pod_id: &str,
    pod_ip: Ipv4Addr,
    pms: &[PortMapping],
) -> Result<()> {
    let ops = elem_ops(table, pod_id, pod_ip, pms, false);
    if ops.is_empty() {
        return Ok(());
    }
    let r = Socket::open(netlink_sys::protocols::NETLINK_NETFILTER)
        .map_err(|source| wire::BatchError { op: None, source })
        .and_then(|mut s| apply_all(&mut s, &ops));
    match r {
        Err(e) if e.source.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r.map_err(|e| NetworkError::Nft {
            table: table.into(),
            message: format!("netlink: delete hostPort elements: {}", e.source),
        }),
    }
}

/// Applies `ops` in as many batches as they need, stopping at the first failure.
fn apply_all(sock: &mut Socket, ops: &[SetElemOp]) -> std::result::Result<(), wire::BatchError> {
    for range in wire::chunks(ops, wire::BATCH_MAX) {
        wire::apply(sock, &ops[range])?;
    }
    Ok(())
}

/// The delete batch of elements `adds` created: each element re-added first in the same
/// transaction, so the delete succeeds whether or not it is still there (the kernel has no
/// "delete if present" before 6.3's DESTROY).
fn delete_ops(adds: &[SetElemOp]) -> Vec<SetElemOp> {
    adds.iter()
        .flat_map(|op| {
            [
                op.clone(),
                SetElemOp {
                    add: false,
                    data: None,
                    comment: None,
                    ..op.clone()
                },
            ]
        })
        .collect()
}

/// Replaces all hostPort elements with those of the live pods, atomically.
pub(crate) fn replace_script(table: &str, live: &[(String, Ipv4Addr, Vec<PortMapping>)]) -> String {
    let mut s = format!("flush map ip {table} hp_any\nflush map ip {table} hp_ip\n");
    for (pod_id, ip, pms) in live {
        s.push_str(&add_script(table, pod_id, *ip, pms));
    }
    s
}

/// Only IPv4 pods exist in the built-in mode; an IPv6 host address cannot DNAT to them.
pub(crate) fn ipv4_only(pms: &[PortMapping]) -> Result<()> {
    for (index, p) in pms.iter().enumerate() {
        if let Some(IpAddr::V6(ip)) = p.bound_ip() {
            return Err(NetworkError::InvalidPortMapping {
                index,
                reason: format!("host_ip {ip} is ipv6 but the built-in pod network is ipv4-only"),
            });
        }
    }
    Ok(())
}

/// Runs one nft transaction.
pub(crate) fn run(table: &str, script: &str) -> Result<()> {
    if script.is_empty() {
        return Ok(());
    }
    let err = |message: String| NetworkError::Nft {
        table: table.into(),
        message,
    };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("spawn nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| err(format!("write nft script: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| err(format!("wait for nft: {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "nft exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The table as nft prints it, for debugging (`berthctl netns`).
pub(crate) fn list(table: &str) -> Result<String> {
    let out = Command::new("nft")
        .args(["list", "table", "ip", table])
        .output()
        .map_err(|e| NetworkError::Nft {
            table: table.into(),
            message: format!("spawn nft: {e}"),
        })?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Protocol;

    #[test]
    fn scripts_name_exact_elements() {
        let pms = vec![
            PortMapping {
                protocol: Protocol::Tcp,
                container_port: 80,
                host_port: 8080,
                host_ip: None,
            },
            PortMapping {
                protocol: Protocol::Udp,
                container_port: 53,
                host_port: 5353,
                host_ip: Some("127.0.0.1".parse().unwrap()),
            },
            PortMapping {
                protocol: Protocol::Tcp,
                container_port: 81,
                host_port: 0,
                host_ip: None,
            },
        ];
        let ip = Ipv4Addr::new(10, 88, 0, 5);
        assert_eq!(
            add_script("berth", "ab\"c", ip, &pms),
            "add element ip berth hp_any { tcp . 8080 comment \"pod abc\" : 10.88.0.5 . 80 }\n\
             add element ip berth hp_ip { 127.0.0.1 . udp . 5353 comment \"pod abc\" : 10.88.0.5 . 53 }\n"
        );
        let ops = elem_ops("berth", "abc", ip, &pms, false);
        assert_eq!(ops.len(), 4, "an add and a delete per published mapping");
        assert_eq!((ops[1].add, ops[1].set.as_str()), (false, "hp_any"));
        assert_eq!(ops[1].key, vec![6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        assert_eq!(ops[0].data, Some(vec![10, 88, 0, 5, 0, 80, 0, 0]));
        assert_eq!(
            ops[3].key,
            vec![127, 0, 0, 1, 17, 0, 0, 0, 0x14, 0xe9, 0, 0]
        );
    }
}
