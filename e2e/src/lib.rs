//! Helpers for end-to-end tests against a real berthd.
//!
//! The tests need, besides root, the local registries and test images that
//! `hack/registry.sh start` and `hack/build-images.sh` set up; their digests are
//! read from `$BERTH_HACK_DIR/images.env` (default `/var/tmp/berth-hack`).
//! Without them a test prints `SKIP: ...` and returns, unless
//! `BERTH_E2E_REQUIRE=1` (set by `hack/test.sh`) turns that into a failure.
//!
//! [`Daemon::start`] spawns `berthd` (`$BERTHD_BIN`, or `target/debug/berthd` of
//! this workspace) with a fresh temp root/state/socket and a temp containerd-style
//! `certs.d` directory holding `hosts.toml` files for the test registries.
//! Dropping the [`Daemon`] stops it (SIGTERM, then SIGKILL) and removes its dirs,
//! also when the test panics.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    AuthConfig, Image, ImageSpec, ImageStatusRequest, ListImagesRequest, PullImageRequest,
    RemoveImageRequest, VersionRequest,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

pub use k8s_cri::v1 as cri;

pub mod apiserver;
pub mod ctr;

/// Plain HTTP registry, no auth.
pub const REG_PLAIN: &str = "127.0.0.1:5000";
/// HTTPS registry (self-signed CA) with htpasswd basic auth.
pub const REG_TLS: &str = "127.0.0.1:5443";
/// HTTP registry with bearer-token auth (token server on :5002).
pub const REG_TOKEN: &str = "127.0.0.1:5001";
/// Credentials accepted by the TLS and token registries.
pub const USER: &str = "berth";
/// Password for [`USER`].
pub const PASS: &str = "berthpass";

/// Directory the hack scripts keep their state in.
pub fn hack_dir() -> PathBuf {
    std::env::var_os("BERTH_HACK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/berth-hack"))
}

/// Root of the workspace (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e crate has a parent dir")
        .to_path_buf()
}

/// Whether missing prerequisites must fail the test instead of skipping it.
pub fn required() -> bool {
    matches!(
        std::env::var("BERTH_E2E_REQUIRE").as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

fn skip_or_fail(msg: &str) {
    if required() {
        panic!("e2e prerequisite missing (BERTH_E2E_REQUIRE=1): {msg}");
    }
    eprintln!("SKIP: {msg}");
}

/// Digests and refs written by `hack/build-images.sh`.
#[derive(Debug, Clone)]
pub struct Images {
    vars: HashMap<String, String>,
}

impl Images {
    /// Parse `$BERTH_HACK_DIR/images.env`.
    pub fn load() -> Result<Images> {
        let path = hack_dir().join("images.env");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (run hack/build-images.sh)", path.display()))?;
        let mut vars = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                vars.insert(k.to_string(), v.trim_matches('"').to_string());
            }
        }
        Ok(Images { vars })
    }

    /// A variable, panicking with a clear message when absent.
    pub fn get(&self, key: &str) -> String {
        self.vars
            .get(key)
            .cloned()
            .unwrap_or_else(|| panic!("{key} missing from images.env; rerun hack/build-images.sh"))
    }

    /// A variable, if present.
    pub fn opt(&self, key: &str) -> Option<String> {
        self.vars.get(key).cloned()
    }

    /// A space-separated list variable.
    pub fn list(&self, key: &str) -> Vec<String> {
        self.get(key)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }
}

/// Strip the `sha256:` prefix.
pub fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn http_get_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1)?.parse().ok()
}

/// Check root, the registry and images.env. Returns `None` (after printing a
/// SKIP line, or panicking when required) if the e2e tests cannot run.
pub fn prerequisites() -> Option<Images> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: e2e tests need root");
        return None;
    }
    if http_get_status(REG_PLAIN, "/v2/") != Some(200) {
        skip_or_fail("registry 127.0.0.1:5000 is not up (hack/registry.sh start)");
        return None;
    }
    match Images::load() {
        Ok(i) => {
            if berthd_bin().is_file() {
                Some(i)
            } else {
                skip_or_fail(&format!(
                    "berthd binary {} not found (cargo build --bins)",
                    berthd_bin().display()
                ));
                None
            }
        }
        Err(e) => {
            skip_or_fail(&format!("{e:#}"));
            None
        }
    }
}

/// Start-or-skip: `let Some((d, img)) = e2e::setup(opts).await else { return };`
pub async fn setup(opts: DaemonOpts) -> Option<(Daemon, Images)> {
    let images = prerequisites()?;
    let d = Daemon::start(opts).await.expect("starting berthd");
    Some((d, images))
}

/// Path of the berthd binary under test.
pub fn berthd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BERTHD_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("debug").join("berthd")
}

/// Path of the berthctl binary: `BERTHCTL_BIN`, else next to berthd.
pub fn berthctl_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BERTHCTL_BIN") {
        return PathBuf::from(p);
    }
    berthd_bin().with_file_name("berthctl")
}

/// Options for [`Daemon::start`].
#[derive(Debug, Clone)]
pub struct DaemonOpts {
    /// Extra registry hosts (`127.0.0.1:PORT`) to configure as plain HTTP.
    pub http_hosts: Vec<String>,
    /// `log_level` in the config file.
    pub log_level: String,
    /// Extra TOML appended to the config file (before the `[registry]` table).
    pub extra_config: String,
    /// Extra `key = value` lines inside the `[registry]` table
    /// (e.g. `progress_timeout_secs = 2`).
    pub registry_extra: String,
}

impl Default for DaemonOpts {
    fn default() -> Self {
        DaemonOpts {
            http_hosts: Vec::new(),
            log_level: "debug".into(),
            extra_config: String::new(),
            registry_extra: String::new(),
        }
    }
}

impl DaemonOpts {
    /// Add a plain-HTTP registry host (e.g. a tamper proxy).
    pub fn http_host(mut self, host: impl Into<String>) -> Self {
        self.http_hosts.push(host.into());
        self
    }
}

/// A running berthd with its own temporary directories.
pub struct Daemon {
    base: Option<tempfile::TempDir>,
    /// `--root`
    pub root: PathBuf,
    /// `--state`
    pub state: PathBuf,
    /// `--listen` socket
    pub socket: PathBuf,
    /// containerd-style `certs.d` dir (`[registry] config_path`)
    pub certs_d: PathBuf,
    /// The config file passed with `--config`.
    pub config: PathBuf,
    /// Where stdout/stderr of berthd go.
    pub log: PathBuf,
    /// The cgroup parent of this daemon's pods (`cgroup_parent`): one per daemon, so the
    /// guard can remove whatever pod cgroups a test (or a killed berthd) left behind.
    pub cgroup_parent: String,
    child: Option<Child>,
}

fn write_hosts(certs_d: &Path, host: &str, body: &str) -> Result<()> {
    let dir = certs_d.join(host);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("hosts.toml"), body)?;
    Ok(())
}

fn http_hosts_toml(host: &str) -> String {
    format!(
        "server = \"http://{host}\"\n\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    )
}

impl Daemon {
    /// Spawn berthd with fresh dirs and wait until it answers `Version`.
    pub async fn start(opts: DaemonOpts) -> Result<Daemon> {
        let tmp_parent = std::env::var_os("BERTH_E2E_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp"));
        std::fs::create_dir_all(&tmp_parent)?;
        let base = tempfile::Builder::new()
            .prefix("berth-e2e-")
            .tempdir_in(&tmp_parent)?;
        let b = base.path().to_path_buf();
        let root = b.join("root");
        let state = b.join("state");
        let socket = b.join("berth.sock");
        let certs_d = b.join("certs.d");
        let config = b.join("berthd.toml");
        let log = b.join("berthd.log");
        let cgroup_parent = format!(
            "/berth-e2e/{}",
            b.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        );
        std::fs::create_dir_all(&certs_d)?;

        write_hosts(&certs_d, REG_PLAIN, &http_hosts_toml(REG_PLAIN))?;
        write_hosts(&certs_d, REG_TOKEN, &http_hosts_toml(REG_TOKEN))?;
        let ca = hack_dir().join("certs").join("ca.crt");
        write_hosts(
            &certs_d,
            REG_TLS,
            &format!(
                "server = \"https://{REG_TLS}\"\n\n[host.\"https://{REG_TLS}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{}\"\n",
                ca.display()
            ),
        )?;
        for h in &opts.http_hosts {
            write_hosts(&certs_d, h, &http_hosts_toml(h))?;
        }
        std::fs::write(
            &config,
            format!(
                "root = \"{}\"\nstate = \"{}\"\nlisten = \"{}\"\nlog_level = \"{}\"\ncgroup_parent = \"{}\"\n{}\n[registry]\nconfig_path = \"{}\"\n{}\n",
                root.display(),
                state.display(),
                socket.display(),
                opts.log_level,
                cgroup_parent,
                opts.extra_config,
                certs_d.display(),
                opts.registry_extra
            ),
        )?;
        let mut d = Daemon {
            base: Some(base),
            root,
            state,
            socket,
            certs_d,
            config,
            log,
            cgroup_parent,
            child: None,
        };
        d.spawn().await?;
        Ok(d)
    }

    async fn spawn(&mut self) -> Result<()> {
        let bin = berthd_bin();
        let _ = std::fs::remove_file(&self.socket);
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&bin)
            .arg("--root")
            .arg(&self.root)
            .arg("--state")
            .arg(&self.state)
            .arg("--listen")
            .arg(&self.socket)
            .arg("--config")
            .arg(&self.config)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(st) = c.try_wait()? {
                    self.child = None;
                    bail!("berthd exited early with {st}; log:\n{}", self.log_tail(60));
                }
            }
            if self.socket.exists() {
                if let Ok(mut rt) = self.runtime().await {
                    if rt.version(VersionRequest::default()).await.is_ok() {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "berthd did not answer on {} within 30s; log:\n{}",
                    self.socket.display(),
                    self.log_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Process id of the running daemon.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Last `n` lines of the daemon log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// A fresh gRPC channel over the unix socket.
    pub async fn channel(&self) -> Result<Channel> {
        let path = self.socket.clone();
        let ch =
            Endpoint::try_from("http://[::]:50051")?
                .connect_timeout(Duration::from_secs(5))
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }))
                .await?;
        Ok(ch)
    }

    /// CRI ImageService client.
    pub async fn images(&self) -> Result<ImageServiceClient<Channel>> {
        Ok(ImageServiceClient::new(self.channel().await?).max_decoding_message_size(64 << 20))
    }

    /// CRI RuntimeService client.
    pub async fn runtime(&self) -> Result<RuntimeServiceClient<Channel>> {
        Ok(RuntimeServiceClient::new(self.channel().await?).max_decoding_message_size(64 << 20))
    }

    fn signal_and_wait(&mut self, sig: Signal, wait: Duration) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), sig);
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// SIGTERM, then SIGKILL after 10s. Returns whether SIGTERM sufficed.
    pub fn stop(&mut self) -> bool {
        if self.child.is_none() {
            return true;
        }
        if self.signal_and_wait(Signal::SIGTERM, Duration::from_secs(10)) {
            return true;
        }
        eprintln!("berthd ignored SIGTERM for 10s; sending SIGKILL");
        self.signal_and_wait(Signal::SIGKILL, Duration::from_secs(10));
        false
    }

    /// SIGKILL the daemon (crash simulation); dirs are kept.
    pub fn kill9(&mut self) {
        self.signal_and_wait(Signal::SIGKILL, Duration::from_secs(10));
    }

    /// Stop (SIGTERM) if running and start again on the same dirs.
    pub async fn restart(&mut self) -> Result<()> {
        let graceful = self.stop();
        if !graceful {
            bail!("berthd did not exit on SIGTERM within 10s");
        }
        self.spawn().await
    }

    /// Start again after [`Daemon::kill9`] / [`Daemon::stop`].
    pub async fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("daemon still running");
        }
        self.spawn().await
    }

    /// Base temp dir holding root, state, socket, certs.d, log.
    pub fn base(&self) -> &Path {
        self.base.as_ref().expect("base dir").path()
    }

    /// `<root>/snapshots/<chainid-hex>` for a chain ID.
    pub fn snapshot_dir(&self, chain_id: &str) -> PathBuf {
        self.root.join("snapshots").join(hex_of(chain_id))
    }

    /// `<root>/snapshots/<chainid-hex>/fs` for a chain ID.
    pub fn snapshot_fs(&self, chain_id: &str) -> PathBuf {
        self.snapshot_dir(chain_id).join("fs")
    }

    /// PullImage; returns the image ref or the gRPC status.
    pub async fn pull(
        &self,
        image: &str,
        auth: Option<AuthConfig>,
    ) -> Result<String, tonic::Status> {
        let mut c = self
            .images()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("connect: {e:#}")))?;
        let r = c
            .pull_image(PullImageRequest {
                image: Some(spec(image)),
                auth,
                sandbox_config: None,
            })
            .await?;
        Ok(r.into_inner().image_ref)
    }

    /// PullImage that must succeed.
    pub async fn pull_ok(&self, image: &str) -> String {
        match self.pull(image, None).await {
            Ok(r) => r,
            Err(s) => panic!(
                "pull {image} failed: {:?}: {}\nberthd log tail:\n{}",
                s.code(),
                s.message(),
                self.log_tail(40)
            ),
        }
    }

    /// ImageStatus (image may be absent).
    pub async fn status(&self, image: &str) -> Result<Option<Image>, tonic::Status> {
        let mut c = self
            .images()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("connect: {e:#}")))?;
        let r = c
            .image_status(ImageStatusRequest {
                image: Some(spec(image)),
                verbose: false,
            })
            .await?;
        Ok(r.into_inner().image)
    }

    /// ListImages without a filter.
    pub async fn list(&self) -> Vec<Image> {
        let mut c = self.images().await.expect("connect");
        c.list_images(ListImagesRequest { filter: None })
            .await
            .expect("ListImages")
            .into_inner()
            .images
    }

    /// RemoveImage.
    pub async fn remove(&self, image: &str) -> Result<(), tonic::Status> {
        let mut c = self
            .images()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("connect: {e:#}")))?;
        c.remove_image(RemoveImageRequest {
            image: Some(spec(image)),
        })
        .await?;
        Ok(())
    }

    /// Every path under the root whose file name contains `needle`.
    pub fn find_in_root(&self, needle: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.root, &mut |p| {
            if p.file_name()
                .map(|n| n.to_string_lossy().contains(needle))
                .unwrap_or(false)
            {
                out.push(p.to_path_buf());
            }
        });
        out
    }
}

impl Daemon {
    /// Stops and removes every pod through the daemon, while it is still there. Pods that
    /// share a PID namespace are held by a `berth-shim pause` process whose command line names
    /// no path the drop guard could find. Runs on a runtime of its own: a test's runtime may
    /// be the one blocked in the caller's drop.
    pub fn remove_all_pods(&self) {
        std::thread::scope(|s| {
            s.spawn(|| {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                runtime.block_on(async {
                    let Ok(mut rt) = self.runtime().await else {
                        return;
                    };
                    let Ok(pods) = rt
                        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
                        .await
                    else {
                        return;
                    };
                    for p in pods.into_inner().items {
                        let _ = rt
                            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                                pod_sandbox_id: p.id.clone(),
                            })
                            .await;
                        let _ = rt
                            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                                pod_sandbox_id: p.id,
                            })
                            .await;
                    }
                });
            });
        });
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- berthd log tail ({}) ----\n{}\n----",
                self.log.display(),
                self.log_tail(80)
            );
        }
        self.stop();
        // Containers outlive berthd by design: end them (shims, runc state, cgroups) before
        // the dirs go, also when the test failed half-way.
        if let Some(b) = self.base.as_ref() {
            kill_containers_under(b.path(), &self.state);
        }
        remove_cgroup_tree(&self.cgroup_parent);
        // berthd may leave mounts under its dirs (e.g. the shared bind mount of
        // `<state>/ns`); detach them so the temp dir can be removed.
        if let Some(b) = self.base.as_ref() {
            unmount_under(b.path());
        }
        if std::env::var_os("BERTH_E2E_KEEP").is_some() {
            if let Some(b) = self.base.take() {
                eprintln!("keeping {}", b.keep().display());
            }
        }
    }
}

/// Calls `probe` until it finds nothing or five seconds have passed, and returns what it found
/// last: the kernel frees some things (a namespace and the veth in it, a cgroup) a moment after
/// their last user is gone.
pub fn settled<T>(probe: impl Fn() -> Vec<T>) -> Vec<T> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = probe();
        if found.is_empty() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes a test daemon's bridge and nftables table when dropped, also when the test failed.
pub struct NetGuard {
    pub bridge: &'static str,
    pub table: &'static str,
}

impl Drop for NetGuard {
    fn drop(&mut self) {
        for args in [
            &["ip", "link", "del", self.bridge][..],
            &["nft", "delete", "table", "ip", self.table],
        ] {
            let _ = Command::new(args[0])
                .args(&args[1..])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// PIDs of `berth-shim` processes whose command line names a path under `dir`.
pub fn shims_under(dir: &Path) -> Vec<i32> {
    let needle = dir.display().to_string();
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_shim = args.first().is_some_and(|a| a.ends_with("berth-shim"));
        if is_shim && args.iter().any(|a| a.starts_with(&needle)) {
            out.push(pid);
        }
    }
    out
}

/// Kills every container a daemon with this base dir left: `runc delete --force` for each
/// container in the runtime roots under `<state>/runtime`, then SIGKILL to leftover shims.
pub fn kill_containers_under(base: &Path, state: &Path) {
    if let Ok(roots) = std::fs::read_dir(state.join("runtime")) {
        for root in roots.flatten() {
            let root = root.path();
            let Ok(ids) = std::fs::read_dir(&root) else {
                continue;
            };
            for id in ids.flatten() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "--force"])
                    .arg(id.file_name())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
    for pid in shims_under(base) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Removes cgroup `parent` and everything below it in every hierarchy, deepest first, waiting
/// a moment for cgroups whose last process is still exiting.
pub fn remove_cgroup_tree(parent: &str) {
    let rel = parent.trim_start_matches('/');
    if rel.is_empty() {
        return;
    }
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut roots: Vec<PathBuf> = hierarchies.flatten().map(|h| h.path().join(rel)).collect();
    roots.push(Path::new("/sys/fs/cgroup").join(rel));
    for root in roots.into_iter().filter(|r| r.is_dir()) {
        let mut dirs = Vec::new();
        let mut stack = vec![root];
        while let Some(d) = stack.pop() {
            if let Ok(entries) = std::fs::read_dir(&d) {
                stack.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
            dirs.push(d);
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        // Whatever still runs in the tree (a pod's PID-namespace holder, a container whose
        // runtime state is gone) would keep its cgroup busy: it goes first.
        for d in &dirs {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        for d in dirs {
            settled(|| match std::fs::remove_dir(&d) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => vec![()],
                _ => Vec::new(),
            });
        }
    }
}

/// Mount points at or below `dir` (from /proc/self/mountinfo), deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// Lazily unmount everything mounted at or below `dir`.
pub fn unmount_under(dir: &Path) {
    for _ in 0..4 {
        let ms = mounts_under(dir);
        if ms.is_empty() {
            return;
        }
        for m in ms {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Walk a tree without following symlinks, calling `f` for every entry.
pub fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        f(&p);
        if let Ok(ft) = e.file_type() {
            if ft.is_dir() {
                walk(&p, f);
            }
        }
    }
}

/// An `ImageSpec` for a reference.
pub fn spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_string(),
        ..Default::default()
    }
}

/// AuthConfig with username/password.
pub fn basic_auth(user: &str, pass: &str) -> AuthConfig {
    AuthConfig {
        username: user.into(),
        password: pass.into(),
        ..Default::default()
    }
}

/// A `hack/tamper_proxy.py` instance in front of 127.0.0.1:5000.
pub struct Proxy {
    /// Listening port on 127.0.0.1.
    pub port: u16,
    /// JSON-lines request log.
    pub log: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Start a proxy with extra args (`--corrupt-blob D`, `--stall-blob D`, ...)
    /// on `port` (0 = pick a free one).
    pub fn start(port: u16, args: &[&str]) -> Result<Proxy> {
        let dir = tempfile::Builder::new().prefix("berth-proxy-").tempdir()?;
        let log = dir.path().join("requests.jsonl");
        let script = workspace_root().join("hack").join("tamper_proxy.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg("--port")
            .arg(port.to_string())
            .arg("--log")
            .arg(&log)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawning {}", script.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let port: u16 = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| anyhow!("unexpected proxy output {line:?}"))?
            .parse()?;
        Ok(Proxy {
            port,
            log,
            child,
            _dir: dir,
        })
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Parsed request log.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Number of logged GETs of a blob.
    pub fn blob_gets(&self, digest: &str) -> usize {
        let suffix = format!("/blobs/{digest}");
        self.requests()
            .iter()
            .filter(|r| {
                r["method"] == "GET" && r["path"].as_str().is_some_and(|p| p.ends_with(&suffix))
            })
            .count()
    }

    /// Whether the proxy has stalled a response yet.
    pub fn stalled(&self) -> bool {
        self.requests().iter().any(|r| r["action"] == "stalled")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Snapshot of a file's identity for before/after comparisons.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct FileFacts {
    /// content
    pub content: Vec<u8>,
    /// inode
    pub ino: u64,
    /// link count
    pub nlink: u64,
    /// mode
    pub mode: u32,
    /// mtime (ns)
    pub mtime_ns: i128,
}

/// Facts about a file (no symlink following).
pub fn file_facts(p: &Path) -> Result<FileFacts> {
    let m = std::fs::symlink_metadata(p)?;
    Ok(FileFacts {
        content: std::fs::read(p)?,
        ino: m.ino(),
        nlink: m.nlink(),
        mode: m.mode(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
    })
}

/// Sorted list of names in a dir (empty if missing).
pub fn dir_names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Read an xattr (None if absent).
pub fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    xattr::get(p, name).ok().flatten()
}

/// Find the image with this ID in a list.
pub fn find_image<'a>(list: &'a [Image], id: &str) -> Option<&'a Image> {
    list.iter().find(|i| i.id == id)
}
