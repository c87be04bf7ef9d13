//! `berthctl bench pods`: RunPodSandbox and StopPodSandbox + RemovePodSandbox latencies on
//! several CRI endpoints, one pod at a time and many at once, endpoints taking turns going
//! first. Every pod carries the label `io.berth.bench=pods`; pods left by an earlier, aborted
//! run are removed before timing, and everything this run created is removed at the end, on
//! error and on ^C too (the first ^C lets the current step finish, so that no RunPodSandbox is
//! abandoned half-way and creates its pod after the cleanup; a second one exits at once).

use std::collections::{BTreeSet, HashMap};
use std::io::{Read as _, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use futures::future::join_all;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use serde_json::{json, Map, Value};
use tonic::transport::Channel;
use tonic::Code;

use super::bench::{label_for, parse_labels, run_order, stats, Stats};
use crate::client::{self, GlobalOpts, RpcError};
use crate::duration::format_secs;
use crate::output;

/// Deadline of each call when `--timeout` is not given: generous, as 20 pods started at once
/// on a slow runtime take seconds each.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Label on every benchmark pod, so leftovers can be found and removed.
const LABEL_KEY: &str = "io.berth.bench";
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Untimed sequential pods.
    Warmup,
    Sequential,
    Parallel,
}

/// One turn of one participant: `round` counts from 0 within its phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Step {
    phase: Phase,
    round: usize,
    participant: usize,
}

impl Step {
    /// The `<run>` of the pod names `bench-<run>-<i>`: `w0`, `0`, `p0`, unique per bench run.
    fn run_name(&self) -> String {
        match self.phase {
            Phase::Warmup => format!("w{}", self.round),
            Phase::Sequential => self.round.to_string(),
            Phase::Parallel => format!("p{}", self.round),
        }
    }
}

/// Warm-up, then the sequential rounds, then the parallel rounds; within each round every
/// participant takes one turn, forward on even rounds and reversed on odd ones.
fn schedule(participants: usize, warmup: usize, runs: usize, parallel_runs: usize) -> Vec<Step> {
    [
        (Phase::Warmup, warmup),
        (Phase::Sequential, runs),
        (Phase::Parallel, parallel_runs),
    ]
    .into_iter()
    .flat_map(|(phase, rounds)| {
        (0..rounds).flat_map(move |round| {
            run_order(participants, round)
                .into_iter()
                .map(move |participant| Step {
                    phase,
                    round,
                    participant,
                })
        })
    })
    .collect()
}

/// Labels of the participants in the order they went, per round of `phase`.
fn orders(steps: &[Step], phase: Phase, labels: &[String]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    for s in steps.iter().filter(|s| s.phase == phase) {
        if out.len() <= s.round {
            out.resize(s.round + 1, Vec::new());
        }
        out[s.round].push(labels[s.participant].clone());
    }
    out
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

    fn stats(&self, m: Metric) -> Option<Stats> {
        stats(self.times(m))
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

/// First ^C: sets `flag`, which stops the bench after the current step. Second: exits.
async fn watch_interrupts(flag: Arc<AtomicBool>) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    eprintln!(
        "interrupted: finishing the current step, then removing the pods (^C again: exit now)"
    );
    flag.store(true, Ordering::SeqCst);
    if tokio::signal::ctrl_c().await.is_ok() {
        std::process::exit(130);
    }
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
    let mut ids = Vec::new();
    let mut failed = None;
    for (r, d) in results {
        match r {
            Ok(id) => {
                p.live.insert(id.clone());
                ids.push((id, d));
            }
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
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
    let mut stop_times = Vec::new();
    for (id, r, d) in results {
        match r {
            Ok(()) => {
                p.live.remove(id);
                stop_times.push(d);
            }
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    p.push(Metric::ParallelRunWall, t_run);
    p.push(Metric::ParallelStopRemoveWall, t_stop);
    for (_, d) in ids {
        p.push(Metric::ParallelRunPod, d);
    }
    for d in stop_times {
        p.push(Metric::ParallelStopRemovePod, d);
    }
    Ok((t_run, t_stop))
}

fn call_timeout(g: &GlobalOpts) -> Option<Duration> {
    Some(g.timeout.unwrap_or(CALL_TIMEOUT))
}

async fn run_pod(
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
    let mut ids = p.live.clone();
    let req = cri::ListPodSandboxRequest {
        filter: Some(cri::PodSandboxFilter {
            label_selector: HashMap::from([(LABEL_KEY.to_string(), LABEL_VALUE.to_string())]),
            ..Default::default()
        }),
    };
    let what = format!("list benchmark pods on {}", p.label);
    match g
        .call(&what, call_timeout(g), req, |r| c.list_pod_sandbox(r))
        .await
    {
        Ok(r) => ids.extend(r.items.into_iter().map(|s| s.id)),
        Err(e) => eprintln!("cleanup: {e}"),
    }
    let mut removed = 0;
    for id in ids {
        if let Err(e) = stop_pod(g, &mut c, &id, &p.label).await {
            if e.code() != Code::NotFound {
                eprintln!("cleanup: {e}");
            }
        }
        match remove_pod(g, &mut c, &id, &p.label).await {
            Ok(()) => removed += 1,
            Err(e) if e.code() == Code::NotFound => {}
            Err(e) => {
                eprintln!("cleanup: {e}");
                continue;
            }
        }
        p.live.remove(&id);
    }
    removed
}

/// The config of pod `i` of run `run`: unique name and uid, namespace `bench`, no hostPorts,
/// network/IPC namespaces of the pod and a PID namespace per container, as kubelet asks.
fn pod_config(run: &str, i: usize) -> Result<cri::PodSandboxConfig> {
    let name = format!("bench-{run}-{i}");
    Ok(cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid: random_uid()?,
            namespace: NAMESPACE.to_string(),
            attempt: 0,
        }),
        hostname: name,
        labels: HashMap::from([(LABEL_KEY.to_string(), LABEL_VALUE.to_string())]),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Pod as i32,
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

/// A random (version 4) UUID, as kubelet gives pods.
fn random_uid() -> Result<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("read /dev/urandom")?;
    Ok(format_uuid(b))
}

fn format_uuid(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Milliseconds with one decimal below a second (pods start in a few ms), else `format_secs`.
fn format_ms(secs: f64) -> String {
    if secs < 1.0 {
        format!("{:.1}ms", secs * 1000.0)
    } else {
        format_secs(secs)
    }
}

/// `b / a`, when both are known and `a` is not zero.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if a > 0.0 => Some(b / a),
        _ => None,
    }
}

/// The metrics that have samples in this bench (the parallel ones only with `--parallel`).
fn metrics(parallel_runs: usize) -> impl Iterator<Item = Metric> {
    METRICS
        .into_iter()
        .filter(move |m| parallel_runs > 0 || matches!(m, Metric::Run | Metric::StopRemove))
}

fn text_summary(a: &PodsArgs, ps: &[Participant], parallel_runs: usize) -> String {
    let dash = || "-".to_string();
    let mut out = format!(
        "sequential: {} pods per endpoint; parallel: {} rounds of {} pods; warm-up: {}\n",
        a.runs, parallel_runs, a.parallel, a.warmup
    );
    for p in ps {
        out.push_str(&format!("\n{} ({})\n", p.label, p.endpoint));
        let mut rows = vec![["METRIC", "N", "P50", "P95", "MIN", "MAX"]
            .map(String::from)
            .to_vec()];
        for m in metrics(parallel_runs) {
            let s = p.stats(m);
            let f = |x: fn(&Stats) -> f64| s.as_ref().map_or_else(dash, |s| format_ms(x(s)));
            rows.push(vec![
                m.name().to_string(),
                p.times(m).len().to_string(),
                f(|s| s.median),
                f(|s| s.p95),
                f(|s| s.min),
                f(|s| s.max),
            ]);
        }
        out.push_str(&output::format_table(&rows));
    }
    let Some((first, others)) = ps.split_first() else {
        return out;
    };
    if others.is_empty() {
        return out;
    }
    out.push_str(&format!("\np50, and ratios of p50s to {}\n", first.label));
    let mut header = vec!["METRIC".to_string()];
    header.extend(ps.iter().map(|p| p.label.clone()));
    header.extend(
        others
            .iter()
            .map(|p| format!("{}/{}", p.label, first.label)),
    );
    let mut rows = vec![header];
    for m in metrics(parallel_runs) {
        let median = |p: &Participant| p.stats(m).map(|s| s.median);
        let mut row = vec![m.name().to_string()];
        row.extend(ps.iter().map(|p| median(p).map_or_else(dash, format_ms)));
        row.extend(
            others
                .iter()
                .map(|p| ratio(median(first), median(p)).map_or_else(dash, |r| format!("{r:.2}"))),
        );
        rows.push(row);
    }
    out.push_str(&output::format_table(&rows));
    out
}

fn json_summary(
    a: &PodsArgs,
    ps: &[Participant],
    seq_order: Vec<Vec<String>>,
    par_order: Vec<Vec<String>>,
) -> Value {
    let reference = ps.first();
    let results: Vec<_> = ps
        .iter()
        .map(|p| {
            let mut metrics = Map::new();
            let mut ratios = Map::new();
            for m in METRICS {
                let s = p.stats(m);
                metrics.insert(
                    m.key().to_string(),
                    json!({
                        "n": p.times(m).len(),
                        "p50_s": s.map(|s| s.median),
                        "p95_s": s.map(|s| s.p95),
                        "min_s": s.map(|s| s.min),
                        "max_s": s.map(|s| s.max),
                        "times_s": p.times(m),
                    }),
                );
                let r = reference
                    .and_then(|r| ratio(r.stats(m).map(|s| s.median), s.map(|s| s.median)));
                ratios.insert(m.key().to_string(), json!(r));
            }
            json!({
                "label": p.label,
                "endpoint": p.endpoint,
                "metrics": metrics,
                "p50_ratio_to_reference": ratios,
            })
        })
        .collect();
    json!({
        "runs": a.runs,
        "parallel": a.parallel,
        "parallel_runs": if a.parallel == 0 { 0 } else { a.parallel_runs },
        "warmup": a.warmup,
        "reference": reference.map(|p| p.label.clone()),
        "order": {"sequential": seq_order, "parallel": par_order},
        "results": results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turns(steps: &[Step], phase: Phase) -> Vec<(usize, usize)> {
        steps
            .iter()
            .filter(|s| s.phase == phase)
            .map(|s| (s.round, s.participant))
            .collect()
    }

    #[test]
    fn schedule_alternates_who_goes_first_in_every_phase() {
        let steps = schedule(2, 1, 4, 3);
        assert_eq!(steps.len(), 2 * (1 + 4 + 3));
        assert_eq!(turns(&steps, Phase::Warmup), [(0, 0), (0, 1)]);
        assert_eq!(
            turns(&steps, Phase::Sequential),
            [
                (0, 0),
                (0, 1),
                (1, 1),
                (1, 0),
                (2, 0),
                (2, 1),
                (3, 1),
                (3, 0)
            ]
        );
        assert_eq!(
            turns(&steps, Phase::Parallel),
            [(0, 0), (0, 1), (1, 1), (1, 0), (2, 0), (2, 1)]
        );
        // phases never interleave: warm-up, then sequential, then parallel
        let phases: Vec<Phase> = steps.iter().map(|s| s.phase).collect();
        let mut sorted = phases.clone();
        sorted.sort_by_key(|p| *p as u8);
        assert_eq!(phases, sorted);
    }

    #[test]
    fn schedule_gives_everyone_every_round_and_skips_empty_phases() {
        let steps = schedule(3, 0, 20, 0);
        assert_eq!(steps.len(), 60);
        assert!(steps.iter().all(|s| s.phase == Phase::Sequential));
        for round in 0..20 {
            let mut who: Vec<usize> = steps
                .iter()
                .filter(|s| s.round == round)
                .map(|s| s.participant)
                .collect();
            who.sort_unstable();
            assert_eq!(who, [0, 1, 2], "round {round}");
        }
        // over an even number of rounds each participant goes first equally often
        let firsts: Vec<usize> = steps.iter().step_by(3).map(|s| s.participant).collect();
        assert_eq!(firsts.iter().filter(|&&p| p == 0).count(), 10);
        assert_eq!(firsts.iter().filter(|&&p| p == 2).count(), 10);
    }

    #[test]
    fn orders_list_labels_per_round() {
        let labels = ["berth".to_string(), "containerd".to_string()];
        let steps = schedule(2, 1, 2, 1);
        assert_eq!(
            orders(&steps, Phase::Sequential, &labels),
            [["berth", "containerd"], ["containerd", "berth"]]
        );
        assert_eq!(
            orders(&steps, Phase::Parallel, &labels),
            [["berth", "containerd"]]
        );
    }

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
    fn uuids_are_version_4() {
        let u = format_uuid([0xff; 16]);
        assert_eq!(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let u = format_uuid([0; 16]);
        assert_eq!(u, "00000000-0000-4000-8000-000000000000");
    }

    #[test]
    fn ratios_and_formatting() {
        assert_eq!(ratio(Some(2.0), Some(5.0)), Some(2.5));
        assert_eq!(ratio(Some(0.0), Some(5.0)), None);
        assert_eq!(ratio(None, Some(5.0)), None);
        assert_eq!(format_ms(0.0042), "4.2ms");
        assert_eq!(format_ms(1.5), "1.500s");
        assert_eq!(metrics(0).count(), 2);
        assert_eq!(metrics(3).count(), METRICS.len());
    }
}
