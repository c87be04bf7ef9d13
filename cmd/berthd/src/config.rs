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
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("roots = \"/x\"").is_err());
    }

    #[test]
    fn missing_default_file_is_fine_but_missing_named_file_is_not() {
        assert!(Config::load(Some(Path::new("/nonexistent/berth.toml"))).is_err());
    }
}
