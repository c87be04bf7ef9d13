//! `berthctl netns` (berth only, not in crictl): a pod's network as berthd sees it — IP, mode,
//! host veth, routes inside the netns, hostPort rules — with its namespace paths and cgroup,
//! taken from the verbose PodSandboxStatus (`info["info"]`).

use std::fmt::Write as _;

use anyhow::{bail, Context, Result};
use k8s_cri::v1::PodSandboxStatusRequest;
use serde_json::{json, Value};

use crate::client::GlobalOpts;
use crate::output::{self, ListFormat};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Pod to show
    #[arg(value_name = "POD-ID")]
    id: String,
    /// Output format: a text summary (table) or the raw objects
    #[arg(short, long, value_enum, default_value = "table")]
    output: ListFormat,
}

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    let mut c = g.runtime_client().await?;
    let req = PodSandboxStatusRequest {
        pod_sandbox_id: args.id.clone(),
        verbose: true,
    };
    let what = format!("pod sandbox status of {:?}", args.id);
    let r = g
        .call(&what, Some(g.call_timeout()), req, |r| {
            c.pod_sandbox_status(r)
        })
        .await?;
    let id = r.status.as_ref().map_or(args.id.clone(), |s| s.id.clone());
    let Some(info) = r.info.get("info") else {
        bail!("the runtime returned no verbose info for pod {id:?} (is it berthd?)");
    };
    let info: Value = serde_json::from_str(info).context("parse the pod's verbose info")?;
    let view = netns_view(&id, &info);
    match args.output.structured() {
        Some(fmt) => output::print(&view, fmt),
        None => {
            print!("{}", format_netns(&view));
            Ok(())
        }
    }
}

/// The parts of berthd's verbose info that `netns` shows, as berthd produced them.
fn netns_view(id: &str, info: &Value) -> Value {
    json!({
        "podId": id,
        "network": info.get("network").cloned().unwrap_or(Value::Null),
        "namespaces": info.get("namespaces").cloned().unwrap_or(Value::Null),
        "cgroupPath": info.get("cgroupPath").cloned().unwrap_or(Value::Null),
    })
}

/// A JSON string as text, anything else (numbers, objects) as JSON, null as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) if s.is_empty() => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `{"type": "builtin"}` → `builtin`; `{"type": "cni", "network_name": "x"}` → `cni (network x)`.
fn mode_text(mode: &Value) -> String {
    let kind = text(&mode["type"]);
    match mode.get("network_name").and_then(Value::as_str) {
        Some(name) => format!("{kind} (network {name})"),
        None => kind,
    }
}

/// The text summary of a `netns_view` object.
fn format_netns(view: &Value) -> String {
    let mut out = String::new();
    let net = &view["network"];
    let _ = writeln!(out, "Pod:          {}", text(&view["podId"]));
    if net.is_null() {
        let _ = writeln!(
            out,
            "Network:      none (host network, or the pod is not ready)"
        );
    } else {
        let _ = writeln!(out, "Mode:         {}", mode_text(&net["mode"]));
        let _ = writeln!(out, "Netns:        {}", text(&net["netns"]));
        let _ = writeln!(out, "IP:           {}", text(&net["ip"]));
        let _ = writeln!(out, "Gateway:      {}", text(&net["gateway"]));
        let _ = writeln!(out, "Interface:    {}", text(&net["interface"]));
        let veth = text(&net["host_veth"]);
        match net.get("host_veth_ifindex").and_then(Value::as_u64) {
            Some(ix) => {
                let _ = writeln!(out, "Host veth:    {veth} (ifindex {ix})");
            }
            None if veth != "-" => {
                let _ = writeln!(out, "Host veth:    {veth} (not found on the host)");
            }
            None => {
                let _ = writeln!(out, "Host veth:    -");
            }
        }
        let _ = writeln!(out, "IPAM lease:   {}", text(&net["lease"]));
        out.push_str("Addresses:\n");
        match &net["addresses"] {
            Value::Array(addrs) => {
                for a in addrs {
                    let _ = writeln!(
                        out,
                        "  {} (ifindex {})",
                        text(&a["address"]),
                        text(&a["index"])
                    );
                }
            }
            other => list_error(&mut out, other),
        }
        out.push_str("Routes:\n");
        match &net["routes"] {
            Value::Array(routes) => {
                for r in routes {
                    let dst = match r["dst"].as_str() {
                        Some("0.0.0.0/0") | Some("::/0") => "default".to_string(),
                        _ => text(&r["dst"]),
                    };
                    let mut line = format!("  {dst}");
                    if let Some(gw) = r["gateway"].as_str() {
                        let _ = write!(line, " via {gw}");
                    }
                    if !r["oif"].is_null() {
                        let _ = write!(line, " oif {}", text(&r["oif"]));
                    }
                    let _ = writeln!(out, "{line}");
                }
            }
            // berthd leaves routes null when it could not enter the netns: the error is
            // reported under addresses already
            Value::Null => out.push_str("  -\n"),
            other => list_error(&mut out, other),
        }
        out.push_str("Host ports:\n");
        match net["hostports"].as_array() {
            Some(hp) if !hp.is_empty() => {
                for h in hp {
                    let _ = writeln!(out, "  {}", text(h));
                }
            }
            _ => out.push_str("  none\n"),
        }
        if let Some(table) = net.get("nft_table").and_then(Value::as_str) {
            // the table holds every pod's rules: show this pod's (`-o json` has it all)
            out.push_str("nftables elements:\n");
            let mine = pod_nft_elements(table, &text(&view["podId"]));
            if mine.is_empty() {
                out.push_str("  none for this pod\n");
            }
            for e in mine {
                let _ = writeln!(out, "  {e}");
            }
        }
        if let Some(cni) = net.get("cni_result").filter(|v| !v.is_null()) {
            out.push_str("CNI result:\n");
            let pretty = serde_json::to_string_pretty(cni).unwrap_or_else(|_| cni.to_string());
            for line in pretty.lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    out.push_str("Namespaces:\n");
    match view["namespaces"].as_object() {
        Some(ns) if ns.values().any(|v| !v.is_null()) => {
            for (kind, path) in ns.iter().filter(|(_, p)| !p.is_null()) {
                let _ = writeln!(out, "  {kind:<4} {}", text(path));
            }
        }
        _ => out.push_str("  none pinned (host namespaces)\n"),
    }
    let _ = writeln!(out, "Cgroup:       {}", text(&view["cgroupPath"]));
    out
}

/// The map elements of `nft list table` output that berthd commented with this pod's ID.
fn pod_nft_elements<'a>(table: &'a str, pod_id: &str) -> Vec<&'a str> {
    let tag = format!("\"pod {pod_id}\"");
    table
        .split(['{', '}', ',', '\n'])
        .map(str::trim)
        .filter(|e| e.contains(&tag))
        .collect()
}

fn list_error(out: &mut String, v: &Value) {
    match v.get("error").and_then(Value::as_str) {
        Some(e) => {
            let _ = writeln!(out, "  error: {e}");
        }
        None => {
            let _ = writeln!(out, "  {}", text(v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What berthd's `status_info` returns for a builtin-network pod with a hostPort.
    fn info() -> Value {
        json!({
            "pid": null,
            "namespaces": {"net": "/run/berth/ns/net/p1", "ipc": "/run/berth/ns/ipc/p1", "uts": null},
            "cgroupPath": "/berth/pod-p1",
            "hostname": "p1",
            "network": {
                "pod_id": "p1",
                "netns": "/run/berth/ns/net/p1",
                "mode": {"type": "builtin"},
                "ip": "10.88.0.2",
                "gateway": "10.88.0.1",
                "interface": "eth0",
                "host_veth": "vethb1a2b3c4",
                "host_veth_ifindex": 7,
                "lease": "10.88.0.2",
                "addresses": [{"index": 2, "address": "10.88.0.2/16"}],
                "routes": [
                    {"dst": "0.0.0.0/0", "gateway": "10.88.0.1", "oif": 2},
                    {"dst": "10.88.0.0/16", "gateway": null, "oif": 2}
                ],
                "hostports": ["tcp *:8080 -> 10.88.0.2:80"],
                "nft_table": "table ip berth {\n\tmap hp_any {\n\t\telements = { tcp . 8080 comment \"pod p1\" : 10.88.0.2 . 80,\n\t\t\t     udp . 53 comment \"pod p2\" : 10.88.0.3 . 53 }\n\t}\n}\n"
            }
        })
    }

    #[test]
    fn view_keeps_network_namespaces_and_cgroup() {
        let v = netns_view("p1", &info());
        assert_eq!(v["podId"], "p1");
        assert_eq!(v["network"]["ip"], "10.88.0.2");
        assert_eq!(v["namespaces"]["net"], "/run/berth/ns/net/p1");
        assert_eq!(v["cgroupPath"], "/berth/pod-p1");
        assert!(v.get("hostname").is_none());
    }

    #[test]
    fn summary_shows_ip_veth_routes_and_hostports() {
        let s = format_netns(&netns_view("p1", &info()));
        for want in [
            "Mode:         builtin\n",
            "IP:           10.88.0.2\n",
            "Host veth:    vethb1a2b3c4 (ifindex 7)\n",
            "  10.88.0.2/16 (ifindex 2)\n",
            "  default via 10.88.0.1 oif 2\n",
            "  10.88.0.0/16 oif 2\n",
            "  tcp *:8080 -> 10.88.0.2:80\n",
            "  net  /run/berth/ns/net/p1\n",
            "nftables elements:\n  tcp . 8080 comment \"pod p1\" : 10.88.0.2 . 80\n",
            "Cgroup:       /berth/pod-p1\n",
        ] {
            assert!(s.contains(want), "{want:?} missing from:\n{s}");
        }
        assert!(!s.contains("uts"), "{s}");
        assert!(!s.contains("pod p2"), "{s}");
    }

    #[test]
    fn summary_of_host_network_and_errors() {
        let host = json!({"namespaces": null, "cgroupPath": "/berth/pod-h", "network": null});
        let s = format_netns(&netns_view("h", &host));
        assert!(s.contains("Network:      none"), "{s}");
        assert!(s.contains("none pinned"), "{s}");

        let mut broken = info();
        broken["network"]["addresses"] = json!({"error": "netns gone"});
        broken["network"]["routes"] = Value::Null;
        broken["network"]["mode"] = json!({"type": "cni", "network_name": "mynet"});
        broken["network"]["hostports"] = json!([]);
        let s = format_netns(&netns_view("p1", &broken));
        assert!(s.contains("Mode:         cni (network mynet)\n"), "{s}");
        assert!(s.contains("  error: netns gone\n"), "{s}");
        assert!(s.contains("Host ports:\n  none\n"), "{s}");
    }
}
