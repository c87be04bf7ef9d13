//! CNI executor: runs the node's real CNI plugins the way libcni (kubelet's other runtimes) does.
//!
//! The network list is the lexically first `.conflist`/`.conf`/`.json` in the config dir. ADD
//! runs the plugins in order, chaining `prevResult`; DEL runs them in reverse with the cached ADD
//! result, also when the netns is already gone. The cache holds the exact list used for ADD so a
//! config change on the node does not make DEL run different plugins than ADD did.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{NetworkError, Result};
use crate::types::{DnsConfig, PortMapping};

/// How long one plugin invocation may take (containerd bounds the whole ADD by the CRI
/// request's deadline; kubelet's default for RunPodSandbox is 4 minutes).
const PLUGIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Runs `cmd` with `input` on stdin; `None` if it did not finish within `timeout` (it is then
/// killed). The waiter thread owns the child and drains its pipes; this thread only keeps the
/// clock, so a plugin that hangs (a stuck IPAM daemon, a dead netns) fails the pod instead of
/// pinning a RunPodSandbox thread forever.
fn run_with_timeout(
    mut cmd: Command,
    input: &[u8],
    timeout: std::time::Duration,
) -> std::io::Result<Option<std::process::Output>> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input)?;
    }
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(r) => r.map(Some),
        Err(_) => {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = rx.recv();
            Ok(None)
        }
    }
}

/// A parsed network list (a single-plugin `.conf` is wrapped into a list of one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ConfList {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    pub plugins: Vec<Value>,
}

fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let r = (
        it.next()??,
        it.next()?.unwrap_or(0),
        it.next()?.unwrap_or(0),
    );
    Some(r)
}

fn plugin_type(p: &Value) -> Option<&str> {
    p.get("type").and_then(Value::as_str)
}

/// A plugin type becomes a path under the bin dirs, so it must be a plain file name.
pub(crate) fn valid_plugin_type(t: &str) -> bool {
    !t.is_empty()
        && !t.contains('/')
        && !t.contains("..")
        && !t.starts_with('.')
        && !t.contains('\0')
}

impl ConfList {
    /// Parses a `.conflist` or (when `single` is set) a `.conf` and checks what berth relies on.
    pub fn parse(path: &Path, data: &[u8], single: bool) -> Result<Self> {
        let bad = |reason: String| NetworkError::CniConfig {
            path: path.to_path_buf(),
            reason,
        };
        let v: Value = serde_json::from_slice(data).map_err(|e| bad(format!("not json: {e}")))?;
        let list = if single || v.get("plugins").is_none() {
            let version = v.get("cniVersion").and_then(Value::as_str).unwrap_or("");
            let name = v.get("name").and_then(Value::as_str).unwrap_or("");
            ConfList {
                cni_version: version.into(),
                name: name.into(),
                plugins: vec![v.clone()],
            }
        } else {
            serde_json::from_value(v).map_err(|e| bad(format!("invalid network list: {e}")))?
        };
        if list.name.is_empty() {
            return Err(bad("name is empty".into()));
        }
        match parse_version(&list.cni_version) {
            Some(v) if v >= (0, 3, 0) => {}
            _ => {
                return Err(bad(format!(
                    "cniVersion {:?} is not supported (need 0.3.0 or later)",
                    list.cni_version
                )))
            }
        }
        if list.plugins.is_empty() {
            return Err(bad("plugins is empty".into()));
        }
        for (i, p) in list.plugins.iter().enumerate() {
            match plugin_type(p) {
                Some(t) if valid_plugin_type(t) => {}
                Some(t) => return Err(bad(format!("plugins[{i}].type {t:?} is not a file name"))),
                None => return Err(bad(format!("plugins[{i}] has no type"))),
            }
        }
        Ok(list)
    }

    pub fn supports_check(&self) -> bool {
        parse_version(&self.cni_version).is_some_and(|v| v >= (0, 4, 0))
    }
}

/// Picks the network list like libcni's `ConfFiles` + kubelet: lexically first file with a CNI
/// extension that parses; broken files are skipped with a warning.
pub(crate) fn select_conf(dir: &Path) -> Result<Option<(PathBuf, ConfList)>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(NetworkError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf" | "json")
            ) && p.is_file()
        })
        .collect();
    files.sort();
    for path in files {
        let single = path.extension().and_then(|e| e.to_str()) != Some("conflist");
        let parsed = fs::read(&path)
            .map_err(|source| NetworkError::Io {
                path: path.clone(),
                source,
            })
            .and_then(|data| ConfList::parse(&path, &data, single));
        match parsed {
            Ok(list) => return Ok(Some((path, list))),
            Err(e) => tracing::warn!(error = %e, "skipping cni config"),
        }
    }
    Ok(None)
}

/// The pod IP and gateway from a CNI result (0.3.x, 0.4.0 and 1.x all carry `ips[]`).
pub(crate) fn parse_result(result: &Value) -> Result<(IpAddr, Option<IpAddr>)> {
    let bad = |reason: &str| NetworkError::CniPlugin {
        plugin: "result".into(),
        command: "ADD",
        message: reason.into(),
    };
    let first = result
        .get("ips")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .ok_or_else(|| bad("result has no ips"))?;
    let addr = first
        .get("address")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("ips[0] has no address"))?;
    let ip = addr
        .split('/')
        .next()
        .and_then(|s| s.parse::<IpAddr>().ok())
        .ok_or_else(|| bad("ips[0].address is not an ip/prefix"))?;
    let gw = first
        .get("gateway")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok());
    Ok((ip, gw))
}

/// What DEL and CHECK need from the ADD.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CachedAdd {
    pub conflist: ConfList,
    pub result: Value,
    pub args: String,
}

pub(crate) struct Invocation<'a> {
    pub container_id: &'a str,
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
    pub args: &'a str,
    pub port_mappings: &'a [PortMapping],
    pub dns: Option<&'a DnsConfig>,
}

pub(crate) fn cni_args(namespace: &str, name: &str, pod_id: &str, uid: &str) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};\
         K8S_POD_INFRA_CONTAINER_ID={pod_id};K8S_POD_UID={uid}"
    )
}

pub(crate) struct Executor<'a> {
    pub bin_dirs: &'a [PathBuf],
}

impl Executor<'_> {
    pub fn find(&self, ty: &str) -> Option<PathBuf> {
        if !valid_plugin_type(ty) {
            return None;
        }
        self.bin_dirs
            .iter()
            .map(|d| d.join(ty))
            .find(|p| p.is_file())
    }

    /// The first plugin type of `list` with no binary, if any.
    pub fn missing_plugin(&self, list: &ConfList) -> Option<String> {
        list.plugins
            .iter()
            .filter_map(plugin_type)
            .find(|t| self.find(t).is_none())
            .map(str::to_string)
    }

    /// The stdin config of one plugin: its own object plus the list's name and version, the
    /// previous result, and `runtimeConfig` restricted to the capabilities it declares.
    fn plugin_config(
        list: &ConfList,
        plugin: &Value,
        inv: &Invocation,
        prev: Option<&Value>,
    ) -> Value {
        let mut conf = plugin.as_object().cloned().unwrap_or_default();
        conf.insert("name".into(), json!(list.name));
        conf.insert("cniVersion".into(), json!(list.cni_version));
        if let Some(prev) = prev {
            conf.insert("prevResult".into(), prev.clone());
        }
        let caps = plugin.get("capabilities").and_then(Value::as_object);
        let has = |c: &str| caps.and_then(|m| m.get(c)).and_then(Value::as_bool) == Some(true);
        let mut rc = Map::new();
        if has("portMappings") {
            let pms: Vec<Value> = inv
                .port_mappings
                .iter()
                .filter(|p| p.publishes())
                .map(|p| {
                    let mut m = json!({
                        "hostPort": p.host_port,
                        "containerPort": p.container_port,
                        "protocol": p.protocol.as_str(),
                    });
                    if let Some(ip) = p.bound_ip() {
                        m["hostIP"] = json!(ip.to_string());
                    }
                    m
                })
                .collect();
            rc.insert("portMappings".into(), Value::Array(pms));
        }
        if has("dns") {
            if let Some(d) = inv.dns {
                rc.insert(
                    "dns".into(),
                    json!({"servers": d.servers, "searches": d.searches, "options": d.options}),
                );
            }
        }
        conf.remove("runtimeConfig");
        if !rc.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(rc));
        }
        Value::Object(conf)
    }

    fn exec(
        &self,
        command: &'static str,
        list: &ConfList,
        plugin: &Value,
        inv: &Invocation,
        prev: Option<&Value>,
    ) -> Result<Option<Value>> {
        let ty = plugin_type(plugin).unwrap_or("");
        let fail = |message: String| NetworkError::CniPlugin {
            plugin: ty.into(),
            command,
            message,
        };
        let bin = self.find(ty).ok_or_else(|| NetworkError::CniConfig {
            path: PathBuf::from(ty),
            reason: format!("plugin binary {ty:?} not found in {:?}", self.bin_dirs),
        })?;
        let conf = Self::plugin_config(list, plugin, inv, prev);
        let cni_path = std::env::join_paths(self.bin_dirs).map_err(|e| fail(e.to_string()))?;
        let netns = inv
            .netns
            .filter(|p| p.exists())
            .map(|p| p.as_os_str().to_owned())
            .unwrap_or_default();
        let mut cmd = Command::new(&bin);
        cmd.env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", inv.container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", inv.ifname)
            .env("CNI_ARGS", inv.args)
            .env("CNI_PATH", cni_path);
        let input = serde_json::to_vec(&conf).map_err(|e| fail(e.to_string()))?;
        let out = run_with_timeout(cmd, &input, PLUGIN_TIMEOUT)
            .map_err(|e| fail(format!("run {}: {e}", bin.display())))?
            .ok_or_else(|| fail(format!("timed out after {}s", PLUGIN_TIMEOUT.as_secs())))?;
        if !out.status.success() {
            // Plugins report errors as {"code", "msg", "details"} on stdout.
            let msg = serde_json::from_slice::<Value>(&out.stdout)
                .ok()
                .map(|v| {
                    let m = v.get("msg").and_then(Value::as_str).unwrap_or("");
                    let d = v.get("details").and_then(Value::as_str).unwrap_or("");
                    if d.is_empty() {
                        m.to_string()
                    } else {
                        format!("{m}: {d}")
                    }
                })
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
            return Err(fail(format!("{} ({})", msg, out.status)));
        }
        if command != "ADD" {
            return Ok(None);
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|e| fail(format!("result is not json: {e}")))
    }

    /// ADD through the whole list; on failure, DEL what may have been done and return the error.
    pub fn add(&self, list: &ConfList, inv: &Invocation) -> Result<Value> {
        let mut prev: Option<Value> = None;
        for plugin in &list.plugins {
            match self.exec("ADD", list, plugin, inv, prev.as_ref()) {
                Ok(r) => prev = r,
                Err(e) => {
                    if let Err(d) = self.del(list, inv, prev.as_ref()) {
                        tracing::warn!(error = %d, "cni DEL after failed ADD");
                    }
                    return Err(e);
                }
            }
        }
        prev.ok_or_else(|| NetworkError::CniPlugin {
            plugin: list.name.clone(),
            command: "ADD",
            message: "no result".into(),
        })
    }

    /// DEL in reverse order. Every plugin is called even after a failure (one broken plugin must
    /// not leak another's state); the first error is returned.
    pub fn del(&self, list: &ConfList, inv: &Invocation, cached: Option<&Value>) -> Result<()> {
        let prev = if list.supports_check() { cached } else { None };
        let mut first_err = None;
        for plugin in list.plugins.iter().rev() {
            if let Err(e) = self.exec("DEL", list, plugin, inv, prev) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    pub fn check(&self, list: &ConfList, inv: &Invocation, cached: &Value) -> Result<()> {
        if !list.supports_check() {
            return Err(NetworkError::CniUnsupported {
                command: "CHECK",
                version: list.cni_version.clone(),
            });
        }
        for plugin in &list.plugins {
            self.exec("CHECK", list, plugin, inv, Some(cached))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Protocol;

    #[test]
    fn a_hanging_plugin_is_killed_at_the_timeout() {
        let started = std::time::Instant::now();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let out = run_with_timeout(cmd, b"{}", std::time::Duration::from_millis(200)).unwrap();
        assert!(out.is_none());
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let mut cmd = Command::new("cat");
        cmd.arg("-");
        let out = run_with_timeout(cmd, b"{\"ok\":1}", std::time::Duration::from_secs(5))
            .unwrap()
            .expect("finished");
        assert_eq!(out.stdout, b"{\"ok\":1}");
    }

    #[test]
    fn results_of_all_supported_versions_give_the_pod_ip() {
        let v100 = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
            "ips": [{"address": "10.22.0.5/16", "gateway": "10.22.0.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        });
        let v040 = json!({
            "cniVersion": "0.4.0",
            "ips": [{"version": "4", "address": "10.22.0.6/16", "gateway": "10.22.0.1", "interface": 2}]
        });
        let v6 = json!({"cniVersion": "0.3.1", "ips": [{"version": "6", "address": "fd00::5/64"}]});
        assert_eq!(
            parse_result(&v100).unwrap(),
            (
                "10.22.0.5".parse().unwrap(),
                Some("10.22.0.1".parse().unwrap())
            )
        );
        assert_eq!(
            parse_result(&v040).unwrap().0,
            "10.22.0.6".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            parse_result(&v6).unwrap(),
            ("fd00::5".parse().unwrap(), None)
        );
        assert!(
            parse_result(&json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.1/8"}})).is_err()
        );
        assert!(parse_result(&json!({"ips": [{"address": "nope"}]})).is_err());
    }

    #[test]
    fn first_valid_config_is_selected_lexically() {
        let dir = tempfile::tempdir().unwrap();
        assert!(select_conf(&dir.path().join("missing")).unwrap().is_none());
        assert!(select_conf(dir.path()).unwrap().is_none());
        let list = |name: &str| {
            json!({"cniVersion": "1.0.0", "name": name, "plugins": [{"type": "bridge"}]})
                .to_string()
        };
        fs::write(dir.path().join("20-b.conflist"), list("b")).unwrap();
        fs::write(
            dir.path().join("99-z.conf"),
            r#"{"cniVersion":"0.4.0","name":"z","type":"ptp"}"#,
        )
        .unwrap();
        fs::write(dir.path().join("README.txt"), "x").unwrap();
        fs::write(dir.path().join("05-broken.conflist"), "{").unwrap();
        let (path, l) = select_conf(dir.path()).unwrap().unwrap();
        assert_eq!(path.file_name().unwrap(), "20-b.conflist");
        assert_eq!(l.name, "b");
        fs::write(
            dir.path().join("10-a.conf"),
            r#"{"cniVersion":"0.3.1","name":"a","type":"ptp"}"#,
        )
        .unwrap();
        let (_, l) = select_conf(dir.path()).unwrap().unwrap();
        assert_eq!((l.name.as_str(), l.plugins.len()), ("a", 1));
        assert!(!l.supports_check());
    }

    #[test]
    fn path_like_plugin_types_are_refused() {
        for t in ["../../bin/sh", "/bin/sh", "a/b", "..", ".hidden", ""] {
            let data = json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": t}]});
            let err = ConfList::parse(Path::new("x.conflist"), data.to_string().as_bytes(), false)
                .unwrap_err();
            assert!(matches!(err, NetworkError::CniConfig { .. }), "{t}: {err}");
        }
        let exec = Executor {
            bin_dirs: &[PathBuf::from("/usr/lib/cni")],
        };
        assert!(exec.find("../../bin/sh").is_none());
        let old = json!({"cniVersion": "0.2.0", "name": "n", "plugins": [{"type": "bridge"}]});
        assert!(ConfList::parse(Path::new("x"), old.to_string().as_bytes(), false).is_err());
    }

    #[test]
    fn runtime_config_only_for_declared_capabilities() {
        let list = ConfList {
            cni_version: "1.0.0".into(),
            name: "net".into(),
            plugins: vec![],
        };
        let pms = [PortMapping {
            protocol: Protocol::Udp,
            container_port: 53,
            host_port: 5353,
            host_ip: Some("127.0.0.1".parse().unwrap()),
        }];
        let dns = DnsConfig {
            servers: vec!["1.1.1.1".into()],
            ..Default::default()
        };
        let inv = Invocation {
            container_id: "c",
            netns: None,
            ifname: "eth0",
            args: "",
            port_mappings: &pms,
            dns: Some(&dns),
        };
        let bridge = json!({"type": "bridge", "runtimeConfig": {"x": 1}});
        let c = Executor::plugin_config(&list, &bridge, &inv, Some(&json!({"ips": []})));
        assert_eq!(c["name"], "net");
        assert_eq!(c["cniVersion"], "1.0.0");
        assert!(c.get("runtimeConfig").is_none());
        assert!(c.get("prevResult").is_some());
        let portmap = json!({"type": "portmap", "capabilities": {"portMappings": true}});
        let c = Executor::plugin_config(&list, &portmap, &inv, None);
        assert_eq!(
            c["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}]})
        );
        let d = json!({"type": "x", "capabilities": {"dns": true, "portMappings": false}});
        let c = Executor::plugin_config(&list, &d, &inv, None);
        assert_eq!(c["runtimeConfig"]["dns"]["servers"][0], "1.1.1.1");
        assert!(c["runtimeConfig"].get("portMappings").is_none());
    }

    #[test]
    fn cni_args_carry_pod_identity() {
        assert_eq!(
            cni_args("ns", "web", "abc", "u-1"),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1"
        );
    }
}
