//! The per-pod files bind-mounted into every container of a pod: `hostname`, `hosts` and
//! `resolv.conf`. Rendering is pure (unit-tested without root); writes go through
//! `replace_file_volatile` (write-then-rename, no fsync: they live under `/run` and die with the
//! pods at reboot), so a reader never sees a half-written resolv.conf.
//!
//! Note: replacing a file by rename gives it a new inode, and a bind mount pins the old one.
//! Files must therefore be final before the first container is created; `update_hosts` is meant
//! for the window between network setup and container creation.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use berth_core::replace_file_volatile;

use crate::{Error, Result};

/// Kubernetes' limits for pod DNS search domains (`validation.MaxDNSSearchPaths` and
/// `MaxDNSSearchListChars`); glibc silently truncates beyond its own limits, so longer input is
/// refused rather than half-applied.
const MAX_SEARCHES: usize = 32;
const MAX_SEARCH_CHARS: usize = 2048;
/// DNS names are at most 253 characters.
const MAX_NAME: usize = 253;

/// The CRI `DNSConfig` of a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// Where the pod files were written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodFiles {
    pub hostname: PathBuf,
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
}

impl PodFiles {
    /// The file names used under a pod directory.
    pub fn in_dir(dir: &Path) -> Self {
        PodFiles {
            hostname: dir.join("hostname"),
            hosts: dir.join("hosts"),
            resolv_conf: dir.join("resolv.conf"),
        }
    }
}

/// Writes `hostname`, `hosts` and `resolv.conf` under `dir`.
///
/// - `hosts` lists localhost and, once known, the pod IPs with the hostname; call
///   [`update_hosts`] after network setup when the IPs come later.
/// - `resolv.conf` renders `dns`, or copies the host's /etc/resolv.conf when `dns` is `None`.
/// - `host_network`: `hosts` is a copy of the host's /etc/hosts (the pod shares the node's
///   addresses), and `resolv.conf` too unless `dns` is given.
pub fn write_pod_files(
    dir: &Path,
    hostname: &str,
    dns: Option<&DnsConfig>,
    host_network: bool,
    pod_ips: &[IpAddr],
) -> Result<PodFiles> {
    write_pod_files_from(Path::new("/etc"), dir, hostname, dns, host_network, pod_ips)
}

/// [`write_pod_files`] with the host's configuration read from `host_etc` instead of /etc.
pub fn write_pod_files_from(
    host_etc: &Path,
    dir: &Path,
    hostname: &str,
    dns: Option<&DnsConfig>,
    host_network: bool,
    pod_ips: &[IpAddr],
) -> Result<PodFiles> {
    validate_hostname(hostname)?;
    // Validate and render everything before writing anything.
    let resolv = match dns {
        Some(dns) => render_resolv_conf(dns)?.into_bytes(),
        None => read_host_file(&host_etc.join("resolv.conf"))?,
    };
    let hosts = if host_network {
        read_host_file(&host_etc.join("hosts"))?
    } else {
        render_hosts(hostname, pod_ips).into_bytes()
    };
    let files = PodFiles::in_dir(dir);
    write(&files.hostname, format!("{hostname}\n").as_bytes())?;
    write(&files.hosts, &hosts)?;
    write(&files.resolv_conf, &resolv)?;
    Ok(files)
}

/// Rewrites a pod's managed hosts file with the pod IPs known after network setup.
pub fn update_hosts(hosts: &Path, hostname: &str, pod_ips: &[IpAddr]) -> Result<()> {
    validate_hostname(hostname)?;
    write(hosts, render_hosts(hostname, pod_ips).as_bytes())
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    replace_file_volatile(path, data).map_err(|e| Error::io("write", path, e))
}

/// A missing host file is not worth failing a pod over (minimal hosts and test VMs lack them);
/// the pod then gets an empty file, as with runc's default.
fn read_host_file(path: &Path) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), "host file missing, pod gets an empty one");
            Ok(Vec::new())
        }
        Err(e) => Err(Error::io("read", path, e)),
    }
}

fn has_control_or_space(s: &str) -> bool {
    s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The pod hostname ends up in files whose format is line-based: no whitespace or control
/// characters, at most 64 bytes (HOST_NAME_MAX).
pub fn validate_hostname(hostname: &str) -> Result<()> {
    if hostname.is_empty() || hostname.len() > 64 {
        return Err(Error::invalid("hostname", "must be 1 to 64 bytes"));
    }
    if has_control_or_space(hostname) {
        return Err(Error::invalid(
            "hostname",
            "contains whitespace or a control character",
        ));
    }
    Ok(())
}

/// Checks a `DnsConfig` against injection and the Kubernetes limits.
pub fn validate_dns(dns: &DnsConfig) -> Result<()> {
    for (i, s) in dns.servers.iter().enumerate() {
        // An IPv6 link-local server may carry a zone (`fe80::1%eth0`), which resolv.conf accepts.
        let (addr, zone) = match s.split_once('%') {
            Some((a, z)) => (a, Some(z)),
            None => (s.as_str(), None),
        };
        let ok = match (addr.parse::<IpAddr>(), zone) {
            (Ok(_), None) => true,
            (Ok(IpAddr::V6(_)), Some(z)) => !z.is_empty() && !has_control_or_space(z),
            _ => false,
        };
        if !ok {
            return Err(Error::invalid(
                format!("dns_config.servers[{i}]"),
                format!("{s:?} is not an IP address"),
            ));
        }
    }
    if dns.searches.len() > MAX_SEARCHES {
        return Err(Error::invalid(
            "dns_config.searches",
            format!("more than {MAX_SEARCHES} entries"),
        ));
    }
    for (i, s) in dns.searches.iter().enumerate() {
        if s.is_empty() || s.len() > MAX_NAME || has_control_or_space(s) {
            return Err(Error::invalid(
                format!("dns_config.searches[{i}]"),
                format!("{s:?} is empty, longer than {MAX_NAME} characters or contains whitespace"),
            ));
        }
    }
    let search_chars = dns
        .searches
        .iter()
        .map(|s| s.len() + 1)
        .sum::<usize>()
        .saturating_sub(1);
    if search_chars > MAX_SEARCH_CHARS {
        return Err(Error::invalid(
            "dns_config.searches",
            format!("longer than {MAX_SEARCH_CHARS} characters in total"),
        ));
    }
    for (i, o) in dns.options.iter().enumerate() {
        if o.is_empty() || has_control_or_space(o) {
            return Err(Error::invalid(
                format!("dns_config.options[{i}]"),
                format!("{o:?} is empty or contains whitespace"),
            ));
        }
    }
    Ok(())
}

/// Renders resolv.conf: one `nameserver` line per server, then `search` and `options` lines.
pub fn render_resolv_conf(dns: &DnsConfig) -> Result<String> {
    validate_dns(dns)?;
    let mut out = String::new();
    for s in &dns.servers {
        let _ = writeln!(out, "nameserver {s}");
    }
    if !dns.searches.is_empty() {
        let _ = writeln!(out, "search {}", dns.searches.join(" "));
    }
    if !dns.options.is_empty() {
        let _ = writeln!(out, "options {}", dns.options.join(" "));
    }
    Ok(out)
}

/// Renders a pod's hosts file the way kubelet does for pods it manages.
pub fn render_hosts(hostname: &str, pod_ips: &[IpAddr]) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file (berth).\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    for ip in pod_ips {
        let _ = writeln!(out, "{ip}\t{hostname}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::{ErrorKind, HasKind};

    fn dns() -> DnsConfig {
        DnsConfig {
            servers: vec!["10.96.0.10".into(), "fd00::a".into(), "fe80::1%eth0".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into(), "edns0".into()],
        }
    }

    #[test]
    fn resolv_conf_lists_servers_searches_and_options() {
        assert_eq!(
            render_resolv_conf(&dns()).unwrap(),
            "nameserver 10.96.0.10\nnameserver fd00::a\nnameserver fe80::1%eth0\n\
             search default.svc.cluster.local svc.cluster.local\noptions ndots:5 edns0\n"
        );
        assert_eq!(render_resolv_conf(&DnsConfig::default()).unwrap(), "");
    }

    #[test]
    fn bad_server_is_named_by_index() {
        let mut d = dns();
        d.servers[1] = "dns.example.com".into();
        let err = render_resolv_conf(&d).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.to_string().contains("dns_config.servers[1]"), "{err}");
        d.servers[1] = "10.0.0.1%eth0".into();
        assert!(render_resolv_conf(&d)
            .unwrap_err()
            .to_string()
            .contains("servers[1]"));
    }

    #[test]
    fn newline_injection_is_refused_in_every_field() {
        type Mutation = fn(&mut DnsConfig);
        let cases: [(Mutation, &str); 4] = [
            (
                |d| d.servers[0] = "10.0.0.1\nnameserver 6.6.6.6".into(),
                "dns_config.servers[0]",
            ),
            (
                |d| d.searches[1] = "a\noptions debug".into(),
                "dns_config.searches[1]",
            ),
            (
                |d| d.options[0] = "ndots:5\nnameserver 6.6.6.6".into(),
                "dns_config.options[0]",
            ),
            (|d| d.searches[0] = "a\0b".into(), "dns_config.searches[0]"),
        ];
        for (mutate, field) in cases {
            let mut d = dns();
            mutate(&mut d);
            let err = render_resolv_conf(&d).unwrap_err();
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
        let err =
            update_hosts(Path::new("/nonexistent/hosts"), "web\n1.2.3.4 evil", &[]).unwrap_err();
        assert!(err.to_string().contains("hostname"), "{err}");
    }

    #[test]
    fn search_limits_follow_kubernetes() {
        let mut d = dns();
        d.searches = (0..33).map(|i| format!("s{i}.example")).collect();
        assert!(render_resolv_conf(&d)
            .unwrap_err()
            .to_string()
            .contains("dns_config.searches"));
        d.searches = (0..10).map(|_| "a".repeat(250)).collect();
        assert!(render_resolv_conf(&d)
            .unwrap_err()
            .to_string()
            .contains("2048"));
    }

    #[test]
    fn hosts_have_localhost_and_pod_ips() {
        let h = render_hosts(
            "web-0",
            &["10.88.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
        );
        assert!(h.contains("127.0.0.1\tlocalhost\n"));
        assert!(h.contains("::1\tlocalhost ip6-localhost ip6-loopback\n"));
        assert!(h.ends_with("10.88.0.5\tweb-0\nfd00::5\tweb-0\n"), "{h}");
        assert!(!render_hosts("web-0", &[]).contains("web-0"));
    }

    #[test]
    fn pod_files_are_written_and_hosts_updated_later() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("resolv.conf"), "nameserver 1.1.1.1\n").unwrap();
        std::fs::write(host.path().join("hosts"), "127.0.0.1 localhost node1\n").unwrap();
        let pod = tempfile::tempdir().unwrap();

        let t = std::time::Instant::now();
        let files =
            write_pod_files_from(host.path(), pod.path(), "web-0", None, false, &[]).unwrap();
        // Three atomic writes, each with two fsyncs: the cost on the disk under the pod dir.
        println!(
            "write_pod_files ({}): {:?}",
            pod.path().display(),
            t.elapsed()
        );
        assert_eq!(std::fs::read_to_string(&files.hostname).unwrap(), "web-0\n");
        assert_eq!(
            std::fs::read_to_string(&files.resolv_conf).unwrap(),
            "nameserver 1.1.1.1\n"
        );
        assert!(!std::fs::read_to_string(&files.hosts)
            .unwrap()
            .contains("web-0"));
        update_hosts(&files.hosts, "web-0", &["10.88.0.7".parse().unwrap()]).unwrap();
        assert!(std::fs::read_to_string(&files.hosts)
            .unwrap()
            .ends_with("10.88.0.7\tweb-0\n"));

        let files = write_pod_files_from(host.path(), pod.path(), "node1", Some(&dns()), true, &[])
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(&files.hosts).unwrap(),
            "127.0.0.1 localhost node1\n"
        );
        assert!(std::fs::read_to_string(&files.resolv_conf)
            .unwrap()
            .starts_with("nameserver 10.96.0.10\n"));
    }

    #[test]
    fn invalid_dns_writes_nothing_and_missing_host_file_is_empty() {
        let host = tempfile::tempdir().unwrap();
        let pod = tempfile::tempdir().unwrap();
        let mut d = dns();
        d.servers.push("nope".into());
        assert!(
            write_pod_files_from(host.path(), pod.path(), "web", Some(&d), false, &[]).is_err()
        );
        assert_eq!(std::fs::read_dir(pod.path()).unwrap().count(), 0);
        let files = write_pod_files_from(host.path(), pod.path(), "web", None, false, &[]).unwrap();
        assert_eq!(std::fs::read_to_string(files.resolv_conf).unwrap(), "");
    }
}
