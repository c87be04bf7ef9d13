use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

pub const DEFAULT_CONFIG: &str = "/etc/berth/config.toml";

/// `/etc/berth/config.toml`. Every field is optional; a missing file means all defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub root: PathBuf,
    pub state: PathBuf,
    pub listen: PathBuf,
    /// A tracing filter such as `info` or `berth_image=debug`; `RUST_LOG` wins when set.
    pub log_level: String,
    pub registry: RegistryConfig,
    /// Pod networking: bridge, subnet, CNI directories (see docs/configuration.md).
    pub network: berth_network::NetworkConfig,
    /// cgroup parent for pods whose request names none (cgroupfs driver).
    pub cgroup_parent: String,
    /// The `berth-shim` binary; default: next to berthd, else from PATH.
    pub shim_path: Option<PathBuf>,
    /// OCI runtimes (RuntimeClass handlers).
    pub runtime: RuntimeConfig,
    /// The exec / attach / port-forward server.
    pub streaming: StreamingConfig,
}

/// `[streaming]`: where the URLs of Exec, Attach and PortForward point.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// Loopback by default, as containerd: kubelet on the same node is the only client.
    pub address: std::net::IpAddr,
    /// 0 (containerd's default) picks a free port at every start.
    pub port: u16,
    /// Serve HTTPS with this PEM certificate chain and key (both or neither).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// A stream with no traffic for this long is closed (kubelet: 4 h).
    pub idle_timeout_secs: u64,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            address: std::net::IpAddr::from([127, 0, 0, 1]),
            port: 0,
            tls_cert: None,
            tls_key: None,
            idle_timeout_secs: 4 * 3600,
        }
    }
}

impl StreamingConfig {
    pub fn server_config(&self) -> anyhow::Result<berth_streaming::Config> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(berth_streaming::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => None,
            _ => anyhow::bail!("streaming: tls_cert and tls_key must be given together"),
        };
        if self.idle_timeout_secs == 0 {
            anyhow::bail!("streaming.idle_timeout_secs must be positive");
        }
        Ok(berth_streaming::Config {
            addr: std::net::SocketAddr::new(self.address, self.port),
            tls,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            ..berth_streaming::Config::default()
        })
    }
}

/// `[runtime]`: which runc-compatible binaries run containers.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// The handler for pods that name none (an empty RuntimeClass handler).
    pub default_handler: String,
    /// Handler name (the RuntimeClass `handler`) → binary and state dir. Replaces the default
    /// `runc` entry when given.
    pub handlers: BTreeMap<String, HandlerConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerConfig {
    /// The runtime binary: a path, or a name looked up in PATH.
    pub path: PathBuf,
    /// Its `--root` state directory; default `<state>/runtime/<handler name>`.
    #[serde(default)]
    pub root: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            default_handler: "runc".to_string(),
            handlers: BTreeMap::from([(
                "runc".to_string(),
                HandlerConfig {
                    path: PathBuf::from("runc"),
                    root: None,
                },
            )]),
        }
    }
}

impl RuntimeConfig {
    /// The handlers with every path made absolute, checked against `default_handler`.
    pub fn handlers(&self, state: &Path) -> anyhow::Result<Vec<berth_runtime::runc::Handler>> {
        if !self.handlers.contains_key(&self.default_handler) {
            anyhow::bail!(
                "runtime.default_handler {:?} is not one of runtime.handlers ({:?})",
                self.default_handler,
                self.handlers.keys().collect::<Vec<_>>()
            );
        }
        self.handlers
            .iter()
            .map(|(name, h)| {
                if name.is_empty() || name.contains(['/', '\0']) {
                    anyhow::bail!("runtime.handlers: {name:?} is not a valid handler name");
                }
                Ok(berth_runtime::runc::Handler {
                    name: name.clone(),
                    path: find_in_path(&h.path),
                    root: h
                        .root
                        .clone()
                        .unwrap_or_else(|| state.join("runtime").join(name)),
                })
            })
            .collect()
    }
}

/// `runc` → `/usr/sbin/runc` when PATH has it; paths and missing binaries stay as given (Status
/// then reports the runtime as not ready).
fn find_in_path(bin: &Path) -> PathBuf {
    if bin.components().count() > 1 {
        return bin.to_path_buf();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(bin))
        .find(|p| p.is_file())
        .unwrap_or_else(|| bin.to_path_buf())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// containerd-style `certs.d` directory: `<config_path>/<host>/hosts.toml`.
    pub config_path: PathBuf,
    pub connect_timeout_secs: u64,
    pub request_timeout_secs: u64,
    /// A blob download that receives no byte for this long fails instead of hanging.
    pub progress_timeout_secs: u64,
    /// Layers downloaded (and unpacked) at once, across all pulls.
    pub max_concurrent_downloads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/var/lib/berth"),
            state: PathBuf::from("/run/berth"),
            listen: PathBuf::from("/run/berth/berth.sock"),
            log_level: "info".to_string(),
            registry: RegistryConfig::default(),
            network: berth_network::NetworkConfig::default(),
            cgroup_parent: "/berth".to_string(),
            shim_path: None,
            runtime: RuntimeConfig::default(),
            streaming: StreamingConfig::default(),
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            config_path: PathBuf::from("/etc/berth/certs.d"),
            connect_timeout_secs: 10,
            request_timeout_secs: 30,
            progress_timeout_secs: 30,
            max_concurrent_downloads: 3,
        }
    }
}

impl RegistryConfig {
    pub fn client_options(&self) -> berth_registry::ClientOptions {
        berth_registry::ClientOptions {
            connect_timeout: Duration::from_secs(self.connect_timeout_secs),
            request_timeout: Duration::from_secs(self.request_timeout_secs),
            progress_timeout: Duration::from_secs(self.progress_timeout_secs),
            ..Default::default()
        }
    }
}

impl Config {
    /// Reads `path`; the default path may be absent, an explicitly named one may not.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let (path, explicit) = match path {
            Some(p) => (p, true),
            None => (Path::new(DEFAULT_CONFIG), false),
        };
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).with_context(|| format!("config {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading config {}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults_and_partial_tables_merge() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c.root, PathBuf::from("/var/lib/berth"));
        let c: Config = toml::from_str("[registry]\nconfig_path = \"/x\"\n").unwrap();
        assert_eq!(c.registry.config_path, PathBuf::from("/x"));
        assert_eq!(c.registry.progress_timeout_secs, 30);
    }

    #[test]
    fn runtime_handlers_default_to_runc_and_can_be_replaced() {
        let c: Config = toml::from_str("").unwrap();
        let h = c.runtime.handlers(Path::new("/run/berth")).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].name, "runc");
        assert_eq!(h[0].root, PathBuf::from("/run/berth/runtime/runc"));
        let c: Config = toml::from_str(
            "[runtime]\ndefault_handler = \"fast\"\n[runtime.handlers.fast]\npath = \"/opt/fast/runc\"\nroot = \"/run/fast\"\n",
        )
        .unwrap();
        let h = c.runtime.handlers(Path::new("/run/berth")).unwrap();
        assert_eq!(h[0].path, PathBuf::from("/opt/fast/runc"));
        assert_eq!(h[0].root, PathBuf::from("/run/fast"));
        let c: Config = toml::from_str("[runtime]\ndefault_handler = \"kata\"\n").unwrap();
        assert!(c.runtime.handlers(Path::new("/run")).is_err());
    }

    #[test]
    fn the_shipped_config_parses_to_the_defaults() {
        let c: Config = toml::from_str(include_str!("../../../manifests/config.toml")).unwrap();
        let d = Config::default();
        assert_eq!(c.root, d.root);
        assert_eq!(c.runtime.default_handler, d.runtime.default_handler);
        assert_eq!(
            c.runtime.handlers(&c.state).unwrap(),
            d.runtime.handlers(&d.state).unwrap()
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("roots = \"/x\"").is_err());
    }

    #[test]
    fn missing_default_file_is_fine_but_missing_named_file_is_not() {
        assert!(Config::load(Some(Path::new("/nonexistent/berth.toml"))).is_err());
    }
}
