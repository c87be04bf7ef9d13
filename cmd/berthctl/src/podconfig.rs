//! crictl's pod config file (`runp`, `create`, `run`): the CRI `PodSandboxConfig` as JSON or
//! YAML, with protobuf JSON field names in snake_case or camelCase and enums given by name or
//! number. The reading rules and the messages both config files have (security profiles,
//! namespaces, resources) are here; `containerconfig.rs` builds on them.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use k8s_cri::v1 as cri;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::output::MAP_FIELDS;

/// The syntax of a config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Syntax {
    Json,
    Yaml,
}

impl Syntax {
    /// By extension (`.json`, `.yaml`, `.yml`), else by content: an object opening `{` is JSON.
    pub(crate) fn detect(path: &Path, text: &str) -> Self {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("json") => Syntax::Json,
            Some("yaml" | "yml") => Syntax::Yaml,
            _ if text.trim_start().starts_with('{') => Syntax::Json,
            _ => Syntax::Yaml,
        }
    }
}

/// Reads and parses the pod config at `path`.
pub(crate) fn load_pod_config(path: &Path) -> Result<cri::PodSandboxConfig> {
    load_config(path, "pod config", parse_pod_config)
}

pub(crate) fn parse_pod_config(text: &str, syntax: Syntax) -> Result<cri::PodSandboxConfig> {
    parse_object::<PodConfigFile>(text, syntax, "pod config")?.into_cri()
}

/// crictl's `loadPodSandboxConfig` for `create` and `run`: the pod config at `path`, which must
/// name the pod and its namespace; a missing uid is made up.
pub(crate) fn load_pod_config_checked(path: &Path) -> Result<cri::PodSandboxConfig> {
    let mut c = load_pod_config(path)?;
    let Some(m) = c.metadata.as_mut() else {
        bail!("pod config {}: metadata is not set", path.display());
    };
    if m.name.is_empty() || m.namespace.is_empty() {
        bail!(
            "pod config {}: metadata.name or metadata.namespace is not set",
            path.display()
        );
    }
    if m.uid.is_empty() {
        m.uid = random_uid()?;
    }
    Ok(c)
}

/// A random (version 4) UUID, as kubelet gives pods.
pub(crate) fn random_uid() -> Result<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("read /dev/urandom")?;
    Ok(format_uuid(b))
}

fn format_uuid(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Reads the config file at `path` and parses it with `parse`, errors naming the file.
pub(crate) fn load_config<T>(
    path: &Path,
    what: &str,
    parse: impl FnOnce(&str, Syntax) -> Result<T>,
) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("read {what} {}", path.display()))?;
    parse(&text, Syntax::detect(path, &text))
        .with_context(|| format!("load {what} {}", path.display()))
}

/// Parses `text` as an object of protobuf JSON (either naming style) into `T`; a value of the
/// wrong type is refused with its path, e.g. `linux.resources.cpu_shares: invalid type`.
pub(crate) fn parse_object<T: DeserializeOwned>(
    text: &str,
    syntax: Syntax,
    what: &str,
) -> Result<T> {
    let v: Value = match syntax {
        Syntax::Json => serde_json::from_str(text).context("parse json")?,
        Syntax::Yaml => serde_saphyr::from_str(text).context("parse yaml")?,
    };
    if !v.is_object() {
        bail!("{what} must be an object");
    }
    serde_path_to_error::deserialize(snakify(v)).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            anyhow!("invalid {what}: {}", e.into_inner())
        } else {
            anyhow!("invalid {what}: {path}: {}", e.into_inner())
        }
    })
}

/// `portMappings` → `port_mappings`, `hostIP` → `host_ip`; snake_case stays as it is.
pub(crate) fn camel_to_snake(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let prev = i.checked_sub(1).map(|p| chars[p]);
            let next = chars.get(i + 1);
            let word_start = prev.is_some_and(|p| p.is_ascii_lowercase() || p.is_ascii_digit())
                || (prev.is_some_and(|p| p.is_ascii_uppercase())
                    && next.is_some_and(|n| n.is_ascii_lowercase()));
            if word_start {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Renames object keys to snake_case, recursively, leaving user maps alone; drops null
/// values, which protobuf JSON treats as absent.
fn snakify(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| {
                    let k = camel_to_snake(&k);
                    let v = if MAP_FIELDS.contains(&k.as_str()) {
                        v
                    } else {
                        snakify(v)
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(snakify).collect()),
        other => other,
    }
}

/// A protobuf enum as protobuf JSON accepts it: its name or its number.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub(crate) enum EnumValue {
    Number(i32),
    Name(String),
}

impl Default for EnumValue {
    fn default() -> Self {
        EnumValue::Number(0)
    }
}

const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];
const NAMESPACE_MODES: &[&str] = &["POD", "CONTAINER", "NODE", "TARGET"];
const PROFILE_TYPES: &[&str] = &["RuntimeDefault", "Unconfined", "Localhost"];
pub(crate) const SUPPLEMENTAL_GROUPS_POLICIES: &[&str] = &["Merge", "Strict"];

impl EnumValue {
    /// The number of this value in an enum whose names, by number, are `names`.
    pub(crate) fn resolve(&self, field: &str, names: &[&str]) -> Result<i32> {
        let found = match self {
            EnumValue::Number(n) => usize::try_from(*n).ok().filter(|&i| i < names.len()),
            EnumValue::Name(s) => names.iter().position(|n| n.eq_ignore_ascii_case(s.trim())),
        };
        match found {
            Some(i) => Ok(i as i32),
            None => {
                let given = match self {
                    EnumValue::Number(n) => n.to_string(),
                    EnumValue::Name(s) => format!("{s:?}"),
                };
                bail!(
                    "{field}: invalid value {given}, expected one of {names:?} or 0..={}",
                    names.len() - 1
                )
            }
        }
    }
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct PodConfigFile {
    metadata: Option<Metadata>,
    hostname: String,
    log_directory: String,
    dns_config: Option<DnsConfig>,
    port_mappings: Vec<PortMapping>,
    labels: HashMap<String, String>,
    annotations: HashMap<String, String>,
    linux: Option<Linux>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct Metadata {
    name: String,
    uid: String,
    namespace: String,
    attempt: u32,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct DnsConfig {
    servers: Vec<String>,
    searches: Vec<String>,
    options: Vec<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct PortMapping {
    protocol: EnumValue,
    container_port: i32,
    host_port: i32,
    host_ip: String,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct Linux {
    cgroup_parent: String,
    security_context: Option<SecurityContext>,
    sysctls: HashMap<String, String>,
    overhead: Option<Resources>,
    resources: Option<Resources>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct SecurityContext {
    namespace_options: Option<NamespaceOptions>,
    selinux_options: Option<SeLinuxOptions>,
    run_as_user: Option<Int64Value>,
    run_as_group: Option<Int64Value>,
    readonly_rootfs: bool,
    supplemental_groups: Vec<i64>,
    supplemental_groups_policy: EnumValue,
    privileged: bool,
    seccomp: Option<SecurityProfile>,
    apparmor: Option<SecurityProfile>,
    seccomp_profile_path: String,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub(crate) struct NamespaceOptions {
    network: EnumValue,
    pid: EnumValue,
    ipc: EnumValue,
    target_id: String,
    userns_options: Option<UserNamespace>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub(crate) struct UserNamespace {
    mode: EnumValue,
    uids: Vec<IdMapping>,
    gids: Vec<IdMapping>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub(crate) struct IdMapping {
    host_id: u32,
    container_id: u32,
    length: u32,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub(crate) struct SeLinuxOptions {
    user: String,
    role: String,
    #[serde(rename = "type")]
    kind: String,
    level: String,
}

/// protobuf's `Int64Value`: `{"value": 1000}`, or the bare number.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub(crate) enum Int64Value {
    Wrapped { value: i64 },
    Bare(i64),
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub(crate) struct SecurityProfile {
    profile_type: EnumValue,
    localhost_ref: String,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub(crate) struct Resources {
    cpu_period: i64,
    cpu_quota: i64,
    cpu_shares: i64,
    memory_limit_in_bytes: i64,
    oom_score_adj: i64,
    cpuset_cpus: String,
    cpuset_mems: String,
    hugepage_limits: Vec<HugepageLimit>,
    unified: HashMap<String, String>,
    memory_swap_limit_in_bytes: i64,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub(crate) struct HugepageLimit {
    page_size: String,
    limit: u64,
}

impl PodConfigFile {
    fn into_cri(self) -> Result<cri::PodSandboxConfig> {
        let port_mappings = self
            .port_mappings
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                Ok(cri::PortMapping {
                    protocol: p
                        .protocol
                        .resolve(&format!("port_mappings[{i}].protocol"), PROTOCOLS)?,
                    container_port: p.container_port,
                    host_port: p.host_port,
                    host_ip: p.host_ip,
                })
            })
            .collect::<Result<_>>()?;
        Ok(cri::PodSandboxConfig {
            metadata: self.metadata.map(|m| cri::PodSandboxMetadata {
                name: m.name,
                uid: m.uid,
                namespace: m.namespace,
                attempt: m.attempt,
            }),
            hostname: self.hostname,
            log_directory: self.log_directory,
            dns_config: self.dns_config.map(|d| cri::DnsConfig {
                servers: d.servers,
                searches: d.searches,
                options: d.options,
            }),
            port_mappings,
            labels: self.labels,
            annotations: self.annotations,
            linux: self.linux.map(Linux::into_cri).transpose()?,
            windows: None,
        })
    }
}

impl Linux {
    fn into_cri(self) -> Result<cri::LinuxPodSandboxConfig> {
        Ok(cri::LinuxPodSandboxConfig {
            cgroup_parent: self.cgroup_parent,
            security_context: self
                .security_context
                .map(SecurityContext::into_cri)
                .transpose()?,
            sysctls: self.sysctls,
            overhead: self.overhead.map(Resources::into_cri),
            resources: self.resources.map(Resources::into_cri),
        })
    }
}

impl SecurityContext {
    #[allow(deprecated)] // seccomp_profile_path: still part of the message, so still accepted
    fn into_cri(self) -> Result<cri::LinuxSandboxSecurityContext> {
        const AT: &str = "linux.security_context";
        Ok(cri::LinuxSandboxSecurityContext {
            namespace_options: self
                .namespace_options
                .map(|n| n.into_cri(&format!("{AT}.namespace_options")))
                .transpose()?,
            selinux_options: self.selinux_options.map(SeLinuxOptions::into_cri),
            run_as_user: self.run_as_user.map(Int64Value::into_cri),
            run_as_group: self.run_as_group.map(Int64Value::into_cri),
            readonly_rootfs: self.readonly_rootfs,
            supplemental_groups: self.supplemental_groups,
            supplemental_groups_policy: self.supplemental_groups_policy.resolve(
                &format!("{AT}.supplemental_groups_policy"),
                SUPPLEMENTAL_GROUPS_POLICIES,
            )?,
            privileged: self.privileged,
            seccomp: self
                .seccomp
                .map(|p| p.into_cri(&format!("{AT}.seccomp")))
                .transpose()?,
            apparmor: self
                .apparmor
                .map(|p| p.into_cri(&format!("{AT}.apparmor")))
                .transpose()?,
            seccomp_profile_path: self.seccomp_profile_path,
        })
    }
}

impl NamespaceOptions {
    /// `at`: where the options are in the file, for errors.
    pub(crate) fn into_cri(self, at: &str) -> Result<cri::NamespaceOption> {
        let mode =
            |v: &EnumValue, field: &str| v.resolve(&format!("{at}.{field}"), NAMESPACE_MODES);
        Ok(cri::NamespaceOption {
            network: mode(&self.network, "network")?,
            pid: mode(&self.pid, "pid")?,
            ipc: mode(&self.ipc, "ipc")?,
            target_id: self.target_id,
            userns_options: match self.userns_options {
                None => None,
                Some(u) => Some(cri::UserNamespace {
                    mode: mode(&u.mode, "userns_options.mode")?,
                    uids: u.uids.into_iter().map(IdMapping::into_cri).collect(),
                    gids: u.gids.into_iter().map(IdMapping::into_cri).collect(),
                }),
            },
        })
    }
}

impl SeLinuxOptions {
    pub(crate) fn into_cri(self) -> cri::SeLinuxOption {
        cri::SeLinuxOption {
            user: self.user,
            role: self.role,
            r#type: self.kind,
            level: self.level,
        }
    }
}

impl IdMapping {
    pub(crate) fn into_cri(self) -> cri::IdMapping {
        cri::IdMapping {
            host_id: self.host_id,
            container_id: self.container_id,
            length: self.length,
        }
    }
}

impl Int64Value {
    pub(crate) fn into_cri(self) -> cri::Int64Value {
        match self {
            Int64Value::Wrapped { value } | Int64Value::Bare(value) => cri::Int64Value { value },
        }
    }
}

impl SecurityProfile {
    pub(crate) fn into_cri(self, at: &str) -> Result<cri::SecurityProfile> {
        Ok(cri::SecurityProfile {
            profile_type: self
                .profile_type
                .resolve(&format!("{at}.profile_type"), PROFILE_TYPES)?,
            localhost_ref: self.localhost_ref,
        })
    }
}

impl Resources {
    pub(crate) fn into_cri(self) -> cri::LinuxContainerResources {
        cri::LinuxContainerResources {
            cpu_period: self.cpu_period,
            cpu_quota: self.cpu_quota,
            cpu_shares: self.cpu_shares,
            memory_limit_in_bytes: self.memory_limit_in_bytes,
            oom_score_adj: self.oom_score_adj,
            cpuset_cpus: self.cpuset_cpus,
            cpuset_mems: self.cpuset_mems,
            hugepage_limits: self
                .hugepage_limits
                .into_iter()
                .map(|h| cri::HugepageLimit {
                    page_size: h.page_size,
                    limit: h.limit,
                })
                .collect(),
            unified: self.unified,
            memory_swap_limit_in_bytes: self.memory_swap_limit_in_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON_SNAKE: &str = r#"{
        "metadata": {"name": "nginx-sandbox", "namespace": "default", "attempt": 1, "uid": "hdishd83"},
        "hostname": "nginx",
        "log_directory": "/tmp",
        "dns_config": {"servers": ["10.0.0.10"], "searches": ["svc.local"], "options": ["ndots:5"]},
        "port_mappings": [
            {"protocol": "TCP", "container_port": 80, "host_port": 8080, "host_ip": "127.0.0.1"},
            {"protocol": 1, "container_port": 53, "host_port": 5353}
        ],
        "labels": {"app": "nginx", "tier_name": "web"},
        "annotations": {"example.com/some_key": "v"},
        "linux": {
            "cgroup_parent": "/berth/pods",
            "sysctls": {"net.ipv4.ip_unprivileged_port_start": "0"},
            "security_context": {
                "namespace_options": {"network": "NODE", "pid": "CONTAINER", "ipc": 0},
                "privileged": true,
                "run_as_user": {"value": 1000},
                "seccomp": {"profile_type": "Unconfined"}
            }
        }
    }"#;

    const YAML_CAMEL: &str = r#"
metadata:
  name: nginx-sandbox
  namespace: default
  attempt: 1
  uid: hdishd83
hostname: nginx
logDirectory: /tmp
dnsConfig:
  servers: [10.0.0.10]
  searches: [svc.local]
  options: ["ndots:5"]
portMappings:
  - protocol: tcp
    containerPort: 80
    hostPort: 8080
    hostIp: 127.0.0.1
  - protocol: UDP
    containerPort: 53
    hostPort: 5353
labels:
  app: nginx
  tier_name: web
annotations:
  example.com/some_key: v
linux:
  cgroupParent: /berth/pods
  sysctls:
    net.ipv4.ip_unprivileged_port_start: "0"
  securityContext:
    namespaceOptions:
      network: NODE
      pid: CONTAINER
      ipc: POD
    privileged: true
    runAsUser:
      value: 1000
    seccomp:
      profileType: Unconfined
"#;

    fn check_full(c: &cri::PodSandboxConfig) {
        let m = c.metadata.as_ref().unwrap();
        assert_eq!(
            (
                m.name.as_str(),
                m.namespace.as_str(),
                m.uid.as_str(),
                m.attempt
            ),
            ("nginx-sandbox", "default", "hdishd83", 1)
        );
        assert_eq!(c.hostname, "nginx");
        assert_eq!(c.log_directory, "/tmp");
        let dns = c.dns_config.as_ref().unwrap();
        assert_eq!(dns.servers, ["10.0.0.10"]);
        assert_eq!(dns.searches, ["svc.local"]);
        assert_eq!(dns.options, ["ndots:5"]);
        assert_eq!(
            c.port_mappings,
            [
                cri::PortMapping {
                    protocol: cri::Protocol::Tcp as i32,
                    container_port: 80,
                    host_port: 8080,
                    host_ip: "127.0.0.1".into(),
                },
                cri::PortMapping {
                    protocol: cri::Protocol::Udp as i32,
                    container_port: 53,
                    host_port: 5353,
                    host_ip: String::new(),
                },
            ]
        );
        // user maps keep their keys as written
        assert_eq!(c.labels["tier_name"], "web");
        assert_eq!(c.annotations["example.com/some_key"], "v");
        let linux = c.linux.as_ref().unwrap();
        assert_eq!(linux.cgroup_parent, "/berth/pods");
        assert_eq!(linux.sysctls["net.ipv4.ip_unprivileged_port_start"], "0");
        let sc = linux.security_context.as_ref().unwrap();
        assert!(sc.privileged);
        assert_eq!(sc.run_as_user, Some(cri::Int64Value { value: 1000 }));
        assert_eq!(
            sc.seccomp.as_ref().map(|s| s.profile_type),
            Some(cri::security_profile::ProfileType::Unconfined as i32)
        );
        let ns = sc.namespace_options.as_ref().unwrap();
        assert_eq!(ns.network, cri::NamespaceMode::Node as i32);
        assert_eq!(ns.pid, cri::NamespaceMode::Container as i32);
        assert_eq!(ns.ipc, cri::NamespaceMode::Pod as i32);
    }

    #[test]
    fn json_with_snake_case_names_parses() {
        check_full(&parse_pod_config(JSON_SNAKE, Syntax::Json).unwrap());
    }

    #[test]
    fn yaml_with_camel_case_names_parses() {
        let c = parse_pod_config(YAML_CAMEL, Syntax::Yaml).unwrap();
        check_full(&c);
        // the same config either way
        assert_eq!(c, parse_pod_config(JSON_SNAKE, Syntax::Json).unwrap());
    }

    #[test]
    fn crictl_readme_example_parses_with_defaults() {
        let c = parse_pod_config(
            r#"{"metadata": {"name": "nginx-sandbox", "namespace": "default", "attempt": 1,
                "uid": "hdishd83djaidwnduwk28bcsb"}, "log_directory": "/tmp", "linux": {}}"#,
            Syntax::Json,
        )
        .unwrap();
        assert_eq!(c.metadata.unwrap().name, "nginx-sandbox");
        assert!(c.port_mappings.is_empty() && c.dns_config.is_none());
        assert_eq!(c.linux, Some(cri::LinuxPodSandboxConfig::default()));
    }

    #[test]
    fn protocol_and_namespace_mode_names_and_numbers() {
        let c = parse_pod_config(
            r#"{"portMappings": [{"protocol": "SCTP", "containerPort": 1}, {"protocol": 2},
                {"containerPort": 3}],
                "linux": {"securityContext": {"namespaceOptions":
                    {"network": 2, "pid": "target", "targetId": "c1"}}}}"#,
            Syntax::Json,
        )
        .unwrap();
        let protos: Vec<i32> = c.port_mappings.iter().map(|p| p.protocol).collect();
        let sctp = cri::Protocol::Sctp as i32;
        assert_eq!(protos, [sctp, sctp, cri::Protocol::Tcp as i32]);
        let ns = c
            .linux
            .unwrap()
            .security_context
            .unwrap()
            .namespace_options
            .unwrap();
        assert_eq!(ns.network, cri::NamespaceMode::Node as i32);
        assert_eq!(ns.pid, cri::NamespaceMode::Target as i32);
        assert_eq!(ns.ipc, cri::NamespaceMode::Pod as i32);
        assert_eq!(ns.target_id, "c1");
    }

    #[test]
    fn bad_enum_values_are_refused_with_the_field() {
        let e = parse_pod_config(r#"{"port_mappings": [{"protocol": "ICMP"}]}"#, Syntax::Json)
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("port_mappings[0].protocol"),
            "{e:#}"
        );
        let e = parse_pod_config(
            "linux:\n  security_context:\n    namespace_options:\n      network: 7\n",
            Syntax::Yaml,
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("namespace_options.network"),
            "{e:#}"
        );
    }

    #[test]
    fn nulls_are_absent_and_non_objects_refused() {
        let c = parse_pod_config("metadata:\n  name: a\nlabels:\nlinux:\n", Syntax::Yaml).unwrap();
        assert!(c.labels.is_empty() && c.linux.is_none());
        assert!(parse_pod_config("", Syntax::Yaml).is_err());
        assert!(parse_pod_config("[1]", Syntax::Json).is_err());
        assert!(parse_pod_config("{", Syntax::Json).is_err());
    }

    #[test]
    fn yaml_duplicate_keys_are_refused_and_output_parses_back() {
        // A key given twice is a mistake in a hand-written config, not "the last one wins".
        assert!(parse_pod_config("metadata:\n  name: a\n  name: b\n", Syntax::Yaml).is_err());
        // `-o yaml` output must quote strings that would read back as other types.
        let v = serde_json::json!({
            "labels": {"n": "1", "b": "true", "e": "", "c": "a: b", "null": "null"},
            "port": 80,
            "list": [1, "x"]
        });
        let text = crate::output::render(&v, crate::output::Format::Yaml).unwrap();
        let back: Value = parse_object(&text, Syntax::Yaml, "value").unwrap();
        assert_eq!(back, v, "{text}");
    }

    #[test]
    fn syntax_is_detected_by_extension_then_content() {
        assert_eq!(Syntax::detect(Path::new("p.json"), "a: 1"), Syntax::Json);
        assert_eq!(Syntax::detect(Path::new("p.YML"), "{}"), Syntax::Yaml);
        assert_eq!(Syntax::detect(Path::new("p.yaml"), "{}"), Syntax::Yaml);
        assert_eq!(
            Syntax::detect(Path::new("pod"), "  {\"a\": 1}"),
            Syntax::Json
        );
        assert_eq!(
            Syntax::detect(Path::new("pod"), "metadata: {}"),
            Syntax::Yaml
        );
    }

    #[test]
    fn config_files_load_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pod-config");
        std::fs::write(&path, YAML_CAMEL).unwrap();
        check_full(&load_pod_config(&path).unwrap());
        let e = load_pod_config(&dir.path().join("missing.json")).unwrap_err();
        assert!(format!("{e:#}").contains("missing.json"), "{e:#}");
    }

    #[test]
    fn uuids_are_version_4() {
        let u = format_uuid([0xff; 16]);
        assert_eq!(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let u = format_uuid([0; 16]);
        assert_eq!(u, "00000000-0000-4000-8000-000000000000");
    }

    #[test]
    fn checked_pod_configs_need_name_and_namespace_and_get_a_uid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pod.yaml");
        std::fs::write(&path, "metadata: {name: p, namespace: default}\n").unwrap();
        let uid = load_pod_config_checked(&path)
            .unwrap()
            .metadata
            .unwrap()
            .uid;
        assert_eq!(uid.len(), 36, "{uid}");
        std::fs::write(&path, "metadata: {name: p, namespace: d, uid: u1}\n").unwrap();
        assert_eq!(
            load_pod_config_checked(&path)
                .unwrap()
                .metadata
                .unwrap()
                .uid,
            "u1"
        );
        for bad in [
            "hostname: x\n",
            "metadata: {name: p}\n",
            "metadata: {namespace: d}\n",
        ] {
            std::fs::write(&path, bad).unwrap();
            let e = load_pod_config_checked(&path).unwrap_err();
            assert!(format!("{e:#}").contains("metadata"), "{bad}: {e:#}");
        }
    }

    #[test]
    fn camel_names_become_snake() {
        assert_eq!(camel_to_snake("portMappings"), "port_mappings");
        assert_eq!(camel_to_snake("port_mappings"), "port_mappings");
        assert_eq!(
            camel_to_snake("memoryLimitInBytes"),
            "memory_limit_in_bytes"
        );
        assert_eq!(camel_to_snake("hostIP"), "host_ip");
        assert_eq!(camel_to_snake("hostIp"), "host_ip");
        assert_eq!(camel_to_snake("targetID"), "target_id");
    }
}
