//! Turns a RunPodSandboxRequest into checked values before anything is created, so bad input
//! costs nothing to undo.

use std::collections::BTreeMap;

use berth_network::{PortMapping, Protocol};
use k8s_cri::v1;
use tonic::Status;

use super::record::{HostNamespaces, PodMeta};
use crate::edge::{invalid, to_status};

pub struct PodSpec {
    pub meta: PodMeta,
    pub hostname: String,
    pub log_directory: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub runtime_handler: String,
    pub host: HostNamespaces,
    pub shared_pid: bool,
    pub ports: Vec<PortMapping>,
    pub dns: Option<v1::DnsConfig>,
    pub sysctls: Vec<(String, String)>,
    pub cgroup_parent: String,
    pub privileged: bool,
}

/// `handlers`: the configured runtime handler names; an empty handler means the default one.
pub fn pod_spec(req: v1::RunPodSandboxRequest, handlers: &[String]) -> Result<PodSpec, Status> {
    let config = req.config.ok_or_else(|| invalid("config", "must be set"))?;
    let md = config
        .metadata
        .ok_or_else(|| invalid("config.metadata", "must be set"))?;
    for (field, value) in [
        ("config.metadata.name", &md.name),
        ("config.metadata.namespace", &md.namespace),
        ("config.metadata.uid", &md.uid),
    ] {
        if value.is_empty() {
            return Err(invalid(field, "must not be empty"));
        }
        if value.len() > 253 || value.contains(['/', '\0', '\n']) || value == ".." {
            return Err(invalid(field, format!("{value:?} is not a valid name")));
        }
    }
    if !req.runtime_handler.is_empty() && !handlers.contains(&req.runtime_handler) {
        return Err(invalid(
            "runtime_handler",
            format!("unknown runtime handler {:?}", req.runtime_handler),
        ));
    }
    let linux = config.linux.unwrap_or_default();
    let ns = linux
        .security_context
        .as_ref()
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default();
    let node = v1::NamespaceMode::Node as i32;
    let host = HostNamespaces {
        network: ns.network == node,
        ipc: ns.ipc == node,
        pid: ns.pid == node,
    };
    if ns.network == v1::NamespaceMode::Target as i32 || ns.ipc == v1::NamespaceMode::Target as i32
    {
        return Err(invalid(
            "config.linux.security_context.namespace_options",
            "TARGET mode is only valid for the pid namespace of containers",
        ));
    }
    let shared_pid = ns.pid == v1::NamespaceMode::Pod as i32;
    if ns
        .userns_options
        .as_ref()
        .is_some_and(|u| u.mode != v1::NamespaceMode::Node as i32)
    {
        return Err(invalid(
            "config.linux.security_context.namespace_options.userns_options",
            "user namespaces are not supported by berth yet",
        ));
    }
    let privileged = linux
        .security_context
        .as_ref()
        .is_some_and(|s| s.privileged);

    // An empty hostname means the node's own, as containerd and CRI-O do: clients that leave
    // it empty (test suites, crictl configs) often use pod names longer than a hostname may be.
    let hostname = if config.hostname.is_empty() {
        node_hostname()?
    } else {
        config.hostname.clone()
    };
    if hostname.len() > 64
        || !hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(invalid(
            "config.hostname",
            format!("{hostname:?} is not a valid hostname"),
        ));
    }

    let ports = config
        .port_mappings
        .iter()
        .enumerate()
        .filter(|(_, p)| p.host_port != 0)
        .map(|(i, p)| port_mapping(i, p))
        .collect::<Result<Vec<_>, _>>()?;

    let sysctls: BTreeMap<String, String> = linux.sysctls.into_iter().collect();
    // Only namespaced sysctls, and net.* only with a network namespace of the pod's own (and
    // ipc ones only with its own IPC namespace): they are written inside the pod's namespaces,
    // never on the node.
    let sysctls =
        berth_network::validate_sysctls(&sysctls, host.network, host.ipc).map_err(|e| {
            let status = to_status(e);
            Status::new(
                status.code(),
                format!("config.linux.sysctls: {}", status.message()),
            )
        })?;

    Ok(PodSpec {
        meta: PodMeta {
            name: md.name,
            uid: md.uid,
            namespace: md.namespace,
            attempt: md.attempt,
        },
        hostname,
        log_directory: config.log_directory,
        labels: config.labels.into_iter().collect(),
        annotations: config.annotations.into_iter().collect(),
        runtime_handler: req.runtime_handler,
        host,
        shared_pid,
        ports,
        dns: config.dns_config,
        sysctls,
        cgroup_parent: linux.cgroup_parent,
        privileged,
    })
}

fn node_hostname() -> Result<String, Status> {
    nix::unistd::gethostname()
        .map_err(|e| Status::internal(format!("reading the node's hostname: {e}")))?
        .into_string()
        .map_err(|h| Status::internal(format!("the node's hostname {h:?} is not UTF-8")))
}

fn port_mapping(i: usize, p: &v1::PortMapping) -> Result<PortMapping, Status> {
    let field = |f: &str| format!("config.port_mappings[{i}].{f}");
    let port = |f: &str, v: i32| {
        u16::try_from(v)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid(&field(f), format!("{v} is not a port number (1-65535)")))
    };
    let protocol = Protocol::from_cri(p.protocol).map_err(|e| invalid(&field("protocol"), e))?;
    let host_ip =
        berth_network::parse_host_ip(&p.host_ip).map_err(|e| invalid(&field("host_ip"), e))?;
    Ok(PortMapping {
        protocol,
        container_port: port("container_port", p.container_port)?,
        host_port: port("host_port", p.host_port)?,
        host_ip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_spec_with(req: v1::RunPodSandboxRequest) -> Result<PodSpec, Status> {
        pod_spec(req, &["runc".to_string()])
    }

    fn request(edit: impl FnOnce(&mut v1::PodSandboxConfig)) -> v1::RunPodSandboxRequest {
        let mut config = v1::PodSandboxConfig {
            metadata: Some(v1::PodSandboxMetadata {
                name: "web".into(),
                uid: "u1".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            ..Default::default()
        };
        edit(&mut config);
        v1::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        }
    }

    #[test]
    fn minimal_pod_is_valid_and_hostname_defaults_to_the_nodes() {
        let spec = pod_spec_with(request(|_| {})).unwrap();
        let node = nix::unistd::gethostname().unwrap().into_string().unwrap();
        assert_eq!(spec.hostname, node);
        assert_eq!(spec.meta.reservation_key(), "web_default_u1_0");
    }

    #[test]
    fn long_pod_name_without_hostname_is_accepted() {
        let long = "a".repeat(200);
        let spec = pod_spec_with(request(|c| {
            c.metadata.as_mut().unwrap().name = long.clone();
        }))
        .unwrap();
        assert_eq!(spec.meta.name, long);
        assert!(spec.hostname.len() <= 64);
    }

    #[test]
    fn explicit_hostname_over_64_bytes_is_refused() {
        let err = pod_spec_with(request(|c| c.hostname = "h".repeat(65)))
            .err()
            .unwrap();
        assert!(err.message().contains("config.hostname"));
    }

    #[test]
    fn missing_metadata_name_is_refused_naming_the_field() {
        let err = pod_spec_with(request(|c| {
            c.metadata.as_mut().unwrap().name.clear();
        }))
        .err()
        .unwrap();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("config.metadata.name"));
    }

    #[test]
    fn bad_ports_are_refused() {
        for (cp, hp, proto, ip) in [
            (80, 70000, 0, ""),
            (0, 8080, 0, ""),
            (80, -1, 0, ""),
            (80, 8080, 9, ""),
            (80, 8080, 0, "not-an-ip"),
        ] {
            let err = pod_spec_with(request(|c| {
                c.port_mappings.push(v1::PortMapping {
                    protocol: proto,
                    container_port: cp,
                    host_port: hp,
                    host_ip: ip.into(),
                })
            }))
            .err()
            .unwrap();
            assert_eq!(
                err.code(),
                tonic::Code::InvalidArgument,
                "{cp} {hp} {proto} {ip}"
            );
            assert!(err.message().contains("port_mappings[0]"));
        }
    }

    #[test]
    fn ports_without_host_port_are_not_mapped() {
        let spec = pod_spec_with(request(|c| {
            c.port_mappings.push(v1::PortMapping {
                protocol: 0,
                container_port: 80,
                host_port: 0,
                host_ip: String::new(),
            })
        }))
        .unwrap();
        assert!(spec.ports.is_empty());
    }

    #[test]
    fn sysctls_are_namespaced_and_net_ones_need_the_pods_own_netns() {
        let with = |key: &str, host_network: bool| {
            pod_spec_with(request(|c| {
                let linux = c.linux.get_or_insert_with(Default::default);
                linux.sysctls.insert(key.into(), "1".into());
                if host_network {
                    linux.security_context = Some(v1::LinuxSandboxSecurityContext {
                        namespace_options: Some(v1::NamespaceOption {
                            network: v1::NamespaceMode::Node as i32,
                            ..Default::default()
                        }),
                        ..Default::default()
                    });
                }
            }))
        };
        let ok = with("net.ipv4.ip_unprivileged_port_start", false)
            .ok()
            .unwrap();
        assert_eq!(ok.sysctls.len(), 1);
        assert!(with("kernel.shm_rmid_forced", true).is_ok());
        for (key, host_network) in [
            ("kernel.panic", false),
            ("vm.overcommit_memory", false),
            ("net.ipv4.ip_forward", true),
        ] {
            let err = with(key, host_network).err().unwrap();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{key}");
            assert!(
                err.message().contains("config.linux.sysctls"),
                "{}",
                err.message()
            );
            assert!(err.message().contains(key), "{}", err.message());
        }
    }

    #[test]
    fn user_namespaces_are_refused_as_not_supported_yet() {
        let err = pod_spec_with(request(|c| {
            c.linux = Some(v1::LinuxPodSandboxConfig {
                security_context: Some(v1::LinuxSandboxSecurityContext {
                    namespace_options: Some(v1::NamespaceOption {
                        userns_options: Some(v1::UserNamespace {
                            mode: v1::NamespaceMode::Pod as i32,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
        }))
        .err()
        .unwrap();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("userns_options"),
            "{}",
            err.message()
        );
        assert!(err.message().contains("not supported"), "{}", err.message());
    }

    #[test]
    fn privileged_is_kept() {
        let spec = pod_spec_with(request(|c| {
            c.linux = Some(v1::LinuxPodSandboxConfig {
                security_context: Some(v1::LinuxSandboxSecurityContext {
                    privileged: true,
                    ..Default::default()
                }),
                ..Default::default()
            })
        }))
        .ok()
        .unwrap();
        assert!(spec.privileged);
        assert!(!pod_spec_with(request(|_| {})).ok().unwrap().privileged);
    }

    #[test]
    fn unknown_runtime_handler_is_refused() {
        let mut req = request(|_| {});
        req.runtime_handler = "kata".into();
        let err = pod_spec_with(req).err().unwrap();
        assert!(err.message().contains("runtime_handler"));
    }
}
