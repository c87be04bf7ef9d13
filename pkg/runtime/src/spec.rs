//! CRI container request + image config + pod context → OCI runtime spec, with the `oci-spec`
//! crate. Pure: no I/O, so every field is unit-tested by hand-built inputs (`spec/tests.rs`),
//! against what containerd's CRI plugin produces for the same request.
//!
//! The CRI layer validates the request into a [`ContainerSpec`] (every refusal naming its CRI
//! field), resolves the user inside the mounted rootfs ([`crate::user`]) and hands all of it to
//! [`build_spec`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, Capability, Linux, LinuxCapabilities, LinuxCpu, LinuxDevice, LinuxDeviceCgroup,
    LinuxDeviceType, LinuxHugepageLimit, LinuxMemory, LinuxNamespace, LinuxNamespaceType,
    LinuxResources, LinuxSeccomp, Mount, Process, Root, Spec, User,
};
use serde::Deserialize as _;

use crate::{Error, Result};

pub mod devices;

#[cfg(test)]
mod tests;

/// What the image config contributes (its `config` object), already parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` strings.
    pub env: Vec<String>,
    pub working_dir: String,
    /// `USER`: `name`, `uid`, `uid:gid`, `name:group`, … (empty: root).
    pub user: String,
    /// `VOLUME` paths.
    pub volumes: Vec<String>,
    /// `STOPSIGNAL`, as written in the image (`SIGTERM`, `15`, `TERM`); empty: SIGTERM.
    pub stop_signal: String,
}

/// How a bind mount propagates (CRI `MountPropagation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Propagation {
    #[default]
    Private,
    /// rslave: mounts made on the host under the source appear inside.
    HostToContainer,
    /// rshared: mounts made inside appear on the host too.
    Bidirectional,
}

/// One CRI `Mount`, validated: `container_path` absolute and cleaned, `host_path` absolute.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MountSpec {
    pub container_path: String,
    pub host_path: PathBuf,
    pub readonly: bool,
    pub recursive_read_only: bool,
    pub propagation: Propagation,
}

/// One CRI `Device`: host device node → container path with `rwm`-style permissions.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceSpec {
    pub container_path: String,
    pub host_path: PathBuf,
    pub permissions: String,
    /// What `host_path` is on the node, as [`devices::device_nodes`] reads it: one node for a
    /// device file, every node below it for a directory (containerd's `getDevices`), with the
    /// container paths they get. [`build_spec`] does no I/O, so the caller fills this in.
    #[serde(default)]
    pub nodes: Vec<DeviceNode>,
}

/// The kind of a device node (`linux.devices[].type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DeviceKind {
    Char,
    Block,
    Fifo,
}

/// A device node as `lstat(2)` saw it on the node, with the path it gets in the container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceNode {
    /// Path inside the container.
    pub path: String,
    pub kind: DeviceKind,
    pub major: i64,
    pub minor: i64,
    /// `st_mode` without the file type bits.
    pub file_mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// `SupplementalGroupsPolicy` of the pod's security context.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GroupsPolicy {
    /// The image's `/etc/group` memberships of the user plus the requested groups (Kubernetes'
    /// default).
    #[default]
    Merge,
    /// Only the requested groups (and the primary group).
    Strict,
}

/// A seccomp profile choice (CRI `SecurityProfile`, or the deprecated path strings).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Seccomp {
    #[default]
    Unconfined,
    RuntimeDefault,
    /// The profile's JSON, already read from the node.
    Localhost {
        path: PathBuf,
        profile: String,
    },
}

/// The container's security context, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SecuritySpec {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_username: String,
    pub supplemental_groups: Vec<i64>,
    pub supplemental_groups_policy: GroupsPolicy,
    pub readonly_rootfs: bool,
    pub privileged: bool,
    pub no_new_privs: bool,
    /// Capability names as CRI gives them (`NET_ADMIN`, `CAP_NET_ADMIN`, `ALL`).
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    pub add_ambient_capabilities: Vec<String>,
    /// Exactly as the request lists them (kubelet sends the defaults itself).
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub seccomp: Seccomp,
}

/// `LinuxContainerResources`, in CRI units; `None`/empty means "not set".
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResourcesSpec {
    pub cpu_period: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_shares: Option<u64>,
    pub memory_limit_in_bytes: Option<i64>,
    pub memory_swap_limit_in_bytes: Option<i64>,
    pub oom_score_adj: Option<i64>,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    /// Page size (`2MB`, `1GB`) → limit in bytes.
    pub hugepage_limits: Vec<(String, u64)>,
    /// cgroup v2 keys.
    pub unified: BTreeMap<String, String>,
}

/// A validated CRI `ContainerConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerSpec {
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// In request order; later entries win over earlier ones and over the image's.
    pub env: Vec<(String, String)>,
    pub working_dir: String,
    pub tty: bool,
    pub stdin: bool,
    pub stdin_once: bool,
    pub mounts: Vec<MountSpec>,
    pub devices: Vec<DeviceSpec>,
    pub security: SecuritySpec,
    pub resources: Option<ResourcesSpec>,
}

/// How the container joins one of the pod's namespaces.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NsJoin {
    /// The node's own namespace (hostNetwork, hostIPC): no namespace entry in the spec.
    Host,
    /// Join the namespace pinned (or held) at this path.
    Path(PathBuf),
}

/// The container's PID namespace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PidNs {
    /// A new one of its own (the default).
    Container,
    /// The node's (hostPID).
    Host,
    /// Join an existing one: the pod's holder, or a `TARGET` container's.
    Path(PathBuf),
}

/// The pod's per-pod files, bind-mounted into each container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodFilePaths {
    pub hostname: PathBuf,
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
}

/// What the pod contributes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodContext {
    pub hostname: String,
    pub network: NsJoin,
    pub ipc: NsJoin,
    pub uts: NsJoin,
    pub pid: PidNs,
    pub files: Option<PodFilePaths>,
    /// Source of the container's `/dev/shm`: the pod's shared tmpfs, or the host's `/dev/shm`
    /// for a hostIPC pod.
    pub shm: PathBuf,
    /// The container's full `cgroupsPath` (cgroupfs style, `/kubepods/.../pod<uid>/<id>`).
    pub cgroups_path: String,
}

/// The user the container's process runs as, resolved in the image's `/etc/passwd` and
/// `/etc/group` ([`crate::user`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, sorted, without duplicates.
    pub additional_gids: Vec<u32>,
    /// The user's name when known (from the request, the image or `/etc/passwd`).
    pub username: Option<String>,
}

/// Facts about the node berthd runs on that bound what a container may get.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// berthd's own `oom_score_adj`: without CAP_SYS_RESOURCE a child may not go lower, so a
    /// lower request is raised to it (containerd's `restrict_oom_score_adj`).
    pub oom_score_adj_floor: Option<i64>,
    /// Capability names berthd holds in its bounding set (for privileged containers).
    pub capabilities: Vec<String>,
    /// The node's hostname: the `HOSTNAME` variable of a pod that has no hostname of its own.
    pub hostname: String,
    /// The node runs the unified cgroup hierarchy: containers get a cgroup namespace.
    pub cgroup_v2: bool,
    /// Swap can be limited (`memory.swap.max` / `memory.memsw.limit_in_bytes` exists): only
    /// then is `memory.swap` set.
    pub swap_controller: bool,
    /// The hugetlb controller is there: without it hugepage limits are left out with a
    /// warning (containerd's default `tolerate_missing_hugetlb_controller`).
    pub hugetlb_controller: bool,
    /// Which of `nsdelegate` and `memory_recursiveprot` the host's cgroup2 mount at
    /// /sys/fs/cgroup carries. A container without a cgroup namespace of its own mounts that
    /// same superblock, and a mount without them would strip them from the whole node.
    pub cgroup2_host_options: Vec<String>,
    /// Every device node under the host's /dev ([`devices::host_devices`]); read only for a
    /// privileged container, so the caller may leave it empty for the others.
    pub host_devices: Vec<DeviceNode>,
    /// The kernel has `mount_setattr(2)`, so recursive read-only mounts can be honoured
    /// ([`crate::mounts::make_recursive_read_only`]).
    pub recursive_read_only: bool,
}

/// Everything [`build_spec`] reads.
#[derive(Debug, Clone)]
pub struct SpecInput<'a> {
    pub container: &'a ContainerSpec,
    pub image: &'a ImageDefaults,
    pub pod: &'a PodContext,
    pub user: &'a ResolvedUser,
    /// Where the rootfs is mounted (the spec's `root.path`).
    pub rootfs: PathBuf,
    /// Image `VOLUME`s: container path → the empty host directory that backs it.
    pub volumes: Vec<(String, PathBuf)>,
    pub node: &'a NodeFacts,
}

/// The `PATH` of a container whose image and request set none (containerd's `defaultUnixEnv`).
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The capabilities a container starts from: containerd's `defaultUnixCaps`, also Docker's and
/// CRI-O's default set. Inheritable stays empty (CVE-2022-24769): with a non-empty inheritable
/// set, a file capability could raise an unprivileged user's permitted set at exec time.
const DEFAULT_CAPS: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

const ETC_HOSTNAME: &str = "/etc/hostname";
const ETC_HOSTS: &str = "/etc/hosts";
const ETC_RESOLV_CONF: &str = "/etc/resolv.conf";
const DEV_SHM: &str = "/dev/shm";

/// The container's argv, by kubelet's (and Docker's) rules: `command` replaces the image's
/// ENTRYPOINT and drops its CMD; `args` alone replace CMD; neither runs ENTRYPOINT + CMD.
pub fn process_args(
    command: &[String],
    args: &[String],
    image: &ImageDefaults,
) -> Result<Vec<String>> {
    let argv: Vec<String> = if !command.is_empty() {
        command.iter().chain(args).cloned().collect()
    } else {
        // `ENTRYPOINT [""]` is how a Dockerfile clears an inherited entrypoint; containerd
        // (after moby's daemon/commit.go) treats it as none.
        let entrypoint: &[String] = if image.entrypoint.len() == 1 && image.entrypoint[0].is_empty()
        {
            &[]
        } else {
            &image.entrypoint
        };
        let tail = if args.is_empty() { &image.cmd } else { args };
        entrypoint.iter().chain(tail).cloned().collect()
    };
    if argv.is_empty() {
        return Err(Error::invalid(
            "command/args",
            "neither is set and the image has no ENTRYPOINT or CMD",
        ));
    }
    Ok(argv)
}

/// The container's environment: the image's variables, then the request's, each later
/// `KEY=value` replacing an earlier one of the same key in place, an image entry without `=`
/// removing the key (containerd's `replaceOrAppendEnvValues`). `PATH` starts as
/// [`DEFAULT_PATH_ENV`], so the image's PATH (or the request's) takes its place.
pub fn merge_env(image_env: &[String], request: &[(String, String)]) -> Vec<String> {
    let mut env = Env::new([DEFAULT_PATH_ENV.to_string()]);
    env.apply(image_env.iter().cloned());
    env.apply(request.iter().map(|(k, v)| format!("{k}={v}")));
    env.finish()
}

/// An environment under construction: entries in first-seen order, keys indexed.
struct Env {
    entries: Vec<Option<String>>,
    index: HashMap<String, usize>,
}

impl Env {
    fn new(base: impl IntoIterator<Item = String>) -> Self {
        let mut env = Env {
            entries: Vec::new(),
            index: HashMap::new(),
        };
        env.apply(base);
        env
    }

    fn apply(&mut self, vars: impl IntoIterator<Item = String>) {
        for var in vars {
            match var.split_once('=') {
                Some((key, _)) => match self.index.get(key) {
                    Some(&i) => self.entries[i] = Some(var),
                    None => {
                        self.index.insert(key.to_string(), self.entries.len());
                        self.entries.push(Some(var));
                    }
                },
                None => {
                    if let Some(i) = self.index.remove(&var) {
                        self.entries[i] = None;
                    }
                }
            }
        }
    }

    fn finish(self) -> Vec<String> {
        self.entries.into_iter().flatten().collect()
    }
}

/// Builds the OCI runtime spec of a container, as containerd's CRI plugin would for the same
/// request (`containerSpec` in `internal/cri/server/container_create*.go` on top of
/// `populateDefaultUnixSpec`). Where berth differs on purpose, the comment at the field says
/// why.
pub fn build_spec(input: &SpecInput) -> Result<Spec> {
    let c = input.container;
    let sec = &c.security;

    let caps = capabilities(sec, &input.node.capabilities);
    let cgroupns = input.node.cgroup_v2 && !sec.privileged;

    let mut root = Root::default();
    root.set_path(input.rootfs.clone());
    root.set_readonly(sec.readonly_rootfs.then_some(true));

    let (devices, device_rules) = devices(input)?;

    let mut linux = Linux::default();
    linux.set_net_devices(None);
    linux.set_uid_mappings(None);
    linux.set_gid_mappings(None);
    // Pod sysctls were written into the pinned namespaces when the pod started, once, as
    // containerd and CRI-O write them through their pause container's spec only; containers
    // join those namespaces.
    linux.set_sysctl(None);
    linux.set_resources(Some(resources(
        c.resources.as_ref(),
        input.node,
        device_rules,
    )?));
    linux.set_cgroups_path(
        (!input.pod.cgroups_path.is_empty()).then(|| PathBuf::from(&input.pod.cgroups_path)),
    );
    linux.set_namespaces(Some(namespaces(input.pod, cgroupns)));
    linux.set_devices((!devices.is_empty()).then_some(devices));
    linux.set_seccomp(seccomp(sec, &caps.bounding)?);
    linux.set_rootfs_propagation(rootfs_propagation(&c.mounts));
    // Exactly the request's lists, as containerd does since containerd#5029: kubelet sends the
    // defaults for `procMount: Default` and empty lists for `Unmasked`, and proto3 cannot tell
    // an empty list from an absent one. A path missing in the container is skipped by runc.
    // Empty lists are left out, as containerd's Go `omitempty` leaves them.
    let listed = |paths: &[String]| (!sec.privileged && !paths.is_empty()).then(|| paths.to_vec());
    let (masked, readonly) = (listed(&sec.masked_paths), listed(&sec.readonly_paths));
    linux.set_masked_paths(masked);
    linux.set_readonly_paths(readonly);
    linux.set_mount_label(None);
    linux.set_intel_rdt(None);
    linux.set_memory_policy(None);
    linux.set_personality(None);
    linux.set_time_offsets(None);

    let mut spec = Spec::default();
    spec.set_root(Some(root));
    spec.set_mounts(Some(mounts(input, cgroupns)?));
    spec.set_process(Some(process(input, caps)?));
    // The pinned UTS namespace already carries the pod's hostname; like containerd, the
    // container only joins it.
    spec.set_hostname(None);
    spec.set_domainname(None);
    spec.set_hooks(None);
    spec.set_annotations(None);
    spec.set_linux(Some(linux));
    spec.set_solaris(None);
    spec.set_windows(None);
    spec.set_vm(None);
    spec.set_zos(None);
    Ok(spec)
}

fn process(input: &SpecInput, caps: CapSets) -> Result<Process> {
    let c = input.container;
    let sec = &c.security;

    let mut user = User::default();
    user.set_uid(input.user.uid);
    user.set_gid(input.user.gid);
    user.set_umask(None);
    user.set_additional_gids(Some(additional_gids(input.user)));
    user.set_username(None);

    let mut process = Process::default();
    process.set_terminal(c.tty.then_some(true));
    process.set_console_size(None);
    process.set_user(user);
    process.set_args(Some(process_args(&c.command, &c.args, input.image)?));
    process.set_command_line(None);
    process.set_env(Some(container_env(input)));
    process.set_cwd(PathBuf::from(working_dir(c, input.image)));
    process.set_capabilities(Some(caps.into_oci()));
    // containerd drops the default RLIMIT_NOFILE=1024 so the container inherits the runtime's
    // limits (containerd/cri#515).
    process.set_rlimits(None);
    process.set_no_new_privileges(sec.no_new_privs.then_some(true));
    process.set_apparmor_profile(None);
    process.set_oom_score_adj(oom_score_adj(c.resources.as_ref(), input.node)?);
    process.set_selinux_label(None);
    process.set_io_priority(None);
    process.set_scheduler(None);
    process.set_exec_cpu_affinity(None);
    Ok(process)
}

/// containerd's order: the default PATH, `TERM=xterm` for a tty (`WithTTY`), `HOSTNAME`, then
/// the image's and the request's variables, any of which may replace the first three in place.
fn container_env(input: &SpecInput) -> Vec<String> {
    let hostname = if input.pod.hostname.is_empty() {
        &input.node.hostname
    } else {
        &input.pod.hostname
    };
    let mut base = vec![DEFAULT_PATH_ENV.to_string()];
    if input.container.tty {
        base.push("TERM=xterm".to_string());
    }
    base.push(format!("HOSTNAME={hostname}"));
    let mut env = Env::new(base);
    env.apply(input.image.env.iter().cloned());
    env.apply(input.container.env.iter().map(|(k, v)| format!("{k}={v}")));
    env.finish()
}

fn working_dir<'a>(c: &'a ContainerSpec, image: &'a ImageDefaults) -> &'a str {
    if !c.working_dir.is_empty() {
        &c.working_dir
    } else if !image.working_dir.is_empty() {
        &image.working_dir
    } else {
        "/"
    }
}

/// The primary gid leads the supplementary list too: without it, files whose group bits deny
/// the primary group could be reached through it anyway (CVE-2023-25173; containerd's
/// `ensureAdditionalGids`). Sorted as containerd's `mergeGids` leaves them.
fn additional_gids(user: &ResolvedUser) -> Vec<u32> {
    let mut gids: Vec<u32> = std::iter::once(user.gid)
        .chain(user.additional_gids.iter().copied())
        .collect();
    gids.sort_unstable();
    gids.dedup();
    gids
}

/// oom_score_adj is only set when the request has resources (then 0 if unset), as containerd
/// does; a value below berthd's own is raised to it, since without CAP_SYS_RESOURCE runc could
/// not lower it and the container would fail to start.
fn oom_score_adj(resources: Option<&ResourcesSpec>, node: &NodeFacts) -> Result<Option<i32>> {
    let Some(r) = resources else {
        return Ok(None);
    };
    let mut adj = r.oom_score_adj.unwrap_or(0);
    if !(-1000..=1000).contains(&adj) {
        return Err(Error::invalid(
            "linux.resources.oom_score_adj",
            format!("{adj} is outside -1000..=1000"),
        ));
    }
    if let Some(floor) = node.oom_score_adj_floor {
        adj = adj.max(floor);
    }
    // The range check above keeps it within i32.
    Ok(Some(adj as i32))
}

/// The capability sets, each in first-added order (oci-spec stores them as sets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct CapSets {
    bounding: Vec<Capability>,
    effective: Vec<Capability>,
    permitted: Vec<Capability>,
    inheritable: Vec<Capability>,
    ambient: Vec<Capability>,
}

impl CapSets {
    fn set_main(&mut self, caps: &[Capability]) {
        self.bounding = caps.to_vec();
        self.effective = caps.to_vec();
        self.permitted = caps.to_vec();
        // containerd's `WithCapabilities`: inheritable is cleared with an empty set, else
        // narrowed to it.
        self.inheritable.retain(|c| caps.contains(c));
    }

    fn add(&mut self, cap: Capability) {
        for set in [&mut self.bounding, &mut self.effective, &mut self.permitted] {
            if !set.contains(&cap) {
                set.push(cap);
            }
        }
    }

    fn drop_cap(&mut self, cap: Capability) {
        for set in [
            &mut self.bounding,
            &mut self.effective,
            &mut self.permitted,
            &mut self.inheritable,
        ] {
            set.retain(|c| *c != cap);
        }
    }

    fn into_oci(self) -> LinuxCapabilities {
        // Empty sets are left out, as containerd's Go nil slices are.
        let set =
            |v: Vec<Capability>| (!v.is_empty()).then(|| v.into_iter().collect::<Capabilities>());
        let mut caps = LinuxCapabilities::default();
        caps.set_bounding(set(self.bounding));
        caps.set_effective(set(self.effective));
        caps.set_permitted(set(self.permitted));
        caps.set_inheritable(set(self.inheritable));
        caps.set_ambient(set(self.ambient));
        caps
    }
}

/// Parses `NET_ADMIN`, `CAP_NET_ADMIN`, `net_admin`.
fn parse_capability(name: &str) -> Option<Capability> {
    use serde::de::IntoDeserializer;
    let de: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
        name.into_deserializer();
    Capability::deserialize(de).ok()
}

fn is_all(name: &str) -> bool {
    name.eq_ignore_ascii_case("ALL")
}

/// containerd's `WithCapabilities` (add/drop with `ALL` first), then `WithPrivileged` (every
/// capability berthd has, whatever was dropped), then ambient capabilities.
///
/// Names oci-spec does not know are skipped with a warning: runc does the same with names its
/// libcap does not know, so containerd's containers start without them too.
fn capabilities(sec: &SecuritySpec, node_caps: &[String]) -> CapSets {
    let known = |field: &str, names: &[String]| -> Vec<Capability> {
        let mut caps = Vec::new();
        for name in names.iter().filter(|n| !is_all(n)) {
            match parse_capability(name) {
                Some(cap) if !caps.contains(&cap) => caps.push(cap),
                Some(_) => {}
                None => tracing::warn!(capability = %name, field, "unknown capability ignored"),
            }
        }
        caps
    };
    let all = known("node capabilities", node_caps);
    let mut sets = CapSets::default();
    sets.set_main(&DEFAULT_CAPS);
    if sec.add_capabilities.iter().any(|n| is_all(n)) {
        sets.set_main(&all);
    }
    if sec.drop_capabilities.iter().any(|n| is_all(n)) {
        sets.set_main(&[]);
    }
    for cap in known(
        "security_context.capabilities.add_capabilities",
        &sec.add_capabilities,
    ) {
        sets.add(cap);
    }
    for cap in known(
        "security_context.capabilities.drop_capabilities",
        &sec.drop_capabilities,
    ) {
        sets.drop_cap(cap);
    }
    if sec.privileged {
        sets.set_main(&all);
    }
    // containerd clears ambient capabilities (WithoutAmbientCaps). berth follows KEP-2763
    // instead: an ambient capability only works when it is also permitted and inheritable, so
    // it is added to every set. Only explicitly requested ones: the default inheritable set
    // stays empty.
    for cap in known(
        "security_context.capabilities.add_ambient_capabilities",
        &sec.add_ambient_capabilities,
    ) {
        sets.add(cap);
        for set in [&mut sets.inheritable, &mut sets.ambient] {
            if !set.contains(&cap) {
                set.push(cap);
            }
        }
    }
    sets
}

fn seccomp(sec: &SecuritySpec, bounding: &[Capability]) -> Result<Option<LinuxSeccomp>> {
    if sec.privileged {
        return Ok(None);
    }
    match &sec.seccomp {
        Seccomp::Unconfined => Ok(None),
        Seccomp::RuntimeDefault => Ok(Some(crate::seccomp::default_profile(bounding))),
        Seccomp::Localhost { path, profile } => serde_json::from_str::<LinuxSeccomp>(profile)
            .map(Some)
            .map_err(|e| {
                Error::invalid(
                    "security_context.seccomp",
                    format!(
                        "profile {} is not a valid seccomp profile: {e}",
                        path.display()
                    ),
                )
            }),
    }
}

/// containerd's defaults (pid, ipc, uts, mount, network) with the pod's namespaces joined by
/// path. A host namespace is left out of the list; containerd instead joins the pause
/// container's `/proc/<pid>/ns/*`, which for a host-namespace pod is the host's.
fn namespaces(pod: &PodContext, cgroupns: bool) -> Vec<LinuxNamespace> {
    let ns = |typ: LinuxNamespaceType, path: Option<&Path>| {
        let mut ns = LinuxNamespace::default();
        ns.set_typ(typ);
        ns.set_path(path.map(Path::to_path_buf));
        ns
    };
    let join = |typ, how: &NsJoin| match how {
        NsJoin::Host => None,
        NsJoin::Path(p) => Some(ns(typ, Some(p))),
    };
    let mut out = Vec::with_capacity(6);
    match &pod.pid {
        PidNs::Container => out.push(ns(LinuxNamespaceType::Pid, None)),
        PidNs::Path(p) => out.push(ns(LinuxNamespaceType::Pid, Some(p))),
        PidNs::Host => {}
    }
    out.extend(join(LinuxNamespaceType::Ipc, &pod.ipc));
    out.extend(join(LinuxNamespaceType::Uts, &pod.uts));
    out.push(ns(LinuxNamespaceType::Mount, None));
    out.extend(join(LinuxNamespaceType::Network, &pod.network));
    // cgroupns hides the host's cgroup tree; containerd adds it only on cgroup v2 and not for
    // privileged containers (KEP "cgroups v2": cgroup v1 tools expect the host view).
    if cgroupns {
        out.push(ns(LinuxNamespaceType::Cgroup, None));
    }
    out
}

/// A bind mount before it becomes an OCI mount: the request's and berth's own.
struct Bind<'a> {
    destination: String,
    source: &'a Path,
    readonly: bool,
    recursive_read_only: bool,
    propagation: Propagation,
    field: String,
}

/// containerd's `WithMounts`: the request's mounts plus berth's own binds (pod files, /dev/shm,
/// image volumes) that the request does not override, sorted by depth so a parent never
/// shadows a child; then the default filesystems that none of them replaces.
fn mounts(input: &SpecInput, cgroupns: bool) -> Result<Vec<Mount>> {
    let c = input.container;
    let sec = &c.security;

    let mut binds: Vec<Bind> = c
        .mounts
        .iter()
        .enumerate()
        .map(|(i, m)| Bind {
            destination: m.container_path.clone(),
            source: &m.host_path,
            readonly: m.readonly,
            recursive_read_only: m.recursive_read_only,
            propagation: m.propagation,
            field: format!("mounts[{i}]"),
        })
        .collect();
    let requested: HashSet<String> = c.mounts.iter().map(|m| clean(&m.container_path)).collect();

    // containerd's `linuxContainerMounts` then `volumeMounts`: each only where the request
    // mounts nothing at the same path. The pod files follow the root filesystem's
    // read-only-ness; /dev/shm and volumes are always writable.
    let mut extra: Vec<(&str, &Path, bool)> = Vec::new();
    if let Some(files) = &input.pod.files {
        extra.push((ETC_HOSTNAME, &files.hostname, sec.readonly_rootfs));
        extra.push((ETC_HOSTS, &files.hosts, sec.readonly_rootfs));
        extra.push((ETC_RESOLV_CONF, &files.resolv_conf, sec.readonly_rootfs));
    }
    extra.push((DEV_SHM, &input.pod.shm, false));
    for (destination, source) in &input.volumes {
        extra.push((destination, source, false));
    }
    for (destination, source, readonly) in extra {
        let destination = clean(destination);
        if requested.contains(&destination) {
            continue;
        }
        binds.push(Bind {
            field: destination.clone(),
            destination,
            source,
            readonly,
            recursive_read_only: false,
            propagation: Propagation::Private,
        });
    }
    // Stable, like containerd's `sort.Stable(orderedMounts)`: equal depths keep request order.
    binds.sort_by_key(|b| depth(&b.destination));

    let bound: HashSet<String> = binds.iter().map(|b| clean(&b.destination)).collect();
    let dev_bound = bound.contains("/dev");
    let mut out: Vec<Mount> = default_mounts(sec.privileged, cgroupns, input.node)
        .into_iter()
        .filter(|m| {
            let dst = clean(&m.destination().to_string_lossy());
            // A request's /dev replaces everything under it too.
            let replaced = bound.contains(&dst) || (dev_bound && dst.starts_with("/dev/"));
            !replaced
        })
        .collect();

    for b in binds {
        let mut options = vec!["rbind".to_string()];
        options.push(
            match b.propagation {
                Propagation::Private => "rprivate",
                Propagation::HostToContainer => "rslave",
                Propagation::Bidirectional => "rshared",
            }
            .to_string(),
        );
        // Like containerd, a read-only rootfs does not make the request's mounts read-only.
        let mode = match (b.readonly, b.recursive_read_only) {
            (true, true) if b.propagation != Propagation::Private => {
                return Err(Error::invalid(
                    format!("{}.recursive_read_only", b.field),
                    "needs private propagation",
                ))
            }
            // runc 1.1 knows no `rro`: runc makes the mount itself read-only and
            // `mounts::make_recursive_read_only` does its submounts after `runc create`.
            (true, true) => "ro",
            (true, false) => "ro",
            (false, true) => {
                return Err(Error::invalid(
                    format!("{}.recursive_read_only", b.field),
                    "conflicts with a read-write mount",
                ))
            }
            (false, false) => "rw",
        };
        options.push(mode.to_string());
        out.push(mount(
            &b.destination,
            "bind",
            &b.source.to_string_lossy(),
            &options,
        ));
    }
    Ok(out)
}

fn mount(destination: &str, typ: &str, source: &str, options: &[impl AsRef<str>]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(destination));
    m.set_typ(Some(typ.to_string()));
    m.set_source(Some(PathBuf::from(source)));
    m.set_options(Some(
        options.iter().map(|o| o.as_ref().to_string()).collect(),
    ));
    m.set_uid_mappings(None);
    m.set_gid_mappings(None);
    m
}

/// containerd's `defaultMounts` without `/run` (`WithoutRunMount`), with the cgroup mount
/// `WithMounts` appends; `/dev/shm` here is always replaced by the pod's.
fn default_mounts(privileged: bool, cgroupns: bool, node: &NodeFacts) -> Vec<Mount> {
    // Privileged: `WithWriteableSysfs` and `WithWriteableCgroupfs`.
    let mode = if privileged { "rw" } else { "ro" };
    let mut cgroup = vec!["nosuid", "noexec", "nodev", "relatime", mode];
    if !cgroupns {
        cgroup.extend(
            node.cgroup2_host_options
                .iter()
                .map(String::as_str)
                .filter(|o| matches!(*o, "nsdelegate" | "memory_recursiveprot")),
        );
    }
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            DEV_SHM,
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", mode],
        ),
        mount("/sys/fs/cgroup", "cgroup", "cgroup", &cgroup),
    ]
}

/// containerd sets the rootfs propagation from the request's mounts: rshared if any is
/// bidirectional, else rslave if any is host-to-container, else runc's default (rprivate).
fn rootfs_propagation(mounts: &[MountSpec]) -> Option<String> {
    if mounts
        .iter()
        .any(|m| m.propagation == Propagation::Bidirectional)
    {
        Some("rshared".to_string())
    } else if mounts
        .iter()
        .any(|m| m.propagation == Propagation::HostToContainer)
    {
        Some("rslave".to_string())
    } else {
        None
    }
}

/// Lexically cleans a container path (Go's `filepath.Clean` of an absolute path): this only
/// compares and orders destinations, it never touches the filesystem.
fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The number of separators of the cleaned path, containerd's `orderedMounts.parts`.
fn depth(path: &str) -> usize {
    clean(path).matches('/').count()
}

/// `linux.devices` and the device cgroup's allow rules for them (containerd's `WithDevices`);
/// a privileged container gets the host's devices and access to every device instead.
fn devices(input: &SpecInput) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>)> {
    let mut devices = Vec::new();
    let mut rules = vec![device_rule(false, None, "rwm")];
    for (i, d) in input.container.devices.iter().enumerate() {
        if d.permissions.is_empty() || !d.permissions.chars().all(|c| matches!(c, 'r' | 'w' | 'm'))
        {
            return Err(Error::invalid(
                format!("devices[{i}].permissions"),
                format!("{:?} is not a combination of r, w and m", d.permissions),
            ));
        }
        for node in &d.nodes {
            devices.push(linux_device(node));
            rules.push(device_rule(true, Some(node), &d.permissions));
        }
    }
    if input.container.security.privileged {
        // containerd's `WithHostDevices` + `WithAllDevicesAllowed`; the caller enumerates /dev.
        devices.extend(input.node.host_devices.iter().map(linux_device));
        rules = vec![device_rule(true, None, "rwm")];
    }
    Ok((devices, rules))
}

fn device_type(kind: DeviceKind) -> LinuxDeviceType {
    match kind {
        DeviceKind::Char => LinuxDeviceType::C,
        DeviceKind::Block => LinuxDeviceType::B,
        DeviceKind::Fifo => LinuxDeviceType::P,
    }
}

fn linux_device(node: &DeviceNode) -> LinuxDevice {
    let mut d = LinuxDevice::default();
    d.set_path(PathBuf::from(&node.path));
    d.set_typ(device_type(node.kind));
    d.set_major(node.major);
    d.set_minor(node.minor);
    d.set_file_mode(Some(node.file_mode));
    d.set_uid(Some(node.uid));
    d.set_gid(Some(node.gid));
    d
}

fn device_rule(allow: bool, node: Option<&DeviceNode>, access: &str) -> LinuxDeviceCgroup {
    let mut r = LinuxDeviceCgroup::default();
    r.set_allow(allow);
    r.set_typ(node.map(|n| device_type(n.kind)));
    r.set_major(node.map(|n| n.major));
    r.set_minor(node.map(|n| n.minor));
    r.set_access(Some(access.to_string()));
    r
}

/// containerd's `WithResources`: zero means unset; with resources, `cpu` and `memory` are
/// present even when empty; swap defaults to the memory limit (no swapping) where swap can be
/// limited.
pub fn resources(
    requested: Option<&ResourcesSpec>,
    node: &NodeFacts,
    device_rules: Vec<LinuxDeviceCgroup>,
) -> Result<LinuxResources> {
    let mut res = LinuxResources::default();
    res.set_devices(Some(device_rules));
    let Some(r) = requested else {
        return Ok(res);
    };
    let nonzero_u = |v: Option<u64>| v.filter(|v| *v != 0);
    let nonzero_i = |v: Option<i64>| v.filter(|v| *v != 0);
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());

    let mut cpu = LinuxCpu::default();
    cpu.set_period(nonzero_u(r.cpu_period));
    cpu.set_quota(nonzero_i(r.cpu_quota));
    cpu.set_shares(nonzero_u(r.cpu_shares));
    cpu.set_cpus(nonempty(&r.cpuset_cpus));
    cpu.set_mems(nonempty(&r.cpuset_mems));
    res.set_cpu(Some(cpu));

    let mut memory = LinuxMemory::default();
    let limit = nonzero_i(r.memory_limit_in_bytes);
    let swap = nonzero_i(r.memory_swap_limit_in_bytes);
    memory.set_limit(limit);
    if node.swap_controller {
        memory.set_swap(swap.or(limit));
    }
    res.set_memory(Some(memory));

    if !r.hugepage_limits.is_empty() {
        if node.hugetlb_controller {
            let mut limits = Vec::with_capacity(r.hugepage_limits.len());
            for (i, (page_size, limit)) in r.hugepage_limits.iter().enumerate() {
                let limit = i64::try_from(*limit).map_err(|_| {
                    Error::invalid(
                        format!("linux.resources.hugepage_limits[{i}].limit"),
                        format!("{limit} is beyond {}", i64::MAX),
                    )
                })?;
                let mut l = LinuxHugepageLimit::default();
                l.set_page_size(page_size.clone());
                l.set_limit(limit);
                limits.push(l);
            }
            res.set_hugepage_limits(Some(limits));
        } else {
            tracing::warn!("hugetlb cgroup controller is absent: hugepage limits left out");
        }
    }
    if !r.unified.is_empty() {
        res.set_unified(Some(
            r.unified
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ));
    }
    Ok(res)
}
