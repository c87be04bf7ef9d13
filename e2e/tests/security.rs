//! Security context, namespaces, mounts and devices end to end: each container shows from the
//! inside what its request asked for (`/proc/self/status`, `id`, mountinfo, `ls /dev`, a write
//! refused), and each refusal comes with its gRPC code and the CRI field it names. Real runc,
//! real kernel, against a real berthd with its own bridge, subnet and nftables table.
//! Run: `cargo test -p berth-e2e --test security -- --test-threads=1`.

use std::collections::HashMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_e2e::cri::runtime_service_client::RuntimeServiceClient;
use berth_e2e::cri::{self, ContainerConfig, PodSandboxConfig};
use berth_e2e::*;
use tonic::transport::Channel;
use tonic::Code;

const BRIDGE: &str = "be2es0";
const TABLE: &str = "berth_e2es";
const SUBNET: &str = "10.233.0.0/16";

/// Tests share the bridge and table names, so they take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// kubelet's masked and read-only paths for `procMount: Default`.
const KUBELET_MASKED: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const KUBELET_READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Bits of the default capability set (containerd's, Docker's, CRI-O's).
const DEFAULT_CAP_BITS: &[u32] = &[0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31];
const CAP_CHOWN: u32 = 0;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;

/// The daemon's guard ends whatever the test left in its pods' cgroups.
struct Env {
    d: Daemon,
    rt: RuntimeServiceClient<Channel>,
    img: Images,
    logs: tempfile::TempDir,
    _net: NetGuard,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

async fn start() -> Option<Env> {
    let img = prerequisites()?;
    let serial = SERIAL.lock().await;
    let net = NetGuard {
        bridge: BRIDGE,
        table: TABLE,
    };
    let d = Daemon::start(DaemonOpts {
        extra_config: format!(
            "\n[network]\nbridge = \"{BRIDGE}\"\nsubnet = \"{SUBNET}\"\nnft_table = \"{TABLE}\"\ncni_conf_dir = \"/nonexistent/berth-e2e-cni\"\n"
        ),
        log_level: "info,h2=warn".into(),
        ..Default::default()
    })
    .await
    .expect("berthd");
    let rt = d.runtime().await.expect("runtime client");
    let logs = tempfile::Builder::new()
        .prefix("berth-e2e-logs-")
        .tempdir_in("/var/tmp")
        .expect("log dir");
    let e = Env {
        d,
        rt,
        img,
        logs,
        _net: net,
        _serial: serial,
    };
    e.d.pull_ok(&e.img.get("BUSYBOX_REF")).await;
    Some(e)
}

/// Host-side mounts a test makes (shared and slave test mounts, tmpfs submounts) under one
/// temp dir, all detached when dropped, also when the test failed half-way.
struct HostDir(tempfile::TempDir);

impl HostDir {
    fn new() -> HostDir {
        HostDir(
            tempfile::Builder::new()
                .prefix("berth-e2e-sec-")
                .tempdir_in("/var/tmp")
                .expect("host dir"),
        )
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.path().join(rel)
    }

    /// A new directory, bind-mounted onto itself with the given propagation flags applied
    /// in order (`--make-shared`, `--make-slave`, …).
    fn mount_point(&self, rel: &str, source: Option<&Path>, flags: &[&str]) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(&p).unwrap();
        let src = source.unwrap_or(&p);
        run(
            "mount",
            &[
                "--bind",
                &src.display().to_string(),
                &p.display().to_string(),
            ],
        );
        for f in flags {
            run("mount", &[f, &p.display().to_string()]);
        }
        p
    }

    fn tmpfs(&self, at: &Path) {
        std::fs::create_dir_all(at).unwrap();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                "size=1m",
                "tmpfs",
                &at.display().to_string(),
            ],
        );
    }
}

impl Drop for HostDir {
    fn drop(&mut self) {
        unmount_under(self.0.path());
    }
}

fn run(cmd: &str, args: &[&str]) {
    let st = Command::new(cmd).args(args).status().expect(cmd);
    assert!(st.success(), "{cmd} {args:?}: {st}");
}

fn pod_config(name: &str, log_dir: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e-sec".into(),
            attempt: 0,
        }),
        hostname: name.chars().take(60).collect(),
        log_directory: log_dir.join(name).display().to_string(),
        labels: HashMap::from([("pod".to_string(), name.to_string())]),
        // As kubelet sends it for a pod without shareProcessNamespace (POD is proto3's 0).
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod_security(
    mut pc: PodSandboxConfig,
    edit: impl FnOnce(&mut cri::LinuxSandboxSecurityContext),
) -> PodSandboxConfig {
    let linux = pc.linux.get_or_insert_with(Default::default);
    edit(linux.security_context.get_or_insert_with(Default::default));
    pc
}

fn container(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(spec(image)),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        ..Default::default()
    }
}

fn with_security(
    mut c: ContainerConfig,
    edit: impl FnOnce(&mut cri::LinuxContainerSecurityContext),
) -> ContainerConfig {
    let linux = c.linux.get_or_insert_with(Default::default);
    edit(linux.security_context.get_or_insert_with(Default::default));
    c
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn bind(container_path: &str, host: &Path) -> cri::Mount {
    cri::Mount {
        container_path: container_path.into(),
        host_path: host.display().to_string(),
        ..Default::default()
    }
}

fn mask(bits: &[u32]) -> u64 {
    bits.iter().fold(0, |m, b| m | (1u64 << b))
}

/// A `/proc/<pid>/status` field, e.g. `CapEff` as a number (hex fields) or text.
fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
        .trim()
}

fn caps(status: &str, key: &str) -> u64 {
    u64::from_str_radix(status_field(status, key), 16).unwrap()
}

fn own_bounding_set() -> u64 {
    caps(
        &std::fs::read_to_string("/proc/self/status").unwrap(),
        "CapBnd",
    )
}

fn assert_refused(err: &tonic::Status, code: Code, fields: &[&str]) {
    assert_eq!(err.code(), code, "{}", err.message());
    for f in fields {
        assert!(
            err.message().contains(f),
            "{f} missing in: {}",
            err.message()
        );
    }
}

impl Env {
    fn bb(&self) -> String {
        self.img.get("BUSYBOX_REF")
    }

    async fn run_pod(&mut self, config: PodSandboxConfig) -> String {
        self.try_run_pod(config)
            .await
            .unwrap_or_else(|s| panic!("RunPodSandbox: {s:?}\n{}", self.d.log_tail(40)))
    }

    async fn try_run_pod(&mut self, config: PodSandboxConfig) -> Result<String, tonic::Status> {
        self.rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .map(|r| r.into_inner().pod_sandbox_id)
    }

    async fn pod(&mut self, name: &str) -> (String, PodSandboxConfig) {
        let pc = pod_config(name, self.logs.path());
        (self.run_pod(pc.clone()).await, pc)
    }

    async fn create(
        &mut self,
        pod: &str,
        pc: &PodSandboxConfig,
        config: ContainerConfig,
    ) -> Result<String, tonic::Status> {
        self.rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(config),
                sandbox_config: Some(pc.clone()),
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    async fn create_ok(&mut self, pod: &str, pc: &PodSandboxConfig, c: ContainerConfig) -> String {
        match self.create(pod, pc, c).await {
            Ok(id) => id,
            Err(s) => panic!(
                "CreateContainer: {:?} {}\n{}",
                s.code(),
                s.message(),
                self.d.log_tail(40)
            ),
        }
    }

    async fn run_ctr(&mut self, pod: &str, pc: &PodSandboxConfig, c: ContainerConfig) -> String {
        let id = self.create_ok(pod, pc, c).await;
        if let Err(s) = self
            .rt
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
        {
            panic!("StartContainer: {s:?}\n{}", self.d.log_tail(40));
        }
        id
    }

    /// Runs `sh -c script` in a container of `pod` to its end; returns its stdout.
    async fn output(&mut self, pod: &str, pc: &PodSandboxConfig, c: ContainerConfig) -> String {
        let name = c.metadata.as_ref().unwrap().name.clone();
        let id = self.run_ctr(pod, pc, c).await;
        self.wait_exit(&id).await;
        let log = PathBuf::from(&pc.log_directory).join(&name).join("0.log");
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let mut out = String::new();
        for line in text.lines() {
            let mut parts = line.splitn(4, ' ');
            let (_ts, stream, tag) = (parts.next(), parts.next(), parts.next());
            if stream == Some("stdout") {
                out.push_str(parts.next().unwrap_or_default());
                if tag == Some("F") {
                    out.push('\n');
                }
            }
        }
        out
    }

    async fn sh(&mut self, pod: &str, pc: &PodSandboxConfig, c: ContainerConfig) -> String {
        self.output(pod, pc, c).await
    }

    async fn wait_exit(&mut self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = self
                .rt
                .container_status(cri::ContainerStatusRequest {
                    container_id: id.into(),
                    verbose: false,
                })
                .await
                .expect("ContainerStatus")
                .into_inner()
                .status
                .expect("status");
            if st.state == cri::ContainerState::ContainerExited as i32 {
                return;
            }
            assert!(Instant::now() < deadline, "{id} still running");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn exec(&mut self, id: &str, script: &str) -> (i32, String, String) {
        let r = self
            .rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: strings(&["sh", "-c", script]),
                timeout: 10,
            })
            .await
            .expect("ExecSync")
            .into_inner();
        (
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        )
    }

    async fn exec_ok(&mut self, id: &str, script: &str) -> String {
        let (code, out, err) = self.exec(id, script).await;
        assert_eq!(code, 0, "{script}: {out}{err}");
        out
    }

    async fn remove_ctr(&mut self, id: &str) {
        self.rt
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .expect("RemoveContainer");
    }

    /// Rootfs mounts, bundles and records containers left behind.
    fn leftovers(&self) -> Vec<String> {
        settled(|| {
            let mut out: Vec<String> = mounts_under(&self.d.state.join("containers"))
                .iter()
                .map(|m| format!("mount {}", m.display()))
                .collect();
            for dir in [
                self.d.state.join("containers"),
                self.d.root.join("containers"),
                self.d.root.join("store/containers"),
            ] {
                out.extend(
                    dir_names(&dir)
                        .into_iter()
                        .map(|n| format!("{}/{n}", dir.display())),
                );
            }
            out
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Security context

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_users_and_no_new_privs_are_seen_in_proc_status() {
    let Some(mut e) = start().await else { return };
    let bb = e.bb();
    let (pod, pc) = e.pod("caps").await;
    let status = |name: &str| container(name, &bb, &["sh", "-c", "cat /proc/self/status; id"]);

    let out = e.sh(&pod, &pc, status("default")).await;
    assert_eq!(caps(&out, "CapEff"), mask(DEFAULT_CAP_BITS), "{out}");
    assert_eq!(caps(&out, "CapBnd"), mask(DEFAULT_CAP_BITS), "{out}");
    // Inheritable stays empty (CVE-2022-24769), no ambient set, no seccomp without a profile.
    assert_eq!(caps(&out, "CapInh"), 0, "{out}");
    assert_eq!(caps(&out, "CapAmb"), 0, "{out}");
    assert_eq!(status_field(&out, "NoNewPrivs"), "0");
    assert_eq!(status_field(&out, "Seccomp"), "0");
    assert!(out.contains("uid=0(root) gid=0(root)"), "{out}");

    let c = with_security(status("adddrop"), |s| {
        s.capabilities = Some(cri::Capability {
            add_capabilities: strings(&["NET_ADMIN"]),
            drop_capabilities: strings(&["CAP_CHOWN"]),
            ..Default::default()
        });
        s.no_new_privs = true;
    });
    let out = e.sh(&pod, &pc, c).await;
    let want = (mask(DEFAULT_CAP_BITS) | mask(&[CAP_NET_ADMIN])) & !mask(&[CAP_CHOWN]);
    assert_eq!(caps(&out, "CapEff"), want, "{out}");
    assert_eq!(status_field(&out, "NoNewPrivs"), "1");

    let c = with_security(status("dropall"), |s| {
        s.capabilities = Some(cri::Capability {
            drop_capabilities: strings(&["ALL"]),
            add_capabilities: strings(&["NET_RAW"]),
            ..Default::default()
        });
    });
    let out = e.sh(&pod, &pc, c).await;
    assert_eq!(caps(&out, "CapEff"), mask(&[CAP_NET_RAW]), "{out}");
    assert_eq!(caps(&out, "CapBnd"), mask(&[CAP_NET_RAW]), "{out}");

    // ALL is what berthd itself may hand out (root here lacks CAP_SYS_RESOURCE).
    let c = with_security(status("addall"), |s| {
        s.capabilities = Some(cri::Capability {
            add_capabilities: strings(&["ALL"]),
            ..Default::default()
        });
    });
    let out = e.sh(&pod, &pc, c).await;
    assert_eq!(caps(&out, "CapEff"), own_bounding_set(), "{out}");

    // An ambient capability survives the exec into a non-root user: effective for uid 1000.
    let c = with_security(status("ambient"), |s| {
        s.run_as_user = Some(cri::Int64Value { value: 1000 });
        s.run_as_group = Some(cri::Int64Value { value: 3000 });
        s.supplemental_groups = vec![4000];
        s.capabilities = Some(cri::Capability {
            add_ambient_capabilities: strings(&["NET_BIND_SERVICE"]),
            ..Default::default()
        });
    });
    let out = e.sh(&pod, &pc, c).await;
    assert_eq!(caps(&out, "CapAmb"), mask(&[CAP_NET_BIND_SERVICE]), "{out}");
    assert_eq!(caps(&out, "CapInh"), mask(&[CAP_NET_BIND_SERVICE]), "{out}");
    assert_eq!(caps(&out, "CapEff"), mask(&[CAP_NET_BIND_SERVICE]), "{out}");
    assert!(out.contains("uid=1000 gid=3000 groups=3000,4000"), "{out}");

    // Without ambient, a non-root user has no effective capabilities at all.
    let c = with_security(status("nonroot"), |s| {
        s.run_as_user = Some(cri::Int64Value { value: 1000 });
    });
    let out = e.sh(&pod, &pc, c).await;
    assert_eq!(caps(&out, "CapEff"), 0, "{out}");

    let c = with_security(status("badcap"), |s| {
        s.capabilities = Some(cri::Capability {
            add_capabilities: strings(&["CAP_FLY"]),
            ..Default::default()
        });
    });
    let err = e.create(&pod, &pc, c).await.unwrap_err();
    assert_refused(
        &err,
        Code::InvalidArgument,
        &["capabilities.add_capabilities", "CAP_FLY"],
    );
    let c = with_security(status("badambient"), |s| {
        s.capabilities = Some(cri::Capability {
            add_ambient_capabilities: strings(&["NOPE"]),
            ..Default::default()
        });
    });
    let err = e.create(&pod, &pc, c).await.unwrap_err();
    assert_refused(&err, Code::InvalidArgument, &["add_ambient_capabilities"]);
}

/// kubelet checks runAsNonRoot itself, against the uid (or name) ImageStatus reports: a named
/// image user cannot be verified and kubelet refuses the container, so the name must come
/// through as a name, not as uid 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_status_reports_the_user_kubelets_run_as_non_root_check_reads() {
    let Some(e) = start().await else { return };
    let entry = e.img.get("ENTRY_REF");
    e.d.pull_ok(&entry).await;
    let named =
        e.d.status(&entry)
            .await
            .expect("ImageStatus")
            .expect("image");
    assert_eq!(named.uid, None, "{named:?}");
    assert_eq!(named.username, "app");
    let root =
        e.d.status(&e.bb())
            .await
            .expect("ImageStatus")
            .expect("image");
    assert_eq!(root.uid.map(|u| u.value), Some(0), "{root:?}");
    assert!(root.username.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_runtime_default_localhost_and_deprecated_paths() {
    let Some(mut e) = start().await else { return };
    let bb = e.bb();
    let host = HostDir::new();
    let (pod, pc) = e.pod("seccomp").await;
    let profile = host.path("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
    )
    .unwrap();
    let script =
        "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; mkdir /tmp/d && echo mkdir-ok";
    let profile_type = |t: cri::security_profile::ProfileType, path: &str| cri::SecurityProfile {
        profile_type: t as i32,
        localhost_ref: path.into(),
    };
    use cri::security_profile::ProfileType;

    let c = with_security(container("rtdefault", &bb, &["sh", "-c", script]), |s| {
        s.seccomp = Some(profile_type(ProfileType::RuntimeDefault, ""));
    });
    let out = e.sh(&pod, &pc, c).await;
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("mkdir-ok"), "{out}");

    let c = with_security(container("local", &bb, &["sh", "-c", script]), |s| {
        s.seccomp = Some(profile_type(
            ProfileType::Localhost,
            &profile.display().to_string(),
        ));
    });
    let out = e.sh(&pod, &pc, c).await;
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(
        !out.contains("mkdir-ok"),
        "the profile's errno rule did not apply: {out}"
    );

    #[allow(deprecated)]
    let c = with_security(container("oldlocal", &bb, &["sh", "-c", script]), |s| {
        s.seccomp_profile_path = format!("localhost/{}", profile.display());
    });
    let out = e.sh(&pod, &pc, c).await;
    assert!(
        out.contains("Seccomp:\t2") && !out.contains("mkdir-ok"),
        "{out}"
    );
    #[allow(deprecated)]
    let c = with_security(container("olddefault", &bb, &["sh", "-c", script]), |s| {
        s.seccomp_profile_path = "runtime/default".into();
    });
    let out = e.sh(&pod, &pc, c).await;
    assert!(
        out.contains("Seccomp:\t2") && out.contains("mkdir-ok"),
        "{out}"
    );
    let c = with_security(container("unconfined", &bb, &["sh", "-c", script]), |s| {
        s.seccomp = Some(profile_type(ProfileType::Unconfined, ""));
    });
    let out = e.sh(&pod, &pc, c).await;
    assert!(out.contains("Seccomp:\t0"), "{out}");

    // A missing or broken profile is refused at create, naming the field.
    let missing = host.path("missing.json").display().to_string();
    let c = with_security(container("missing", &bb, &["true"]), |s| {
        s.seccomp = Some(profile_type(ProfileType::Localhost, &missing));
    });
    let err = e.create(&pod, &pc, c).await.unwrap_err();
    assert_refused(
        &err,
        Code::InvalidArgument,
        &["seccomp.localhost_ref", "missing.json"],
    );
    let broken = host.path("broken.json");
    std::fs::write(&broken, "{ not json").unwrap();
    let c = with_security(container("broken", &bb, &["true"]), |s| {
        s.seccomp = Some(profile_type(
            ProfileType::Localhost,
            &broken.display().to_string(),
        ));
    });
    let err = e.create(&pod, &pc, c).await.unwrap_err();
    assert_refused(&err, Code::InvalidArgument, &["seccomp", "not valid JSON"]);
    let wrong = host.path("wrong.json");
    std::fs::write(&wrong, r#"{"defaultAction":"SCMP_ACT_NOPE"}"#).unwrap();
    let c = with_security(container("wrong", &bb, &["true"]), |s| {
        s.seccomp = Some(profile_type(
            ProfileType::Localhost,
            &wrong.display().to_string(),
        ));
    });
    let err = e.create(&pod, &pc, c).await.unwrap_err();
    assert_refused(&err, Code::InvalidArgument, &["seccomp", "wrong.json"]);
    #[allow(deprecated)]
    let c = with_security(container("oldbad", &bb, &["true"]), |s| {
        s.seccomp_profile_path = "docker/whatever".into();
    });
    let err = e.create(&pod, &pc, c).await.unwrap_err();
    assert_refused(&err, Code::InvalidArgument, &["seccomp_profile_path"]);

    // AppArmor: this kernel has none. Default and unconfined mean nothing to enforce; a named
    // profile cannot be honoured.
    let c = with_security(container("aa-default", &bb, &["true"]), |s| {
        s.apparmor = Some(profile_type(ProfileType::RuntimeDefault, ""));
    });
    e.create_ok(&pod, &pc, c).await;
    #[allow(deprecated)]
    let c = with_security(container("aa-unconfined", &bb, &["true"]), |s| {
        s.apparmor_profile = "unconfined".into();
    });
    e.create_ok(&pod, &pc, c).await;
    let c = with_security(container("aa-local", &bb, &["true"]), |s| {
        s.apparmor = Some(profile_type(ProfileType::Localhost, "my-profile"));
    });
    let err = e.create(&pod, &pc, c).await.unwrap_err();
    assert_refused(&err, Code::InvalidArgument, &["apparmor", "not enabled"]);
    #[allow(deprecated)]
    let c = with_security(container("aa-oldlocal", &bb, &["true"]), |s| {
        s.apparmor_profile = "localhost/my-profile".into();
    });
    let err = e.create(&pod, &pc, c).await.unwrap_err();
    assert_refused(&err, Code::InvalidArgument, &["apparmor"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_and_readonly_paths_are_exactly_the_requests() {
    let Some(mut e) = start().await else { return };
    let bb = e.bb();
    let (pod, pc) = e.pod("masks").await;
    let script = "[ -c /proc/keys ] && echo keys-masked; \
                  grep -q ' /proc/acpi .* - tmpfs ' /proc/self/mountinfo && echo acpi-tmpfs; \
                  ls -A /proc/acpi | wc -l; \
                  grep -E ' /proc/sys (ro|rw)' /proc/self/mountinfo | cut -d' ' -f6 | cut -d, -f1; \
                  (echo x > /proc/sys/kernel/domainname) 2>&1 | grep -q 'Read-only' && echo sys-readonly; \
                  touch /proc/acpi/x || echo acpi-refused";
    // kubelet's lists for procMount: Default; /proc/kcore and /proc/scsi do not exist on this
    // kernel and are skipped.
    let c = with_security(container("default", &bb, &["sh", "-c", script]), |s| {
        s.masked_paths = strings(KUBELET_MASKED);
        s.readonly_paths = strings(KUBELET_READONLY);
    });
    let out = e.sh(&pod, &pc, c).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "keys-masked",
            "acpi-tmpfs",
            "0",
            "ro",
            "sys-readonly",
            "acpi-refused"
        ],
        "{out}"
    );
    // procMount: Unmasked sends empty lists: nothing masked, /proc/sys not remounted.
    let out = e
        .sh(&pod, &pc, container("unmasked", &bb, &["sh", "-c", script]))
        .await;
    assert!(
        !out.contains("keys-masked") && !out.contains("acpi-tmpfs"),
        "{out}"
    );
    assert!(
        !out.lines().any(|l| l == "ro" || l == "sys-readonly"),
        "{out}"
    );

    // readonly_rootfs: writes to the root refused, the pod's /dev/shm still writable.
    let c = with_security(
        container(
            "rofs",
            &bb,
            &[
                "sh",
                "-c",
                "touch /x || echo root-refused; touch /dev/shm/y && echo shm-ok",
            ],
        ),
        |s| s.readonly_rootfs = true,
    );
    let out = e.sh(&pod, &pc, c).await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["root-refused", "shm-ok"],
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_gets_host_devices_daemon_caps_writable_sys_and_no_seccomp_or_masks() {
    let Some(mut e) = start().await else { return };
    let bb = e.bb();
    let script = "cat /proc/self/status; ls /dev; \
                  grep ' /sys ' /proc/self/mountinfo | cut -d' ' -f6 | cut -d, -f1; \
                  [ -c /proc/keys ] && echo keys-masked; echo done";
    let privileged = |name: &str| {
        with_security(container(name, &bb, &["sh", "-c", script]), |s| {
            s.privileged = true;
            // kubelet sends its default lists and profile for privileged containers too.
            s.masked_paths = strings(KUBELET_MASKED);
            s.readonly_paths = strings(KUBELET_READONLY);
            s.seccomp = Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            });
        })
    };

    // A privileged container in a pod that is not privileged is refused.
    let (plain, ppc) = e.pod("plain").await;
    let err = e
        .create(&plain, &ppc, privileged("priv"))
        .await
        .unwrap_err();
    assert_refused(
        &err,
        Code::InvalidArgument,
        &["config.linux.security_context.privileged", "not privileged"],
    );

    let pc = pod_security(pod_config("privpod", e.logs.path()), |s| {
        s.privileged = true
    });
    let pod = e.run_pod(pc.clone()).await;
    let out = e.sh(&pod, &pc, privileged("priv")).await;
    assert_eq!(caps(&out, "CapEff"), own_bounding_set(), "{out}");
    assert_eq!(caps(&out, "CapBnd"), own_bounding_set(), "{out}");
    assert_eq!(caps(&out, "CapInh"), 0, "{out}");
    assert_eq!(status_field(&out, "Seccomp"), "0", "{out}");
    assert!(!out.contains("keys-masked"), "{out}");
    assert!(out.lines().any(|l| l == "rw"), "/sys not writable: {out}");
    // Host devices are all there (this node has loop devices and /dev/kvm).
    for dev in std::fs::read_dir("/dev").unwrap().flatten() {
        let name = dev.file_name().to_string_lossy().into_owned();
        if name.starts_with("loop") && dev.file_type().unwrap().is_block_device() {
            assert!(out.lines().any(|l| l == name), "{name} missing: {out}");
        }
    }
    // The same container unprivileged sees only the default devices.
    let out = e
        .sh(&pod, &pc, container("unpriv", &bb, &["sh", "-c", script]))
        .await;
    assert!(!out.lines().any(|l| l.starts_with("loop")), "{out}");
    assert!(out.lines().any(|l| l == "ro"), "/sys writable: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_sysctls_are_seen_inside_and_unsafe_ones_are_refused() {
    let Some(mut e) = start().await else { return };
    let bb = e.bb();
    let mut pc = pod_config("sysctls", e.logs.path());
    pc.linux.as_mut().unwrap().sysctls = HashMap::from([
        ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
        (
            "net.ipv4.ip_unprivileged_port_start".to_string(),
            "81".to_string(),
        ),
    ]);
    let pod = e.run_pod(pc.clone()).await;
    let c = container(
        "read",
        &bb,
        &[
            "sh",
            "-c",
            "cat /proc/sys/kernel/shm_rmid_forced /proc/sys/net/ipv4/ip_unprivileged_port_start",
        ],
    );
    let out = e.sh(&pod, &pc, c).await;
    assert_eq!(out.lines().collect::<Vec<_>>(), ["1", "81"], "{out}");
    // The node's own values are untouched.
    let host_port_start =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap();
    assert_ne!(host_port_start.trim(), "81");

    for (name, key, host_network) in [
        ("notns", "kernel.panic", false),
        ("vm", "vm.swappiness", false),
        ("hostnet", "net.ipv4.ip_forward", true),
    ] {
        let mut pc = pod_config(name, e.logs.path());
        pc.linux.as_mut().unwrap().sysctls = HashMap::from([(key.to_string(), "1".to_string())]);
        if host_network {
            pc = pod_security(pc, |s| {
                s.namespace_options = Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                })
            });
        }
        let err = e.try_run_pod(pc).await.unwrap_err();
        assert_refused(&err, Code::InvalidArgument, &["config.linux.sysctls", key]);
    }
}

// ---------------------------------------------------------------------------------------------
// Namespaces

fn ns_of(pid: &str, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap()
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid_namespaces_container_node_and_target() {
    let Some(mut e) = start().await else { return };
    let bb = e.bb();
    let (pod, pc) = e.pod("pidns").await;
    let pid_mode = |c: ContainerConfig, mode: cri::NamespaceMode, target: &str| {
        with_security(c, |s| {
            s.namespace_options = Some(cri::NamespaceOption {
                pid: mode as i32,
                target_id: target.into(),
                ..Default::default()
            })
        })
    };
    // CONTAINER: PID 1 of a namespace of its own.
    let target = e
        .run_ctr(&pod, &pc, container("target", &bb, &["sleep", "1234"]))
        .await;
    let out = e
        .exec_ok(&target, "cat /proc/1/cmdline | tr '\\0' ' '")
        .await;
    assert!(out.contains("sleep 1234"), "{out}");
    // TARGET: joins that container's namespace and sees its process as PID 1.
    let c = pid_mode(
        container(
            "joiner",
            &bb,
            &["sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; echo"],
        ),
        cri::NamespaceMode::Target,
        &target,
    );
    let out = e.sh(&pod, &pc, c).await;
    assert_eq!(out.trim(), "sleep 1234", "{out}");

    let c = pid_mode(
        container("ghost", &bb, &["true"]),
        cri::NamespaceMode::Target,
        "0123456789abcdef0123456789abcdef",
    );
    let err = e.create(&pod, &pc, c).await.unwrap_err();
    assert_refused(&err, Code::NotFound, &["namespace_options.target_id"]);
    // A container of another pod is no valid target.
    let (other, opc) = e.pod("pidns-other").await;
    let c = pid_mode(
        container("stranger", &bb, &["true"]),
        cri::NamespaceMode::Target,
        &target,
    );
    let err = e.create(&other, &opc, c).await.unwrap_err();
    assert_refused(&err, Code::InvalidArgument, &["target_id", "another pod"]);

    // NODE (a hostPID pod): the node's PID 1 is the container's too.
    let pc = pod_security(pod_config("hostpid", e.logs.path()), |s| {
        s.namespace_options = Some(cri::NamespaceOption {
            pid: cri::NamespaceMode::Node as i32,
            ..Default::default()
        })
    });
    let pod = e.run_pod(pc.clone()).await;
    let c = pid_mode(
        container("host", &bb, &["sh", "-c", "readlink /proc/self/ns/pid"]),
        cri::NamespaceMode::Node,
        "",
    );
    let out = e.sh(&pod, &pc, c).await;
    assert_eq!(out.trim(), ns_of("self", "pid"), "{out}");

    // User namespaces are refused for now, for containers and pods alike.
    let c = with_security(container("userns", &bb, &["true"]), |s| {
        s.namespace_options = Some(cri::NamespaceOption {
            userns_options: Some(cri::UserNamespace {
                mode: cri::NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
    });
    let err = e.create(&pod, &pc, c).await.unwrap_err();
    assert_refused(
        &err,
        Code::InvalidArgument,
        &["userns_options", "not supported by berth yet"],
    );
    let upc = pod_security(pod_config("userns", e.logs.path()), |s| {
        s.namespace_options = Some(cri::NamespaceOption {
            userns_options: Some(cri::UserNamespace {
                mode: cri::NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
    });
    let err = e.try_run_pod(upc).await.unwrap_err();
    assert_refused(
        &err,
        Code::InvalidArgument,
        &["userns_options", "not supported by berth yet"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipc_and_network_namespaces_follow_the_pod() {
    let Some(mut e) = start().await else { return };
    let bb = e.bb();
    let script = "for ns in net ipc uts; do readlink /proc/self/ns/$ns; done";
    let (pod, pc) = e.pod("ownns").await;
    let a = e
        .sh(&pod, &pc, container("a", &bb, &["sh", "-c", script]))
        .await;
    let b = e
        .sh(&pod, &pc, container("b", &bb, &["sh", "-c", script]))
        .await;
    assert_eq!(a, b);
    let host = [
        ns_of("self", "net"),
        ns_of("self", "ipc"),
        ns_of("self", "uts"),
    ];
    let a: Vec<&str> = a.lines().collect();
    assert_eq!(a.len(), 3, "{a:?}");
    for (inside, host) in a.iter().zip(&host) {
        assert_ne!(inside, host);
    }

    let pc = pod_security(pod_config("hostns", e.logs.path()), |s| {
        s.namespace_options = Some(cri::NamespaceOption {
            network: cri::NamespaceMode::Node as i32,
            ipc: cri::NamespaceMode::Node as i32,
            pid: cri::NamespaceMode::Container as i32,
            ..Default::default()
        })
    });
    let pod = e.run_pod(pc.clone()).await;
    let out = e
        .sh(&pod, &pc, container("h", &bb, &["sh", "-c", script]))
        .await;
    assert_eq!(out.lines().collect::<Vec<_>>(), host, "{out}");
}

// ---------------------------------------------------------------------------------------------
// Mounts and devices

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_propagation_host_to_container_and_bidirectional() {
    let host = HostDir::new();
    let Some(mut e) = start().await else { return };
    let bb = e.bb();
    let h2c = host.mount_point("h2c", None, &["--make-shared"]);
    let private_src = host.mount_point("private", None, &["--make-shared"]);
    let (pod, pc) = e.pod("h2c").await;
    let mut c = container("watch", &bb, &["sleep", "1000"]);
    c.mounts = vec![
        cri::Mount {
            propagation: cri::MountPropagation::PropagationHostToContainer as i32,
            ..bind("/h2c", &h2c)
        },
        bind("/private", &private_src),
    ];
    let id = e.run_ctr(&pod, &pc, c).await;
    // Mounts made on the host after the container started.
    for dir in [&h2c, &private_src] {
        host.tmpfs(&dir.join("late"));
        std::fs::write(dir.join("late/hello"), "from-host").unwrap();
    }
    let out = e
        .exec_ok(
            &id,
            "cat /h2c/late/hello; echo; ls -A /private/late | wc -l",
        )
        .await;
    assert_eq!(out.lines().collect::<Vec<_>>(), ["from-host", "0"], "{out}");
    let out = e
        .exec_ok(&id, "grep -E ' /h2c ' /proc/self/mountinfo")
        .await;
    assert!(out.contains("master:"), "not a slave mount: {out}");

    // Bidirectional: a mount made inside (a privileged container may mount) reaches the host.
    let bidi = host.mount_point("bidi", None, &["--make-shared"]);
    std::fs::create_dir(bidi.join("inner")).unwrap();
    let pc = pod_security(pod_config("bidi", e.logs.path()), |s| s.privileged = true);
    let pod = e.run_pod(pc.clone()).await;
    let mut c = with_security(container("mounter", &bb, &["sleep", "1000"]), |s| {
        s.privileged = true
    });
    c.mounts = vec![cri::Mount {
        propagation: cri::MountPropagation::PropagationBidirectional as i32,
        ..bind("/bidi", &bidi)
    }];
    let id = e.run_ctr(&pod, &pc, c).await;
    e.exec_ok(
        &id,
        "mount -t tmpfs -o size=1m none /bidi/inner && echo from-container > /bidi/inner/f",
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(bidi.join("inner/f")).unwrap_or_default(),
        "from-container\n"
    );
    assert!(
        mounts_under(&bidi).contains(&bidi.join("inner")),
        "{:?}",
        mounts_under(&bidi)
    );

    // Host sides that cannot propagate are refused before anything is made.
    let plain = host.path("plain");
    std::fs::create_dir(&plain).unwrap();
    let slave = host.mount_point("slave", Some(&h2c), &["--make-slave"]);
    let (pod, pc) = e.pod("refused").await;
    for (source, prop, needs) in [
        (
            &plain,
            cri::MountPropagation::PropagationHostToContainer,
            "shared or slave",
        ),
        (
            &plain,
            cri::MountPropagation::PropagationBidirectional,
            "a shared mount",
        ),
        (
            &slave,
            cri::MountPropagation::PropagationBidirectional,
            "a shared mount",
        ),
    ] {
        let mut c = container("refused", &bb, &["true"]);
        c.mounts = vec![
            bind("/ok", &private_src),
            cri::Mount {
                propagation: prop as i32,
                ..bind("/x", source)
            },
        ];
        let err = e.create(&pod, &pc, c).await.unwrap_err();
        assert_refused(
            &err,
            Code::FailedPrecondition,
            &[
                "config.mounts[1].propagation",
                needs,
                &source.display().to_string(),
            ],
        );
    }
    // A slave host side is enough for host-to-container.
    let mut c = container("slave-ok", &bb, &["true"]);
    c.mounts = vec![cri::Mount {
        propagation: cri::MountPropagation::PropagationHostToContainer as i32,
        ..bind("/x", &slave)
    }];
    let id = e.create_ok(&pod, &pc, c).await;
    e.remove_ctr(&id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursive_read_only_mounts_make_submounts_read_only() {
    let host = HostDir::new();
    let Some(mut e) = start().await else { return };
    let bb = e.bb();
    let status =
        e.rt.status(cri::StatusRequest { verbose: false })
            .await
            .expect("Status")
            .into_inner();
    assert!(!status.runtime_handlers.is_empty());
    for h in &status.runtime_handlers {
        assert!(
            h.features
                .as_ref()
                .is_some_and(|f| f.recursive_read_only_mounts),
            "{h:?}"
        );
    }

    let src = host.path("rro");
    std::fs::create_dir_all(&src).unwrap();
    host.tmpfs(&src.join("sub"));
    let (pod, pc) = e.pod("rro").await;
    let script = "touch /data/top || echo top-refused; \
                  touch /data/sub/f && echo sub-written || echo sub-refused; \
                  grep ' /data/sub ' /proc/self/mountinfo | cut -d' ' -f6 | cut -d, -f1";
    let mut c = container("rro", &bb, &["sh", "-c", script]);
    c.mounts = vec![cri::Mount {
        readonly: true,
        recursive_read_only: true,
        ..bind("/data", &src)
    }];
    let out = e.sh(&pod, &pc, c).await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["top-refused", "sub-refused", "ro"],
        "{out}"
    );
    // A read-write mount of the request below the rro one stays writable, as it would with a
    // runtime that makes the rro mount before mounting the deeper ones.
    let rw = host.path("rw");
    std::fs::create_dir_all(&rw).unwrap();
    let script_rw = format!("{script}; touch /data/sub/rw/f && echo rw-written");
    let mut c = container("rro-rw", &bb, &["sh", "-c", &script_rw]);
    c.mounts = vec![
        cri::Mount {
            readonly: true,
            recursive_read_only: true,
            ..bind("/data", &src)
        },
        bind("/data/sub/rw", &rw),
    ];
    let out = e.sh(&pod, &pc, c).await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["top-refused", "sub-refused", "ro", "rw-written"],
        "{out}"
    );
    assert!(rw.join("f").exists());
    // Plain readonly leaves the submount writable: that is what rro is for.
    let mut c = container("ro", &bb, &["sh", "-c", script]);
    c.mounts = vec![cri::Mount {
        readonly: true,
        ..bind("/data", &src)
    }];
    let out = e.sh(&pod, &pc, c).await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["top-refused", "sub-written", "rw"],
        "{out}"
    );
    // The host's own submount stays writable (nothing changed outside the container).
    std::fs::write(src.join("sub/host"), "x").expect("host submount became read-only");

    for (edit, field) in [
        (
            Box::new(|m: &mut cri::Mount| m.readonly = false) as Box<dyn Fn(&mut cri::Mount)>,
            "needs readonly",
        ),
        (
            Box::new(|m: &mut cri::Mount| {
                m.propagation = cri::MountPropagation::PropagationHostToContainer as i32
            }),
            "propagation",
        ),
    ] {
        let mut m = cri::Mount {
            readonly: true,
            recursive_read_only: true,
            ..bind("/data", &src)
        };
        edit(&mut m);
        let mut c = container("bad", &bb, &["true"]);
        c.mounts = vec![m];
        let err = e.create(&pod, &pc, c).await.unwrap_err();
        assert_refused(
            &err,
            Code::InvalidArgument,
            &["config.mounts[0].recursive_read_only", field],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_get_their_paths_permissions_and_cgroup_rules() {
    let Some(mut e) = start().await else { return };
    let bb = e.bb();
    let (pod, pc) = e.pod("devices").await;
    for (device, field) in [
        (
            cri::Device {
                container_path: "/dev/x".into(),
                host_path: "/dev/does-not-exist".into(),
                permissions: "rw".into(),
            },
            "config.devices[0].host_path",
        ),
        (
            cri::Device {
                container_path: "/dev/x".into(),
                host_path: "/dev/null".into(),
                permissions: "rwx".into(),
            },
            "config.devices[0].permissions",
        ),
        (
            cri::Device {
                container_path: "/dev/x".into(),
                host_path: "/etc/hostname".into(),
                permissions: "r".into(),
            },
            "is not a device node",
        ),
    ] {
        let mut c = container("baddev", &bb, &["true"]);
        c.devices = vec![device];
        let err = e.create(&pod, &pc, c).await.unwrap_err();
        assert_refused(&err, Code::InvalidArgument, &[field]);
    }
    // Refused before anything was made.
    assert!(e.leftovers().is_empty(), "{:?}", e.leftovers());

    // /dev/cpu_dma_latency is no device runc allows by default, unlike null or zero.
    let script = "ls /dev; echo hi > /dev/xnull && echo null-written; \
                  head -c 4 /dev/xlat | wc -c; \
                  echo 0 > /dev/xlat || echo lat-write-refused; \
                  mknod /tmp/mem c 1 1 && head -c 1 /tmp/mem || echo mem-refused";
    let mut c = container("dev", &bb, &["sh", "-c", script]);
    c.devices = vec![
        cri::Device {
            container_path: "/dev/xnull".into(),
            host_path: "/dev/null".into(),
            permissions: "rwm".into(),
        },
        cri::Device {
            container_path: "/dev/xlat".into(),
            host_path: "/dev/cpu_dma_latency".into(),
            permissions: "r".into(),
        },
    ];
    let out = e.sh(&pod, &pc, c).await;
    let lines: Vec<&str> = out.lines().collect();
    for want in [
        "xnull",
        "xlat",
        "null-written",
        "4",
        "lat-write-refused",
        "mem-refused",
    ] {
        assert!(lines.contains(&want), "{want} missing: {out}");
    }
    assert!(!lines.contains(&"loop0"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_mounts_symlink_sources_and_destinations_through_image_symlinks() {
    let host = HostDir::new();
    let Some(mut e) = start().await else { return };
    let bb = e.bb();
    let (pod, pc) = e.pod("files").await;
    // kubelet's termination-log: an empty host file, bind-mounted read-write.
    let term = host.path("termination-log");
    std::fs::write(&term, "").unwrap();
    let real = host.path("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::write(real.join("marker"), "real-dir").unwrap();
    let link = host.path("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let mut c = container(
        "files",
        &bb,
        &[
            "sh",
            "-c",
            "echo bye > /dev/termination-log; cat /sym/marker; echo; \
             grep -c ' /dev/termination-log ' /proc/self/mountinfo",
        ],
    );
    c.mounts = vec![bind("/dev/termination-log", &term), bind("/sym", &link)];
    let out = e.sh(&pod, &pc, c).await;
    assert_eq!(out.lines().collect::<Vec<_>>(), ["real-dir", "1"], "{out}");
    assert_eq!(std::fs::read_to_string(&term).unwrap(), "bye\n");

    // The image has `escape -> /` and `cdir -> <canary dir>`: mount points behind them are
    // made inside the rootfs, never on the node.
    let evil = e.img.get("EVIL_SYMLINK_REF");
    e.d.pull_ok(&evil).await;
    let canary = PathBuf::from(e.img.get("BERTH_CANARY_DIR"));
    let tag = format!("berth-sec-escape-{}", std::process::id());
    // The image has no binaries: the node's static busybox is bind-mounted in to look around.
    let script = format!(
        "/busybox cut -d' ' -f5 /proc/self/mountinfo | /busybox grep {tag}; /busybox cat /tmp/{tag}/marker"
    );
    let mut c = container("escape", &evil, &["/busybox", "sh", "-c", &script]);
    c.mounts = vec![
        cri::Mount {
            readonly: true,
            ..bind("/busybox", Path::new("/bin/busybox"))
        },
        bind(&format!("/escape/tmp/{tag}"), &real),
        bind(&format!("/cdir/{tag}"), &real),
    ];
    let out = e.sh(&pod, &pc, c).await;
    // Both resolved inside the rootfs: /escape is the container's /, /cdir its copy of the
    // canary dir.
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        // Shallower mount first, as mounts are ordered by depth.
        [
            format!("{}/{tag}", canary.display()),
            format!("/tmp/{tag}"),
            "real-dir".to_string()
        ],
        "{out}"
    );
    assert!(
        !Path::new("/tmp").join(&tag).exists(),
        "mount point made on the node"
    );
    assert!(
        !canary.join(&tag).exists(),
        "mount point made in the node's canary dir"
    );
}
