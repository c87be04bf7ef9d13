use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub const DEFAULT_CONFIG: &str = "/etc/berth/config.toml";

/// `/etc/berth/config.toml`. Every field is optional; a missing file means all defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub root: PathBuf,
    pub state: PathBuf,
    pub listen: PathBuf,
    /// A tracing filter such as `info` or `berth_image=debug`; `RUST_LOG` wins when set.
    pub log_level: String,
    /// `text` for people, `json` (one object per line) for log collectors.
    pub log_format: LogFormat,
    pub registry: RegistryConfig,
    /// Pod networking: bridge, subnet, CNI directories (see docs/configuration.md).
    pub network: berth_network::NetworkConfig,
    /// cgroup parent for pods whose request names none (cgroupfs driver).
    pub cgroup_parent: String,
    /// The `berth-shim` binary; default: next to berthd, else from PATH.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shim_path: Option<PathBuf>,
    /// OCI runtimes (RuntimeClass handlers).
    pub runtime: RuntimeConfig,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// The exec / attach / port-forward server.
    pub streaming: StreamingConfig,
}

/// `[metrics]`, as containerd's: off until an address is given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` serving `GET /metrics`; empty means no endpoint.
    pub address: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[streaming]`: where the URLs of Exec, Attach and PortForward point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// Loopback by default, as containerd: kubelet on the same node is the only client.
    pub address: std::net::IpAddr,
    /// 0 (containerd's default) picks a free port at every start.
    pub port: u16,
    /// Serve HTTPS with this PEM certificate chain and key (both or neither).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// A stream with no traffic for this long is closed (kubelet: 4 h).
    pub idle_timeout_secs: u64,
    /// A streaming URL not used this long after its call stops working (kubelet: 1 min).
    pub token_ttl_secs: u64,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            address: std::net::IpAddr::from([127, 0, 0, 1]),
            port: 0,
            tls_cert: None,
            tls_key: None,
            idle_timeout_secs: 4 * 3600,
            token_ttl_secs: 60,
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
        // kubelet asks for the URL and uses it at once; more than an hour would only keep
        // leaked tokens usable.
        if !(1..=3600).contains(&self.token_ttl_secs) {
            anyhow::bail!(
                "streaming.token_ttl_secs must be 1 to 3600, not {}",
                self.token_ttl_secs
            );
        }
        Ok(berth_streaming::Config {
            addr: std::net::SocketAddr::new(self.address, self.port),
            tls,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            token_ttl: Duration::from_secs(self.token_ttl_secs),
            ..berth_streaming::Config::default()
        })
    }
}

/// `[runtime]`: which runc-compatible binaries run containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// The handler for pods that name none (an empty RuntimeClass handler).
    pub default_handler: String,
    /// Handler name (the RuntimeClass `handler`) → binary and state dir. Replaces the default
    /// `runc` entry when given.
    pub handlers: BTreeMap<String, HandlerConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerConfig {
    /// The runtime binary: a path, or a name looked up in PATH.
    pub path: PathBuf,
    /// Its `--root` state directory; default `<state>/runtime/<handler name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
            log_format: LogFormat::Text,
            registry: RegistryConfig::default(),
            network: berth_network::NetworkConfig::default(),
            cgroup_parent: "/berth".to_string(),
            shim_path: None,
            runtime: RuntimeConfig::default(),
            metrics: MetricsConfig::default(),
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
            Ok(text) => Self::parse(&text).with_context(|| format!("config {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading config {}", path.display())),
        }
    }
}

impl Config {
    /// Parses TOML text; an error names the key path (`registry.conect_timeout_secs`) and line.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                anyhow::anyhow!("{inner}")
            } else {
                anyhow::anyhow!("{path}: {inner}")
            }
        })
    }

    /// The config as TOML. With `comments`, every key is preceded by what it means and keys
    /// that are unset by default (no value to show) are written commented out with an example,
    /// so the output of `berthd config default` lists every key there is.
    pub fn render(&self, comments: bool) -> anyhow::Result<String> {
        let value = toml::Value::try_from(self).context("serializing the config")?;
        let table = value
            .as_table()
            .context("the config does not serialize to a table")?;
        let mut out = String::new();
        if comments {
            out.push_str(
                "# berthd configuration (/etc/berth/config.toml). Every key is optional; the\n\
                 # values below are the defaults. Unknown keys are an error.\n",
            );
        }
        render_table(&mut out, &[], table, comments);
        Ok(out)
    }
}

impl Config {
    /// One RuntimeClass per configured handler (`berthd config runtimeclasses`), named
    /// `berth-<handler>`; `manifests/runtimeclass.yaml` is this for the default config.
    pub fn runtime_classes(&self) -> anyhow::Result<String> {
        let mut out = String::from(
            "# RuntimeClasses for berth's handlers (`berthd config runtimeclasses`): a pod opts into\n\
             # an OCI runtime with runtimeClassName; the handler is what berth receives as\n\
             # runtime_handler. Pods naming none get runtime.default_handler.\n",
        );
        for (i, name) in self.runtime.handlers.keys().enumerate() {
            // A RuntimeClass handler must be a DNS label (the API server refuses others).
            if name.is_empty()
                || name.len() > 63
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                || name.starts_with('-')
                || name.ends_with('-')
            {
                anyhow::bail!(
                    "runtime.handlers: {name:?} is not a DNS label, so no RuntimeClass can name it"
                );
            }
            if i > 0 {
                out.push_str("---\n");
            }
            out.push_str(&format!(
                "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata:\n  name: berth-{name}\nhandler: {name}\n"
            ));
        }
        Ok(out)
    }
}

/// What a key means, for `config default`: `path` is dotted, `*` standing for any key of a map
/// (a handler name). `example` is for keys with no default value, shown commented out.
struct Doc {
    path: &'static str,
    text: &'static str,
    example: Option<&'static str>,
}

const fn doc(path: &'static str, text: &'static str) -> Doc {
    Doc {
        path,
        text,
        example: None,
    }
}

const fn optional(path: &'static str, text: &'static str, example: &'static str) -> Doc {
    Doc {
        path,
        text,
        example: Some(example),
    }
}

/// One entry per key; the unit test `every_key_is_documented` fails when a field is added to
/// a config struct without a line here (or a line outlives its field).
const DOCS: &[Doc] = &[
    doc("root", "Persistent state: content/, snapshots/, store/ (flag --root)."),
    doc("state", "Runtime state: namespaces, bundles, shim sockets (flag --state)."),
    doc("listen", "The CRI unix socket (flag --listen)."),
    doc(
        "log_level",
        "A tracing filter (RUST_LOG syntax) such as \"info\" or \"info,berth_image=debug\".\n\
         Precedence: the --log-level flag, then RUST_LOG, then this key.",
    ),
    doc(
        "log_format",
        "\"text\", or \"json\" (one object per line, for log collectors); flag --log-format.",
    ),
    doc("cgroup_parent", "cgroupfs parent of pods whose request names none."),
    optional(
        "shim_path",
        "The berth-shim binary; default: next to berthd, else from PATH.",
        "\"/usr/local/bin/berth-shim\"",
    ),
    doc("registry", "Image registries."),
    doc("registry.config_path", "containerd-style host settings: <config_path>/<host>/hosts.toml."),
    doc("registry.connect_timeout_secs", "TCP and TLS connect timeout."),
    doc("registry.request_timeout_secs", "Manifest, config and token requests."),
    doc("registry.progress_timeout_secs", "A blob download idle this long fails instead of hanging."),
    doc("registry.max_concurrent_downloads", "Layers fetched and unpacked at once, across all pulls."),
    doc("network", "Pod networking (built-in bridge mode unless cni_conf_dir has a config)."),
    doc("network.bridge", "Bridge of the built-in mode."),
    doc("network.subnet", "Pod IPs; the default moves to another private /16 if a node route overlaps it."),
    doc("network.mtu", "Pod eth0 and veth MTU."),
    doc("network.cni_conf_dir", "A .conflist/.conf/.json here switches pods to CNI mode."),
    doc("network.cni_bin_dirs", "Where CNI plugins are looked up."),
    doc("network.nft_table", "berth's own nftables table (family ip): masquerade and hostPort DNAT."),
    doc("network.state_dir", "CNI ADD results cache; the default follows root."),
    doc("runtime", "OCI runtimes: RuntimeClass handlers."),
    doc("runtime.default_handler", "The handler of pods whose RuntimeClass handler is empty."),
    doc("runtime.handlers", "Handler name (the RuntimeClass handler) -> runtime; giving any replaces the default runc entry."),
    doc("runtime.handlers.*", "A runc-compatible runtime."),
    doc("runtime.handlers.*.path", "The runtime binary: a path, or a name looked up in PATH."),
    optional(
        "runtime.handlers.*.root",
        "Its --root state directory; default <state>/runtime/<handler name>.",
        "\"/run/berth/runtime/runc\"",
    ),
    doc("streaming", "The exec / attach / port-forward server whose URLs Exec, Attach and PortForward return."),
    doc("streaming.address", "Listen address; loopback as containerd's (kubelet on the node is the client)."),
    doc("streaming.port", "Listen port; 0 (containerd's default) picks a free one at every start."),
    optional(
        "streaming.tls_cert",
        "Serve HTTPS with this PEM certificate chain (with tls_key).",
        "\"/etc/berth/streaming.crt\"",
    ),
    optional(
        "streaming.tls_key",
        "The PEM private key of tls_cert.",
        "\"/etc/berth/streaming.key\"",
    ),
    doc("streaming.idle_timeout_secs", "A stream with no traffic this long is closed (kubelet's 4 h)."),
    doc("streaming.token_ttl_secs", "A streaming URL not used this long after its call is refused with 404 (kubelet's 1 min; 1-3600)."),
    doc("metrics", "The Prometheus endpoint (off by default, as containerd's)."),
    doc(
        "metrics.address",
        "host:port serving GET /metrics, e.g. \"127.0.0.1:1338\"; empty: no endpoint.",
    ),
];

fn doc_for(path: &[&str]) -> Option<&'static Doc> {
    DOCS.iter().find(|d| {
        let parts: Vec<&str> = d.path.split('.').collect();
        parts.len() == path.len() && parts.iter().zip(path).all(|(p, k)| *p == "*" || p == k)
    })
}

fn push_doc(out: &mut String, path: &[&str], comments: bool) {
    if let Some(d) = doc_for(path).filter(|_| comments) {
        for line in d.text.lines() {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
    }
}

/// A bare key when TOML allows one, else a quoted one.
fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_string()
    } else {
        toml::Value::String(k.to_string()).to_string()
    }
}

fn render_table(out: &mut String, path: &[&str], table: &toml::Table, comments: bool) {
    // TOML wants a table's own keys before its subtables.
    for (k, v) in table.iter().filter(|(_, v)| !v.is_table()) {
        let p = [path, &[k.as_str()]].concat();
        push_doc(out, &p, comments);
        out.push_str(&format!("{} = {v}\n", toml_key(k)));
    }
    if comments {
        for d in DOCS {
            let Some(example) = d.example else { continue };
            let parts: Vec<&str> = d.path.split('.').collect();
            let (key, parent) = parts.split_last().expect("non-empty path");
            let here = parent.len() == path.len()
                && parent.iter().zip(path).all(|(p, k)| *p == "*" || p == k);
            if here && !table.contains_key(*key) {
                push_doc(out, &parts, comments);
                out.push_str(&format!("# {key} = {example}\n"));
            }
        }
    }
    for (k, v) in table.iter() {
        let Some(sub) = v.as_table() else { continue };
        let p = [path, &[k.as_str()]].concat();
        out.push('\n');
        push_doc(out, &p, comments);
        // A table holding only tables (a map of handlers) needs no header of its own.
        if sub.is_empty() || sub.values().any(|v| !v.is_table()) {
            let name: Vec<String> = p.iter().map(|k| toml_key(k)).collect();
            out.push_str(&format!("[{}]\n", name.join(".")));
        }
        render_table(out, &p, sub, comments);
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
    fn the_shipped_config_is_the_default_output() {
        // Regenerate with `berthd config default > manifests/config.toml`.
        assert_eq!(
            include_str!("../../../manifests/config.toml"),
            Config::default().render(true).unwrap()
        );
    }

    #[test]
    fn runtime_classes_name_every_handler() {
        // Regenerate with `berthd config runtimeclasses > manifests/runtimeclass.yaml`.
        assert_eq!(
            include_str!("../../../manifests/runtimeclass.yaml"),
            Config::default().runtime_classes().unwrap()
        );
        let text = full_config().runtime_classes().unwrap();
        assert!(
            text.contains("name: berth-runc-debug\nhandler: runc-debug\n"),
            "{text}"
        );
        assert_eq!(text.matches("kind: RuntimeClass").count(), 2);
        let mut c = Config::default();
        c.runtime.handlers.insert(
            "Fast_One".into(),
            HandlerConfig {
                path: "/x".into(),
                root: None,
            },
        );
        let e = c.runtime_classes().unwrap_err().to_string();
        assert!(e.contains("Fast_One"), "{e}");
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
    fn unknown_keys_are_refused_naming_the_key() {
        let e = Config::parse("roots = \"/x\"").unwrap_err().to_string();
        assert!(e.contains("roots"), "{e}");
        let e = Config::parse("[registry]\nconect_timeout_secs = 3\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("registry") && e.contains("conect_timeout_secs"),
            "{e}"
        );
        let e = Config::parse("[runtime.handlers.runc]\npath = \"runc\"\nroots = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("runtime.handlers.runc") && e.contains("roots"),
            "{e}"
        );
    }

    /// Every field set, options included, so every key appears when serialized.
    fn full_config() -> Config {
        let mut c = Config {
            shim_path: Some(PathBuf::from("/opt/berth-shim")),
            ..Config::default()
        };
        c.streaming.tls_cert = Some(PathBuf::from("/etc/berth/s.crt"));
        c.streaming.tls_key = Some(PathBuf::from("/etc/berth/s.key"));
        c.runtime.handlers.insert(
            "runc-debug".into(),
            HandlerConfig {
                path: PathBuf::from("/opt/runc"),
                root: Some(PathBuf::from("/run/x")),
            },
        );
        c
    }

    fn key_paths(prefix: &str, t: &toml::Table, out: &mut Vec<String>) {
        for (k, v) in t {
            let p = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            out.push(p.clone());
            if let Some(sub) = v.as_table() {
                key_paths(&p, sub, out);
            }
        }
    }

    #[test]
    fn every_key_is_documented_and_every_doc_names_a_key() {
        let v = toml::Value::try_from(full_config()).unwrap();
        let mut paths = Vec::new();
        key_paths("", v.as_table().unwrap(), &mut paths);
        for p in &paths {
            let parts: Vec<&str> = p.split('.').collect();
            assert!(
                doc_for(&parts).is_some(),
                "config key {p} has no entry in DOCS"
            );
        }
        for d in DOCS {
            let parts: Vec<&str> = d.path.split('.').collect();
            let used = paths.iter().any(|p| {
                let q: Vec<&str> = p.split('.').collect();
                q.len() == parts.len() && parts.iter().zip(&q).all(|(a, b)| *a == "*" || a == b)
            });
            assert!(used, "DOCS entry {} names no config key", d.path);
        }
    }

    #[test]
    fn default_output_lists_every_key_and_parses_back_to_the_defaults() {
        let text = Config::default().render(true).unwrap();
        for d in DOCS {
            let key = d.path.rsplit('.').next().unwrap();
            if key != "*" {
                assert!(text.contains(key), "{} missing from:\n{text}", d.path);
            }
        }
        assert!(text.contains("# shim_path = "), "{text}");
        assert!(
            text.contains("# root = \"/run/berth/runtime/runc\""),
            "{text}"
        );
        assert_eq!(Config::parse(&text).unwrap(), Config::default());
        // Uncommenting the examples gives a valid config too.
        let uncommented: String = text
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|r| r.contains(" = "))
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let c = Config::parse(&uncommented).unwrap();
        assert_eq!(
            c.shim_path,
            Some(PathBuf::from("/usr/local/bin/berth-shim"))
        );
    }

    #[test]
    fn dump_round_trips_a_changed_config() {
        let mut c = full_config();
        c.network.subnet = "10.99.0.0/16".parse().unwrap();
        c.log_level = "debug,h2=warn".into();
        for comments in [false, true] {
            let text = c.render(comments).unwrap();
            assert_eq!(Config::parse(&text).unwrap(), c, "{text}");
        }
        assert!(!c.render(false).unwrap().contains('#'));
    }

    #[test]
    fn missing_default_file_is_fine_but_missing_named_file_is_not() {
        assert!(Config::load(Some(Path::new("/nonexistent/berth.toml"))).is_err());
    }
}
