//! `berthctl bench pull`: cold-pull timings of one image on several CRI endpoints (and an
//! optional shell baseline), in alternating order so neither side always goes first.
//! `berthctl bench pods` and `bench containers` live in their own files; the schedule, label,
//! statistics and summary helpers here are shared by all three.

use std::io::Write as _;
use std::os::fd::AsFd;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{PullImageRequest, RemoveImageRequest};
use serde_json::{json, Map, Value};
use tonic::transport::Channel;
use tonic::Code;

use super::{bench_containers, bench_exec, bench_pods, image_spec};
use crate::client::{self, GlobalOpts};
use crate::duration::format_secs;
use crate::output;

/// Deadline of the RemoveImage before each pull when `--timeout` is not given.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(subcommand)]
    cmd: BenchCmd,
}

#[derive(clap::Subcommand, Debug)]
enum BenchCmd {
    /// Time cold pulls of IMAGE on each endpoint (RemoveImage + --pre-run before each pull)
    Pull(PullArgs),
    /// Time RunPodSandbox and StopPodSandbox+RemovePodSandbox on each endpoint, one pod at a
    /// time and many in parallel
    Pods(bench_pods::PodsArgs),
    /// Time CreateContainer+StartContainer and StopContainer+RemoveContainer on each endpoint
    /// (and bare runc), one at a time and many in parallel; RSS of shims and daemons
    Containers(bench_containers::ContainersArgs),
    /// Time a streaming exec round trip and port-forward throughput on each endpoint
    Exec(bench_exec::ExecArgs),
    /// The stand-in daemon of `bench exec --floor`: relays connections to --to
    #[command(hide = true)]
    Relay(bench_exec::RelayArgs),
}

#[derive(clap::Args, Debug)]
struct PullArgs {
    /// Image to pull
    image: String,
    /// CRI endpoint to pull on (repeatable; the first is the reference of the ratios)
    #[arg(long = "endpoint", required = true)]
    endpoints: Vec<String>,
    /// Timed pulls per endpoint
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Display name of an endpoint, NAME=ENDPOINT (repeatable)
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Shell command run before each timed pull (and baseline), e.g. to drop caches; gets
    /// BENCH_LABEL, BENCH_KIND (cri|baseline), BENCH_ENDPOINT, BENCH_IMAGE, BENCH_RUN
    #[arg(long = "pre-run")]
    pre_run: Option<String>,
    /// Shell command timed like a pull and reported as another row (e.g. curl | tar)
    #[arg(long = "baseline-cmd")]
    baseline_cmd: Option<String>,
    /// Name of the baseline row
    #[arg(long, default_value = "baseline")]
    baseline_label: String,
    /// Print a machine-readable JSON summary instead of tables
    #[arg(long)]
    json: bool,
}

enum Target {
    Cri {
        endpoint: String,
        client: ImageServiceClient<Channel>,
    },
    Shell(String),
}

struct Participant {
    label: String,
    target: Target,
    times: Vec<f64>,
}

impl Participant {
    fn kind(&self) -> &'static str {
        match self.target {
            Target::Cri { .. } => "cri",
            Target::Shell(_) => "baseline",
        }
    }

    fn describe(&self) -> &str {
        match &self.target {
            Target::Cri { endpoint, .. } => endpoint,
            Target::Shell(cmd) => cmd,
        }
    }
}

impl Args {
    /// Whether the benchmark is of streaming (see `main`'s choice of runtime).
    pub(crate) fn is_streaming(&self) -> bool {
        matches!(self.cmd, BenchCmd::Exec(_) | BenchCmd::Relay(_))
    }
}

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    match args.cmd {
        BenchCmd::Pull(a) => pull(g, a).await,
        BenchCmd::Pods(a) => bench_pods::run(g, a).await,
        BenchCmd::Containers(a) => bench_containers::run(g, a).await,
        BenchCmd::Exec(a) => bench_exec::run(g, a).await,
        BenchCmd::Relay(a) => bench_exec::relay(a).await,
    }
}

/// Indices of the participants in run `run` (0-based): forward on even runs, reversed on odd
/// ones (A,B then B,A ...).
pub(crate) fn run_order(n: usize, run: usize) -> Vec<usize> {
    if run.is_multiple_of(2) {
        (0..n).collect()
    } else {
        (0..n).rev().collect()
    }
}

/// `NAME=ENDPOINT` pairs of `--label`.
pub(crate) fn parse_labels(labels: &[String]) -> Result<Vec<(String, String)>> {
    labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((name, ep)) if !name.is_empty() && !ep.is_empty() => {
                Ok((name.to_string(), ep.to_string()))
            }
            _ => bail!("--label {l:?} is not NAME=ENDPOINT"),
        })
        .collect()
}

/// The name `--label` gives `endpoint` (matching `unix:///x` with `/x`), else the endpoint.
pub(crate) fn label_for(endpoint: &str, labels: &[(String, String)]) -> String {
    let path = client::parse_endpoint(endpoint).ok();
    labels
        .iter()
        .find(|(_, ep)| {
            ep == endpoint || (path.is_some() && client::parse_endpoint(ep).ok() == path)
        })
        .map_or_else(|| endpoint.to_string(), |(name, _)| name.clone())
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Stats {
    /// The 50th percentile.
    pub median: f64,
    pub p95: f64,
    pub min: f64,
    pub max: f64,
}

pub(crate) fn stats(times: &[f64]) -> Option<Stats> {
    if times.is_empty() {
        return None;
    }
    let mut t = times.to_vec();
    t.sort_by(f64::total_cmp);
    Some(Stats {
        median: percentile(&t, 0.5),
        p95: percentile(&t, 0.95),
        min: t[0],
        max: t[t.len() - 1],
    })
}

/// The `q` quantile (0..=1) of ascending, non-empty `sorted`, interpolated linearly between
/// the two nearest ranks (numpy's default): with q = 0.5 the usual median.
pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Untimed, first-use costs out of the way.
    Warmup,
    Sequential,
    Parallel,
}

/// One turn of one participant: `round` counts from 0 within its phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Step {
    pub phase: Phase,
    pub round: usize,
    pub participant: usize,
}

impl Step {
    /// The `<run>` of the object names `bench-<run>-<i>`: `w0`, `0`, `p0`, unique per bench run.
    pub(crate) fn run_name(&self) -> String {
        match self.phase {
            Phase::Warmup => format!("w{}", self.round),
            Phase::Sequential => self.round.to_string(),
            Phase::Parallel => format!("p{}", self.round),
        }
    }
}

/// Warm-up, then the sequential rounds, then the parallel rounds; within each round every
/// participant takes one turn, forward on even rounds and reversed on odd ones.
pub(crate) fn schedule(
    participants: usize,
    warmup: usize,
    runs: usize,
    parallel_runs: usize,
) -> Vec<Step> {
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
pub(crate) fn orders(steps: &[Step], phase: Phase, labels: &[String]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    for s in steps.iter().filter(|s| s.phase == phase) {
        if out.len() <= s.round {
            out.resize(s.round + 1, Vec::new());
        }
        out[s.round].push(labels[s.participant].clone());
    }
    out
}

/// First ^C (or SIGTERM): sets `flag`, which stops the bench after the current step so that
/// it can clean up. Second: exits at once.
pub(crate) async fn watch_interrupts(flag: Arc<AtomicBool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return;
    };
    let got = tokio::select! {
        r = tokio::signal::ctrl_c() => r.is_ok(),
        r = term.recv() => r.is_some(),
    };
    if !got {
        return;
    }
    eprintln!("interrupted: finishing the current step, then cleaning up (^C again: exit now)");
    flag.store(true, Ordering::SeqCst);
    tokio::select! {
        _ = tokio::signal::ctrl_c() => std::process::exit(130),
        _ = term.recv() => std::process::exit(143),
    }
}

/// The successes of calls made at once, in order, and the first failure among them.
pub(crate) fn split_results<T>(
    results: impl IntoIterator<Item = Result<T>>,
) -> (Vec<T>, Option<anyhow::Error>) {
    let mut ok = Vec::new();
    let mut failed = None;
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    (ok, failed)
}

/// Milliseconds with one decimal below a second (most CRI calls take a few), else `format_secs`.
pub(crate) fn format_ms(secs: f64) -> String {
    if secs < 1.0 {
        format!("{:.1}ms", secs * 1000.0)
    } else {
        format_secs(secs)
    }
}

/// `b / a`, when both are known and `a` is not zero.
pub(crate) fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if a > 0.0 => Some(b / a),
        _ => None,
    }
}

/// What the samples of a series are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    Seconds,
    /// Memory, in KiB as /proc shows it.
    KiB,
    Count,
    /// Throughput; a higher value is better, so its ratios read the other way round.
    BytesPerSecond,
}

impl Unit {
    fn format(self, v: f64) -> String {
        match self {
            Unit::Seconds => format_ms(v),
            Unit::KiB if v >= 10.0 * 1024.0 => format!("{:.1}MiB", v / 1024.0),
            Unit::KiB => format!("{v:.0}KiB"),
            Unit::Count => format!("{v:.0}"),
            Unit::BytesPerSecond if v >= 1e9 => format!("{:.2}GB/s", v / 1e9),
            Unit::BytesPerSecond => format!("{:.0}MB/s", v / 1e6),
        }
    }

    /// The suffix of the JSON keys of its values.
    fn suffix(self) -> &'static str {
        match self {
            Unit::Seconds => "s",
            Unit::KiB => "kib",
            Unit::Count => "count",
            Unit::BytesPerSecond => "bytes_per_s",
        }
    }

    /// The JSON key of the raw samples.
    fn samples_key(self) -> &'static str {
        match self {
            Unit::Seconds => "times_s",
            Unit::KiB => "samples_kib",
            Unit::Count => "samples",
            Unit::BytesPerSecond => "samples_bytes_per_s",
        }
    }
}

/// One metric of one participant.
pub(crate) struct Series<'a> {
    pub name: &'a str,
    pub key: &'a str,
    pub unit: Unit,
    pub samples: &'a [f64],
}

/// The results of one participant; every participant of a bench lists the same metrics.
pub(crate) struct Report<'a> {
    pub label: &'a str,
    pub endpoint: &'a str,
    /// Why it has no results.
    pub failed: Option<&'a str>,
    pub series: Vec<Series<'a>>,
}

impl Report<'_> {
    fn p50(&self, key: &str) -> Option<f64> {
        self.series
            .iter()
            .find(|s| s.key == key)
            .and_then(|s| stats(s.samples))
            .map(|s| s.median)
    }
}

/// The reference of the ratios: the first participant that did not fail.
fn reference<'r, 'a>(reports: &'r [Report<'a>]) -> Option<&'r Report<'a>> {
    reports.iter().find(|r| r.failed.is_none())
}

/// One table per participant (N, p50, p95, min, max of each metric), then, with several, the
/// p50s side by side with their ratios to the reference.
pub(crate) fn summary_tables(reports: &[Report<'_>]) -> String {
    let dash = || "-".to_string();
    let mut out = String::new();
    for r in reports {
        out.push_str(&format!("\n{} ({})\n", r.label, r.endpoint));
        if let Some(why) = r.failed {
            out.push_str(&format!("failed: {why}\n"));
            continue;
        }
        let mut rows = vec![["METRIC", "N", "P50", "P95", "MIN", "MAX"]
            .map(String::from)
            .to_vec()];
        for s in &r.series {
            let st = stats(s.samples);
            let f = |x: fn(&Stats) -> f64| st.as_ref().map_or_else(dash, |st| s.unit.format(x(st)));
            rows.push(vec![
                s.name.to_string(),
                s.samples.len().to_string(),
                f(|s| s.median),
                f(|s| s.p95),
                f(|s| s.min),
                f(|s| s.max),
            ]);
        }
        out.push_str(&output::format_table(&rows));
    }
    let Some(first) = reference(reports) else {
        return out;
    };
    let others: Vec<&Report> = reports
        .iter()
        .filter(|r| !std::ptr::eq(*r, first))
        .collect();
    if others.is_empty() {
        return out;
    }
    out.push_str(&format!("\np50, and ratios of p50s to {}\n", first.label));
    let mut header = vec!["METRIC".to_string()];
    header.extend(reports.iter().map(|r| r.label.to_string()));
    header.extend(
        others
            .iter()
            .map(|r| format!("{}/{}", r.label, first.label)),
    );
    let mut rows = vec![header];
    for s in &first.series {
        let mut row = vec![s.name.to_string()];
        row.extend(
            reports
                .iter()
                .map(|r| r.p50(s.key).map_or_else(dash, |v| s.unit.format(v))),
        );
        row.extend(others.iter().map(|r| {
            ratio(first.p50(s.key), r.p50(s.key)).map_or_else(dash, |x| format!("{x:.2}"))
        }));
        rows.push(row);
    }
    out.push_str(&output::format_table(&rows));
    out
}

/// The `results` of a bench's JSON: per participant its metrics (with the raw samples) and
/// the ratios of their p50s to the reference's.
pub(crate) fn summary_json(reports: &[Report<'_>]) -> Vec<Value> {
    let first = reference(reports);
    reports
        .iter()
        .map(|r| {
            let mut metrics = Map::new();
            let mut ratios = Map::new();
            for s in &r.series {
                let st = stats(s.samples);
                let u = s.unit.suffix();
                let mut m = Map::new();
                m.insert("n".into(), json!(s.samples.len()));
                m.insert(format!("p50_{u}"), json!(st.map(|s| s.median)));
                m.insert(format!("p95_{u}"), json!(st.map(|s| s.p95)));
                m.insert(format!("min_{u}"), json!(st.map(|s| s.min)));
                m.insert(format!("max_{u}"), json!(st.map(|s| s.max)));
                m.insert(s.unit.samples_key().into(), json!(s.samples));
                metrics.insert(s.key.to_string(), Value::Object(m));
                let x = first.and_then(|f| ratio(f.p50(s.key), st.map(|s| s.median)));
                ratios.insert(s.key.to_string(), json!(x));
            }
            let mut v = json!({
                "label": r.label,
                "endpoint": r.endpoint,
                "metrics": metrics,
                "p50_ratio_to_reference": ratios,
            });
            if let (Some(why), Some(m)) = (r.failed, v.as_object_mut()) {
                m.insert("error".into(), json!(why));
            }
            v
        })
        .collect()
}

/// Runs `cmd` with `sh -c`, its stdout sent to our stderr so that ours stays clean.
async fn shell(cmd: &str, env: &[(&str, String)]) -> Result<()> {
    let out = std::io::stderr().as_fd().try_clone_to_owned()?;
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .status()
        .await
        .with_context(|| format!("run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

async fn pull(g: &GlobalOpts, a: PullArgs) -> Result<()> {
    let labels = parse_labels(&a.labels)?;
    let mut ps = Vec::new();
    for ep in &a.endpoints {
        let ch = client::connect(ep, g.call_timeout()).await?;
        ps.push(Participant {
            label: label_for(ep, &labels),
            target: Target::Cri {
                endpoint: ep.clone(),
                client: ImageServiceClient::new(ch),
            },
            times: Vec::new(),
        });
    }
    if let Some(cmd) = &a.baseline_cmd {
        ps.push(Participant {
            label: a.baseline_label.clone(),
            target: Target::Shell(cmd.clone()),
            times: Vec::new(),
        });
    }

    let runs = a.runs as usize;
    let mut orders = Vec::new();
    for run in 0..runs {
        let order = run_order(ps.len(), run);
        orders.push(
            order
                .iter()
                .map(|&i| ps[i].label.clone())
                .collect::<Vec<_>>(),
        );
        for i in order {
            let p = &mut ps[i];
            let secs = timed_once(g, &a, p, run).await?;
            eprintln!(
                "run {}/{runs}: {:<12} {}",
                run + 1,
                p.label,
                format_secs(secs)
            );
            p.times.push(secs);
        }
    }

    let reference = ps.first().and_then(|p| stats(&p.times)).map(|s| s.median);
    let summary: Vec<_> = ps
        .iter()
        .map(|p| {
            let s = stats(&p.times);
            let ratio = match (s, reference) {
                (Some(s), Some(r)) if r > 0.0 => Some(s.median / r),
                _ => None,
            };
            (p, s, ratio)
        })
        .collect();

    if a.json {
        let results: Vec<_> = summary
            .iter()
            .map(|(p, s, ratio)| {
                json!({
                    "label": p.label,
                    "kind": p.kind(),
                    "target": p.describe(),
                    "times_s": p.times,
                    "median_s": s.map(|s| s.median),
                    "min_s": s.map(|s| s.min),
                    "max_s": s.map(|s| s.max),
                    "ratio_to_reference": ratio,
                })
            })
            .collect();
        let v = json!({
            "image": a.image,
            "runs": runs,
            "reference": ps.first().map(|p| p.label.clone()),
            "order": orders,
            "results": results,
        });
        output::print(&v, output::Format::Json)?;
        return Ok(());
    }

    let mut out = String::new();
    let mut rows = vec![std::iter::once("RUN".to_string())
        .chain(ps.iter().map(|p| p.label.clone()))
        .collect::<Vec<_>>()];
    for (run, order) in orders.iter().enumerate() {
        let mut row = vec![format!("{} ({})", run + 1, order.join(","))];
        row.extend(ps.iter().map(|p| format_secs(p.times[run])));
        rows.push(row);
    }
    out.push_str(&format!("image: {}\n", a.image));
    out.push_str(&output::format_table(&rows));
    out.push('\n');
    let mut rows = vec![["LABEL", "MEDIAN", "MIN", "MAX", "RATIO", "TARGET"]
        .map(String::from)
        .to_vec()];
    for (p, s, ratio) in &summary {
        let f = |x: Option<f64>| x.map_or_else(|| "-".to_string(), format_secs);
        rows.push(vec![
            p.label.clone(),
            f(s.map(|s| s.median)),
            f(s.map(|s| s.min)),
            f(s.map(|s| s.max)),
            ratio.map_or_else(|| "-".to_string(), |r| format!("{r:.2}")),
            p.describe().to_string(),
        ]);
    }
    out.push_str(&output::format_table(&rows));
    if let Some(first) = ps.first() {
        for (p, _, ratio) in summary.iter().skip(1) {
            if let Some(r) = ratio {
                out.push_str(&format!("median {} / {}: {r:.2}\n", p.label, first.label));
            }
        }
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    Ok(())
}

/// One cold, timed pull (or baseline run) of participant `p` in run `run` (0-based).
async fn timed_once(g: &GlobalOpts, a: &PullArgs, p: &mut Participant, run: usize) -> Result<f64> {
    let endpoint = match &p.target {
        Target::Cri { endpoint, .. } => endpoint.clone(),
        Target::Shell(_) => String::new(),
    };
    if let Target::Cri { client, .. } = &mut p.target {
        let req = RemoveImageRequest {
            image: Some(image_spec(&a.image)),
        };
        let what = format!("remove image {:?} on {}", a.image, p.label);
        let timeout = Some(g.timeout.unwrap_or(REMOVE_TIMEOUT));
        match g
            .call(&what, timeout, req, |r| client.remove_image(r))
            .await
        {
            Ok(_) => {}
            Err(e) if e.code() == Code::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    let env = [
        ("BENCH_LABEL", p.label.clone()),
        ("BENCH_KIND", p.kind().to_string()),
        ("BENCH_ENDPOINT", endpoint),
        ("BENCH_IMAGE", a.image.clone()),
        ("BENCH_RUN", (run + 1).to_string()),
    ];
    if let Some(hook) = &a.pre_run {
        shell(hook, &env)
            .await
            .with_context(|| format!("--pre-run before {} run {}", p.label, run + 1))?;
    }
    let start = Instant::now();
    match &mut p.target {
        Target::Cri { client, .. } => {
            let req = PullImageRequest {
                image: Some(image_spec(&a.image)),
                auth: None,
                sandbox_config: None,
            };
            let what = format!("pull image {:?} on {}", a.image, p.label);
            g.call(&what, g.timeout, req, |r| client.pull_image(r))
                .await?;
        }
        Target::Shell(cmd) => shell(cmd, &env)
            .await
            .with_context(|| format!("baseline run {}", run + 1))?,
    }
    Ok(start.elapsed().as_secs_f64())
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
    fn parallel_results_keep_successes_and_the_first_failure() {
        let (ok, failed) = split_results([
            Ok(1),
            Err(anyhow::anyhow!("a")),
            Ok(3),
            Err(anyhow::anyhow!("b")),
        ]);
        assert_eq!(ok, [1, 3]);
        assert_eq!(failed.map(|e| e.to_string()).as_deref(), Some("a"));
        let (ok, failed) = split_results::<u8>([]);
        assert!(ok.is_empty() && failed.is_none());
    }

    #[test]
    fn ratios_and_formatting() {
        assert_eq!(ratio(Some(2.0), Some(5.0)), Some(2.5));
        assert_eq!(ratio(Some(0.0), Some(5.0)), None);
        assert_eq!(ratio(None, Some(5.0)), None);
        assert_eq!(format_ms(0.0042), "4.2ms");
        assert_eq!(format_ms(1.5), "1.500s");
        assert_eq!(Unit::KiB.format(2048.0), "2048KiB");
        assert_eq!(Unit::KiB.format(51200.0), "50.0MiB");
    }

    fn series<'a>(key: &'a str, unit: Unit, samples: &'a [f64]) -> Series<'a> {
        Series {
            name: key,
            key,
            unit,
            samples,
        }
    }

    #[test]
    fn summaries_skip_failed_participants_in_ratios() {
        let fast = [0.010, 0.020, 0.030];
        let slow = [0.030, 0.060, 0.090];
        let rss = [1024.0];
        let reports = vec![
            Report {
                label: "berth",
                endpoint: "/b.sock",
                failed: Some("CreateContainer: unimplemented"),
                series: vec![
                    series("create", Unit::Seconds, &[]),
                    series("rss", Unit::KiB, &[]),
                ],
            },
            Report {
                label: "containerd",
                endpoint: "/c.sock",
                failed: None,
                series: vec![
                    series("create", Unit::Seconds, &fast),
                    series("rss", Unit::KiB, &rss),
                ],
            },
            Report {
                label: "runc",
                endpoint: "runc",
                failed: None,
                series: vec![
                    series("create", Unit::Seconds, &slow),
                    series("rss", Unit::KiB, &[]),
                ],
            },
        ];
        let t = summary_tables(&reports);
        assert!(
            t.contains("berth (/b.sock)\nfailed: CreateContainer: unimplemented\n"),
            "{t}"
        );
        assert!(t.contains("ratios of p50s to containerd"), "{t}");
        let ratio_line = t
            .lines()
            .find(|l| l.starts_with("create ") && l.contains("3.00"));
        assert!(ratio_line.is_some(), "{t}");
        let j = summary_json(&reports);
        assert_eq!(j[0]["error"], "CreateContainer: unimplemented");
        assert_eq!(j[1]["metrics"]["create"]["p50_s"], json!(0.020));
        assert_eq!(j[1]["metrics"]["rss"]["samples_kib"], json!([1024.0]));
        assert_eq!(j[2]["p50_ratio_to_reference"]["create"], json!(3.0));
        assert_eq!(j[2]["p50_ratio_to_reference"]["rss"], Value::Null);
    }

    #[test]
    fn runs_alternate_order() {
        assert_eq!(run_order(2, 0), [0, 1]);
        assert_eq!(run_order(2, 1), [1, 0]);
        assert_eq!(run_order(2, 2), [0, 1]);
        assert_eq!(run_order(3, 1), [2, 1, 0]);
        assert_eq!(run_order(1, 1), [0]);
        // over an even number of runs every participant goes first equally often
        let firsts: Vec<usize> = (0..4).map(|r| run_order(2, r)[0]).collect();
        assert_eq!(firsts, [0, 1, 0, 1]);
    }

    #[test]
    fn stats_median_min_max() {
        let s = stats(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert!((s.p95 - 2.9).abs() < 1e-9, "{s:?}");
        let s = stats(&[4.0, 1.0, 2.0, 3.0]);
        assert_eq!(s.map(|s| s.median), Some(2.5));
        assert_eq!(stats(&[]), None);
    }

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        // 1..=20: p50 between 10 and 11, p95 at rank 18.05 (0-based) = 19.05
        let t: Vec<f64> = (1..=20).map(f64::from).collect();
        assert!(close(percentile(&t, 0.5), 10.5));
        assert!(close(percentile(&t, 0.95), 19.05));
        assert!(close(percentile(&t, 0.0), 1.0));
        assert!(close(percentile(&t, 1.0), 20.0));
        // 1..=21: exact ranks
        let t: Vec<f64> = (1..=21).map(f64::from).collect();
        assert!(close(percentile(&t, 0.5), 11.0));
        assert!(close(percentile(&t, 0.95), 20.0));
        // one sample is every percentile; out-of-range q is clamped
        assert!(close(percentile(&[7.0], 0.95), 7.0));
        assert!(close(percentile(&[1.0, 2.0], 1.5), 2.0));
        // order of the input does not matter to stats()
        let s = stats(&[5.0, 1.0, 4.0, 2.0, 3.0]).unwrap();
        assert!(close(s.median, 3.0) && close(s.p95, 4.8));
        assert!(close(s.min, 1.0) && close(s.max, 5.0));
    }

    #[test]
    fn labels_map_endpoints_to_names() {
        let labels = parse_labels(&[
            "berth=unix:///var/tmp/b.sock".to_string(),
            "containerd=/var/tmp/c.sock".to_string(),
        ]);
        let labels = labels.unwrap_or_default();
        assert_eq!(label_for("unix:///var/tmp/b.sock", &labels), "berth");
        assert_eq!(label_for("/var/tmp/b.sock", &labels), "berth");
        assert_eq!(label_for("unix:///var/tmp/c.sock", &labels), "containerd");
        assert_eq!(label_for("/other.sock", &labels), "/other.sock");
        assert!(parse_labels(&["noequals".to_string()]).is_err());
        assert!(parse_labels(&["=x".to_string()]).is_err());
    }
}
