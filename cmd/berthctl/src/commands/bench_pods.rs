//! `berthctl bench pods`: RunPodSandbox and StopPodSandbox + RemovePodSandbox latencies on
//! several CRI endpoints, one pod at a time and many at once, endpoints taking turns going
//! first. Every pod carries the label `io.berth.bench=pods`; pods left by an earlier, aborted
//! run are removed before timing, and everything this run created is removed at the end, on
//! error and on ^C too (the first ^C lets the current step finish, so that no RunPodSandbox is
//! abandoned half-way and creates its pod after the cleanup; a second one exits at once).

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use futures::future::join_all;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;

use super::bench::orders;
use super::bench::{
    format_ms, label_for, parse_labels, schedule, split_results, summary_json, summary_tables,
    watch_interrupts, Phase, Report, Series, Step, Unit,
};
use crate::client::{self, GlobalOpts, RpcError};
use crate::output;
use crate::podconfig::random_uid;

/// Deadline of each call when `--timeout` is not given: generous, as 20 pods started at once
/// on a slow runtime take seconds each.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Label on every benchmark pod, so leftovers can be found and removed.
pub(crate) const LABEL_KEY: &str = "io.berth.bench";
const LABEL_VALUE: &str = "pods";
const NAMESPACE: &str = "bench";
/// After a failure, how long to wait before looking again for pods that calls which failed on
/// our side (deadline) may still have created.
const LATE_POD_GRACE: Duration = Duration::from_secs(2);

#[derive(clap::Args, Debug)]
pub(crate) struct PodsArgs {
    /// CRI endpoint to run pods on (repeatable; the first is the reference of the ratios)
    #[arg(long = "endpoint", required = true)]
    endpoints: Vec<String>,
    /// Display name of an endpoint, NAME=ENDPOINT (repeatable)
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Sequential pods per endpoint: RunPodSandbox (timed), then StopPodSandbox +
    /// RemovePodSandbox (timed together)
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Pods started at once in the parallel phase, then stopped and removed at once (0: none)
    #[arg(long, default_value_t = 20)]
    parallel: u32,
    /// Rounds of the parallel phase per endpoint
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    parallel_runs: u32,
    /// Untimed pods per endpoint before timing (first-use costs: sandbox image, bridge, nft)
    #[arg(long, default_value_t = 1)]
    warmup: u32,
    /// Runtime handler of the pods, as the runtimes name them
    #[arg(long, default_value = "")]
    runtime: String,
    /// Print a machine-readable JSON summary instead of tables
    #[arg(long)]
    json: bool,
}

/// What is measured; each participant keeps one list of seconds per metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metric {
    Run,
    StopRemove,
    ParallelRunWall,
    ParallelRunPod,
    ParallelStopRemoveWall,
    ParallelStopRemovePod,
}

const METRICS: [Metric; 6] = [
    Metric::Run,
    Metric::StopRemove,
    Metric::ParallelRunWall,
    Metric::ParallelRunPod,
    Metric::ParallelStopRemoveWall,
    Metric::ParallelStopRemovePod,
];

impl Metric {
    fn index(self) -> usize {
        METRICS.iter().position(|&m| m == self).unwrap_or(0)
    }

    fn name(self) -> &'static str {
        match self {
            Metric::Run => "run",
            Metric::StopRemove => "stop+remove",
            Metric::ParallelRunWall => "parallel run, all ready",
            Metric::ParallelRunPod => "parallel run, per pod",
            Metric::ParallelStopRemoveWall => "parallel stop+remove, all gone",
            Metric::ParallelStopRemovePod => "parallel stop+remove, per pod",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Metric::Run => "run",
            Metric::StopRemove => "stop_remove",
            Metric::ParallelRunWall => "parallel_run_wall",
            Metric::ParallelRunPod => "parallel_run_pod",
            Metric::ParallelStopRemoveWall => "parallel_stop_remove_wall",
            Metric::ParallelStopRemovePod => "parallel_stop_remove_pod",
        }
    }
}

struct Participant {
    label: String,
    endpoint: String,
    client: RuntimeServiceClient<Channel>,
    times: [Vec<f64>; METRICS.len()],
    /// Pods created and not yet removed, for the cleanup.
    live: BTreeSet<String>,
}

impl Participant {
    fn times(&self, m: Metric) -> &[f64] {
        &self.times[m.index()]
    }

    fn push(&mut self, m: Metric, d: Duration) {
        self.times[m.index()].push(d.as_secs_f64());
    }
}

pub(crate) async fn run(g: &GlobalOpts, a: PodsArgs) -> Result<()> {
    let labels = parse_labels(&a.labels)?;
    let mut ps = Vec::new();
    for ep in &a.endpoints {
        let ch = client::connect(ep, g.call_timeout()).await?;
        ps.push(Participant {
            label: label_for(ep, &labels),
            endpoint: ep.clone(),
            client: RuntimeServiceClient::new(ch),
            times: Default::default(),
            live: BTreeSet::new(),
        });
    }
    for p in &mut ps {
        let n = cleanup(g, p).await;
        if n > 0 {
            eprintln!("{}: removed {n} pod(s) left by an earlier bench", p.label);
        }
    }

    let parallel_runs = if a.parallel == 0 {
        0
    } else {
        a.parallel_runs as usize
    };
    let steps = schedule(ps.len(), a.warmup as usize, a.runs as usize, parallel_runs);
    let interrupted = Arc::new(AtomicBool::new(false));
    let signals = tokio::spawn(watch_interrupts(interrupted.clone()));
    let res = bench(g, &a, &mut ps, &steps, &interrupted).await;
    if res.is_err() {
        tokio::time::sleep(LATE_POD_GRACE).await;
    }
    let mut left = 0;
    for p in &mut ps {
        cleanup(g, p).await;
        left += p.live.len();
    }
    signals.abort();
    res?;
    if left > 0 {
        eprintln!("warning: {left} benchmark pod(s) could not be removed");
    }

    let labels: Vec<String> = ps.iter().map(|p| p.label.clone()).collect();
    let seq_order = orders(&steps, Phase::Sequential, &labels);
    let par_order = orders(&steps, Phase::Parallel, &labels);
    if a.json {
        let v = json_summary(&a, &ps, seq_order, par_order);
        return output::print(&v, output::Format::Json);
    }
    let out = text_summary(&a, &ps, parallel_runs);
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(())
}

async fn bench(
    g: &GlobalOpts,
    a: &PodsArgs,
    ps: &mut [Participant],
    steps: &[Step],
    interrupted: &AtomicBool,
) -> Result<()> {
    let (runs, parallel_runs) = (a.runs as usize, a.parallel_runs as usize);
    for step in steps {
        if interrupted.load(Ordering::SeqCst) {
            return Err(anyhow!("interrupted"));
        }
        let p = &mut ps[step.participant];
        let run = step.run_name();
        match step.phase {
            Phase::Warmup | Phase::Sequential => {
                let (t_run, t_stop) = sequential_once(g, a, p, &run).await?;
                if step.phase == Phase::Sequential {
                    p.push(Metric::Run, t_run);
                    p.push(Metric::StopRemove, t_stop);
                    eprintln!(
                        "run {}/{runs}: {:<12} run {:>8}  stop+remove {:>8}",
                        step.round + 1,
                        p.label,
                        format_ms(t_run.as_secs_f64()),
                        format_ms(t_stop.as_secs_f64())
                    );
                }
            }
            Phase::Parallel => {
                let (t_run, t_stop) = parallel_once(g, a, p, &run).await?;
                eprintln!(
                    "parallel {}/{parallel_runs}: {:<12} {} pods ready {:>8}  stopped+removed {:>8}",
                    step.round + 1,
                    p.label,
                    a.parallel,
                    format_ms(t_run.as_secs_f64()),
                    format_ms(t_stop.as_secs_f64())
                );
            }
        }
    }
    Ok(())
}

/// One pod: RunPodSandbox, then StopPodSandbox + RemovePodSandbox; returns both times.
async fn sequential_once(
    g: &GlobalOpts,
    a: &PodsArgs,
    p: &mut Participant,
    run: &str,
) -> Result<(Duration, Duration)> {
    let config = pod_config(run, 0)?;
    let mut c = p.client.clone();
    let start = Instant::now();
    let id = run_pod(g, &mut c, config, &a.runtime, &p.label).await?;
    let t_run = start.elapsed();
    p.live.insert(id.clone());
    let start = Instant::now();
    stop_remove(g, &mut c, &id, &p.label).await?;
    let t_stop = start.elapsed();
    p.live.remove(&id);
    Ok((t_run, t_stop))
}

/// `--parallel` pods started at once, then all stopped and removed at once; records the wall
/// and per-pod times and returns the two wall times.
async fn parallel_once(
    g: &GlobalOpts,
    a: &PodsArgs,
    p: &mut Participant,
    run: &str,
) -> Result<(Duration, Duration)> {
    let configs = (0..a.parallel as usize)
        .map(|i| pod_config(run, i))
        .collect::<Result<Vec<_>>>()?;
    let label = p.label.clone();
    let start = Instant::now();
    let results = join_all(configs.into_iter().map(|config| {
        let mut c = p.client.clone();
        let label = &label;
        async move {
            let t0 = Instant::now();
            let r = run_pod(g, &mut c, config, &a.runtime, label).await;
            (r, t0.elapsed())
        }
    }))
    .await;
    let t_run = start.elapsed();
    let (ids, failed) = split_results(results.into_iter().map(|(r, d)| r.map(|id| (id, d))));
    p.live.extend(ids.iter().map(|(id, _)| id.clone()));
    if let Some(e) = failed {
        return Err(e.context(format!("{} of {} pods started", ids.len(), a.parallel)));
    }

    let start = Instant::now();
    let results = join_all(ids.iter().map(|(id, _)| {
        let mut c = p.client.clone();
        let label = &label;
        async move {
            let t0 = Instant::now();
            let r = stop_remove(g, &mut c, id, label).await;
            (id, r, t0.elapsed())
        }
    }))
    .await;
    let t_stop = start.elapsed();
    let (stopped, failed) = split_results(
        results
            .into_iter()
            .map(|(id, r, d)| r.map(|()| (id.clone(), d))),
    );
    for (id, _) in &stopped {
        p.live.remove(id);
    }
    if let Some(e) = failed {
        return Err(e);
    }
    p.push(Metric::ParallelRunWall, t_run);
    p.push(Metric::ParallelStopRemoveWall, t_stop);
    for (_, d) in ids {
        p.push(Metric::ParallelRunPod, d);
    }
    for (_, d) in stopped {
        p.push(Metric::ParallelStopRemovePod, d);
    }
    Ok((t_run, t_stop))
}

pub(crate) fn call_timeout(g: &GlobalOpts) -> Option<Duration> {
    Some(g.timeout.unwrap_or(CALL_TIMEOUT))
}

pub(crate) async fn run_pod(
    g: &GlobalOpts,
    c: &mut RuntimeServiceClient<Channel>,
    config: cri::PodSandboxConfig,
    runtime: &str,
    label: &str,
) -> Result<String> {
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let req = cri::RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: runtime.to_string(),
    };
    let what = format!("run pod sandbox {name} on {label}");
    let r = g
        .call(&what, call_timeout(g), req, |r| c.run_pod_sandbox(r))
        .await?;
    Ok(r.pod_sandbox_id)
}

async fn stop_remove(
    g: &GlobalOpts,
    c: &mut RuntimeServiceClient<Channel>,
    id: &str,
    label: &str,
) -> Result<()> {
    stop_pod(g, c, id, label).await?;
    remove_pod(g, c, id, label).await?;
    Ok(())
}

async fn stop_pod(
    g: &GlobalOpts,
    c: &mut RuntimeServiceClient<Channel>,
    id: &str,
    label: &str,
) -> Result<(), RpcError> {
    let req = cri::StopPodSandboxRequest {
        pod_sandbox_id: id.to_string(),
    };
    let what = format!("stop pod sandbox {id} on {label}");
    g.call(&what, call_timeout(g), req, |r| c.stop_pod_sandbox(r))
        .await
        .map(drop)
}

async fn remove_pod(
    g: &GlobalOpts,
    c: &mut RuntimeServiceClient<Channel>,
    id: &str,
    label: &str,
) -> Result<(), RpcError> {
    let req = cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.to_string(),
    };
    let what = format!("remove pod sandbox {id} on {label}");
    g.call(&what, call_timeout(g), req, |r| c.remove_pod_sandbox(r))
        .await
        .map(drop)
}

/// Best effort: stops and removes every pod of `p` this bench created or labelled (those of an
/// aborted earlier run included). Returns how many were removed; what could not be stays in
/// `p.live`.
async fn cleanup(g: &GlobalOpts, p: &mut Participant) -> usize {
    let mut c = p.client.clone();
    let (removed, gone) = remove_bench_pods(g, &mut c, LABEL_VALUE, &p.live, &p.label).await;
    for id in &gone {
        p.live.remove(id);
    }
    removed
}

/// Stops and removes the pods in `known` and those labelled `io.berth.bench=<value>`, reporting
/// failures; returns how many it removed and the IDs of all that are gone (not found included).
pub(crate) async fn remove_bench_pods(
    g: &GlobalOpts,
    c: &mut RuntimeServiceClient<Channel>,
    value: &str,
    known: &BTreeSet<String>,
    label: &str,
) -> (usize, BTreeSet<String>) {
    let mut ids = known.clone();
    let req = cri::ListPodSandboxRequest {
        filter: Some(cri::PodSandboxFilter {
            label_selector: HashMap::from([(LABEL_KEY.to_string(), value.to_string())]),
            ..Default::default()
        }),
    };
    let what = format!("list benchmark pods on {label}");
    match g
        .call(&what, call_timeout(g), req, |r| c.list_pod_sandbox(r))
        .await
    {
        Ok(r) => ids.extend(r.items.into_iter().map(|s| s.id)),
        Err(e) => eprintln!("cleanup: {e}"),
    }
    let mut removed = 0;
    let mut gone = BTreeSet::new();
    for id in ids {
        if let Err(e) = stop_pod(g, c, &id, label).await {
            if e.code() != Code::NotFound {
                eprintln!("cleanup: {e}");
            }
        }
        match remove_pod(g, c, &id, label).await {
            Ok(()) => removed += 1,
            Err(e) if e.code() == Code::NotFound => {}
            Err(e) => {
                eprintln!("cleanup: {e}");
                continue;
            }
        }
        gone.insert(id);
    }
    (removed, gone)
}

/// The config of pod `i` of run `run`: unique name and uid, namespace `bench`, no hostPorts,
/// network/IPC namespaces of the pod and a PID namespace per container, as kubelet asks.
fn pod_config(run: &str, i: usize) -> Result<cri::PodSandboxConfig> {
    bench_pod_config(
        &format!("bench-{run}-{i}"),
        LABEL_VALUE,
        cri::NamespaceMode::Pod,
    )
}

/// A benchmark pod named `name` in namespace `bench`, labelled `io.berth.bench=<label>`, with
/// the `network` namespace mode given, IPC of the pod and PID per container.
pub(crate) fn bench_pod_config(
    name: &str,
    label: &str,
    network: cri::NamespaceMode,
) -> Result<cri::PodSandboxConfig> {
    Ok(cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.to_string(),
            uid: random_uid()?,
            namespace: NAMESPACE.to_string(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        labels: HashMap::from([(LABEL_KEY.to_string(), label.to_string())]),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: network as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The metrics that have samples in this bench (the parallel ones only with `--parallel`).
fn metrics(parallel_runs: usize) -> impl Iterator<Item = Metric> {
    METRICS
        .into_iter()
        .filter(move |m| parallel_runs > 0 || matches!(m, Metric::Run | Metric::StopRemove))
}

/// The participants' series, in `METRICS` order (the parallel ones only with `--parallel`).
fn reports(ps: &[Participant], parallel_runs: usize) -> Vec<Report<'_>> {
    ps.iter()
        .map(|p| Report {
            label: &p.label,
            endpoint: &p.endpoint,
            failed: None,
            series: metrics(parallel_runs)
                .map(|m| Series {
                    name: m.name(),
                    key: m.key(),
                    unit: Unit::Seconds,
                    samples: p.times(m),
                })
                .collect(),
        })
        .collect()
}

fn text_summary(a: &PodsArgs, ps: &[Participant], parallel_runs: usize) -> String {
    let mut out = format!(
        "sequential: {} pods per endpoint; parallel: {} rounds of {} pods; warm-up: {}\n",
        a.runs, parallel_runs, a.parallel, a.warmup
    );
    out.push_str(&summary_tables(&reports(ps, parallel_runs)));
    out
}

fn json_summary(
    a: &PodsArgs,
    ps: &[Participant],
    seq_order: Vec<Vec<String>>,
    par_order: Vec<Vec<String>>,
) -> Value {
    // every metric, also those without samples, so that the keys do not depend on the flags
    let reports = reports(ps, 1);
    json!({
        "runs": a.runs,
        "parallel": a.parallel,
        "parallel_runs": if a.parallel == 0 { 0 } else { a.parallel_runs },
        "warmup": a.warmup,
        "reference": ps.first().map(|p| p.label.clone()),
        "order": {"sequential": seq_order, "parallel": par_order},
        "results": summary_json(&reports),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_are_unique_per_phase_and_round() {
        let names: BTreeSet<String> = schedule(1, 2, 3, 2).iter().map(Step::run_name).collect();
        assert_eq!(names.len(), 7);
        let c = pod_config("p1", 7).unwrap();
        let m = c.metadata.unwrap();
        assert_eq!(
            (m.name.as_str(), m.namespace.as_str()),
            ("bench-p1-7", "bench")
        );
        assert!(c.port_mappings.is_empty());
        assert_eq!(c.labels[LABEL_KEY], LABEL_VALUE);
        assert_ne!(m.uid, pod_config("p1", 7).unwrap().metadata.unwrap().uid);
    }

    #[test]
    fn only_the_parallel_metrics_need_parallel_rounds() {
        assert_eq!(metrics(0).count(), 2);
        assert_eq!(metrics(3).count(), METRICS.len());
    }
}
