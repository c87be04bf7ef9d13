//! Field-by-field tests of [`build_spec`] against what containerd produced for the same
//! requests (`testdata/`, see its README), plus the rules one at a time.

use std::path::PathBuf;

use serde_json::{json, Value};

use super::*;

// ---------------------------------------------------------------------------------------------
// Inputs shared by the tests: the busybox image and the pod the fixtures were made with.

fn busybox() -> ImageDefaults {
    ImageDefaults {
        cmd: vec!["sh".into()],
        env: vec![DEFAULT_PATH_ENV.into()],
        working_dir: "/".into(),
        ..Default::default()
    }
}

fn pod_files() -> PodFilePaths {
    PodFilePaths {
        hostname: "/run/berth/pods/p1/hostname".into(),
        hosts: "/run/berth/pods/p1/hosts".into(),
        resolv_conf: "/run/berth/pods/p1/resolv.conf".into(),
    }
}

/// The fixtures' pod: its own network, IPC and UTS namespaces, and a shared PID namespace
/// (the containers did not ask for their own, so containerd joined the pause container's).
fn pod() -> PodContext {
    PodContext {
        hostname: "specpod-host".into(),
        network: NsJoin::Path("/run/berth/ns/p1/net".into()),
        ipc: NsJoin::Path("/run/berth/ns/p1/ipc".into()),
        uts: NsJoin::Path("/run/berth/ns/p1/uts".into()),
        pid: PidNs::Path("/proc/4242/ns/pid".into()),
        files: Some(pod_files()),
        shm: "/run/berth/pods/p1/shm".into(),
        cgroups_path: String::new(),
    }
}

/// The privileged fixtures' pod: hostNetwork, hostPID, hostIPC and no hostname of its own.
fn host_pod() -> PodContext {
    PodContext {
        hostname: String::new(),
        network: NsJoin::Host,
        ipc: NsJoin::Host,
        uts: NsJoin::Host,
        pid: PidNs::Host,
        files: Some(pod_files()),
        shm: "/dev/shm".into(),
        cgroups_path: String::new(),
    }
}

/// containerd's effective capabilities on the box the fixtures were made on (no
/// CAP_SYS_RESOURCE there), as the privileged fixture lists them.
fn node_caps() -> Vec<String> {
    let spec = fixture("priv");
    spec["process"]["capabilities"]["bounding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

/// The fixture box: cgroup v1 with swap accounting, containerd's own oom_score_adj 0 with
/// `restrict_oom_score_adj` on, hostname `vm`.
fn node() -> NodeFacts {
    NodeFacts {
        oom_score_adj_floor: Some(0),
        capabilities: node_caps(),
        hostname: "vm".into(),
        cgroup_v2: false,
        swap_controller: true,
        hugetlb_controller: true,
        cgroup2_host_options: Vec::new(),
        host_devices: Vec::new(),
        recursive_read_only: true,
    }
}

/// The user containerd resolved for the fixtures, resolved by berth in the same image's
/// `/etc/passwd` and `/etc/group` (copied into testdata).
fn busybox_user(security: &SecuritySpec, image_user: &str) -> ResolvedUser {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    std::fs::write(
        root.path().join("etc/passwd"),
        include_str!("testdata/busybox-passwd"),
    )
    .unwrap();
    std::fs::write(
        root.path().join("etc/group"),
        include_str!("testdata/busybox-group"),
    )
    .unwrap();
    crate::user::resolve_user(root.path(), security, image_user).unwrap()
}

struct Case {
    container: ContainerSpec,
    image: ImageDefaults,
    pod: PodContext,
    user: ResolvedUser,
    volumes: Vec<(String, PathBuf)>,
    node: NodeFacts,
}

impl Case {
    fn new(container: ContainerSpec) -> Self {
        let image = busybox();
        Case {
            user: busybox_user(&container.security, &image.user),
            container,
            image,
            pod: pod(),
            volumes: Vec::new(),
            node: node(),
        }
    }

    fn input(&self) -> SpecInput<'_> {
        SpecInput {
            container: &self.container,
            image: &self.image,
            pod: &self.pod,
            user: &self.user,
            rootfs: "/var/lib/berth/containers/c1/rootfs".into(),
            volumes: self.volumes.clone(),
            node: &self.node,
        }
    }

    fn build(&self) -> Spec {
        build_spec(&self.input()).unwrap()
    }

    fn json(&self) -> Value {
        serde_json::to_value(self.build()).unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// Comparison with containerd's output.

fn fixture(name: &str) -> Value {
    let text = match name {
        "plain" => include_str!("testdata/containerd-plain.json"),
        "envargs" => include_str!("testdata/containerd-envargs.json"),
        "cmd" => include_str!("testdata/containerd-cmd.json"),
        "mounts" => include_str!("testdata/containerd-mounts.json"),
        "res" => include_str!("testdata/containerd-res.json"),
        "tty" => include_str!("testdata/containerd-tty.json"),
        "priv" => include_str!("testdata/containerd-priv.json"),
        "hostns" => include_str!("testdata/containerd-hostns.json"),
        other => panic!("no fixture {other}"),
    };
    serde_json::from_str(text).unwrap()
}

/// Rewrites what is inherent to berth (or to the box) on both sides so the rest compares
/// field by field: annotations (not emitted), the rootfs path (containerd's is relative to
/// its bundle), namespace paths (pinned files vs the pause container's /proc/<pid>/ns), the
/// cgroups path (the caller's choice) and the sources of the pod's files and /dev/shm
/// (containerd's sandbox dirs vs berth's pod dir). Capability lists become sorted (oci-spec
/// keeps them as sets).
fn normalize(v: &mut Value) {
    let obj = v.as_object_mut().unwrap();
    obj.remove("annotations");
    obj["root"]["path"] = json!("ROOTFS");
    if let Some(nss) = obj["linux"]["namespaces"].as_array_mut() {
        for ns in nss {
            if ns.get("path").is_some() {
                ns["path"] = json!("JOINED");
            }
        }
    }
    obj["linux"].as_object_mut().unwrap().remove("cgroupsPath");
    for m in obj["mounts"].as_array_mut().unwrap() {
        let src = m["source"].as_str().unwrap_or_default();
        if src.contains("/io.containerd.grpc.v1.cri/sandboxes/")
            || src.starts_with("/run/berth/pods/")
        {
            m["source"] = json!(format!("POD:{}", m["destination"].as_str().unwrap()));
        }
    }
    if let Some(caps) = obj["process"]["capabilities"].as_object_mut() {
        for set in caps.values_mut() {
            let mut names: Vec<String> = set
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().to_string())
                .collect();
            names.sort();
            *set = json!(names);
        }
    }
}

/// The request's containerd answer, with the differences berth makes on purpose applied by
/// the caller, equals berth's spec, seccomp aside (compared by [`assert_seccomp_like`]).
fn assert_like_containerd(name: &str, case: &Case, patch: impl FnOnce(&mut Value)) {
    let mut ours = case.json();
    let mut theirs = fixture(name);
    patch(&mut theirs);
    normalize(&mut ours);
    normalize(&mut theirs);
    let our_seccomp = ours["linux"].as_object_mut().unwrap().remove("seccomp");
    let their_seccomp = theirs["linux"].as_object_mut().unwrap().remove("seccomp");
    assert_eq!(
        our_seccomp.is_some(),
        their_seccomp.is_some(),
        "{name}: seccomp presence"
    );
    if let (Some(o), Some(t)) = (our_seccomp, their_seccomp) {
        assert_seccomp_like(&o, &t);
    }
    if ours != theirs {
        panic!(
            "{name}: berth and containerd differ\n--- berth\n{}\n--- containerd\n{}",
            serde_json::to_string_pretty(&ours).unwrap(),
            serde_json::to_string_pretty(&theirs).unwrap()
        );
    }
}

/// berth's profile is containerd 2.3's, the fixtures' containerd 1.6's: the same shape and
/// capability-gated rules; since 1.6 io_uring left the allow list and socket(2) got a rule of
/// its own (no AF_VSOCK).
fn assert_seccomp_like(ours: &Value, theirs: &Value) {
    assert_eq!(ours["defaultAction"], theirs["defaultAction"]);
    assert_eq!(ours["architectures"], theirs["architectures"]);
    let rules = |v: &Value| v["syscalls"].as_array().unwrap().clone();
    let allowed: Vec<String> = rules(ours)
        .iter()
        .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
        .flat_map(|r| r["names"].as_array().unwrap().clone())
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    for rule in rules(theirs) {
        let names = rule["names"].as_array().unwrap();
        if rule.get("args").is_some() || rule["action"] != "SCMP_ACT_ALLOW" {
            // Conditional rules (personality, clone, clone3) are there as they were.
            let mut rule = rule.clone();
            rule.as_object_mut().unwrap().remove("args");
            assert!(
                rules(ours).iter().any(|r| r["names"] == rule["names"]
                    && r["action"] == rule["action"]
                    && r.get("errnoRet") == rule.get("errnoRet")),
                "containerd's rule {rule} is missing"
            );
            continue;
        }
        for n in names {
            let n = n.as_str().unwrap();
            if n.starts_with("io_uring") || n == "socket" {
                continue;
            }
            assert!(allowed.iter().any(|a| a == n), "{n} is no longer allowed");
        }
    }
}

/// Drops the namespaces containerd joins through a host-namespace pause container; berth
/// leaves host namespaces out.
fn drop_host_namespaces(v: &mut Value) {
    v["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|ns| ns["type"] == "mount");
}

#[test]
fn plain_container_matches_containerd() {
    let case = Case::new(ContainerSpec::default());
    // crictl sends no masked paths and containerd then masks nothing; so does berth.
    assert_like_containerd("plain", &case, |_| {});
}

#[test]
fn env_args_workdir_and_user_match_containerd() {
    let case = Case::new(ContainerSpec {
        args: vec!["sleep".into(), "3600".into()],
        working_dir: "/tmp/work".into(),
        env: vec![
            ("FOO".into(), "bar".into()),
            ("PATH".into(), "/custom/bin".into()),
            ("FOO".into(), "baz".into()),
            ("EMPTY".into(), String::new()),
        ],
        security: SecuritySpec {
            run_as_user: Some(1000),
            supplemental_groups: vec![10, 2000],
            ..Default::default()
        },
        ..Default::default()
    });
    assert_like_containerd("envargs", &case, |v| {
        // containerd appends both FOO=bar and FOO=baz (and libc's getenv finds bar); berth
        // keeps the later one in the earlier's place.
        let env = v["process"]["env"].as_array_mut().unwrap();
        assert_eq!(env[2], "FOO=bar");
        env.remove(2);
    });
}

#[test]
fn command_username_caps_and_runtime_default_seccomp_match_containerd() {
    let case = Case::new(ContainerSpec {
        command: vec!["/bin/sh".into(), "-c".into()],
        args: vec!["echo hi".into()],
        security: SecuritySpec {
            run_as_username: "nobody".into(),
            no_new_privs: true,
            add_capabilities: vec!["NET_ADMIN".into(), "sys_time".into()],
            drop_capabilities: vec!["CHOWN".into(), "KILL".into()],
            seccomp: Seccomp::RuntimeDefault,
            ..Default::default()
        },
        ..Default::default()
    });
    assert_like_containerd("cmd", &case, |_| {});
}

#[test]
fn readonly_rootfs_mounts_and_propagation_match_containerd() {
    let host = |p: &str| PathBuf::from(format!("/var/tmp/berth-spec-bench/host/{p}"));
    let case = Case::new(ContainerSpec {
        mounts: vec![
            MountSpec {
                container_path: "/data/ro".into(),
                host_path: host("ro"),
                readonly: true,
                recursive_read_only: false,
                propagation: Propagation::Private,
            },
            MountSpec {
                container_path: "/data/rw".into(),
                host_path: host("rw"),
                readonly: false,
                recursive_read_only: false,
                propagation: Propagation::Private,
            },
            MountSpec {
                container_path: "/a/b/c/slave".into(),
                host_path: host("prop/slave"),
                readonly: false,
                recursive_read_only: false,
                propagation: Propagation::HostToContainer,
            },
            MountSpec {
                container_path: "/shared".into(),
                host_path: host("prop/shared"),
                readonly: false,
                recursive_read_only: false,
                propagation: Propagation::Bidirectional,
            },
            MountSpec {
                container_path: "/etc/resolv.conf".into(),
                host_path: "/etc/resolv.conf".into(),
                readonly: true,
                recursive_read_only: false,
                propagation: Propagation::Private,
            },
        ],
        security: SecuritySpec {
            readonly_rootfs: true,
            masked_paths: vec!["/proc/kcore".into(), "/proc/keys".into()],
            readonly_paths: vec!["/proc/sys".into()],
            add_capabilities: vec!["ALL".into()],
            drop_capabilities: vec!["SYS_ADMIN".into()],
            seccomp: Seccomp::Unconfined,
            ..Default::default()
        },
        ..Default::default()
    });
    assert_like_containerd("mounts", &case, |_| {});
}

#[test]
fn resources_and_oom_clamp_match_containerd() {
    let case = Case::new(ContainerSpec {
        resources: Some(ResourcesSpec {
            cpu_period: Some(100_000),
            cpu_quota: Some(50_000),
            cpu_shares: Some(512),
            memory_limit_in_bytes: Some(64 << 20),
            oom_score_adj: Some(-999),
            cpuset_cpus: "0".into(),
            cpuset_mems: "0".into(),
            unified: [("memory.high".to_string(), "60000000".to_string())].into(),
            ..Default::default()
        }),
        security: SecuritySpec {
            drop_capabilities: vec!["ALL".into()],
            add_capabilities: vec!["NET_BIND_SERVICE".into()],
            ..Default::default()
        },
        ..Default::default()
    });
    assert_like_containerd("res", &case, |_| {});
}

#[test]
fn tty_device_and_swap_match_containerd() {
    let case = Case::new(ContainerSpec {
        tty: true,
        stdin: true,
        devices: vec![DeviceSpec {
            container_path: "/dev/xnull".into(),
            host_path: "/dev/null".into(),
            permissions: "rw".into(),
            nodes: vec![DeviceNode {
                path: "/dev/xnull".into(),
                kind: DeviceKind::Char,
                major: 1,
                minor: 3,
                file_mode: 0o666,
                uid: 0,
                gid: 0,
            }],
        }],
        resources: Some(ResourcesSpec {
            memory_limit_in_bytes: Some(32 << 20),
            memory_swap_limit_in_bytes: Some(64 << 20),
            oom_score_adj: Some(100),
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_like_containerd("tty", &case, |_| {});
}

/// The privileged fixture's host devices, as the caller would pass them.
fn fixture_host_devices() -> Vec<DeviceNode> {
    fixture("priv")["linux"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| DeviceNode {
            path: d["path"].as_str().unwrap().into(),
            kind: match d["type"].as_str().unwrap() {
                "c" => DeviceKind::Char,
                "b" => DeviceKind::Block,
                _ => DeviceKind::Fifo,
            },
            major: d["major"].as_i64().unwrap(),
            minor: d["minor"].as_i64().unwrap(),
            file_mode: d["fileMode"].as_u64().unwrap() as u32,
            uid: d["uid"].as_u64().unwrap() as u32,
            gid: d["gid"].as_u64().unwrap() as u32,
        })
        .collect()
}

#[test]
fn privileged_host_namespace_container_matches_containerd() {
    let mut case = Case {
        pod: host_pod(),
        ..Case::new(ContainerSpec {
            security: SecuritySpec {
                privileged: true,
                masked_paths: vec!["/proc/kcore".into()],
                readonly_paths: vec!["/proc/sys".into()],
                seccomp: Seccomp::RuntimeDefault,
                drop_capabilities: vec!["CHOWN".into()],
                ..Default::default()
            },
            ..Default::default()
        })
    };
    case.node.host_devices = fixture_host_devices();
    assert!(case.node.host_devices.len() > 50);
    assert_like_containerd("priv", &case, drop_host_namespaces);
}

#[test]
fn host_namespace_container_matches_containerd() {
    let case = Case {
        pod: host_pod(),
        ..Case::new(ContainerSpec::default())
    };
    assert_like_containerd("hostns", &case, drop_host_namespaces);
}

// ---------------------------------------------------------------------------------------------
// process_args

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn image_with(entrypoint: &[&str], cmd: &[&str]) -> ImageDefaults {
    ImageDefaults {
        entrypoint: strings(entrypoint),
        cmd: strings(cmd),
        ..Default::default()
    }
}

#[test]
fn neither_command_nor_args_runs_entrypoint_and_cmd() {
    let image = image_with(&["/entry", "-x"], &["serve"]);
    assert_eq!(
        process_args(&[], &[], &image).unwrap(),
        strings(&["/entry", "-x", "serve"])
    );
}

#[test]
fn args_alone_replace_cmd() {
    let image = image_with(&["/entry"], &["serve"]);
    assert_eq!(
        process_args(&[], &strings(&["run", "fast"]), &image).unwrap(),
        strings(&["/entry", "run", "fast"])
    );
}

#[test]
fn command_replaces_entrypoint_and_drops_cmd() {
    let image = image_with(&["/entry"], &["serve"]);
    assert_eq!(
        process_args(&strings(&["/bin/true"]), &[], &image).unwrap(),
        strings(&["/bin/true"])
    );
}

#[test]
fn command_and_args_replace_both() {
    let image = image_with(&["/entry"], &["serve"]);
    assert_eq!(
        process_args(&strings(&["/bin/sh", "-c"]), &strings(&["echo hi"]), &image).unwrap(),
        strings(&["/bin/sh", "-c", "echo hi"])
    );
}

#[test]
fn an_empty_entrypoint_string_counts_as_none() {
    let image = image_with(&[""], &["sh"]);
    assert_eq!(process_args(&[], &[], &image).unwrap(), strings(&["sh"]));
}

#[test]
fn nothing_to_run_is_refused() {
    let err = process_args(&[], &[], &ImageDefaults::default()).unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument { field, .. } if field == "command/args"));
    assert_eq!(
        berth_core::HasKind::kind(&err),
        berth_core::ErrorKind::InvalidArgument
    );
}

// ---------------------------------------------------------------------------------------------
// merge_env

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn request_env_overrides_image_env_in_place() {
    let env = merge_env(
        &strings(&["PATH=/img/bin", "A=1", "B=2"]),
        &pairs(&[("A", "x"), ("C", "3")]),
    );
    assert_eq!(env, strings(&["PATH=/img/bin", "A=x", "B=2", "C=3"]));
}

#[test]
fn the_image_path_replaces_the_default_and_the_default_fills_in() {
    assert_eq!(
        merge_env(&strings(&["X=1", "PATH=/img/bin"]), &[]),
        strings(&["PATH=/img/bin", "X=1"])
    );
    assert_eq!(
        merge_env(&strings(&["X=1"]), &[]),
        strings(&[DEFAULT_PATH_ENV, "X=1"])
    );
    assert_eq!(
        merge_env(&strings(&["PATH=/img/bin"]), &pairs(&[("PATH", "/req")])),
        strings(&["PATH=/req"])
    );
}

#[test]
fn duplicate_request_keys_keep_the_last_value_at_the_first_place() {
    assert_eq!(
        merge_env(
            &[],
            &pairs(&[("A", "1"), ("B", "2"), ("A", "3"), ("E", "")])
        ),
        strings(&[DEFAULT_PATH_ENV, "A=3", "B=2", "E="])
    );
}

#[test]
fn an_image_entry_without_equals_unsets_the_key() {
    assert_eq!(
        merge_env(&strings(&["A=1", "A", "B=2"]), &pairs(&[("A", "back")])),
        strings(&[DEFAULT_PATH_ENV, "B=2", "A=back"])
    );
}

#[test]
fn tty_and_hostname_take_containerds_places_and_can_be_overridden() {
    let mut case = Case::new(ContainerSpec {
        tty: true,
        env: pairs(&[("TERM", "vt100")]),
        ..Default::default()
    });
    case.image.env = strings(&["PATH=/img", "HOSTNAME=from-image"]);
    let spec = case.build();
    assert_eq!(
        spec.process().as_ref().unwrap().env().as_ref().unwrap(),
        &strings(&["PATH=/img", "TERM=vt100", "HOSTNAME=from-image"])
    );
}

#[test]
fn a_pod_without_hostname_gets_the_nodes() {
    let mut case = Case::new(ContainerSpec::default());
    case.pod.hostname.clear();
    let env = case.json()["process"]["env"].clone();
    assert_eq!(env, json!([DEFAULT_PATH_ENV, "HOSTNAME=vm"]));
}

#[test]
fn cwd_falls_back_from_request_to_image_to_root() {
    let mut case = Case::new(ContainerSpec::default());
    case.image.working_dir = "/srv".into();
    assert_eq!(case.json()["process"]["cwd"], "/srv");
    case.container.working_dir = "/work".into();
    assert_eq!(case.json()["process"]["cwd"], "/work");
    case.container.working_dir.clear();
    case.image.working_dir.clear();
    assert_eq!(case.json()["process"]["cwd"], "/");
}

// ---------------------------------------------------------------------------------------------
// Capabilities

fn caps_of(case: &Case) -> Value {
    let mut v = case.json();
    normalize(&mut v);
    v["process"]["capabilities"].clone()
}

fn sorted(names: &[&str]) -> Value {
    let mut v = strings(names);
    v.sort();
    json!(v)
}

fn with_security(security: SecuritySpec) -> Case {
    Case::new(ContainerSpec {
        security,
        ..Default::default()
    })
}

const DEFAULT_CAP_NAMES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

#[test]
fn default_capabilities_leave_inheritable_and_ambient_empty() {
    let caps = caps_of(&with_security(SecuritySpec::default()));
    for set in ["bounding", "effective", "permitted"] {
        assert_eq!(caps[set], sorted(&DEFAULT_CAP_NAMES), "{set}");
    }
    // CVE-2022-24769: no inheritable set by default.
    assert!(caps.get("inheritable").is_none(), "{caps}");
    assert!(caps.get("ambient").is_none(), "{caps}");
}

#[test]
fn add_and_drop_take_either_spelling() {
    let caps = caps_of(&with_security(SecuritySpec {
        add_capabilities: vec!["CAP_SYS_PTRACE".into(), "net_admin".into()],
        drop_capabilities: vec!["cap_mknod".into(), "NET_RAW".into()],
        ..Default::default()
    }));
    let bounding: Vec<&str> = caps["bounding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(bounding.contains(&"CAP_SYS_PTRACE") && bounding.contains(&"CAP_NET_ADMIN"));
    assert!(!bounding.contains(&"CAP_MKNOD") && !bounding.contains(&"CAP_NET_RAW"));
    assert_eq!(caps["bounding"], caps["effective"]);
    assert_eq!(caps["bounding"], caps["permitted"]);
    assert!(caps.get("inheritable").is_none());
}

#[test]
fn add_all_gives_the_nodes_capabilities_minus_drops() {
    let caps = caps_of(&with_security(SecuritySpec {
        add_capabilities: vec!["all".into()],
        drop_capabilities: vec!["SYS_ADMIN".into()],
        ..Default::default()
    }));
    let mut expected = node_caps();
    expected.retain(|c| c != "CAP_SYS_ADMIN");
    expected.sort();
    assert_eq!(caps["bounding"], json!(expected));
    // The node (the fixture box) has no CAP_SYS_RESOURCE, so neither does the container.
    assert!(!expected.iter().any(|c| c == "CAP_SYS_RESOURCE"));
}

#[test]
fn drop_all_then_add_keeps_only_the_added() {
    let caps = caps_of(&with_security(SecuritySpec {
        drop_capabilities: vec!["ALL".into()],
        add_capabilities: vec!["NET_BIND_SERVICE".into()],
        ..Default::default()
    }));
    assert_eq!(caps["bounding"], json!(["CAP_NET_BIND_SERVICE"]));
    assert_eq!(caps["permitted"], json!(["CAP_NET_BIND_SERVICE"]));
}

#[test]
fn drop_all_alone_leaves_every_set_out() {
    let caps = caps_of(&with_security(SecuritySpec {
        drop_capabilities: vec!["ALL".into()],
        ..Default::default()
    }));
    assert_eq!(caps, json!({}));
}

#[test]
fn ambient_capabilities_are_permitted_and_inheritable_too() {
    let caps = caps_of(&with_security(SecuritySpec {
        drop_capabilities: vec!["ALL".into()],
        add_ambient_capabilities: vec!["NET_BIND_SERVICE".into()],
        ..Default::default()
    }));
    for set in [
        "bounding",
        "effective",
        "permitted",
        "inheritable",
        "ambient",
    ] {
        assert_eq!(caps[set], json!(["CAP_NET_BIND_SERVICE"]), "{set}");
    }
}

#[test]
fn unknown_capability_names_are_ignored_like_runc_does() {
    let caps = caps_of(&with_security(SecuritySpec {
        add_capabilities: vec!["NOT_A_CAP".into()],
        ..Default::default()
    }));
    assert_eq!(caps["bounding"], sorted(&DEFAULT_CAP_NAMES));
}

#[test]
fn privileged_gets_every_node_capability_whatever_is_dropped() {
    let caps = caps_of(&with_security(SecuritySpec {
        privileged: true,
        drop_capabilities: vec!["ALL".into()],
        ..Default::default()
    }));
    let mut expected = node_caps();
    expected.sort();
    assert_eq!(caps["bounding"], json!(expected));
    // From the node, never a built-in list.
    let mut case = with_security(SecuritySpec {
        privileged: true,
        ..Default::default()
    });
    case.node.capabilities = strings(&["CAP_CHOWN", "CAP_KILL"]);
    assert_eq!(caps_of(&case)["bounding"], json!(["CAP_CHOWN", "CAP_KILL"]));
}

// ---------------------------------------------------------------------------------------------
// oom_score_adj

fn oom_of(adj: Option<i64>, floor: Option<i64>) -> Result<Value> {
    let mut case = Case::new(ContainerSpec {
        resources: Some(ResourcesSpec {
            oom_score_adj: adj,
            ..Default::default()
        }),
        ..Default::default()
    });
    case.node.oom_score_adj_floor = floor;
    build_spec(&case.input())
        .map(|s| serde_json::to_value(s).unwrap()["process"]["oomScoreAdj"].clone())
}

#[test]
fn oom_score_adj_below_the_floor_is_raised_to_it() {
    assert_eq!(oom_of(Some(-998), Some(-500)).unwrap(), json!(-500));
    assert_eq!(oom_of(Some(100), Some(-500)).unwrap(), json!(100));
    assert_eq!(oom_of(Some(-998), None).unwrap(), json!(-998));
    // Resources without a score: 0, as containerd's GetOomScoreAdj() gives.
    assert_eq!(oom_of(None, None).unwrap(), json!(0));
}

#[test]
fn oom_score_adj_is_absent_without_resources() {
    let case = Case::new(ContainerSpec::default());
    assert!(case.json()["process"].get("oomScoreAdj").is_none());
}

#[test]
fn oom_score_adj_out_of_range_is_refused() {
    let err = oom_of(Some(1001), None).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument { field, .. } if field == "linux.resources.oom_score_adj")
    );
}

#[test]
fn no_rlimits_are_set() {
    assert!(Case::new(ContainerSpec::default()).json()["process"]
        .get("rlimits")
        .is_none());
}

// ---------------------------------------------------------------------------------------------
// Masked and read-only paths

/// kubelet's lists for `procMount: Default` (and containerd's `populateDefaultUnixSpec`).
const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

#[test]
fn masked_and_readonly_paths_are_exactly_the_requests() {
    let v = with_security(SecuritySpec::default()).json();
    assert!(v["linux"].get("maskedPaths").is_none());
    assert!(v["linux"].get("readonlyPaths").is_none());
    let v = with_security(SecuritySpec {
        masked_paths: strings(&DEFAULT_MASKED_PATHS),
        readonly_paths: strings(&DEFAULT_READONLY_PATHS),
        ..Default::default()
    })
    .json();
    assert_eq!(v["linux"]["maskedPaths"], json!(DEFAULT_MASKED_PATHS));
    assert_eq!(v["linux"]["readonlyPaths"], json!(DEFAULT_READONLY_PATHS));
}

#[test]
fn requested_masked_and_readonly_paths_replace_the_defaults() {
    let v = with_security(SecuritySpec {
        masked_paths: strings(&["/proc/a"]),
        readonly_paths: strings(&["/proc/b"]),
        ..Default::default()
    })
    .json();
    assert_eq!(v["linux"]["maskedPaths"], json!(["/proc/a"]));
    assert_eq!(v["linux"]["readonlyPaths"], json!(["/proc/b"]));
}

#[test]
fn privileged_has_no_masked_or_readonly_paths() {
    let v = with_security(SecuritySpec {
        privileged: true,
        masked_paths: strings(&["/proc/a"]),
        ..Default::default()
    })
    .json();
    assert!(v["linux"].get("maskedPaths").is_none());
    assert!(v["linux"].get("readonlyPaths").is_none());
}

// ---------------------------------------------------------------------------------------------
// Seccomp

fn seccomp_of(security: SecuritySpec) -> Result<Value> {
    build_spec(&with_security(security).input())
        .map(|s| serde_json::to_value(s).unwrap()["linux"]["seccomp"].clone())
}

fn rule_names(profile: &Value) -> Vec<String> {
    profile["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["names"].as_array().unwrap().clone())
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn runtime_default_is_containerds_allow_list() {
    let p = seccomp_of(SecuritySpec {
        seccomp: Seccomp::RuntimeDefault,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
    if cfg!(target_arch = "x86_64") {
        assert_eq!(
            p["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
    }
    let names = rule_names(&p);
    for allowed in [
        "read",
        "openat2",
        "epoll_pwait2",
        "chroot",
        "socket",
        "personality",
    ] {
        assert!(names.iter().any(|n| n == allowed), "{allowed}");
    }
    // Without CAP_SYS_ADMIN: no mount or unshare, clone only without namespace flags, and
    // clone3 fails with ENOSYS so libcs fall back to clone.
    for refused in [
        "mount",
        "unshare",
        "setns",
        "bpf",
        "kexec_load",
        "io_uring_setup",
    ] {
        assert!(!names.iter().any(|n| n == refused), "{refused}");
    }
    let rules = p["syscalls"].as_array().unwrap();
    let clone = rules
        .iter()
        .find(|r| r["names"] == json!(["clone"]))
        .unwrap();
    assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
    assert_eq!(clone["args"][0]["value"], json!(0x7E02_0000u64));
    let clone3 = rules
        .iter()
        .find(|r| r["names"] == json!(["clone3"]))
        .unwrap();
    assert_eq!(clone3["action"], "SCMP_ACT_ERRNO");
    assert_eq!(clone3["errnoRet"], json!(38));
    let socket = rules
        .iter()
        .find(|r| r["names"] == json!(["socket"]))
        .unwrap();
    assert_eq!(
        socket["args"],
        json!([{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}])
    );
}

#[test]
fn runtime_default_follows_the_bounding_set() {
    let p = seccomp_of(SecuritySpec {
        seccomp: Seccomp::RuntimeDefault,
        add_capabilities: strings(&["SYS_ADMIN", "SYS_PTRACE"]),
        drop_capabilities: strings(&["SYS_CHROOT"]),
        ..Default::default()
    })
    .unwrap();
    let names = rule_names(&p);
    for n in ["mount", "unshare", "clone3", "kcmp", "pidfd_getfd"] {
        assert!(names.iter().any(|x| x == n), "{n}");
    }
    assert!(!names.iter().any(|n| n == "chroot"));
    let rules = p["syscalls"].as_array().unwrap();
    assert!(!rules.iter().any(|r| r["names"] == json!(["clone"])));
}

#[test]
fn unconfined_and_privileged_have_no_seccomp() {
    assert_eq!(seccomp_of(SecuritySpec::default()).unwrap(), Value::Null);
    assert_eq!(
        seccomp_of(SecuritySpec {
            privileged: true,
            seccomp: Seccomp::RuntimeDefault,
            ..Default::default()
        })
        .unwrap(),
        Value::Null
    );
}

#[test]
fn localhost_profile_is_parsed() {
    let profile = r#"{
        "defaultAction": "SCMP_ACT_LOG",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    }"#;
    let p = seccomp_of(SecuritySpec {
        seccomp: Seccomp::Localhost {
            path: "/var/lib/kubelet/seccomp/log.json".into(),
            profile: profile.into(),
        },
        ..Default::default()
    })
    .unwrap();
    assert_eq!(p["defaultAction"], "SCMP_ACT_LOG");
    assert_eq!(p["syscalls"][0]["names"], json!(["mkdir"]));
    assert_eq!(p["syscalls"][0]["errnoRet"], json!(1));
}

#[test]
fn localhost_profile_that_is_not_json_is_refused() {
    let err = seccomp_of(SecuritySpec {
        seccomp: Seccomp::Localhost {
            path: "/var/lib/kubelet/seccomp/bad.json".into(),
            profile: "{not json".into(),
        },
        ..Default::default()
    })
    .unwrap_err();
    match &err {
        Error::InvalidArgument { field, reason } => {
            assert_eq!(field, "security_context.seccomp");
            assert!(reason.contains("bad.json"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Mounts

fn destinations(v: &Value) -> Vec<String> {
    v["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["destination"].as_str().unwrap().to_string())
        .collect()
}

fn mount_at<'a>(v: &'a Value, dst: &str) -> &'a Value {
    v["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == dst)
        .unwrap_or_else(|| panic!("no mount at {dst}"))
}

fn bind(container_path: &str, host_path: &str) -> MountSpec {
    MountSpec {
        container_path: container_path.into(),
        host_path: host_path.into(),
        readonly: false,
        recursive_read_only: false,
        propagation: Propagation::Private,
    }
}

#[test]
fn a_request_mount_replaces_the_default_at_its_path() {
    let case = Case::new(ContainerSpec {
        mounts: vec![
            bind("/dev/shm", "/big/shm"),
            bind("/etc/hosts/", "/my/hosts"),
        ],
        ..Default::default()
    });
    let v = case.json();
    assert_eq!(mount_at(&v, "/dev/shm")["source"], "/big/shm");
    assert_eq!(mount_at(&v, "/etc/hosts/")["source"], "/my/hosts");
    let dsts = destinations(&v);
    assert_eq!(dsts.iter().filter(|d| d.starts_with("/dev/shm")).count(), 1);
    assert!(!dsts.iter().any(|d| d == "/etc/hosts"));
}

#[test]
fn a_request_dev_mount_drops_everything_under_dev() {
    let case = Case::new(ContainerSpec {
        mounts: vec![bind("/dev", "/hostdev")],
        ..Default::default()
    });
    let v = case.json();
    let dsts = destinations(&v);
    // The defaults under /dev go; berth's own /dev/shm bind stays, as containerd's does.
    assert!(
        !dsts.iter().any(|d| d == "/dev/pts" || d == "/dev/mqueue"),
        "{dsts:?}"
    );
    assert_eq!(mount_at(&v, "/dev")["source"], "/hostdev");
    assert_eq!(mount_at(&v, DEV_SHM)["type"], "bind");
    assert_eq!(dsts.iter().filter(|d| *d == "/dev").count(), 1);
}

#[test]
fn pod_files_follow_the_readonly_rootfs_and_shm_stays_writable() {
    let case = with_security(SecuritySpec {
        readonly_rootfs: true,
        ..Default::default()
    });
    let v = case.json();
    for f in [ETC_HOSTNAME, ETC_HOSTS, ETC_RESOLV_CONF] {
        assert_eq!(
            mount_at(&v, f)["options"],
            json!(["rbind", "rprivate", "ro"]),
            "{f}"
        );
    }
    assert_eq!(
        mount_at(&v, DEV_SHM)["options"],
        json!(["rbind", "rprivate", "rw"])
    );
    assert_eq!(v["root"]["readonly"], json!(true));
}

#[test]
fn a_pod_without_files_mounts_none() {
    let mut case = Case::new(ContainerSpec::default());
    case.pod.files = None;
    let dsts = destinations(&case.json());
    assert!(!dsts.iter().any(|d| d.starts_with("/etc/")), "{dsts:?}");
}

#[test]
fn image_volumes_are_private_rw_binds_unless_the_request_mounts_there() {
    let mut case = Case::new(ContainerSpec {
        mounts: vec![bind("/data", "/host/data")],
        ..Default::default()
    });
    case.volumes = vec![
        ("/data".into(), "/vols/1".into()),
        ("/var/cache/app/".into(), "/vols/2".into()),
    ];
    let v = case.json();
    assert_eq!(mount_at(&v, "/data")["source"], "/host/data");
    let vol = mount_at(&v, "/var/cache/app");
    assert_eq!(vol["source"], "/vols/2");
    assert_eq!(vol["type"], "bind");
    assert_eq!(vol["options"], json!(["rbind", "rprivate", "rw"]));
}

#[test]
fn binds_are_sorted_by_depth_keeping_request_order() {
    let case = Case::new(ContainerSpec {
        mounts: vec![
            bind("/a/b/c", "/h/1"),
            bind("/z", "/h/2"),
            bind("/a/b", "/h/3"),
            bind("/y", "/h/4"),
        ],
        ..Default::default()
    });
    let dsts = destinations(&case.json());
    let binds: Vec<&str> = dsts[6..].iter().map(String::as_str).collect();
    assert_eq!(
        binds,
        [
            "/z",
            "/y",
            "/a/b",
            ETC_HOSTNAME,
            ETC_HOSTS,
            ETC_RESOLV_CONF,
            DEV_SHM,
            "/a/b/c"
        ]
    );
}

#[test]
fn recursive_read_only_needs_readonly_and_private() {
    let mut m = bind("/ro", "/h");
    m.readonly = true;
    m.recursive_read_only = true;
    let case = Case::new(ContainerSpec {
        mounts: vec![m.clone()],
        ..Default::default()
    });
    assert_eq!(
        mount_at(&case.json(), "/ro")["options"],
        // runc 1.1 has no `rro`; berth makes the submounts read-only after `runc create`.
        json!(["rbind", "rprivate", "ro"])
    );

    m.propagation = Propagation::HostToContainer;
    let err = build_spec(
        &Case::new(ContainerSpec {
            mounts: vec![m.clone()],
            ..Default::default()
        })
        .input(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument { field, .. } if field == "mounts[0].recursive_read_only")
    );

    m.propagation = Propagation::Private;
    m.readonly = false;
    assert!(build_spec(
        &Case::new(ContainerSpec {
            mounts: vec![m],
            ..Default::default()
        })
        .input()
    )
    .is_err());
}

#[test]
fn privileged_makes_sysfs_and_cgroupfs_writable() {
    let v = with_security(SecuritySpec {
        privileged: true,
        ..Default::default()
    })
    .json();
    assert_eq!(
        mount_at(&v, "/sys")["options"],
        json!(["nosuid", "noexec", "nodev", "rw"])
    );
    assert_eq!(
        mount_at(&v, "/sys/fs/cgroup")["options"],
        json!(["nosuid", "noexec", "nodev", "relatime", "rw"])
    );
}

#[test]
fn without_cgroupns_the_cgroup_mount_keeps_the_hosts_superblock_options() {
    let mut case = with_security(SecuritySpec {
        privileged: true,
        ..Default::default()
    });
    case.node.cgroup_v2 = true;
    case.node.cgroup2_host_options = strings(&["nsdelegate", "memory_recursiveprot", "rw"]);
    assert_eq!(
        mount_at(&case.json(), "/sys/fs/cgroup")["options"],
        json!([
            "nosuid",
            "noexec",
            "nodev",
            "relatime",
            "rw",
            "nsdelegate",
            "memory_recursiveprot"
        ])
    );
    // With its own cgroup namespace the container has its own view: nothing to carry over.
    case.container.security.privileged = false;
    assert_eq!(
        mount_at(&case.json(), "/sys/fs/cgroup")["options"],
        json!(["nosuid", "noexec", "nodev", "relatime", "ro"])
    );
}

// ---------------------------------------------------------------------------------------------
// Namespaces

fn namespaces_of(case: &Case) -> Value {
    case.json()["linux"]["namespaces"].clone()
}

#[test]
fn pod_namespaces_are_joined_by_path_in_containerds_order() {
    assert_eq!(
        namespaces_of(&Case::new(ContainerSpec::default())),
        json!([
            {"type": "pid", "path": "/proc/4242/ns/pid"},
            {"type": "ipc", "path": "/run/berth/ns/p1/ipc"},
            {"type": "uts", "path": "/run/berth/ns/p1/uts"},
            {"type": "mount"},
            {"type": "network", "path": "/run/berth/ns/p1/net"},
        ])
    );
}

#[test]
fn a_container_pid_namespace_is_new_and_host_ones_are_left_out() {
    let mut case = Case::new(ContainerSpec::default());
    case.pod.pid = PidNs::Container;
    case.pod.network = NsJoin::Host;
    assert_eq!(
        namespaces_of(&case),
        json!([
            {"type": "pid"},
            {"type": "ipc", "path": "/run/berth/ns/p1/ipc"},
            {"type": "uts", "path": "/run/berth/ns/p1/uts"},
            {"type": "mount"},
        ])
    );
}

#[test]
fn cgroup_v2_adds_a_cgroup_namespace_except_for_privileged() {
    let mut case = Case::new(ContainerSpec::default());
    case.node.cgroup_v2 = true;
    let nss = namespaces_of(&case);
    assert_eq!(
        nss.as_array().unwrap().last().unwrap(),
        &json!({"type": "cgroup"})
    );
    case.container.security.privileged = true;
    let nss = namespaces_of(&case);
    assert!(!nss
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["type"] == "cgroup"));
}

#[test]
fn no_user_namespace_hostname_or_sysctls() {
    let v = Case::new(ContainerSpec::default()).json();
    assert!(v.get("hostname").is_none());
    assert!(v["linux"].get("sysctl").is_none());
    assert!(!v["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["type"] == "user"));
}

#[test]
fn cgroups_path_is_the_pods_choice() {
    let mut case = Case::new(ContainerSpec::default());
    case.pod.cgroups_path = "/kubepods/burstable/podu1/c1".into();
    assert_eq!(
        case.json()["linux"]["cgroupsPath"],
        "/kubepods/burstable/podu1/c1"
    );
}

// ---------------------------------------------------------------------------------------------
// Resources and devices

#[test]
fn without_swap_control_swap_is_left_out() {
    let mut case = Case::new(ContainerSpec {
        resources: Some(ResourcesSpec {
            memory_limit_in_bytes: Some(1 << 20),
            memory_swap_limit_in_bytes: Some(2 << 20),
            ..Default::default()
        }),
        ..Default::default()
    });
    case.node.swap_controller = false;
    assert_eq!(
        case.json()["linux"]["resources"]["memory"],
        json!({"limit": 1 << 20})
    );
}

#[test]
fn hugepage_limits_need_the_hugetlb_controller() {
    let mut case = Case::new(ContainerSpec {
        resources: Some(ResourcesSpec {
            hugepage_limits: vec![("2MB".into(), 4 << 20)],
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_eq!(
        case.json()["linux"]["resources"]["hugepageLimits"],
        json!([{"pageSize": "2MB", "limit": 4 << 20}])
    );
    case.node.hugetlb_controller = false;
    assert!(case.json()["linux"]["resources"]
        .get("hugepageLimits")
        .is_none());
}

#[test]
fn device_permissions_must_be_rwm_letters() {
    let case = Case::new(ContainerSpec {
        devices: vec![DeviceSpec {
            container_path: "/dev/x".into(),
            host_path: "/dev/null".into(),
            permissions: "rwx".into(),
            nodes: Vec::new(),
        }],
        ..Default::default()
    });
    let err = build_spec(&case.input()).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument { field, .. } if field == "devices[0].permissions")
    );
}

#[test]
fn privileged_allows_every_device_and_gets_the_hosts() {
    let mut case = with_security(SecuritySpec {
        privileged: true,
        ..Default::default()
    });
    case.node.host_devices = vec![DeviceNode {
        path: "/dev/kvm".into(),
        kind: DeviceKind::Char,
        major: 10,
        minor: 232,
        file_mode: 0o660,
        uid: 0,
        gid: 108,
    }];
    let v = case.json();
    assert_eq!(
        v["linux"]["resources"]["devices"],
        json!([{"allow": true, "access": "rwm"}])
    );
    assert_eq!(v["linux"]["devices"][0]["path"], "/dev/kvm");
}

// ---------------------------------------------------------------------------------------------
// User

#[test]
fn additional_gids_include_the_primary_gid_sorted() {
    let mut case = Case::new(ContainerSpec::default());
    case.user = ResolvedUser {
        uid: 1000,
        gid: 1000,
        additional_gids: vec![4, 27],
        username: Some("app".into()),
    };
    assert_eq!(
        case.json()["process"]["user"],
        json!({"uid": 1000, "gid": 1000, "additionalGids": [4, 27, 1000]})
    );
}
