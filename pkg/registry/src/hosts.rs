//! Registry host settings read from containerd-style `certs.d/<host>/hosts.toml` files.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::RegistryError;

const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_UPSTREAM: &str = "registry-1.docker.io";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub pull: bool,
    pub resolve: bool,
    pub push: bool,
}

impl Capabilities {
    pub const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };
}

impl Default for Capabilities {
    fn default() -> Self {
        Self::ALL
    }
}

/// A client certificate; `key` is `None` when the key is in the same PEM file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: Option<PathBuf>,
}

/// One endpoint to try for a registry: a mirror or the upstream server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryHost {
    /// `https` or `http`.
    pub scheme: String,
    /// `host[:port]`, with brackets around IPv6 addresses.
    pub host: String,
    /// Path prefix of the distribution API, `/v2` unless `override_path` says otherwise.
    pub path_prefix: String,
    pub capabilities: Capabilities,
    pub ca_files: Vec<PathBuf>,
    pub client_certs: Vec<ClientCert>,
    pub skip_verify: bool,
    pub headers: Vec<(String, String)>,
    /// Try https first and fall back to plain http if the server does not speak TLS, as
    /// containerd's `HTTPFallback` does for local registries.
    pub http_fallback: bool,
}

impl RegistryHost {
    /// The API root, e.g. `https://registry-1.docker.io/v2`.
    pub fn base_url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.host, self.path_prefix)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ClientSpec {
    One(String),
    Many(Vec<OneOrMany>),
}

#[derive(Deserialize, Default)]
struct HostSection {
    server: Option<String>,
    capabilities: Option<Vec<String>>,
    ca: Option<OneOrMany>,
    client: Option<ClientSpec>,
    skip_verify: Option<bool>,
    header: Option<HashMap<String, OneOrMany>>,
    override_path: Option<bool>,
    #[serde(default)]
    host: BTreeMap<String, HostSection>,
}

/// Hosts to try for `registry`, mirrors first and the upstream server last.
///
/// Looks in `<config_path>/<host>_<port>_`, `<config_path>/<host:port>` and
/// `<config_path>/_default`, in that order, as containerd's `HostDirFromRoot` does.
pub fn hosts_for(config_path: &Path, registry: &str) -> Result<Vec<RegistryHost>, RegistryError> {
    let mut hosts = Vec::new();
    let mut server: Option<RegistryHost> = None;
    if let Some(dir) = host_dir(config_path, registry)? {
        let file = dir.join("hosts.toml");
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let (mirrors, root) = parse_hosts_file(&file, &dir, &text)?;
                hosts = mirrors;
                server = Some(root);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A directory without hosts.toml holds docker-style certificates.
                let mut root = default_host(registry);
                load_cert_dir(&dir, &mut root)?;
                server = Some(root);
            }
            Err(source) => return Err(RegistryError::Io { path: file, source }),
        }
    }
    let server = match server {
        Some(s) if !s.host.is_empty() => s,
        Some(partial) => RegistryHost {
            ca_files: partial.ca_files,
            client_certs: partial.client_certs,
            skip_verify: partial.skip_verify || default_host(registry).skip_verify,
            headers: partial.headers,
            ..default_host(registry)
        },
        None => default_host(registry),
    };
    hosts.push(server);
    Ok(hosts)
}

fn host_dir(root: &Path, registry: &str) -> Result<Option<PathBuf>, RegistryError> {
    if root.as_os_str().is_empty() {
        return Ok(None);
    }
    let mut candidates = Vec::new();
    if let Some(idx) = registry
        .rfind(':')
        .filter(|i| *i > 0 && !registry.ends_with(']'))
    {
        candidates.push(format!("{}_{}_", &registry[..idx], &registry[idx + 1..]));
    }
    candidates.push(registry.to_string());
    candidates.push("_default".to_string());
    for c in candidates {
        let p = root.join(c);
        match std::fs::metadata(&p) {
            Ok(m) if m.is_dir() => return Ok(Some(p)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(RegistryError::Io { path: p, source }),
        }
    }
    Ok(None)
}

fn is_localhost(host: &str) -> bool {
    let bare = split_port(host).0;
    let bare = bare.trim_start_matches('[').trim_end_matches(']');
    bare == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn split_port(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[') {
        return match host.rsplit_once("]:") {
            Some((h, p)) => (&host[..h.len() + 1], Some(p)),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (host, None),
    }
}

/// The upstream when nothing is configured, following containerd's `ConfigureHosts` defaults.
fn default_host(registry: &str) -> RegistryHost {
    let mut h = RegistryHost {
        scheme: "https".to_string(),
        host: registry.to_string(),
        path_prefix: "/v2".to_string(),
        capabilities: Capabilities::ALL,
        ca_files: Vec::new(),
        client_certs: Vec::new(),
        skip_verify: false,
        headers: Vec::new(),
        http_fallback: false,
    };
    if registry == DOCKER_HUB {
        h.host = DOCKER_HUB_UPSTREAM.to_string();
    } else if is_localhost(registry) {
        match split_port(registry).1 {
            None | Some("443") => h.skip_verify = true,
            Some("80") => h.scheme = "http".to_string(),
            Some(_) => {
                h.skip_verify = true;
                h.http_fallback = true;
            }
        }
    }
    h
}

fn bad(file: &Path, reason: impl Into<String>) -> RegistryError {
    RegistryError::HostsConfig {
        path: file.to_path_buf(),
        reason: reason.into(),
    }
}

/// Returns the mirrors in file order and the root (server) entry, whose `host` is empty when the
/// file names no server.
fn parse_hosts_file(
    file: &Path,
    dir: &Path,
    text: &str,
) -> Result<(Vec<RegistryHost>, RegistryHost), RegistryError> {
    let mut root: HostSection = toml::from_str(text).map_err(|e| bad(file, e.to_string()))?;
    let mut mirrors = Vec::new();
    let mut sections = std::mem::take(&mut root.host);
    for name in host_table_order(text) {
        if let Some(section) = sections.remove(&name) {
            mirrors.push(host_entry(file, dir, &name, section)?);
        }
    }
    // Entries the line scan could not place (inline tables) keep the parser's order.
    for (name, section) in sections {
        mirrors.push(host_entry(file, dir, &name, section)?);
    }
    let server = root.server.take();
    let root_entry = match server {
        Some(s) => host_entry(file, dir, &s, root)?,
        None => {
            let mut entry = host_entry(file, dir, "https://placeholder", root)?;
            entry.host.clear();
            entry
        }
    };
    Ok((mirrors, root_entry))
}

/// The `[host."..."]` table names in the order they appear: the TOML parser sorts keys, but
/// containerd tries mirrors in file order.
fn host_table_order(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(inner) = line.strip_prefix('[').filter(|l| !l.starts_with('[')) else {
            continue;
        };
        let Some(rest) = inner.trim_start().strip_prefix("host") else {
            continue;
        };
        let Some(key) = rest.trim_start().strip_prefix('.') else {
            continue;
        };
        // Let the TOML parser decode the (possibly quoted) key.
        let Some(end) = key.rfind(']') else { continue };
        let doc = format!("[t.{}]", &key[..end]);
        if let Ok(toml::Value::Table(t)) = toml::from_str::<toml::Value>(&doc) {
            if let Some(toml::Value::Table(inner)) = t.get("t") {
                if let Some(name) = inner.keys().next() {
                    if !out.contains(name) {
                        out.push(name.clone());
                    }
                }
            }
        }
    }
    out
}

fn host_entry(
    file: &Path,
    dir: &Path,
    url: &str,
    s: HostSection,
) -> Result<RegistryHost, RegistryError> {
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else {
        format!("https://{url}")
    };
    let u = reqwest::Url::parse(&with_scheme)
        .map_err(|e| bad(file, format!("invalid host url {url:?}: {e}")))?;
    let scheme = u.scheme().to_string();
    if scheme != "http" && scheme != "https" {
        return Err(bad(file, format!("unsupported scheme in {url:?}")));
    }
    let host_name = u
        .host_str()
        .ok_or_else(|| bad(file, format!("no host in {url:?}")))?;
    let host = match u.port() {
        Some(p) => format!("{host_name}:{p}"),
        None => host_name.to_string(),
    };
    let path = u.path().trim_end_matches('/');
    let path_prefix = if s.override_path.unwrap_or(false) {
        path.to_string()
    } else {
        if path.ends_with("/v2") {
            tracing::warn!(%url, file = %file.display(), "host path ends with /v2 and /v2 is appended again; set override_path = true to use the path as is");
        }
        format!("{path}/v2")
    };

    let capabilities = match s.capabilities {
        None => Capabilities::ALL,
        Some(list) => {
            let mut c = Capabilities {
                pull: false,
                resolve: false,
                push: false,
            };
            for cap in list {
                match cap.as_str() {
                    "pull" => c.pull = true,
                    "resolve" => c.resolve = true,
                    "push" => c.push = true,
                    other => return Err(bad(file, format!("unknown capability {other:?}"))),
                }
            }
            c
        }
    };
    let resolve = |p: String| -> PathBuf {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            dir.join(p)
        }
    };
    let ca_files: Vec<PathBuf> =
        s.ca.map(OneOrMany::into_vec)
            .unwrap_or_default()
            .into_iter()
            .map(resolve)
            .collect();
    let mut client_certs = Vec::new();
    match s.client {
        None => {}
        Some(ClientSpec::One(cert)) => client_certs.push(ClientCert {
            cert: resolve(cert),
            key: None,
        }),
        Some(ClientSpec::Many(list)) => {
            for item in list {
                match item {
                    OneOrMany::One(cert) => client_certs.push(ClientCert {
                        cert: resolve(cert),
                        key: None,
                    }),
                    OneOrMany::Many(pair) => {
                        let mut it = pair.into_iter();
                        match (it.next(), it.next(), it.next()) {
                            (Some(cert), key, None) => client_certs.push(ClientCert {
                                cert: resolve(cert),
                                key: key.filter(|k| !k.is_empty()).map(resolve),
                            }),
                            _ => return Err(bad(file, "client must be a [cert, key] pair")),
                        }
                    }
                }
            }
        }
    }
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut header_map: Vec<_> = s.header.unwrap_or_default().into_iter().collect();
    header_map.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, v) in header_map {
        for value in v.into_vec() {
            headers.push((k.clone(), value));
        }
    }
    let skip_verify = s.skip_verify.unwrap_or(false);
    let explicit_tls = !ca_files.is_empty() || !client_certs.is_empty() || s.skip_verify.is_some();
    // containerd: an http host with TLS settings is tried with TLS first.
    let (scheme, http_fallback) = if scheme == "http" && explicit_tls {
        ("https".to_string(), true)
    } else {
        (scheme, false)
    };
    Ok(RegistryHost {
        scheme,
        host,
        path_prefix,
        capabilities,
        ca_files,
        client_certs,
        skip_verify,
        headers,
        http_fallback,
    })
}

/// Docker's certs.d layout: `*.crt` are CAs, `name.cert` + `name.key` are client pairs.
fn load_cert_dir(dir: &Path, host: &mut RegistryHost) -> Result<(), RegistryError> {
    let io = |source| RegistryError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    names.sort();
    for p in names {
        match p.extension().and_then(|e| e.to_str()) {
            Some("crt") => host.ca_files.push(p),
            Some("cert") => {
                let key = p.with_extension("key");
                if key.exists() {
                    host.client_certs.push(ClientCert {
                        cert: p,
                        key: Some(key),
                    });
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, dir: &str, text: &str) {
        let d = root.join(dir);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("hosts.toml"), text).unwrap();
    }

    #[test]
    fn defaults_without_config() {
        let tmp = tempfile::tempdir().unwrap();
        let h = hosts_for(tmp.path(), "docker.io").unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].base_url(), "https://registry-1.docker.io/v2");
        assert_eq!(h[0].capabilities, Capabilities::ALL);
        assert!(!h[0].skip_verify && !h[0].http_fallback);

        let h = hosts_for(Path::new("/nonexistent/berth"), "quay.io").unwrap();
        assert_eq!(h[0].base_url(), "https://quay.io/v2");

        let h = hosts_for(tmp.path(), "localhost:5000").unwrap();
        assert_eq!(h[0].base_url(), "https://localhost:5000/v2");
        assert!(h[0].http_fallback && h[0].skip_verify);
        let h = hosts_for(tmp.path(), "127.0.0.1:5000").unwrap();
        assert!(h[0].http_fallback);
        let h = hosts_for(tmp.path(), "[::1]:5000").unwrap();
        assert!(h[0].http_fallback);
        assert_eq!(h[0].host, "[::1]:5000");
        let h = hosts_for(tmp.path(), "localhost:80").unwrap();
        assert_eq!(h[0].scheme, "http");
        let h = hosts_for(tmp.path(), "localhost").unwrap();
        assert_eq!(
            (h[0].scheme.as_str(), h[0].skip_verify, h[0].http_fallback),
            ("https", true, false)
        );
        let h = hosts_for(tmp.path(), "10.0.0.1:5000").unwrap();
        assert!(!h[0].http_fallback && !h[0].skip_verify);
    }

    #[test]
    fn mirrors_come_first_in_file_order() {
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            "docker.io",
            r#"
server = "https://registry-1.docker.io"

[host."https://z-mirror.example.com"]
  capabilities = ["pull", "resolve"]
  ca = "certs/ca.pem"
  [host."https://z-mirror.example.com".header]
    x-token = ["a", "b"]

[host."http://a-mirror:5000"]
  capabilities = ["pull"]

[host."https://b-mirror.example.com/prefix"]
  override_path = true
  skip_verify = true
  ca = ["/abs/ca.pem", "rel.pem"]
  client = [["c.cert", "c.key"], "both.pem"]
"#,
        );
        let h = hosts_for(tmp.path(), "docker.io").unwrap();
        let urls: Vec<String> = h.iter().map(RegistryHost::base_url).collect();
        assert_eq!(
            urls,
            [
                "https://z-mirror.example.com/v2",
                "http://a-mirror:5000/v2",
                "https://b-mirror.example.com/prefix",
                "https://registry-1.docker.io/v2",
            ]
        );
        let dir = tmp.path().join("docker.io");
        assert_eq!(h[0].ca_files, vec![dir.join("certs/ca.pem")]);
        assert_eq!(
            h[0].capabilities,
            Capabilities {
                pull: true,
                resolve: true,
                push: false
            }
        );
        assert_eq!(
            h[0].headers,
            vec![
                ("x-token".into(), "a".into()),
                ("x-token".into(), "b".into())
            ]
        );
        assert!(h[1].capabilities.pull && !h[1].capabilities.resolve);
        assert!(!h[1].http_fallback);
        assert!(h[2].skip_verify);
        assert_eq!(
            h[2].ca_files,
            vec![PathBuf::from("/abs/ca.pem"), dir.join("rel.pem")]
        );
        assert_eq!(
            h[2].client_certs,
            vec![
                ClientCert {
                    cert: dir.join("c.cert"),
                    key: Some(dir.join("c.key"))
                },
                ClientCert {
                    cert: dir.join("both.pem"),
                    key: None
                }
            ]
        );
        assert_eq!(h[3].capabilities, Capabilities::ALL);
    }

    #[test]
    fn server_settings_and_port_directories() {
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            "127.0.0.1:5000",
            r#"
server = "http://127.0.0.1:5000"
[header]
  authorization-hint = "x"
"#,
        );
        let h = hosts_for(tmp.path(), "127.0.0.1:5000").unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].base_url(), "http://127.0.0.1:5000/v2");
        assert!(!h[0].http_fallback);
        assert_eq!(
            h[0].headers,
            vec![("authorization-hint".into(), "x".into())]
        );

        // containerd's `host_port_` directory spelling wins over `host:port`.
        write(
            tmp.path(),
            "127.0.0.1_5000_",
            "server = \"http://127.0.0.1:5000\"\nskip_verify = true\n",
        );
        let h = hosts_for(tmp.path(), "127.0.0.1:5000").unwrap();
        assert_eq!(h[0].scheme, "https");
        assert!(h[0].http_fallback && h[0].skip_verify);
    }

    #[test]
    fn default_directory_and_missing_server() {
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            "_default",
            "ca = \"ca.pem\"\n[host.\"https://mirror.local\"]\ncapabilities = [\"pull\", \"resolve\"]\n",
        );
        let h = hosts_for(tmp.path(), "quay.io").unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].base_url(), "https://mirror.local/v2");
        assert_eq!(h[1].base_url(), "https://quay.io/v2");
        assert_eq!(h[1].ca_files, vec![tmp.path().join("_default/ca.pem")]);
    }

    #[test]
    fn certificate_directory_without_hosts_toml() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("reg.example.com");
        std::fs::create_dir_all(&d).unwrap();
        for f in ["ca.crt", "client.cert", "client.key", "other.cert"] {
            std::fs::write(d.join(f), "x").unwrap();
        }
        let h = hosts_for(tmp.path(), "reg.example.com").unwrap();
        assert_eq!(h[0].ca_files, vec![d.join("ca.crt")]);
        assert_eq!(
            h[0].client_certs,
            vec![ClientCert {
                cert: d.join("client.cert"),
                key: Some(d.join("client.key"))
            }]
        );
    }

    #[test]
    fn invalid_files_are_reported_with_their_path() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "a.io", "server = [");
        let e = hosts_for(tmp.path(), "a.io").unwrap_err();
        assert!(e.to_string().contains("hosts.toml"), "{e}");
        write(tmp.path(), "b.io", "[host.\"ftp://x\"]\n");
        assert!(hosts_for(tmp.path(), "b.io").is_err());
        write(tmp.path(), "c.io", "capabilities = [\"fly\"]\n");
        assert!(hosts_for(tmp.path(), "c.io").is_err());
    }
}
