//! crictl's container config file (`create`, `run`): the CRI `ContainerConfig` as JSON or YAML,
//! read with the pod config's rules (snake_case or camelCase names, enums by name or number).
//! Like crictl it insists on `metadata.name` and `image.image`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Result};
use k8s_cri::v1 as cri;
use serde::Deserialize;

use crate::podconfig::{
    load_config, parse_object, EnumValue, IdMapping, Int64Value, NamespaceOptions, Resources,
    SeLinuxOptions, SecurityProfile, Syntax, SUPPLEMENTAL_GROUPS_POLICIES,
};

const MOUNT_PROPAGATIONS: &[&str] = &[
    "PROPAGATION_PRIVATE",
    "PROPAGATION_HOST_TO_CONTAINER",
    "PROPAGATION_BIDIRECTIONAL",
];

/// Reads and parses the container config at `path`.
pub(crate) fn load_container_config(path: &Path) -> Result<cri::ContainerConfig> {
    load_config(path, "container config", parse_container_config)
}

pub(crate) fn parse_container_config(text: &str, syntax: Syntax) -> Result<cri::ContainerConfig> {
    let c = parse_object::<ContainerConfigFile>(text, syntax, "container config")?.into_cri()?;
    if c.metadata.as_ref().is_none_or(|m| m.name.is_empty()) {
        bail!("metadata.name is not set");
    }
    if c.image.as_ref().is_none_or(|i| i.image.is_empty()) {
        bail!("image.image is not set");
    }
    Ok(c)
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct ContainerConfigFile {
    metadata: Option<Metadata>,
    image: Option<ImageSpec>,
    command: Vec<String>,
    args: Vec<String>,
    working_dir: String,
    envs: Vec<KeyValue>,
    mounts: Vec<Mount>,
    devices: Vec<Device>,
    labels: HashMap<String, String>,
    annotations: HashMap<String, String>,
    log_path: String,
    stdin: bool,
    stdin_once: bool,
    tty: bool,
    linux: Option<Linux>,
    cdi_devices: Vec<CdiDevice>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct Metadata {
    name: String,
    attempt: u32,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct ImageSpec {
    image: String,
    annotations: HashMap<String, String>,
    user_specified_image: String,
    runtime_handler: String,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct KeyValue {
    key: String,
    value: String,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct Mount {
    container_path: String,
    host_path: String,
    readonly: bool,
    selinux_relabel: bool,
    propagation: EnumValue,
    uid_mappings: Vec<IdMapping>,
    gid_mappings: Vec<IdMapping>,
    recursive_read_only: bool,
    image: Option<ImageSpec>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct Device {
    container_path: String,
    host_path: String,
    permissions: String,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct CdiDevice {
    name: String,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct Linux {
    resources: Option<Resources>,
    security_context: Option<SecurityContext>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct Capability {
    add_capabilities: Vec<String>,
    drop_capabilities: Vec<String>,
    add_ambient_capabilities: Vec<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct SecurityContext {
    capabilities: Option<Capability>,
    privileged: bool,
    namespace_options: Option<NamespaceOptions>,
    selinux_options: Option<SeLinuxOptions>,
    run_as_user: Option<Int64Value>,
    run_as_group: Option<Int64Value>,
    run_as_username: String,
    readonly_rootfs: bool,
    supplemental_groups: Vec<i64>,
    supplemental_groups_policy: EnumValue,
    no_new_privs: bool,
    masked_paths: Vec<String>,
    readonly_paths: Vec<String>,
    seccomp: Option<SecurityProfile>,
    apparmor: Option<SecurityProfile>,
    apparmor_profile: String,
    seccomp_profile_path: String,
}

impl ImageSpec {
    fn into_cri(self) -> cri::ImageSpec {
        cri::ImageSpec {
            image: self.image,
            annotations: self.annotations,
            user_specified_image: self.user_specified_image,
            runtime_handler: self.runtime_handler,
        }
    }
}

impl ContainerConfigFile {
    fn into_cri(self) -> Result<cri::ContainerConfig> {
        let mounts = self
            .mounts
            .into_iter()
            .enumerate()
            .map(|(i, m)| m.into_cri(&format!("mounts[{i}]")))
            .collect::<Result<_>>()?;
        Ok(cri::ContainerConfig {
            metadata: self.metadata.map(|m| cri::ContainerMetadata {
                name: m.name,
                attempt: m.attempt,
            }),
            image: self.image.map(ImageSpec::into_cri),
            command: self.command,
            args: self.args,
            working_dir: self.working_dir,
            envs: self
                .envs
                .into_iter()
                .map(|kv| cri::KeyValue {
                    key: kv.key,
                    value: kv.value,
                })
                .collect(),
            mounts,
            devices: self
                .devices
                .into_iter()
                .map(|d| cri::Device {
                    container_path: d.container_path,
                    host_path: d.host_path,
                    permissions: d.permissions,
                })
                .collect(),
            labels: self.labels,
            annotations: self.annotations,
            log_path: self.log_path,
            stdin: self.stdin,
            stdin_once: self.stdin_once,
            tty: self.tty,
            linux: self.linux.map(Linux::into_cri).transpose()?,
            windows: None,
            cdi_devices: self
                .cdi_devices
                .into_iter()
                .map(|d| cri::CdiDevice { name: d.name })
                .collect(),
        })
    }
}

impl Mount {
    fn into_cri(self, at: &str) -> Result<cri::Mount> {
        Ok(cri::Mount {
            container_path: self.container_path,
            host_path: self.host_path,
            readonly: self.readonly,
            selinux_relabel: self.selinux_relabel,
            propagation: self
                .propagation
                .resolve(&format!("{at}.propagation"), MOUNT_PROPAGATIONS)?,
            uid_mappings: self
                .uid_mappings
                .into_iter()
                .map(IdMapping::into_cri)
                .collect(),
            gid_mappings: self
                .gid_mappings
                .into_iter()
                .map(IdMapping::into_cri)
                .collect(),
            recursive_read_only: self.recursive_read_only,
            image: self.image.map(ImageSpec::into_cri),
        })
    }
}

impl Linux {
    fn into_cri(self) -> Result<cri::LinuxContainerConfig> {
        Ok(cri::LinuxContainerConfig {
            resources: self.resources.map(Resources::into_cri),
            security_context: self
                .security_context
                .map(SecurityContext::into_cri)
                .transpose()?,
        })
    }
}

impl SecurityContext {
    #[allow(deprecated)] // apparmor_profile, seccomp_profile_path: still in the message
    fn into_cri(self) -> Result<cri::LinuxContainerSecurityContext> {
        const AT: &str = "linux.security_context";
        Ok(cri::LinuxContainerSecurityContext {
            capabilities: self.capabilities.map(|c| cri::Capability {
                add_capabilities: c.add_capabilities,
                drop_capabilities: c.drop_capabilities,
                add_ambient_capabilities: c.add_ambient_capabilities,
            }),
            privileged: self.privileged,
            namespace_options: self
                .namespace_options
                .map(|n| n.into_cri(&format!("{AT}.namespace_options")))
                .transpose()?,
            selinux_options: self.selinux_options.map(SeLinuxOptions::into_cri),
            run_as_user: self.run_as_user.map(Int64Value::into_cri),
            run_as_group: self.run_as_group.map(Int64Value::into_cri),
            run_as_username: self.run_as_username,
            readonly_rootfs: self.readonly_rootfs,
            supplemental_groups: self.supplemental_groups,
            supplemental_groups_policy: self.supplemental_groups_policy.resolve(
                &format!("{AT}.supplemental_groups_policy"),
                SUPPLEMENTAL_GROUPS_POLICIES,
            )?,
            no_new_privs: self.no_new_privs,
            masked_paths: self.masked_paths,
            readonly_paths: self.readonly_paths,
            seccomp: self
                .seccomp
                .map(|p| p.into_cri(&format!("{AT}.seccomp")))
                .transpose()?,
            apparmor: self
                .apparmor
                .map(|p| p.into_cri(&format!("{AT}.apparmor")))
                .transpose()?,
            apparmor_profile: self.apparmor_profile,
            seccomp_profile_path: self.seccomp_profile_path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// crictl's docs/container-config example, extended with every nested message.
    const JSON_SNAKE: &str = r#"{
        "metadata": {"name": "busybox", "attempt": 2},
        "image": {"image": "busybox:latest", "annotations": {"x.io/some_key": "v"}},
        "command": ["top"],
        "args": ["-d", "1"],
        "working_dir": "/tmp",
        "envs": [{"key": "MY_VAR", "value": "a b"}],
        "mounts": [
            {"container_path": "/data", "host_path": "/srv/data", "readonly": true,
             "propagation": "PROPAGATION_HOST_TO_CONTAINER"},
            {"container_path": "/img", "image": {"image": "busybox:v2"}, "propagation": 2}
        ],
        "devices": [{"container_path": "/dev/fuse", "host_path": "/dev/fuse", "permissions": "rwm"}],
        "labels": {"app_name": "bb"},
        "annotations": {"io.kubernetes.container.restartCount": "0"},
        "log_path": "busybox.0.log",
        "stdin": true,
        "tty": true,
        "linux": {
            "resources": {"cpu_shares": 512, "memory_limit_in_bytes": 67108864},
            "security_context": {
                "capabilities": {"add_capabilities": ["NET_ADMIN"], "drop_capabilities": ["ALL"]},
                "namespace_options": {"pid": "POD"},
                "run_as_user": {"value": 1000},
                "run_as_username": "",
                "readonly_rootfs": true,
                "no_new_privs": true,
                "masked_paths": ["/proc/kcore"],
                "seccomp": {"profile_type": "RuntimeDefault"},
                "supplemental_groups_policy": "Strict"
            }
        },
        "cdi_devices": [{"name": "vendor.com/gpu=0"}]
    }"#;

    const YAML_CAMEL: &str = r#"
metadata:
  name: busybox
  attempt: 2
image:
  image: busybox:latest
  annotations:
    x.io/some_key: v
command: [top]
args: ["-d", "1"]
workingDir: /tmp
envs:
  - key: MY_VAR
    value: a b
mounts:
  - containerPath: /data
    hostPath: /srv/data
    readonly: true
    propagation: 1
  - containerPath: /img
    image:
      image: busybox:v2
    propagation: propagation_bidirectional
devices:
  - containerPath: /dev/fuse
    hostPath: /dev/fuse
    permissions: rwm
labels:
  app_name: bb
annotations:
  io.kubernetes.container.restartCount: "0"
logPath: busybox.0.log
stdin: true
tty: true
linux:
  resources:
    cpuShares: 512
    memoryLimitInBytes: 67108864
  securityContext:
    capabilities:
      addCapabilities: [NET_ADMIN]
      dropCapabilities: [ALL]
    namespaceOptions:
      pid: 0
    runAsUser:
      value: 1000
    readonlyRootfs: true
    noNewPrivs: true
    maskedPaths: [/proc/kcore]
    seccomp:
      profileType: 0
    supplementalGroupsPolicy: 1
cdiDevices:
  - name: vendor.com/gpu=0
"#;

    fn check_full(c: &cri::ContainerConfig) {
        let m = c.metadata.as_ref().unwrap();
        assert_eq!((m.name.as_str(), m.attempt), ("busybox", 2));
        let img = c.image.as_ref().unwrap();
        assert_eq!(img.image, "busybox:latest");
        assert_eq!(img.annotations["x.io/some_key"], "v");
        assert_eq!(c.command, ["top"]);
        assert_eq!(c.args, ["-d", "1"]);
        assert_eq!(c.working_dir, "/tmp");
        assert_eq!(
            c.envs,
            [cri::KeyValue {
                key: "MY_VAR".into(),
                value: "a b".into()
            }]
        );
        assert_eq!(c.mounts.len(), 2);
        assert_eq!(
            (
                c.mounts[0].container_path.as_str(),
                c.mounts[0].host_path.as_str(),
                c.mounts[0].readonly,
                c.mounts[0].propagation
            ),
            (
                "/data",
                "/srv/data",
                true,
                cri::MountPropagation::PropagationHostToContainer as i32
            )
        );
        assert_eq!(
            c.mounts[1].image.as_ref().map(|i| i.image.as_str()),
            Some("busybox:v2")
        );
        assert_eq!(
            c.mounts[1].propagation,
            cri::MountPropagation::PropagationBidirectional as i32
        );
        assert_eq!(c.devices[0].permissions, "rwm");
        assert_eq!(c.labels["app_name"], "bb");
        assert_eq!(c.annotations["io.kubernetes.container.restartCount"], "0");
        assert_eq!(c.log_path, "busybox.0.log");
        assert!(c.stdin && c.tty && !c.stdin_once);
        let linux = c.linux.as_ref().unwrap();
        let r = linux.resources.as_ref().unwrap();
        assert_eq!((r.cpu_shares, r.memory_limit_in_bytes), (512, 64 << 20));
        let sc = linux.security_context.as_ref().unwrap();
        let caps = sc.capabilities.as_ref().unwrap();
        assert_eq!(caps.add_capabilities, ["NET_ADMIN"]);
        assert_eq!(caps.drop_capabilities, ["ALL"]);
        assert_eq!(
            sc.namespace_options.as_ref().map(|n| n.pid),
            Some(cri::NamespaceMode::Pod as i32)
        );
        assert_eq!(sc.run_as_user, Some(cri::Int64Value { value: 1000 }));
        assert!(sc.readonly_rootfs && sc.no_new_privs && !sc.privileged);
        assert_eq!(sc.masked_paths, ["/proc/kcore"]);
        assert_eq!(
            sc.seccomp.as_ref().map(|s| s.profile_type),
            Some(cri::security_profile::ProfileType::RuntimeDefault as i32)
        );
        assert_eq!(
            sc.supplemental_groups_policy,
            cri::SupplementalGroupsPolicy::Strict as i32
        );
        assert_eq!(c.cdi_devices[0].name, "vendor.com/gpu=0");
    }

    #[test]
    fn json_with_snake_case_names_parses() {
        check_full(&parse_container_config(JSON_SNAKE, Syntax::Json).unwrap());
    }

    #[test]
    fn yaml_with_camel_case_names_and_enum_numbers_parses() {
        let c = parse_container_config(YAML_CAMEL, Syntax::Yaml).unwrap();
        check_full(&c);
        assert_eq!(c, parse_container_config(JSON_SNAKE, Syntax::Json).unwrap());
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse_container_config(
            "metadata: {name: c}\nimage: {image: busybox}\nlinux: {}\n",
            Syntax::Yaml,
        )
        .unwrap();
        assert!(c.command.is_empty() && c.mounts.is_empty() && !c.tty);
        assert_eq!(c.linux, Some(cri::LinuxContainerConfig::default()));
        assert_eq!(c.log_path, "");
    }

    #[test]
    fn name_and_image_are_required_like_crictl() {
        for (text, field) in [
            (r#"{"image": {"image": "busybox"}}"#, "metadata.name"),
            (
                r#"{"metadata": {"attempt": 1}, "image": {"image": "b"}}"#,
                "metadata.name",
            ),
            (r#"{"metadata": {"name": "c"}}"#, "image.image"),
            (r#"{"metadata": {"name": "c"}, "image": {}}"#, "image.image"),
        ] {
            let e = parse_container_config(text, Syntax::Json).unwrap_err();
            assert!(format!("{e:#}").contains(field), "{text}: {e:#}");
        }
    }

    #[test]
    fn bad_values_are_refused_naming_the_field() {
        let base = r#""metadata": {"name": "c"}, "image": {"image": "b"}"#;
        for (extra, field) in [
            (
                r#""mounts": [{}, {"propagation": "SHARED"}]"#,
                "mounts[1].propagation",
            ),
            (r#""mounts": [{"propagation": 3}]"#, "mounts[0].propagation"),
            (
                r#""linux": {"securityContext": {"namespaceOptions": {"ipc": "HOST"}}}"#,
                "linux.security_context.namespace_options.ipc",
            ),
            (
                r#""linux": {"security_context": {"seccomp": {"profile_type": 9}}}"#,
                "linux.security_context.seccomp.profile_type",
            ),
            (
                r#""linux": {"securityContext": {"supplementalGroupsPolicy": "Loose"}}"#,
                "linux.security_context.supplemental_groups_policy",
            ),
            (r#""tty": "yes""#, "tty"),
            (
                r#""linux": {"resources": {"cpuShares": "many"}}"#,
                "linux.resources.cpu_shares",
            ),
            (r#""envs": [{"key": 1}]"#, "envs[0].key"),
            (r#""command": "sleep 1""#, "command"),
        ] {
            let text = format!("{{{base}, {extra}}}");
            let e = parse_container_config(&text, Syntax::Json).unwrap_err();
            assert!(format!("{e:#}").contains(field), "{extra}: {e:#}");
        }
    }

    #[test]
    fn malformed_files_are_refused() {
        assert!(parse_container_config("", Syntax::Yaml).is_err());
        assert!(parse_container_config("[1, 2]", Syntax::Json).is_err());
        assert!(parse_container_config("{", Syntax::Json).is_err());
        assert!(parse_container_config("a: [", Syntax::Yaml).is_err());
    }

    #[test]
    fn config_files_load_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container-config");
        std::fs::write(&path, YAML_CAMEL).unwrap();
        check_full(&load_container_config(&path).unwrap());
        let path = dir.path().join("c.json");
        std::fs::write(&path, JSON_SNAKE).unwrap();
        check_full(&load_container_config(&path).unwrap());
        let e = load_container_config(&dir.path().join("missing.yaml")).unwrap_err();
        assert!(format!("{e:#}").contains("missing.yaml"), "{e:#}");
    }
}
