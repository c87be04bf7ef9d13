//! Turns a CreateContainerRequest into checked, typed values before anything is created, so bad
//! input costs nothing to undo. Every refusal names its CRI field.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use berth_runtime::spec::{
    ContainerSpec, DeviceSpec, GroupsPolicy, MountSpec, Propagation, ResourcesSpec, Seccomp,
    SecuritySpec,
};
use k8s_cri::v1;
use tonic::Status;

use super::record::ContainerMeta;
use crate::edge::invalid;

/// A seccomp or AppArmor profile file on the node is read with this cap.
const MAX_PROFILE_BYTES: u64 = 1 << 20;

/// How the container's PID namespace is chosen (CRI `NamespaceOption.pid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidMode {
    Container,
    Pod,
    Node,
    Target(String),
}

/// A CreateContainerRequest, checked.
#[derive(Debug, Clone)]
pub struct ContainerRequest {
    pub pod_id: String,
    pub meta: ContainerMeta,
    pub image: v1::ImageSpec,
    /// `log_path` relative to the pod's log directory, cleaned; empty: no log.
    pub log_path: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub pid_mode: PidMode,
    pub spec: ContainerSpec,
}

pub fn container_request(req: v1::CreateContainerRequest) -> Result<ContainerRequest, Status> {
    if req.pod_sandbox_id.is_empty() {
        return Err(invalid("pod_sandbox_id", "must not be empty"));
    }
    let config = req.config.ok_or_else(|| invalid("config", "must be set"))?;
    let md = config
        .metadata
        .ok_or_else(|| invalid("config.metadata", "must be set"))?;
    if md.name.is_empty() {
        return Err(invalid("config.metadata.name", "must not be empty"));
    }
    if md.name.len() > 253 || md.name.contains(['/', '\0', '\n']) || md.name == ".." {
        return Err(invalid(
            "config.metadata.name",
            format!("{:?} is not a valid name", md.name),
        ));
    }
    let image = config
        .image
        .ok_or_else(|| invalid("config.image", "must be set"))?;
    if image.image.is_empty() {
        return Err(invalid("config.image.image", "must not be empty"));
    }
    let log_path = clean_relative(&config.log_path).ok_or_else(|| {
        invalid(
            "config.log_path",
            format!("{:?} escapes the pod's log_directory", config.log_path),
        )
    })?;

    let mut env = Vec::with_capacity(config.envs.len());
    for (i, kv) in config.envs.iter().enumerate() {
        if kv.key.is_empty() || kv.key.contains(['=', '\0']) || kv.value.contains('\0') {
            return Err(invalid(
                &format!("config.envs[{i}].key"),
                format!("{:?} is not a valid environment variable name", kv.key),
            ));
        }
        env.push((kv.key.clone(), kv.value.clone()));
    }
    for (field, list) in [
        ("config.command", &config.command),
        ("config.args", &config.args),
    ] {
        if let Some(i) = list.iter().position(|a| a.contains('\0')) {
            return Err(invalid(&format!("{field}[{i}]"), "contains a NUL byte"));
        }
    }
    if config.working_dir.contains('\0')
        || (!config.working_dir.is_empty() && !config.working_dir.starts_with('/'))
    {
        return Err(invalid(
            "config.working_dir",
            format!("{:?} is not an absolute path", config.working_dir),
        ));
    }
    let mounts = config
        .mounts
        .iter()
        .enumerate()
        .map(|(i, m)| mount(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    let devices = config
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| device(i, d))
        .collect::<Result<Vec<_>, _>>()?;

    let linux = config.linux.unwrap_or_default();
    let sc = linux.security_context.unwrap_or_default();
    let pid_mode = pid_mode(sc.namespace_options.as_ref())?;
    let security = security(&sc)?;
    let resources = linux
        .resources
        .map(|r| resources(&r, "config.linux.resources"))
        .transpose()?;

    Ok(ContainerRequest {
        pod_id: req.pod_sandbox_id,
        meta: ContainerMeta {
            name: md.name,
            attempt: md.attempt,
        },
        image,
        log_path,
        labels: config.labels.into_iter().collect(),
        annotations: config.annotations.into_iter().collect(),
        pid_mode,
        spec: ContainerSpec {
            command: config.command,
            args: config.args,
            env,
            working_dir: config.working_dir,
            tty: config.tty,
            stdin: config.stdin,
            stdin_once: config.stdin_once,
            mounts,
            devices,
            security,
            resources,
        },
    })
}

/// `path` made relative and cleaned; `None` if a `..` would climb above its start.
pub fn clean_relative(path: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

/// An absolute path cleaned of `.`, `..` and repeated slashes (`..` at the root stays at the
/// root, as the kernel resolves it).
fn clean_absolute(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

fn mount(i: usize, m: &v1::Mount) -> Result<MountSpec, Status> {
    let field = |f: &str| format!("config.mounts[{i}].{f}");
    if !m.container_path.starts_with('/') || m.container_path.contains('\0') {
        return Err(invalid(
            &field("container_path"),
            format!("{:?} is not an absolute path", m.container_path),
        ));
    }
    if !m.host_path.starts_with('/') || m.host_path.contains('\0') {
        return Err(invalid(
            &field("host_path"),
            format!("{:?} is not an absolute path", m.host_path),
        ));
    }
    let propagation = match v1::MountPropagation::try_from(m.propagation) {
        Ok(v1::MountPropagation::PropagationPrivate) => Propagation::Private,
        Ok(v1::MountPropagation::PropagationHostToContainer) => Propagation::HostToContainer,
        Ok(v1::MountPropagation::PropagationBidirectional) => Propagation::Bidirectional,
        Err(_) => {
            return Err(invalid(
                &field("propagation"),
                format!("{} is not a mount propagation", m.propagation),
            ))
        }
    };
    if m.recursive_read_only {
        if !m.readonly {
            return Err(invalid(
                &field("recursive_read_only"),
                "needs readonly to be set as well",
            ));
        }
        if propagation != Propagation::Private {
            return Err(invalid(
                &field("recursive_read_only"),
                "cannot be combined with host-to-container or bidirectional propagation",
            ));
        }
    }
    if m.image.is_some() {
        return Err(invalid(
            &field("image"),
            "image volumes are not supported by berth",
        ));
    }
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(invalid(
            &field("uid_mappings"),
            "idmapped mounts need user namespaces, which berth does not support yet",
        ));
    }
    Ok(MountSpec {
        container_path: clean_absolute(&m.container_path),
        host_path: PathBuf::from(clean_absolute(&m.host_path)),
        readonly: m.readonly,
        recursive_read_only: m.recursive_read_only,
        propagation,
    })
}

fn device(i: usize, d: &v1::Device) -> Result<DeviceSpec, Status> {
    let field = |f: &str| format!("config.devices[{i}].{f}");
    if !d.host_path.starts_with('/') {
        return Err(invalid(
            &field("host_path"),
            format!("{:?} is not an absolute path", d.host_path),
        ));
    }
    let container_path = if d.container_path.is_empty() {
        d.host_path.clone()
    } else {
        d.container_path.clone()
    };
    if !container_path.starts_with('/') {
        return Err(invalid(
            &field("container_path"),
            format!("{container_path:?} is not an absolute path"),
        ));
    }
    let permissions = if d.permissions.is_empty() {
        "rwm".to_string()
    } else {
        d.permissions.clone()
    };
    if !permissions.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(invalid(
            &field("permissions"),
            format!("{permissions:?} is not a combination of r, w and m"),
        ));
    }
    Ok(DeviceSpec {
        container_path: clean_absolute(&container_path),
        host_path: PathBuf::from(&d.host_path),
        permissions,
        // Read from the node by CreateContainer: validation does no I/O.
        nodes: Vec::new(),
    })
}

fn pid_mode(ns: Option<&v1::NamespaceOption>) -> Result<PidMode, Status> {
    let Some(ns) = ns else {
        return Ok(PidMode::Container);
    };
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
    match v1::NamespaceMode::try_from(ns.pid) {
        Ok(v1::NamespaceMode::Container) => Ok(PidMode::Container),
        Ok(v1::NamespaceMode::Pod) => Ok(PidMode::Pod),
        Ok(v1::NamespaceMode::Node) => Ok(PidMode::Node),
        Ok(v1::NamespaceMode::Target) => {
            if ns.target_id.is_empty() {
                return Err(invalid(
                    "config.linux.security_context.namespace_options.target_id",
                    "must name a container when pid is TARGET",
                ));
            }
            Ok(PidMode::Target(ns.target_id.clone()))
        }
        Err(_) => Err(invalid(
            "config.linux.security_context.namespace_options.pid",
            format!("{} is not a namespace mode", ns.pid),
        )),
    }
}

fn security(sc: &v1::LinuxContainerSecurityContext) -> Result<SecuritySpec, Status> {
    const F: &str = "config.linux.security_context";
    let uid = sc.run_as_user.as_ref().map(|v| v.value);
    let gid = sc.run_as_group.as_ref().map(|v| v.value);
    for (name, id) in [("run_as_user", uid), ("run_as_group", gid)] {
        if let Some(id) = id {
            if !(0..=i64::from(i32::MAX)).contains(&id) {
                return Err(invalid(
                    &format!("{F}.{name}"),
                    format!("{id} is outside 0..=2147483647"),
                ));
            }
        }
    }
    if gid.is_some() && uid.is_none() && sc.run_as_username.is_empty() {
        return Err(invalid(
            &format!("{F}.run_as_group"),
            "needs run_as_user or run_as_username",
        ));
    }
    if let Some(g) = sc
        .supplemental_groups
        .iter()
        .find(|g| !(0..=i64::from(i32::MAX)).contains(*g))
    {
        return Err(invalid(
            &format!("{F}.supplemental_groups"),
            format!("{g} is outside 0..=2147483647"),
        ));
    }
    let supplemental_groups_policy =
        match v1::SupplementalGroupsPolicy::try_from(sc.supplemental_groups_policy) {
            Ok(v1::SupplementalGroupsPolicy::Merge) => GroupsPolicy::Merge,
            Ok(v1::SupplementalGroupsPolicy::Strict) => GroupsPolicy::Strict,
            Err(_) => {
                return Err(invalid(
                    &format!("{F}.supplemental_groups_policy"),
                    format!("{} is not a policy", sc.supplemental_groups_policy),
                ))
            }
        };
    let caps = sc.capabilities.clone().unwrap_or_default();
    for (name, list) in [
        ("add_capabilities", &caps.add_capabilities),
        ("drop_capabilities", &caps.drop_capabilities),
        ("add_ambient_capabilities", &caps.add_ambient_capabilities),
    ] {
        if let Some(bad) = list.iter().find(|c| !valid_capability(c)) {
            return Err(invalid(
                &format!("{F}.capabilities.{name}"),
                format!("{bad:?} is not a capability"),
            ));
        }
    }
    apparmor(sc)?;
    Ok(SecuritySpec {
        run_as_user: uid,
        run_as_group: gid,
        run_as_username: sc.run_as_username.clone(),
        supplemental_groups: sc.supplemental_groups.clone(),
        supplemental_groups_policy,
        readonly_rootfs: sc.readonly_rootfs,
        privileged: sc.privileged,
        no_new_privs: sc.no_new_privs,
        add_capabilities: caps.add_capabilities,
        drop_capabilities: caps.drop_capabilities,
        add_ambient_capabilities: caps.add_ambient_capabilities,
        masked_paths: sc.masked_paths.clone(),
        readonly_paths: sc.readonly_paths.clone(),
        seccomp: seccomp(sc)?,
    })
}

/// The capability names Linux defines (without the `CAP_` prefix), plus `ALL`.
const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

fn valid_capability(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    bare == "ALL" || CAPABILITIES.contains(&bare)
}

// The deprecated string fields are still what older kubelets and crictl configs send.
#[allow(deprecated)]
fn seccomp(sc: &v1::LinuxContainerSecurityContext) -> Result<Seccomp, Status> {
    const F: &str = "config.linux.security_context.seccomp";
    if let Some(p) = &sc.seccomp {
        return match v1::security_profile::ProfileType::try_from(p.profile_type) {
            Ok(v1::security_profile::ProfileType::RuntimeDefault) => Ok(Seccomp::RuntimeDefault),
            Ok(v1::security_profile::ProfileType::Unconfined) => Ok(Seccomp::Unconfined),
            Ok(v1::security_profile::ProfileType::Localhost) => {
                localhost_seccomp(&format!("{F}.localhost_ref"), &p.localhost_ref)
            }
            Err(_) => Err(invalid(
                &format!("{F}.profile_type"),
                format!("{} is not a profile type", p.profile_type),
            )),
        };
    }
    const P: &str = "config.linux.security_context.seccomp_profile_path";
    match sc.seccomp_profile_path.as_str() {
        "" | "unconfined" => Ok(Seccomp::Unconfined),
        "runtime/default" | "docker/default" => Ok(Seccomp::RuntimeDefault),
        other => match other.strip_prefix("localhost/") {
            Some(path) => localhost_seccomp(P, path),
            None => Err(invalid(P, format!("{other:?} is not a seccomp profile"))),
        },
    }
}

fn localhost_seccomp(field: &str, path: &str) -> Result<Seccomp, Status> {
    if !path.starts_with('/') {
        return Err(invalid(field, format!("{path:?} is not an absolute path")));
    }
    let meta = std::fs::metadata(path)
        .map_err(|e| invalid(field, format!("seccomp profile {path}: {e}")))?;
    if !meta.is_file() || meta.len() > MAX_PROFILE_BYTES {
        return Err(invalid(
            field,
            format!(
                "seccomp profile {path} is not a regular file of at most {MAX_PROFILE_BYTES} bytes"
            ),
        ));
    }
    let profile = std::fs::read_to_string(path)
        .map_err(|e| invalid(field, format!("seccomp profile {path}: {e}")))?;
    if serde_json::from_str::<serde_json::Value>(&profile).is_err() {
        return Err(invalid(
            field,
            format!("seccomp profile {path} is not valid JSON"),
        ));
    }
    Ok(Seccomp::Localhost {
        path: PathBuf::from(path),
        profile,
    })
}

/// This kernel has no AppArmor: the default and unconfined profiles mean nothing to enforce, a
/// named profile cannot be honoured and is refused rather than silently dropped.
#[allow(deprecated)]
fn apparmor(sc: &v1::LinuxContainerSecurityContext) -> Result<(), Status> {
    let named = match &sc.apparmor {
        Some(p) => p.profile_type == v1::security_profile::ProfileType::Localhost as i32,
        None => sc.apparmor_profile.starts_with("localhost/"),
    };
    if named {
        return Err(Status::invalid_argument(
            "config.linux.security_context.apparmor: a Localhost AppArmor profile was requested but AppArmor is not enabled on this node",
        ));
    }
    Ok(())
}

/// `field` names `r` in the request: `config.linux.resources` (create) or `linux` (update).
pub(super) fn resources(
    r: &v1::LinuxContainerResources,
    field: &str,
) -> Result<ResourcesSpec, Status> {
    let f = field;
    let positive = |name: &str, v: i64| -> Result<Option<u64>, Status> {
        match v {
            0 => Ok(None),
            v if v > 0 => Ok(Some(v as u64)),
            v => Err(invalid(&format!("{f}.{name}"), format!("{v} is negative"))),
        }
    };
    let opt = |v: i64| (v != 0).then_some(v);
    if !(-1000..=1000).contains(&r.oom_score_adj) {
        return Err(invalid(
            &format!("{f}.oom_score_adj"),
            format!("{} is outside -1000..=1000", r.oom_score_adj),
        ));
    }
    Ok(ResourcesSpec {
        cpu_period: positive("cpu_period", r.cpu_period)?,
        cpu_quota: opt(r.cpu_quota),
        cpu_shares: positive("cpu_shares", r.cpu_shares)?,
        memory_limit_in_bytes: opt(r.memory_limit_in_bytes),
        memory_swap_limit_in_bytes: opt(r.memory_swap_limit_in_bytes),
        oom_score_adj: Some(r.oom_score_adj),
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|h| (h.page_size.clone(), h.limit))
            .collect(),
        unified: r.unified.clone().into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(edit: impl FnOnce(&mut v1::ContainerConfig)) -> v1::CreateContainerRequest {
        let mut config = v1::ContainerConfig {
            metadata: Some(v1::ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            image: Some(v1::ImageSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        edit(&mut config);
        v1::CreateContainerRequest {
            pod_sandbox_id: "pod".into(),
            config: Some(config),
            sandbox_config: None,
        }
    }

    fn refused(edit: impl FnOnce(&mut v1::ContainerConfig), field: &str) {
        let err = container_request(request(edit)).unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{}",
            err.message()
        );
        assert!(
            err.message().contains(field),
            "{} lacks {field}",
            err.message()
        );
    }

    #[test]
    fn minimal_request_is_valid() {
        let r = container_request(request(|_| {})).unwrap();
        assert_eq!(r.meta.name, "app");
        assert_eq!(r.pid_mode, PidMode::Container);
        assert_eq!(r.log_path, PathBuf::new());
        assert_eq!(r.spec.security.seccomp, Seccomp::Unconfined);
    }

    #[test]
    fn missing_fields_are_named() {
        refused(|c| c.metadata = None, "config.metadata");
        refused(
            |c| c.metadata.as_mut().unwrap().name.clear(),
            "config.metadata.name",
        );
        refused(|c| c.image = None, "config.image");
        refused(
            |c| c.image.as_mut().unwrap().image.clear(),
            "config.image.image",
        );
        let mut req = request(|_| {});
        req.pod_sandbox_id.clear();
        assert!(container_request(req)
            .unwrap_err()
            .message()
            .contains("pod_sandbox_id"));
    }

    #[test]
    fn log_paths_stay_inside_the_log_directory() {
        let ok = container_request(request(|c| c.log_path = "app/./0.log".into())).unwrap();
        assert_eq!(ok.log_path, PathBuf::from("app/0.log"));
        let ok = container_request(request(|c| c.log_path = "a/../b.log".into())).unwrap();
        assert_eq!(ok.log_path, PathBuf::from("b.log"));
        refused(|c| c.log_path = "../escape.log".into(), "config.log_path");
        refused(
            |c| c.log_path = "a/../../escape.log".into(),
            "config.log_path",
        );
    }

    #[test]
    fn mounts_are_checked_and_cleaned() {
        let r = container_request(request(|c| {
            c.mounts.push(v1::Mount {
                container_path: "/data//x/../y/".into(),
                host_path: "/tmp".into(),
                readonly: true,
                ..Default::default()
            })
        }))
        .unwrap();
        assert_eq!(r.spec.mounts[0].container_path, "/data/y");
        assert!(r.spec.mounts[0].readonly);
        refused(
            |c| {
                c.mounts.push(v1::Mount {
                    container_path: "relative".into(),
                    host_path: "/tmp".into(),
                    ..Default::default()
                })
            },
            "config.mounts[0].container_path",
        );
        refused(
            |c| {
                c.mounts.push(v1::Mount {
                    container_path: "/x".into(),
                    host_path: "tmp".into(),
                    ..Default::default()
                })
            },
            "config.mounts[0].host_path",
        );
        refused(
            |c| {
                c.mounts.push(v1::Mount {
                    container_path: "/x".into(),
                    host_path: "/tmp".into(),
                    propagation: 7,
                    ..Default::default()
                })
            },
            "config.mounts[0].propagation",
        );
        refused(
            |c| {
                c.mounts.push(v1::Mount {
                    container_path: "/x".into(),
                    host_path: "/tmp".into(),
                    recursive_read_only: true,
                    ..Default::default()
                })
            },
            "recursive_read_only",
        );
    }

    #[test]
    fn users_and_groups_are_bounded() {
        refused(
            |c| {
                c.linux = Some(v1::LinuxContainerConfig {
                    security_context: Some(v1::LinuxContainerSecurityContext {
                        run_as_user: Some(v1::Int64Value { value: 1 << 31 }),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            },
            "run_as_user",
        );
        refused(
            |c| {
                c.linux = Some(v1::LinuxContainerConfig {
                    security_context: Some(v1::LinuxContainerSecurityContext {
                        run_as_group: Some(v1::Int64Value { value: 5 }),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            },
            "run_as_group",
        );
    }

    #[test]
    fn env_names_are_checked() {
        refused(
            |c| {
                c.envs.push(v1::KeyValue {
                    key: "A=B".into(),
                    value: "x".into(),
                })
            },
            "config.envs[0].key",
        );
    }

    #[test]
    fn capabilities_and_profiles_are_checked() {
        refused(
            |c| {
                c.linux = Some(v1::LinuxContainerConfig {
                    security_context: Some(v1::LinuxContainerSecurityContext {
                        capabilities: Some(v1::Capability {
                            add_capabilities: vec!["NET_ADMIN".into(), "CAP_FLY".into()],
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            },
            "add_capabilities",
        );
        refused(
            |c| {
                c.linux = Some(v1::LinuxContainerConfig {
                    security_context: Some(v1::LinuxContainerSecurityContext {
                        seccomp: Some(v1::SecurityProfile {
                            profile_type: v1::security_profile::ProfileType::Localhost as i32,
                            localhost_ref: "/nonexistent/profile.json".into(),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            },
            "seccomp",
        );
        refused(
            |c| {
                c.linux = Some(v1::LinuxContainerConfig {
                    security_context: Some(v1::LinuxContainerSecurityContext {
                        apparmor: Some(v1::SecurityProfile {
                            profile_type: v1::security_profile::ProfileType::Localhost as i32,
                            localhost_ref: "my-profile".into(),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            },
            "apparmor",
        );
        #[allow(deprecated)]
        let r = container_request(request(|c| {
            c.linux = Some(v1::LinuxContainerConfig {
                security_context: Some(v1::LinuxContainerSecurityContext {
                    seccomp_profile_path: "runtime/default".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
        }))
        .unwrap();
        assert_eq!(r.spec.security.seccomp, Seccomp::RuntimeDefault);
    }

    #[test]
    fn recursive_read_only_needs_readonly_and_private_propagation() {
        let rro = |readonly: bool, propagation: v1::MountPropagation| {
            move |c: &mut v1::ContainerConfig| {
                c.mounts.push(v1::Mount {
                    container_path: "/x".into(),
                    host_path: "/tmp".into(),
                    readonly,
                    recursive_read_only: true,
                    propagation: propagation as i32,
                    ..Default::default()
                })
            }
        };
        let ok = container_request(request(rro(true, v1::MountPropagation::PropagationPrivate)))
            .unwrap();
        assert!(ok.spec.mounts[0].recursive_read_only);
        refused(
            rro(false, v1::MountPropagation::PropagationPrivate),
            "config.mounts[0].recursive_read_only",
        );
        for p in [
            v1::MountPropagation::PropagationHostToContainer,
            v1::MountPropagation::PropagationBidirectional,
        ] {
            refused(rro(true, p), "config.mounts[0].recursive_read_only");
        }
    }

    #[test]
    fn user_namespaces_are_refused_as_not_supported_yet() {
        let err = container_request(request(|c| {
            c.linux = Some(v1::LinuxContainerConfig {
                security_context: Some(v1::LinuxContainerSecurityContext {
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
        .unwrap_err();
        assert!(
            err.message().contains("userns_options"),
            "{}",
            err.message()
        );
        assert!(err.message().contains("not supported"), "{}", err.message());
    }

    #[test]
    fn masked_and_readonly_paths_pass_through_unchanged() {
        let r = container_request(request(|c| {
            c.linux = Some(v1::LinuxContainerConfig {
                security_context: Some(v1::LinuxContainerSecurityContext {
                    masked_paths: vec!["/proc/keys".into()],
                    readonly_paths: vec![],
                    ..Default::default()
                }),
                ..Default::default()
            })
        }))
        .unwrap();
        assert_eq!(r.spec.security.masked_paths, vec!["/proc/keys".to_string()]);
        assert!(r.spec.security.readonly_paths.is_empty());
    }

    #[test]
    fn target_pid_namespace_needs_a_target() {
        refused(
            |c| {
                c.linux = Some(v1::LinuxContainerConfig {
                    security_context: Some(v1::LinuxContainerSecurityContext {
                        namespace_options: Some(v1::NamespaceOption {
                            pid: v1::NamespaceMode::Target as i32,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            },
            "target_id",
        );
    }
}
