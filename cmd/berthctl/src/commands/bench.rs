//! `berthctl bench pull`: cold-pull timings of one image on several CRI endpoints (and an
//! optional shell baseline), in alternating order so neither side always goes first.
//! `berthctl bench pods` lives in `bench_pods.rs`; the order, label and statistics helpers
//! here are shared by both.

use std::io::Write as _;
use std::os::fd::AsFd;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{PullImageRequest, RemoveImageRequest};
use serde_json::json;
use tonic::transport::Channel;
use tonic::Code;

use super::{bench_pods, image_spec};
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

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    match args.cmd {
        BenchCmd::Pull(a) => pull(g, a).await,
        BenchCmd::Pods(a) => bench_pods::run(g, a).await,
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
