//! `berthctl bench containers`: container lifecycle latencies and memory on several CRI
//! endpoints, and optionally bare runc as the floor, taking turns going first.
//!
//! Per CRI endpoint one pod (host network, untimed) holds every container. Timed, one at a
//! time: CreateContainer, StartContainer, StopContainer (the process exits on SIGTERM) and
//! RemoveContainer; then `--parallel` containers created and started at once (wall time until
//! all run) and stopped and removed at once. Measured: the RSS of the shim of a container (the
//! parent of its process: berth-shim or containerd-shim-runc-v2 alike), of all shims with
//! `--parallel` containers running, and of the daemon (the peer of a connection to its socket)
//! idle and with them running. Everything carries `io.berth.bench=containers`; leftovers of an
//! aborted run are removed first, and this run's on the way out, on error and ^C too. An
//! endpoint that cannot run containers is reported as failed without stopping the others.

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::future::join_all;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;

use super::bench::{
    format_ms, label_for, orders, parse_labels, schedule, split_results, summary_json,
    summary_tables, watch_interrupts, Phase, Report, Series, Step, Unit,
};
use super::bench_pods::{bench_pod_config, call_timeout, remove_bench_pods, run_pod, LABEL_KEY};
use super::image_spec;
use super::inspect::container_status;
use super::rm::remove_container;
use super::start::start_container;
use super::stop::stop_container;
use crate::client::{self, GlobalOpts, RpcError};
use crate::output;

pub(crate) const DEFAULT_IMAGE: &str = "127.0.0.1:5000/berth/busybox:latest";
/// Runs until told to stop, and stops at once on SIGTERM: as PID 1 of its namespace the shell
/// only gets the signal because it traps it, and `wait` returns as soon as it arrives.
pub(crate) const DEFAULT_SCRIPT: &str = "trap 'exit 0' TERM; sleep 3600 & wait";
const LABEL_VALUE: &str = "containers";
/// Fewer sequential samples than this make a p95 meaningless.
const MIN_RUNS: u32 = 20;
/// Prefix of the runc floor's container IDs, to find leftovers.
const RUNC_PREFIX: &str = "berthctl-bench-";

#[derive(clap::Args, Debug)]
pub(crate) struct ContainersArgs {
    /// CRI endpoint (repeatable; the first is the reference of the ratios; default: the
    /// global --runtime-endpoint)
    #[arg(long = "endpoint")]
    endpoints: Vec<String>,
    /// Display name of an endpoint, NAME=ENDPOINT (repeatable)
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Image of the containers (pulled before timing)
    #[arg(long, default_value = DEFAULT_IMAGE)]
    image: String,
    /// Shell script the containers run with `sh -c`: long-running, exiting on SIGTERM
    #[arg(long, default_value = DEFAULT_SCRIPT)]
    command: String,
    /// Sequential containers per endpoint (at least 20 unless --allow-fewer)
    #[arg(long, default_value_t = 20)]
    runs: u32,
    /// Allow --runs below 20 (for quick checks; percentiles of few samples mean little)
    #[arg(long)]
    allow_fewer: bool,
    /// Containers created and started at once in the parallel phase (0: none)
    #[arg(long, default_value_t = 20)]
    parallel: u32,
    /// Rounds of the parallel phase per endpoint
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    parallel_runs: u32,
    /// Untimed containers per endpoint before timing (first-use costs)
    #[arg(long, default_value_t = 1)]
    warmup: u32,
    /// Grace period of StopContainer in seconds (the default command exits on SIGTERM at once)
    #[arg(long, default_value_t = 10)]
    stop_timeout: i64,
    /// Untimed pause between start and stop of the sequential containers, so that the
    /// command is up (its SIGTERM trap set) before it is stopped, e.g. 100ms
    #[arg(long, value_parser = crate::duration::parse_duration, default_value = "100ms")]
    settle: Duration,
    /// Runtime handler of the pods, as the runtimes name them
    #[arg(long, default_value = "")]
    runtime: String,
    /// The daemon behind an endpoint, NAME=PID (NAME: its label or endpoint); default: the
    /// process listening on the CRI socket (SO_PEERCRED)
    #[arg(long = "daemon-pid", value_name = "NAME=PID")]
    daemon_pids: Vec<String>,
    /// Also time bare runc on this OCI bundle (the floor): runc create + runc start,
    /// runc kill TERM + runc delete
    #[arg(long)]
    runc_bundle: Option<PathBuf>,
    /// The runc binary of the floor
    #[arg(long, default_value = "runc")]
    runc: String,
    /// runc's --root for the floor's containers (default: runc's own)
    #[arg(long)]
    runc_root: Option<PathBuf>,
    /// Name of the floor's row
    #[arg(long, default_value = "runc")]
    runc_label: String,
    /// Print a machine-readable JSON summary instead of tables
    #[arg(long)]
    json: bool,
}

/// What is measured; `METRICS[m as usize]` describes metric `m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metric {
    Create,
    Start,
    CreateStart,
    Stop,
    Remove,
    StopRemove,
    ParallelWall,
    ParallelEach,
    ParallelStopRemoveWall,
    ShimRss,
    ShimsRssParallel,
    ShimsParallel,
    DaemonRssIdle,
    DaemonRssParallel,
}

/// A metric's row name, JSON key, unit, and whether only the parallel phase measures it.
struct MetricInfo {
    name: &'static str,
    key: &'static str,
    unit: Unit,
    parallel: bool,
}

const fn info(name: &'static str, key: &'static str, unit: Unit, parallel: bool) -> MetricInfo {
    MetricInfo {
        name,
        key,
        unit,
        parallel,
    }
}

const METRICS: [MetricInfo; 14] = [
    info("create", "create", Unit::Seconds, false),
    info("start", "start", Unit::Seconds, false),
    info("create+start", "create_start", Unit::Seconds, false),
    info("stop", "stop", Unit::Seconds, false),
    info("remove", "remove", Unit::Seconds, false),
    info("stop+remove", "stop_remove", Unit::Seconds, false),
    info(
        "parallel create+start, all running",
        "parallel_create_start_wall",
        Unit::Seconds,
        true,
    ),
    info(
        "parallel create+start, per container",
        "parallel_create_start_each",
        Unit::Seconds,
        true,
    ),
    info(
        "parallel stop+remove, all gone",
        "parallel_stop_remove_wall",
        Unit::Seconds,
        true,
    ),
    info("shim RSS, 1 container", "shim_rss", Unit::KiB, false),
    info(
        "shims RSS, parallel running",
        "shims_rss_parallel",
        Unit::KiB,
        true,
    ),
    info(
        "shims, parallel running",
        "shims_parallel",
        Unit::Count,
        true,
    ),
    info("daemon RSS, pod only", "daemon_rss_idle", Unit::KiB, false),
    info(
        "daemon RSS, parallel running",
        "daemon_rss_parallel",
        Unit::KiB,
        true,
    ),
];

/// A CRI endpoint with its pod, one that could not be reached, or the runc floor.
enum Target {
    Cri(Box<CriTarget>),
    Unreachable(String),
    Runc(RuncTarget),
}

struct CriTarget {
    endpoint: String,
    client: RuntimeServiceClient<Channel>,
    pod: Option<(String, cri::PodSandboxConfig)>,
    daemon_pid: Option<u32>,
    /// The pod's log directory, ours to remove.
    log_dir: PathBuf,
}

#[derive(Clone)]
struct RuncTarget {
    bin: String,
    root: Option<PathBuf>,
    bundle: PathBuf,
}

struct Participant {
    label: String,
    target: Target,
    times: [Vec<f64>; METRICS.len()],
    /// Containers created and not yet removed, for the cleanup.
    live: BTreeSet<String>,
    /// Why it stopped taking part.
    failed: Option<String>,
    warned_rss: bool,
}

impl Participant {
    fn describe(&self) -> String {
        match &self.target {
            Target::Cri(t) => t.endpoint.clone(),
            Target::Unreachable(ep) => ep.clone(),
            Target::Runc(r) => format!("{} on {}", r.bin, r.bundle.display()),
        }
    }

    fn push(&mut self, m: Metric, v: f64) {
        self.times[m as usize].push(v);
    }

    fn push_time(&mut self, m: Metric, d: Duration) {
        self.push(m, d.as_secs_f64());
    }
}

pub(crate) async fn run(g: &GlobalOpts, a: ContainersArgs) -> Result<()> {
    if a.runs < MIN_RUNS && !a.allow_fewer {
        bail!(
            "--runs {} is below {MIN_RUNS}: p95 needs samples (or --allow-fewer)",
            a.runs
        );
    }
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    // every call gets bench_pods' generous deadline unless --timeout says otherwise: 20
    // containers started at once on a slow runtime take seconds each
    let g = &GlobalOpts {
        timeout: call_timeout(g),
        ..g.clone()
    };
    let labels = parse_labels(&a.labels)?;
    let daemon_pids = parse_labels(&a.daemon_pids)?;
    let endpoints = if a.endpoints.is_empty() {
        vec![g.runtime_endpoint.clone()]
    } else {
        a.endpoints.clone()
    };
    let scratch = std::env::temp_dir().join(format!("berthctl-bench-{}", std::process::id()));
    let mut ps = Vec::new();
    for (i, ep) in endpoints.iter().enumerate() {
        let label = label_for(ep, &labels);
        let ch = match client::connect(ep, g.call_timeout()).await {
            Ok(ch) => ch,
            Err(e) => {
                // the others can still be measured; this one's row says why it has none
                eprintln!("{label}: {e:#}");
                ps.push(Participant {
                    label,
                    target: Target::Unreachable(ep.clone()),
                    times: Default::default(),
                    live: BTreeSet::new(),
                    failed: Some(format!("{e:#}")),
                    warned_rss: false,
                });
                continue;
            }
        };
        let daemon_pid = match daemon_pids.iter().find(|(n, _)| *n == label || n == ep) {
            Some((_, pid)) => Some(
                pid.parse()
                    .with_context(|| format!("--daemon-pid {pid:?}"))?,
            ),
            None => socket_peer_pid(ep)
                .map_err(|e| eprintln!("{label}: no daemon pid ({e:#}); use --daemon-pid"))
                .ok(),
        };
        ps.push(Participant {
            label,
            target: Target::Cri(Box::new(CriTarget {
                endpoint: ep.clone(),
                client: RuntimeServiceClient::new(ch),
                pod: None,
                daemon_pid,
                log_dir: scratch.join(format!("logs-{i}")),
            })),
            times: Default::default(),
            live: BTreeSet::new(),
            failed: None,
            warned_rss: false,
        });
    }
    if let Some(bundle) = &a.runc_bundle {
        if !bundle.join("config.json").is_file() {
            bail!("--runc-bundle {}: no config.json", bundle.display());
        }
        // runc create leaves the container's init to whoever reaps orphans: make that us, so
        // that its exit is seen at once (as a shim sees it)
        nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")?;
        ps.push(Participant {
            label: a.runc_label.clone(),
            target: Target::Runc(RuncTarget {
                bin: a.runc.clone(),
                root: a.runc_root.clone(),
                bundle: bundle.clone(),
            }),
            times: Default::default(),
            live: BTreeSet::new(),
            failed: None,
            warned_rss: false,
        });
    }

    let interrupted = Arc::new(AtomicBool::new(false));
    let signals = tokio::spawn(watch_interrupts(interrupted.clone()));
    for p in &mut ps {
        let n = cleanup(g, p).await;
        if n > 0 {
            eprintln!(
                "{}: removed {n} object(s) left by an earlier bench",
                p.label
            );
        }
    }
    for p in &mut ps {
        if let Err(e) = setup(g, &a, p).await {
            eprintln!("{}: {e:#}", p.label);
            p.failed = Some(format!("{e:#}"));
        }
    }
    let parallel_runs = if a.parallel == 0 {
        0
    } else {
        a.parallel_runs as usize
    };
    let steps = schedule(ps.len(), a.warmup as usize, a.runs as usize, parallel_runs);
    let res = bench(g, &a, &mut ps, &steps, &interrupted).await;
    let mut left = 0;
    for p in &mut ps {
        cleanup(g, p).await;
        left += p.live.len();
    }
    // best effort: only the logs of our pods are in there
    let _ = std::fs::remove_dir_all(&scratch);
    signals.abort();
    res?;
    if left > 0 {
        eprintln!("warning: {left} benchmark container(s) or pod(s) could not be removed");
    }

    let labels: Vec<String> = ps.iter().map(|p| p.label.clone()).collect();
    if a.json {
        let describes: Vec<String> = ps.iter().map(Participant::describe).collect();
        let reports = reports(&ps, &describes, true);
        let v = json!({
            "image": a.image,
            "command": a.command,
            "runs": a.runs,
            "parallel": a.parallel,
            "parallel_runs": parallel_runs,
            "warmup": a.warmup,
            "reference": ps.iter().find(|p| p.failed.is_none()).map(|p| p.label.clone()),
            "order": {
                "sequential": orders(&steps, Phase::Sequential, &labels),
                "parallel": orders(&steps, Phase::Parallel, &labels),
            },
            "results": summary_json(&reports),
        });
        output::print(&v, output::Format::Json)?;
        return all_failed(&ps);
    }
    let describes: Vec<String> = ps.iter().map(Participant::describe).collect();
    let mut out = format!(
        "image: {}; command: sh -c {:?}\nsequential: {} containers per endpoint; parallel: {} \
         rounds of {}; warm-up: {}\n",
        a.image, a.command, a.runs, parallel_runs, a.parallel, a.warmup
    );
    out.push_str(&summary_tables(&reports(
        &ps,
        &describes,
        parallel_runs > 0,
    )));
    std::io::stdout().lock().write_all(out.as_bytes())?;
    all_failed(&ps)
}

/// The results are printed either way; the exit status says whether there were any.
fn all_failed(ps: &[Participant]) -> Result<()> {
    if ps.iter().all(|p| p.failed.is_some()) {
        bail!("no endpoint could be measured");
    }
    Ok(())
}

fn reports<'a>(ps: &'a [Participant], describes: &'a [String], parallel: bool) -> Vec<Report<'a>> {
    ps.iter()
        .zip(describes)
        .map(|(p, d)| Report {
            label: &p.label,
            endpoint: d,
            failed: p.failed.as_deref(),
            series: METRICS
                .iter()
                .zip(&p.times)
                .filter(|(m, _)| parallel || !m.parallel)
                .map(|(m, samples)| Series {
                    name: m.name,
                    key: m.key,
                    unit: m.unit,
                    samples,
                })
                .collect(),
        })
        .collect()
}

/// Untimed: the image pulled, the pod running, the daemon's RSS with only the pod.
async fn setup(g: &GlobalOpts, a: &ContainersArgs, p: &mut Participant) -> Result<()> {
    let Target::Cri(t) = &mut p.target else {
        return Ok(());
    };
    let channel = client::connect(&t.endpoint, g.call_timeout()).await?;
    let mut ic = k8s_cri::v1::image_service_client::ImageServiceClient::new(channel);
    let req = cri::PullImageRequest {
        image: Some(image_spec(&a.image)),
        auth: None,
        sandbox_config: None,
    };
    g.call(&format!("pull image {:?}", a.image), g.timeout, req, |r| {
        ic.pull_image(r)
    })
    .await?;
    std::fs::create_dir_all(&t.log_dir)
        .with_context(|| format!("create {}", t.log_dir.display()))?;
    // the host's network: what is timed is the containers, and containerd then needs no CNI
    let mut config = bench_pod_config("bench-containers", LABEL_VALUE, cri::NamespaceMode::Node)?;
    config.log_directory = t.log_dir.display().to_string();
    // a pod on the host's network has the host's UTS namespace too: no hostname of its own
    config.hostname.clear();
    let mut c = t.client.clone();
    let id = run_pod(g, &mut c, config.clone(), &a.runtime, &p.label).await?;
    p.live.insert(id.clone());
    t.pod = Some((id, config));
    if let Some(pid) = t.daemon_pid {
        match vm_rss_kib(pid) {
            Ok(kib) => p.push(Metric::DaemonRssIdle, kib as f64),
            Err(e) => eprintln!("{}: daemon RSS: {e:#}", p.label),
        }
    }
    Ok(())
}

async fn bench(
    g: &GlobalOpts,
    a: &ContainersArgs,
    ps: &mut [Participant],
    steps: &[Step],
    interrupted: &AtomicBool,
) -> Result<()> {
    let runs = a.runs;
    let parallel_runs = a.parallel_runs;
    for step in steps {
        if interrupted.load(Ordering::SeqCst) {
            return Err(anyhow!("interrupted"));
        }
        let p = &mut ps[step.participant];
        if p.failed.is_some() {
            continue;
        }
        let run = step.run_name();
        let res = match step.phase {
            Phase::Warmup | Phase::Sequential => {
                match sequential_once(g, a, p, &run, step.phase == Phase::Sequential).await {
                    Ok(t) if step.phase == Phase::Sequential => {
                        eprintln!(
                            "run {}/{runs}: {:<12} create+start {:>8}  stop+remove {:>8}",
                            step.round + 1,
                            p.label,
                            format_ms(t.0.as_secs_f64()),
                            format_ms(t.1.as_secs_f64())
                        );
                        Ok(())
                    }
                    Ok(_) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Phase::Parallel => match parallel_once(g, a, p, &run).await {
                Ok((up, down)) => {
                    eprintln!(
                        "parallel {}/{parallel_runs}: {:<12} {} running {:>8}  stopped+removed {:>8}",
                        step.round + 1,
                        p.label,
                        a.parallel,
                        format_ms(up.as_secs_f64()),
                        format_ms(down.as_secs_f64())
                    );
                    Ok(())
                }
                Err(e) => Err(e),
            },
        };
        if let Err(e) = res {
            // the others go on; this one's containers are removed at the end
            eprintln!("{}: {e:#}", p.label);
            p.failed = Some(format!("{e:#}"));
        }
    }
    Ok(())
}

/// The config of container `i` of run `run`.
fn container_config(a: &ContainersArgs, run: &str, i: usize) -> cri::ContainerConfig {
    let name = format!("bench-{run}-{i}");
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.clone(),
            attempt: 0,
        }),
        image: Some(image_spec(&a.image)),
        command: vec!["sh".into(), "-c".into(), a.command.clone()],
        labels: HashMap::from([(LABEL_KEY.to_string(), LABEL_VALUE.to_string())]),
        log_path: format!("{name}.log"),
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// One container created, started, stopped and removed; records each step when `timed`, and
/// returns the create+start and stop+remove times.
async fn sequential_once(
    g: &GlobalOpts,
    a: &ContainersArgs,
    p: &mut Participant,
    run: &str,
    timed: bool,
) -> Result<(Duration, Duration)> {
    let config = container_config(a, run, 0);
    let mut shim = None;
    let (create, start, stop, remove) = match &p.target {
        Target::Unreachable(ep) => bail!("{ep} is unreachable"),
        Target::Cri(t) => {
            let t0 = Instant::now();
            let id = create(g, t, config).await?;
            let create = t0.elapsed();
            p.live.insert(id.clone());
            let t1 = Instant::now();
            start(g, t, &id).await?;
            let start = t1.elapsed();
            if timed {
                shim = Some(shim_rss(g, t, &id).await);
            }
            tokio::time::sleep(a.settle).await;
            let t2 = Instant::now();
            stop(g, t, &id, a.stop_timeout).await?;
            let stop = t2.elapsed();
            let t3 = Instant::now();
            remove(g, t, &id).await?;
            let remove = t3.elapsed();
            p.live.remove(&id);
            (create, start, stop, remove)
        }
        Target::Runc(r) => {
            let id = format!("{RUNC_PREFIX}{run}-0-{}", std::process::id());
            p.live.insert(id.clone());
            let r = r.clone();
            let settle = a.settle;
            let times =
                tokio::task::spawn_blocking(move || r.lifecycle(&id, settle).map(|t| (id, t)))
                    .await??;
            p.live.remove(&times.0);
            times.1
        }
    };
    match shim {
        Some(Ok(kib)) => p.push(Metric::ShimRss, kib as f64),
        Some(Err(e)) if !p.warned_rss => {
            eprintln!("{}: shim RSS not measured: {e:#}", p.label);
            p.warned_rss = true;
        }
        _ => {}
    }
    if timed {
        p.push_time(Metric::Create, create);
        p.push_time(Metric::Start, start);
        p.push_time(Metric::CreateStart, create + start);
        p.push_time(Metric::Stop, stop);
        p.push_time(Metric::Remove, remove);
        p.push_time(Metric::StopRemove, stop + remove);
    }
    Ok((create + start, stop + remove))
}

/// `--parallel` containers created and started at once, their shims and the daemon measured,
/// then all stopped and removed at once; returns both wall times.
async fn parallel_once(
    g: &GlobalOpts,
    a: &ContainersArgs,
    p: &mut Participant,
    run: &str,
) -> Result<(Duration, Duration)> {
    let n = a.parallel as usize;
    let start_all = Instant::now();
    let results: Vec<(Result<String>, Duration)> = match &p.target {
        Target::Unreachable(ep) => bail!("{ep} is unreachable"),
        Target::Cri(t) => {
            join_all((0..n).map(|i| {
                let config = container_config(a, run, i);
                async move {
                    let t0 = Instant::now();
                    let r = async {
                        let id = create(g, t, config).await?;
                        if let Err(e) = start(g, t, &id).await {
                            return Err(anyhow!(e).context(format!("(created {id})")));
                        }
                        Ok(id)
                    }
                    .await;
                    (r, t0.elapsed())
                }
            }))
            .await
        }
        Target::Runc(r) => {
            let tasks = (0..n).map(|i| {
                let r = r.clone();
                let id = format!("{RUNC_PREFIX}{run}-{i}-{}", std::process::id());
                tokio::task::spawn_blocking(move || {
                    let t0 = Instant::now();
                    let res = r.create_start(&id).map(|_| id);
                    (res, t0.elapsed())
                })
            });
            join_all(tasks)
                .await
                .into_iter()
                .map(|r| r.unwrap_or_else(|e| (Err(anyhow!("runc task: {e}")), Duration::ZERO)))
                .collect()
        }
    };
    let wall = start_all.elapsed();
    let (started, failed) = split_results(results.into_iter().map(|(r, d)| r.map(|id| (id, d))));
    p.live.extend(started.iter().map(|(id, _)| id.clone()));
    if let Some(e) = failed {
        return Err(e.context(format!("{} of {n} containers started", started.len())));
    }
    let (ids, each): (Vec<String>, Vec<Duration>) = started.into_iter().unzip();
    if let Target::Cri(t) = &p.target {
        let (shims, rss, daemon) = memory_with_running(g, t, &ids).await;
        let times = &mut p.times;
        let mut push = |m: Metric, v: f64| times[m as usize].push(v);
        if let Some((count, kib)) = shims.zip(rss) {
            push(Metric::ShimsParallel, count as f64);
            push(Metric::ShimsRssParallel, kib as f64);
        }
        if let Some(kib) = daemon {
            push(Metric::DaemonRssParallel, kib as f64);
        }
    }
    let t0 = Instant::now();
    let results: Vec<(String, Result<()>)> = match &p.target {
        Target::Unreachable(ep) => bail!("{ep} is unreachable"),
        Target::Cri(t) => {
            join_all(ids.iter().map(|id| async move {
                let r = async {
                    stop(g, t, id, a.stop_timeout).await?;
                    remove(g, t, id).await?;
                    Ok(())
                }
                .await;
                (id.clone(), r)
            }))
            .await
        }
        Target::Runc(r) => {
            let tasks = ids.iter().map(|id| {
                let r = r.clone();
                let id = id.clone();
                tokio::task::spawn_blocking(move || {
                    let res = r.kill_delete(&id);
                    (id, res)
                })
            });
            join_all(tasks)
                .await
                .into_iter()
                .map(|r| r.unwrap_or_else(|e| (String::new(), Err(anyhow!("runc task: {e}")))))
                .collect()
        }
    };
    let down = t0.elapsed();
    let (gone, failed) = split_results(results.into_iter().map(|(id, r)| r.map(|()| id)));
    for id in &gone {
        p.live.remove(id);
    }
    if let Some(e) = failed {
        return Err(e);
    }
    p.push_time(Metric::ParallelWall, wall);
    p.push_time(Metric::ParallelStopRemoveWall, down);
    for d in each {
        p.push_time(Metric::ParallelEach, d);
    }
    Ok((wall, down))
}

async fn create(g: &GlobalOpts, t: &CriTarget, config: cri::ContainerConfig) -> Result<String> {
    let Some((pod, pod_config)) = &t.pod else {
        bail!("no pod");
    };
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let req = cri::CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(config),
        sandbox_config: Some(pod_config.clone()),
    };
    let mut c = t.client.clone();
    let r = g
        .call(
            &format!("create container {name}"),
            call_timeout(g),
            req,
            |r| c.create_container(r),
        )
        .await?;
    Ok(r.container_id)
}

async fn start(g: &GlobalOpts, t: &CriTarget, id: &str) -> Result<(), RpcError> {
    start_container(g, &mut t.client.clone(), id, g.call_timeout()).await
}

async fn stop(g: &GlobalOpts, t: &CriTarget, id: &str, grace: i64) -> Result<(), RpcError> {
    stop_container(g, &mut t.client.clone(), id, grace).await
}

async fn remove(g: &GlobalOpts, t: &CriTarget, id: &str) -> Result<(), RpcError> {
    remove_container(g, &mut t.client.clone(), id).await
}

/// The pid of a container's process, from its verbose status: an info entry `pid`, or a JSON
/// object entry with a top-level `pid` (containerd's `info`).
async fn container_pid(g: &GlobalOpts, t: &CriTarget, id: &str) -> Result<u32> {
    let r = container_status(g, &mut t.client.clone(), id, true).await?;
    pid_from_info(&r.info).ok_or_else(|| anyhow!("no pid in the verbose status of {id}"))
}

fn pid_from_info(info: &HashMap<String, String>) -> Option<u32> {
    if let Some(pid) = info.get("pid").and_then(|p| p.trim().parse().ok()) {
        return Some(pid);
    }
    let mut keys: Vec<&String> = info.keys().collect();
    keys.sort();
    keys.into_iter().find_map(|k| {
        serde_json::from_str::<Value>(&info[k])
            .ok()?
            .get("pid")?
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .filter(|&p| p > 0)
    })
}

/// The RSS of the shim of a running container: the parent of its process.
async fn shim_rss(g: &GlobalOpts, t: &CriTarget, id: &str) -> Result<u64> {
    let pid = container_pid(g, t, id).await?;
    vm_rss_kib(parent_pid(pid)?)
}

/// With `ids` running: how many distinct shims they have and their summed RSS, and the
/// daemon's RSS.
async fn memory_with_running(
    g: &GlobalOpts,
    t: &CriTarget,
    ids: &[String],
) -> (Option<usize>, Option<u64>, Option<u64>) {
    let mut shims = BTreeSet::new();
    for id in ids {
        let Ok(pid) = container_pid(g, t, id).await else {
            return (None, None, t.daemon_pid.and_then(|d| vm_rss_kib(d).ok()));
        };
        if let Ok(ppid) = parent_pid(pid) {
            shims.insert(ppid);
        }
    }
    let rss: Option<u64> = shims.iter().map(|&s| vm_rss_kib(s).ok()).sum();
    (
        Some(shims.len()),
        rss,
        t.daemon_pid.and_then(|d| vm_rss_kib(d).ok()),
    )
}

/// Best effort: removes `p`'s containers and pods of this bench (and of an aborted earlier
/// one); returns how many were removed. What could not be stays in `p.live`.
async fn cleanup(g: &GlobalOpts, p: &mut Participant) -> usize {
    match &mut p.target {
        Target::Unreachable(_) => 0,
        Target::Runc(r) => {
            let mut ids = p.live.clone();
            ids.extend(r.list().unwrap_or_default());
            let mut removed = 0;
            for id in ids {
                match r.force_delete(&id) {
                    Ok(()) => {
                        removed += 1;
                        p.live.remove(&id);
                    }
                    Err(e) => eprintln!("cleanup: {e:#}"),
                }
            }
            removed
        }
        Target::Cri(t) => {
            let mut c = t.client.clone();
            let mut removed = 0;
            let req = cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    label_selector: HashMap::from([(
                        LABEL_KEY.to_string(),
                        LABEL_VALUE.to_string(),
                    )]),
                    ..Default::default()
                }),
            };
            let mut ctrs: BTreeSet<String> = BTreeSet::new();
            match g
                .call("list benchmark containers", call_timeout(g), req, |r| {
                    c.list_containers(r)
                })
                .await
            {
                Ok(r) => ctrs.extend(r.containers.into_iter().map(|c| c.id)),
                Err(e) => eprintln!("cleanup: {e}"),
            }
            ctrs.extend(
                p.live
                    .iter()
                    .filter(|id| t.pod.as_ref().is_none_or(|(pod, _)| pod != *id))
                    .cloned(),
            );
            for id in ctrs {
                let _ = stop(g, t, &id, 0).await;
                match remove(g, t, &id).await {
                    Ok(()) => removed += 1,
                    Err(e) if e.code() == Code::NotFound => {}
                    Err(e) => {
                        eprintln!("cleanup: {e}");
                        continue;
                    }
                }
                p.live.remove(&id);
            }
            let known: BTreeSet<String> = t.pod.iter().map(|(id, _)| id.clone()).collect();
            let (n, gone) = remove_bench_pods(g, &mut c, LABEL_VALUE, &known, &p.label).await;
            for id in &gone {
                p.live.remove(id);
            }
            if t.pod.as_ref().is_some_and(|(pod, _)| gone.contains(pod)) {
                t.pod = None;
            }
            removed += n;
            removed
        }
    }
}

impl RuncTarget {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        if let Some(root) = &self.root {
            c.arg("--root").arg(root);
        }
        // the container inherits runc's stdio: nothing may wait on it
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }

    fn runc(&self, args: &[&str]) -> Result<String> {
        let out = self
            .command()
            .args(args)
            .stdout(Stdio::piped())
            .output()
            .with_context(|| format!("run {}", self.bin))?;
        if !out.status.success() {
            bail!(
                "runc {}: {}: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Like `runc`, for `runc create`: the container keeps runc's stdio, so none of it may be a
    /// pipe we wait on; its errors go to a file instead.
    fn runc_detached(&self, args: &[&str], id: &str) -> Result<()> {
        let err_path = std::env::temp_dir().join(format!("{id}.err"));
        let err_file = std::fs::File::create(&err_path)
            .with_context(|| format!("create {}", err_path.display()))?;
        let status = self
            .command()
            .args(args)
            .stderr(Stdio::from(err_file))
            .status()
            .with_context(|| format!("run {}", self.bin));
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        let _ = std::fs::remove_file(&err_path);
        let status = status?;
        if !status.success() {
            bail!("runc {}: {status}: {}", args.join(" "), err.trim());
        }
        Ok(())
    }

    fn pid_file(id: &str) -> PathBuf {
        std::env::temp_dir().join(format!("{id}.pid"))
    }

    /// `runc create` + `runc start`; returns both times.
    fn create_start_timed(&self, id: &str) -> Result<(Duration, Duration)> {
        let bundle = self.bundle.display().to_string();
        let pid_file = Self::pid_file(id).display().to_string();
        let t0 = Instant::now();
        self.runc_detached(
            &["create", "--bundle", &bundle, "--pid-file", &pid_file, id],
            id,
        )?;
        let create = t0.elapsed();
        let t1 = Instant::now();
        self.runc(&["start", id])?;
        Ok((create, t1.elapsed()))
    }

    fn create_start(&self, id: &str) -> Result<()> {
        self.create_start_timed(id).map(drop)
    }

    /// `runc kill TERM`, the process reaped (we are its subreaper), `runc delete`; both times.
    fn kill_delete_timed(&self, id: &str) -> Result<(Duration, Duration)> {
        let pid_file = Self::pid_file(id);
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("read {}", pid_file.display()))?
            .trim()
            .parse()
            .with_context(|| format!("parse {}", pid_file.display()))?;
        let t0 = Instant::now();
        self.runc(&["kill", id, "TERM"])?;
        reap(pid)?;
        let kill = t0.elapsed();
        let t1 = Instant::now();
        self.runc(&["delete", id])?;
        let delete = t1.elapsed();
        let _ = std::fs::remove_file(&pid_file);
        Ok((kill, delete))
    }

    fn kill_delete(&self, id: &str) -> Result<()> {
        self.kill_delete_timed(id).map(drop)
    }

    /// create, start, (`settle`), kill, delete: the four times.
    fn lifecycle(
        &self,
        id: &str,
        settle: Duration,
    ) -> Result<(Duration, Duration, Duration, Duration)> {
        let (create, start) = self.create_start_timed(id)?;
        std::thread::sleep(settle);
        let (kill, delete) = self.kill_delete_timed(id)?;
        Ok((create, start, kill, delete))
    }

    /// The floor's containers runc knows of (an aborted run's too).
    fn list(&self) -> Result<Vec<String>> {
        let out = self.runc(&["list", "-q"])?;
        Ok(out
            .lines()
            .filter(|l| l.starts_with(RUNC_PREFIX))
            .map(String::from)
            .collect())
    }

    fn force_delete(&self, id: &str) -> Result<()> {
        let pid = std::fs::read_to_string(Self::pid_file(id))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        match self.runc(&["delete", "--force", id]) {
            Ok(_) => {}
            // never created, or already gone
            Err(e) if format!("{e:#}").contains("does not exist") => {}
            Err(e) => return Err(e),
        }
        if let Some(pid) = pid {
            // it was ours to reap; it may be gone already
            let _ = reap(pid);
        }
        let _ = std::fs::remove_file(Self::pid_file(id));
        Ok(())
    }
}

/// Waits for our (adopted) child `pid` to exit.
fn reap(pid: i32) -> Result<()> {
    use nix::sys::wait::waitpid;
    use nix::unistd::Pid;
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(anyhow!("wait for {pid}: {e}")),
        }
    }
}

/// The pid of the process listening on the unix socket of `endpoint`.
fn socket_peer_pid(endpoint: &str) -> Result<u32> {
    let path = client::parse_endpoint(endpoint)?;
    let s = std::os::unix::net::UnixStream::connect(&path)
        .with_context(|| format!("connect to {}", path.display()))?;
    let cred = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials)
        .context("SO_PEERCRED")?;
    u32::try_from(cred.pid()).map_err(|_| anyhow!("SO_PEERCRED gave pid {}", cred.pid()))
}

fn proc_file(pid: u32, name: &str) -> Result<String> {
    let path = Path::new("/proc").join(pid.to_string()).join(name);
    std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
}

/// The parent of `pid` (field 4 of /proc/<pid>/stat, after the command in parentheses).
fn parent_pid(pid: u32) -> Result<u32> {
    parse_ppid(&proc_file(pid, "stat")?).ok_or_else(|| anyhow!("no ppid in /proc/{pid}/stat"))
}

fn parse_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// VmRSS of `pid`, in KiB.
fn vm_rss_kib(pid: u32) -> Result<u64> {
    parse_vm_rss(&proc_file(pid, "status")?)
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppid_is_read_after_the_command_name() {
        assert_eq!(parse_ppid("1234 (sleep) S 99 1234 1234 0 -1"), Some(99));
        // a command name with spaces and parentheses
        assert_eq!(parse_ppid("77 (a) b (c)) R 5 77 77 0"), Some(5));
        assert_eq!(parse_ppid("garbage"), None);
        let me = parent_pid(std::process::id()).unwrap();
        assert_eq!(me, std::os::unix::process::parent_id());
    }

    #[test]
    fn vm_rss_is_in_kib() {
        let status =
            "Name:\tcontainerd-shim\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads: 9\n";
        assert_eq!(parse_vm_rss(status), Some(12345));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert!(vm_rss_kib(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn pids_come_from_containerd_info_or_a_pid_entry() {
        let containerd = HashMap::from([(
            "info".to_string(),
            r#"{"sandboxID":"abc","pid":16641,"removing":false}"#.to_string(),
        )]);
        assert_eq!(pid_from_info(&containerd), Some(16641));
        let flat = HashMap::from([("pid".to_string(), "42".to_string())]);
        assert_eq!(pid_from_info(&flat), Some(42));
        let none = HashMap::from([("info".to_string(), r#"{"pid":0}"#.to_string())]);
        assert_eq!(pid_from_info(&none), None);
        assert_eq!(pid_from_info(&HashMap::new()), None);
    }

    #[test]
    fn the_daemon_is_the_peer_of_its_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("cri.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let pid = socket_peer_pid(&format!("unix://{}", sock.display())).unwrap();
        assert_eq!(pid, std::process::id());
    }

    #[test]
    fn containers_run_the_script_with_sh_and_log() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: ContainersArgs,
        }
        let a = Cli::try_parse_from(["containers"]).unwrap().args;
        assert_eq!(
            (a.runs, a.parallel, a.image.as_str()),
            (20, 20, DEFAULT_IMAGE)
        );
        let c = container_config(&a, "p1", 3);
        assert_eq!(c.metadata.unwrap().name, "bench-p1-3");
        assert_eq!(c.command, ["sh", "-c", DEFAULT_SCRIPT]);
        assert_eq!(c.log_path, "bench-p1-3.log");
        assert_eq!(c.labels[LABEL_KEY], LABEL_VALUE);
    }

    #[tokio::test]
    async fn too_few_runs_are_refused_unless_allowed() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: ContainersArgs,
        }
        let g = GlobalOpts {
            runtime_endpoint: "/nonexistent.sock".into(),
            image_endpoint: None,
            timeout: None,
            debug: false,
            stream_ca: None,
        };
        let a = Cli::try_parse_from(["containers", "--runs", "5"])
            .unwrap()
            .args;
        let e = run(&g, a).await.unwrap_err().to_string();
        assert!(e.contains("--allow-fewer"), "{e}");
        // allowed, it gets as far as connecting, and fails with nothing measured
        let a = Cli::try_parse_from(["containers", "--runs", "5", "--allow-fewer", "--json"])
            .unwrap()
            .args;
        let e = run(&g, a).await.unwrap_err().to_string();
        assert!(e.contains("no endpoint could be measured"), "{e}");
    }

    #[test]
    fn metrics_have_units_and_parallel_ones_are_marked() {
        let m = |m: Metric| &METRICS[m as usize];
        assert_eq!(m(Metric::ShimRss).unit, Unit::KiB);
        assert_eq!(m(Metric::CreateStart).key, "create_start");
        assert_eq!(m(Metric::DaemonRssParallel).key, "daemon_rss_parallel");
        assert!(m(Metric::DaemonRssParallel).parallel && !m(Metric::DaemonRssIdle).parallel);
        let keys: BTreeSet<&str> = METRICS.iter().map(|m| m.key).collect();
        assert_eq!(keys.len(), METRICS.len());
    }
}
