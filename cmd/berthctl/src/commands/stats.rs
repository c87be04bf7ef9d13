//! `berthctl stats` and `berthctl statsp`: container and pod resource usage as crictl shows it —
//! the response as JSON/YAML, or a table whose CPU % comes from two listings `--seconds` apart;
//! `--watch` redraws it until interrupted.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Result};
use k8s_cri::v1::{
    ContainerStats, ContainerStatsFilter, CpuUsage, ListContainerStatsRequest,
    ListPodSandboxStatsRequest, PodSandboxStats, PodSandboxStatsFilter,
};
use serde_json::{json, Value};

use super::pods::parse_labels;
use crate::client::GlobalOpts;
use crate::output::{self, truncate_id, ListFormat};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Container to show (same as --id)
    #[arg(value_name = "ID")]
    id_arg: Option<String>,
    /// Show all containers (default shows just running)
    #[arg(short, long)]
    all: bool,
    /// Filter by container id
    #[arg(long)]
    id: Option<String>,
    /// Filter by key=value label
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Output format
    #[arg(short, long, value_enum, default_value = "table")]
    output: ListFormat,
    /// Filter by pod id
    #[arg(short, long)]
    pod: Option<String>,
    /// Sample duration for CPU usage in seconds
    #[arg(short, long, default_value_t = 1)]
    seconds: u64,
    /// Watch resources
    #[arg(short, long)]
    watch: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct PodArgs {
    /// Filter by pod id
    #[arg(long)]
    id: Option<String>,
    /// Filter by key=value label
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Output format
    #[arg(short, long, value_enum, default_value = "table")]
    output: ListFormat,
    /// Sample duration for CPU usage in seconds
    #[arg(short, long, default_value_t = 1)]
    seconds: u64,
    /// Watch pod resources
    #[arg(short, long)]
    watch: bool,
}

/// How often `--watch` redraws (crictl's ticker), on top of the sample time.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
const CLEAR_SCREEN: &str = "\x1b[2J\x1b[H";

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    let filter = ContainerStatsFilter {
        id: args.id.clone().or(args.id_arg.clone()).unwrap_or_default(),
        pod_sandbox_id: args.pod.clone().unwrap_or_default(),
        label_selector: parse_labels(&args.labels)?,
    };
    let c = g.runtime_client().await?;
    let list = || {
        let req = ListContainerStatsRequest {
            filter: Some(filter.clone()),
        };
        let mut c = c.clone();
        async move {
            let mut stats = g
                .call("list container stats", Some(g.call_timeout()), req, |r| {
                    c.list_container_stats(r)
                })
                .await?
                .stats;
            stats.sort_by(|a, b| id_of(a).cmp(id_of(b)));
            anyhow::Ok(stats)
        }
    };
    let all = args.all;
    show(
        list,
        args.output,
        args.seconds,
        args.watch,
        |old: &[ContainerStats], new: &[ContainerStats]| container_rows(old, new, all),
    )
    .await
}

pub(crate) async fn run_pods(g: &GlobalOpts, args: PodArgs) -> Result<()> {
    let filter = PodSandboxStatsFilter {
        id: args.id.clone().unwrap_or_default(),
        label_selector: parse_labels(&args.labels)?,
    };
    let c = g.runtime_client().await?;
    let list = || {
        let req = ListPodSandboxStatsRequest {
            filter: Some(filter.clone()),
        };
        let mut c = c.clone();
        async move {
            let mut stats = g
                .call("list pod sandbox stats", Some(g.call_timeout()), req, |r| {
                    c.list_pod_sandbox_stats(r)
                })
                .await?
                .stats;
            stats.sort_by(|a, b| pod_id_of(a).cmp(pod_id_of(b)));
            anyhow::Ok(stats)
        }
    };
    show(list, args.output, args.seconds, args.watch, pod_rows).await
}

/// The response of `list` as JSON/YAML, or the table `rows` makes of two listings `seconds`
/// apart — again and again with `watch`.
async fn show<T, F, Fut>(
    list: F,
    output: ListFormat,
    seconds: u64,
    watch: bool,
    rows: impl Fn(&[T], &[T]) -> Result<Vec<Vec<String>>>,
) -> Result<()>
where
    T: serde::Serialize,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>>>,
{
    loop {
        let first = list().await?;
        if let Some(fmt) = output.structured() {
            let items = first.iter().map(stats_json).collect::<Result<Vec<_>>>()?;
            return output::print(&json!({ "stats": items }), fmt);
        }
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let second = list().await?;
        let table = rows(&first, &second)?;
        if watch {
            print!("{CLEAR_SCREEN}");
        }
        print!("{}", output::format_table(&table));
        if !watch {
            return Ok(());
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

fn id_of(s: &ContainerStats) -> &str {
    s.attributes.as_ref().map_or("", |a| a.id.as_str())
}

fn pod_id_of(s: &PodSandboxStats) -> &str {
    s.attributes.as_ref().map_or("", |a| a.id.as_str())
}

fn cpu_total(cpu: Option<&CpuUsage>) -> (u64, i64) {
    cpu.map_or((0, 0), |c| {
        (
            c.usage_core_nano_seconds.as_ref().map_or(0, |v| v.value),
            c.timestamp,
        )
    })
}

/// crictl's CPU %: CPU time used between the two listings over the time between them.
fn cpu_percent(old: Option<&CpuUsage>, new: Option<&CpuUsage>) -> Result<f64> {
    let (cpu, ts) = cpu_total(new);
    if cpu == 0 {
        return Ok(0.0);
    }
    let (old_cpu, old_ts) = cpu_total(old);
    let duration = ts - old_ts;
    if duration == 0 {
        bail!("cpu stat is not updated during sample");
    }
    Ok(cpu.saturating_sub(old_cpu) as f64 / duration as f64 * 100.0)
}

/// crictl `stats`'s table. Containers that appeared between the listings are left out, as
/// are (without `all`) those with neither CPU nor memory use.
fn container_rows(
    old: &[ContainerStats],
    new: &[ContainerStats],
    all: bool,
) -> Result<Vec<Vec<String>>> {
    let old: HashMap<&str, &ContainerStats> = old.iter().map(|s| (id_of(s), s)).collect();
    let mut rows = vec![[
        "CONTAINER",
        "NAME",
        "CPU %",
        "MEM",
        "DISK",
        "INODES",
        "SWAP",
    ]
    .map(String::from)
    .to_vec()];
    for s in new {
        let value = |v: Option<&k8s_cri::v1::UInt64Value>| v.map_or(0, |v| v.value);
        let (cpu, _) = cpu_total(s.cpu.as_ref());
        let mem = value(s.memory.as_ref().and_then(|m| m.working_set_bytes.as_ref()));
        if !all && cpu == 0 && mem == 0 {
            continue;
        }
        let Some(before) = old.get(id_of(s)) else {
            continue;
        };
        let layer = s.writable_layer.as_ref();
        rows.push(vec![
            truncate_id(id_of(s), ""),
            s.attributes
                .as_ref()
                .and_then(|a| a.metadata.as_ref())
                .map(|m| m.name.clone())
                .unwrap_or_default(),
            format!("{:.2}", cpu_percent(before.cpu.as_ref(), s.cpu.as_ref())?),
            output::human_size_go(mem),
            output::human_size_go(value(layer.and_then(|l| l.used_bytes.as_ref()))),
            value(layer.and_then(|l| l.inodes_used.as_ref())).to_string(),
            output::human_size_go(value(
                s.swap.as_ref().and_then(|w| w.swap_usage_bytes.as_ref()),
            )),
        ]);
    }
    Ok(rows)
}

/// crictl `statsp`'s table.
fn pod_rows(old: &[PodSandboxStats], new: &[PodSandboxStats]) -> Result<Vec<Vec<String>>> {
    let old: HashMap<&str, &PodSandboxStats> = old.iter().map(|s| (pod_id_of(s), s)).collect();
    let mut rows = vec![["POD", "POD ID", "CPU %", "MEM"].map(String::from).to_vec()];
    for s in new {
        let linux = s.linux.as_ref();
        let (cpu, _) = cpu_total(linux.and_then(|l| l.cpu.as_ref()));
        let mem = linux
            .and_then(|l| l.memory.as_ref())
            .and_then(|m| m.working_set_bytes.as_ref())
            .map_or(0, |v| v.value);
        if cpu == 0 && mem == 0 {
            continue;
        }
        let Some(before) = old.get(pod_id_of(s)) else {
            continue;
        };
        let before_cpu = before.linux.as_ref().and_then(|l| l.cpu.as_ref());
        rows.push(vec![
            s.attributes
                .as_ref()
                .and_then(|a| a.metadata.as_ref())
                .map(|m| m.name.clone())
                .unwrap_or_default(),
            truncate_id(pod_id_of(s), ""),
            format!(
                "{:.2}",
                cpu_percent(before_cpu, linux.and_then(|l| l.cpu.as_ref()))?
            ),
            output::human_size_go(mem),
        ]);
    }
    Ok(rows)
}

/// A stats message as protojson prints it: 64-bit numbers (every number in these messages but
/// `attempt`) as strings.
fn stats_json<T: serde::Serialize>(s: &T) -> Result<Value> {
    let mut v = output::to_cri_json(s)?;
    output::drop_nulls(&mut v);
    output::int64_as_strings(&mut v, &["attempt"]);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::{
        ContainerAttributes, ContainerMetadata, FilesystemUsage, MemoryUsage, UInt64Value,
    };

    fn u(value: u64) -> Option<UInt64Value> {
        Some(UInt64Value { value })
    }

    fn stats(id: &str, cpu: u64, ts: i64, mem: u64) -> ContainerStats {
        ContainerStats {
            attributes: Some(ContainerAttributes {
                id: id.into(),
                metadata: Some(ContainerMetadata {
                    name: format!("n-{id}"),
                    attempt: 1,
                }),
                ..Default::default()
            }),
            cpu: Some(CpuUsage {
                timestamp: ts,
                usage_core_nano_seconds: u(cpu),
                usage_nano_cores: None,
            }),
            memory: Some(MemoryUsage {
                timestamp: ts,
                working_set_bytes: u(mem),
                ..Default::default()
            }),
            writable_layer: Some(FilesystemUsage {
                used_bytes: u(8192),
                inodes_used: u(4),
                ..Default::default()
            }),
            swap: None,
        }
    }

    #[test]
    fn table_has_crictl_columns_and_cpu_from_two_listings() {
        let old = vec![stats(
            "aaaaaaaaaaaaaaaaaa",
            1_000_000_000,
            1_000_000_000,
            602_112,
        )];
        let new = vec![
            stats("aaaaaaaaaaaaaaaaaa", 1_500_000_000, 2_000_000_000, 602_112),
            // Appeared between the listings: left out.
            stats("bbbb", 5, 2_000_000_000, 5),
            // Not running and not asked for with --all: left out.
            stats("cccc", 0, 2_000_000_000, 0),
        ];
        let rows = container_rows(&old, &new, false).unwrap();
        assert_eq!(
            rows,
            vec![
                vec![
                    "CONTAINER",
                    "NAME",
                    "CPU %",
                    "MEM",
                    "DISK",
                    "INODES",
                    "SWAP"
                ],
                vec![
                    "aaaaaaaaaaaaa",
                    "n-aaaaaaaaaaaaaaaaaa",
                    "50.00",
                    "602.1kB",
                    "8.192kB",
                    "4",
                    "0B"
                ],
            ]
        );
        let same_time = vec![stats("aaaaaaaaaaaaaaaaaa", 2, 1_000_000_000, 1)];
        assert!(container_rows(&old, &same_time, false).is_err());
    }

    #[test]
    fn json_spells_64_bit_numbers_as_strings() {
        let v = stats_json(&stats("x", 7, 9, 3)).unwrap();
        assert_eq!(v["cpu"]["usageCoreNanoSeconds"]["value"], "7");
        assert_eq!(v["cpu"]["timestamp"], "9");
        assert_eq!(v["attributes"]["metadata"]["attempt"], 1);
        assert!(v.get("swap").is_none());
    }

    #[test]
    fn stats_flags_parse_like_crictl() {
        let a: Args = crate::commands::parse_args(&[
            "-a", "--id", "abc", "-p", "pod1", "--label", "a=b", "-o", "json", "-s", "2", "-w",
        ])
        .unwrap();
        assert!(a.all && a.watch);
        assert_eq!(
            (a.id.as_deref(), a.pod.as_deref()),
            (Some("abc"), Some("pod1"))
        );
        assert_eq!((a.seconds, a.output), (2, ListFormat::Json));
        let p: PodArgs =
            crate::commands::parse_args(&["--id", "p", "-o", "yaml", "--label", "x=y"]).unwrap();
        assert_eq!((p.id.as_deref(), p.output), (Some("p"), ListFormat::Yaml));
    }
}
