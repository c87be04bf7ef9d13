//! Pod sysctls: only those the kernel namespaces (Kubernetes' "namespaced" set, as runc and
//! CRI-O validate it), written inside the pod's own namespaces so the host is never touched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;

use crate::error::{NetworkError, Result};
use crate::netns::in_namespace;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ns {
    Net,
    Ipc,
}

fn namespace_of(key: &str) -> Option<Ns> {
    const IPC_EXACT: &[&str] = &["kernel.sem"];
    const IPC_PREFIX: &[&str] = &["kernel.shm", "kernel.msg", "fs.mqueue."];
    if key.starts_with("net.") {
        return Some(Ns::Net);
    }
    if IPC_EXACT.contains(&key) || IPC_PREFIX.iter().any(|p| key.starts_with(p)) {
        return Some(Ns::Ipc);
    }
    None
}

/// Validates pod sysctls and returns them in key order.
pub fn validate_sysctls(
    sysctls: &BTreeMap<String, String>,
    host_network: bool,
    shares_ipc: bool,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::with_capacity(sysctls.len());
    for (key, value) in sysctls {
        let bad = |reason: &str| {
            Err(NetworkError::InvalidSysctl {
                key: key.clone(),
                reason: reason.into(),
            })
        };
        if key.is_empty() {
            return bad("empty key");
        }
        // '/' is accepted by sysctl(8) as a separator, but refusing it keeps one spelling and
        // makes '..' and absolute paths impossible by construction.
        if key.contains('/') {
            return bad("key must use '.' separators, not '/'");
        }
        if key.contains("..") || key.starts_with('.') || key.ends_with('.') {
            return bad("key has an empty component");
        }
        if key
            .chars()
            .any(|c| c == '+' || c == '=' || c.is_whitespace() || c.is_control())
        {
            return bad("key contains a forbidden character");
        }
        if value.is_empty() {
            return bad("empty value");
        }
        if value
            .chars()
            .any(|c| c == '+' || c == '=' || c == '\n' || c == '\0')
        {
            return bad("value contains a forbidden character");
        }
        match namespace_of(key) {
            None => return bad("not a namespaced sysctl"),
            Some(Ns::Net) if host_network => {
                return bad("net.* sysctls are not allowed for pods on the host network")
            }
            Some(Ns::Ipc) if shares_ipc => {
                return bad("ipc sysctls are not allowed for pods sharing the host ipc namespace")
            }
            Some(_) => {}
        }
        out.push((key.clone(), value.clone()));
    }
    Ok(out)
}

fn write_all(list: &[&(String, String)]) -> Result<()> {
    for (key, value) in list {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value.as_bytes()).map_err(|source| NetworkError::SysctlWrite {
            key: key.clone(),
            value: value.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Writes validated sysctls: `net.*` inside `netns`, ipc ones inside `ipcns`. A sysctl whose
/// namespace is not given is refused rather than written on the host.
pub fn apply_sysctls(
    netns: Option<&Path>,
    ipcns: Option<&Path>,
    list: &[(String, String)],
) -> Result<()> {
    let (net, ipc): (Vec<_>, Vec<_>) = list
        .iter()
        .filter(|(k, _)| namespace_of(k).is_some())
        .partition(|(k, _)| namespace_of(k) == Some(Ns::Net));
    if let Some((k, _)) = list.iter().find(|(k, _)| namespace_of(k).is_none()) {
        return Err(NetworkError::InvalidSysctl {
            key: k.clone(),
            reason: "not a namespaced sysctl".into(),
        });
    }
    for (group, ns, kind, what) in [
        (&net, netns, CloneFlags::CLONE_NEWNET, "network"),
        (&ipc, ipcns, CloneFlags::CLONE_NEWIPC, "ipc"),
    ] {
        if group.is_empty() {
            continue;
        }
        let Some(path) = ns else {
            return Err(NetworkError::InvalidSysctl {
                key: group[0].0.clone(),
                reason: format!("no {what} namespace given to apply it in"),
            });
        };
        in_namespace(path, kind, || write_all(group))??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn namespaced_sysctls_are_accepted_and_sorted() {
        let got = validate_sysctls(
            &map(&[
                ("net.ipv4.ip_unprivileged_port_start", "0"),
                ("kernel.shmmax", "1000000"),
                ("kernel.sem", "250 32000 100 128"),
                ("fs.mqueue.msg_max", "20"),
                ("kernel.msgmax", "9000"),
            ]),
            false,
            false,
        )
        .unwrap();
        assert_eq!(got.len(), 5);
        assert_eq!(got[0].0, "fs.mqueue.msg_max");
    }

    #[test]
    fn unsafe_or_malformed_sysctls_are_refused() {
        let cases: &[(&str, &str)] = &[
            ("kernel.core_pattern", "|/bin/sh"),
            ("kernel.hostname", "x"),
            ("vm.overcommit_memory", "1"),
            ("kernel.semx", "1"),
            ("", "1"),
            ("net.ipv4.ip_forward", ""),
            ("net/ipv4/ip_forward", "1"),
            ("net.ipv4..ip_forward", "1"),
            ("net.ipv4.conf.all.route_localnet.", "1"),
            ("net.ipv4.conf.lo/../../kernel", "1"),
            ("net.ipv4+ip_forward", "1"),
            ("net.ipv4=x", "1"),
            ("net.ipv4.ip_forward\n", "1"),
            ("net.ipv4.ip_forward\0", "1"),
            ("net.ipv4.ip_forward", "1\nkernel.x=1"),
            ("net.ipv4.ip_forward", "1\0"),
            ("net.ipv4.ip_forward", "+1"),
            ("net.ipv4.ip_forward", "a=b"),
        ];
        for (k, v) in cases {
            let err = validate_sysctls(&map(&[(k, v)]), false, false).unwrap_err();
            assert_eq!(
                berth_core::HasKind::kind(&err),
                berth_core::ErrorKind::InvalidArgument
            );
        }
    }

    #[test]
    fn host_namespaces_refuse_their_sysctls() {
        let net = map(&[("net.ipv4.ip_forward", "1")]);
        assert!(validate_sysctls(&net, true, false).is_err());
        assert!(validate_sysctls(&net, false, true).is_ok());
        let ipc = map(&[("kernel.shmmax", "1")]);
        assert!(validate_sysctls(&ipc, false, true).is_err());
        assert!(validate_sysctls(&ipc, true, false).is_ok());
    }

    #[test]
    fn apply_without_namespace_never_touches_the_host() {
        let list = vec![("net.ipv4.ip_forward".to_string(), "1".to_string())];
        assert!(apply_sysctls(None, None, &list).is_err());
        let list = vec![("kernel.core_pattern".to_string(), "x".to_string())];
        assert!(apply_sysctls(None, None, &list).is_err());
    }
}
