//! The harness of the container e2e tests: a daemon with its own bridge, nftables table and
//! subnet, a CRI client, and helpers for pods, containers, logs and leftovers. Each test file
//! names its own [`Net`] and serial lock, so files can run side by side.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tonic::transport::Channel;

use crate::cri::runtime_service_client::RuntimeServiceClient;
use crate::cri::{self, ContainerConfig, PodSandboxConfig};
use crate::*;

/// A test file's network objects: the daemon's bridge, nftables table and pod subnet.
pub struct Net {
    pub bridge: &'static str,
    pub table: &'static str,
    pub subnet: &'static str,
}

pub fn opts(net: &Net, extra: &str) -> DaemonOpts {
    DaemonOpts {
        extra_config: format!(
            "\n{extra}\n[network]\nbridge = \"{}\"\nsubnet = \"{}\"\nnft_table = \"{}\"\ncni_conf_dir = \"/nonexistent/berth-e2e-cni\"\n",
            net.bridge, net.subnet, net.table
        ),
        log_level: "info,h2=warn".into(),
        ..Default::default()
    }
}

pub struct Env {
    pub d: Daemon,
    pub rt: RuntimeServiceClient<Channel>,
    pub img: Images,
    pub logs: tempfile::TempDir,
    _net: NetGuard,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Env {
    /// A fresh daemon on `net`, once the tests before it that hold `serial` are done; `None`
    /// when the prerequisites (root, runc, the test registry) are missing.
    pub async fn start(
        net: &Net,
        extra_config: &str,
        serial: &'static tokio::sync::Mutex<()>,
    ) -> Option<Env> {
        let img = prerequisites()?;
        let serial = serial.lock().await;
        let guard = NetGuard {
            bridge: net.bridge,
            table: net.table,
        };
        let d = Daemon::start(opts(net, extra_config))
            .await
            .expect("berthd");
        let rt = d.runtime().await.expect("runtime client");
        let logs = tempfile::Builder::new()
            .prefix("berth-e2e-logs-")
            .tempdir_in("/var/tmp")
            .expect("log dir");
        Some(Env {
            d,
            rt,
            img,
            logs,
            _net: guard,
            _serial: serial,
        })
    }
}

pub fn pod_config(name: &str, log_dir: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: name.chars().take(60).collect(),
        log_directory: log_dir.join(name).display().to_string(),
        labels: HashMap::from([("pod".to_string(), name.to_string())]),
        ..Default::default()
    }
}

pub fn container(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(spec(image)),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        annotations: HashMap::from([("note".to_string(), format!("about {name}"))]),
        ..Default::default()
    }
}

pub fn sh(name: &str, image: &str, script: &str) -> ContainerConfig {
    container(name, image, &["sh", "-c", script])
}

pub fn with_security(
    mut c: ContainerConfig,
    edit: impl FnOnce(&mut cri::LinuxContainerSecurityContext),
) -> ContainerConfig {
    let linux = c.linux.get_or_insert_with(Default::default);
    edit(linux.security_context.get_or_insert_with(Default::default));
    c
}

/// One CRI log line, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub ts: String,
    pub stream: String,
    pub tag: String,
    pub text: String,
}

pub fn parse_log(text: &str) -> Vec<LogLine> {
    text.lines()
        .map(|l| {
            let mut parts = l.splitn(4, ' ');
            let ts = parts.next().unwrap_or_default().to_string();
            let stream = parts.next().unwrap_or_default().to_string();
            let tag = parts.next().unwrap_or_default().to_string();
            let text = parts.next().unwrap_or_default().to_string();
            LogLine {
                ts,
                stream,
                tag,
                text,
            }
        })
        .collect()
}

/// Full lines per stream, with `P` pieces joined.
pub fn joined(lines: &[LogLine], stream: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for l in lines.iter().filter(|l| l.stream == stream) {
        cur.push_str(&l.text);
        if l.tag == "F" {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

pub fn valid_timestamp(ts: &str) -> bool {
    // 2026-12-01T08:41:52.123456789Z
    let b = ts.as_bytes();
    b.len() == 30
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && b[29] == b'Z'
        && b[20..29].iter().all(u8::is_ascii_digit)
}

impl Env {
    pub async fn pull(&self, image: &str) -> String {
        self.d.pull_ok(image).await
    }

    pub async fn run_pod(&mut self, config: PodSandboxConfig) -> String {
        self.run_pod_with(config, "").await
    }

    pub async fn run_pod_with(&mut self, config: PodSandboxConfig, handler: &str) -> String {
        self.rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: handler.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("RunPodSandbox: {s:?}\n{}", self.d.log_tail(40)))
            .into_inner()
            .pod_sandbox_id
    }

    pub async fn pod(&mut self, name: &str) -> (String, PodSandboxConfig) {
        let config = pod_config(name, self.logs.path());
        let id = self.run_pod(config.clone()).await;
        (id, config)
    }

    pub async fn create(
        &mut self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        config: ContainerConfig,
    ) -> Result<String, tonic::Status> {
        self.rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(config),
                sandbox_config: Some(pod_config.clone()),
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    pub async fn create_ok(
        &mut self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        config: ContainerConfig,
    ) -> String {
        match self.create(pod, pod_config, config).await {
            Ok(id) => id,
            Err(s) => panic!(
                "CreateContainer: {:?} {}\n{}",
                s.code(),
                s.message(),
                self.d.log_tail(40)
            ),
        }
    }

    pub async fn start_ctr(&mut self, id: &str) {
        if let Err(s) = self
            .rt
            .start_container(cri::StartContainerRequest {
                container_id: id.into(),
            })
            .await
        {
            panic!("StartContainer: {s:?}\n{}", self.d.log_tail(40));
        }
    }

    pub async fn run_ctr(
        &mut self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        config: ContainerConfig,
    ) -> String {
        let id = self.create_ok(pod, pod_config, config).await;
        self.start_ctr(&id).await;
        id
    }

    /// Runs the container to its end and returns its stdout lines (from the CRI log).
    pub async fn stdout_of(
        &mut self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        config: ContainerConfig,
    ) -> Vec<String> {
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let id = self.run_ctr(pod, pod_config, config).await;
        self.wait_exit(&id, Duration::from_secs(20)).await;
        joined(&self.read_log(pod_config, &name), "stdout")
    }

    pub async fn status(&mut self, id: &str) -> (cri::ContainerStatus, serde_json::Value) {
        let r = self
            .rt
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: true,
            })
            .await
            .expect("ContainerStatus")
            .into_inner();
        let info = r
            .info
            .get("info")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(serde_json::Value::Null);
        (r.status.expect("status"), info)
    }

    pub async fn wait_exit(&mut self, id: &str, within: Duration) -> cri::ContainerStatus {
        let deadline = Instant::now() + within;
        loop {
            let (st, _) = self.status(id).await;
            if st.state == cri::ContainerState::ContainerExited as i32 {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} still {:?} after {within:?}\n{}",
                st.state,
                self.d.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop_ctr(&mut self, id: &str, timeout: i64) {
        self.rt
            .stop_container(cri::StopContainerRequest {
                container_id: id.into(),
                timeout,
            })
            .await
            .expect("StopContainer");
    }

    pub async fn remove_ctr(&mut self, id: &str) {
        self.rt
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .expect("RemoveContainer");
    }

    pub async fn exec(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<cri::ExecSyncResponse, tonic::Status> {
        self.rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout,
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn exec_out(&mut self, id: &str, cmd: &[&str]) -> String {
        let r = self.exec(id, cmd, 10).await.expect("ExecSync");
        assert_eq!(
            r.exit_code,
            0,
            "{cmd:?}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        String::from_utf8_lossy(&r.stdout).into_owned()
    }

    pub fn log_of(&self, pod_config: &PodSandboxConfig, name: &str) -> PathBuf {
        PathBuf::from(&pod_config.log_directory)
            .join(name)
            .join("0.log")
    }

    pub fn read_log(&self, pod_config: &PodSandboxConfig, name: &str) -> Vec<LogLine> {
        parse_log(&std::fs::read_to_string(self.log_of(pod_config, name)).unwrap_or_default())
    }

    pub async fn list(&mut self, filter: Option<cri::ContainerFilter>) -> Vec<cri::Container> {
        self.rt
            .list_containers(cri::ListContainersRequest { filter })
            .await
            .expect("ListContainers")
            .into_inner()
            .containers
    }

    pub async fn remove_pod(&mut self, id: &str) {
        self.rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .expect("RemovePodSandbox");
    }

    /// What containers left on the node: rootfs mounts, bundles, upper dirs, shims, runc state,
    /// container cgroups, sockets, exit files.
    pub fn leftovers(&self) -> Vec<String> {
        settled(|| self.leftovers_now())
    }

    pub fn leftovers_now(&self) -> Vec<String> {
        let mut out = Vec::new();
        for m in mounts_under(&self.d.state.join("containers")) {
            out.push(format!("mount {}", m.display()));
        }
        for dir in [
            self.d.state.join("containers"),
            self.d.root.join("containers"),
            self.d.state.join("exits"),
            self.d.state.join("s"),
        ] {
            for n in dir_names(&dir) {
                out.push(format!("{}/{n}", dir.display()));
            }
        }
        for pid in shims_under(self.d.base()) {
            if std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .contains("run")
            {
                out.push(format!("shim process {pid}"));
            }
        }
        let runc_root = self.d.state.join("runtime/runc");
        for n in dir_names(&runc_root) {
            out.push(format!("runc state {n}"));
        }
        for n in dir_names(&self.d.root.join("store/containers")) {
            out.push(format!("record {n}"));
        }
        out
    }
}

pub fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    [
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ]
    .iter()
    .map(|root| PathBuf::from(format!("{root}{path}")))
    .filter(|p| p.is_dir())
    .collect()
}

/// Runs berthctl against `d`: success, stdout, stderr.
pub fn ctl(d: &Daemon, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(berthctl_bin())
        .arg("-r")
        .arg(format!("unix://{}", d.socket.display()))
        .args(args)
        .output()
        .expect("berthctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn ctl_ok(d: &Daemon, args: &[&str]) -> String {
    let (ok, out, err) = ctl(d, args);
    assert!(ok, "berthctl {args:?} failed: {err}\n{out}");
    out
}
