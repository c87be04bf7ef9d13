//! `berthctl bench exec`: the streaming round trip of an exec (`true`: the Exec RPC, the
//! upgrade, the remotecommand session and the exit status) and the throughput of a
//! port-forward, on each CRI endpoint in turn, in the same run.
//!
//! Each endpoint gets one host-network pod with a container that sinks whatever reaches its
//! port (busybox `nc -ll -e`), so no CNI is needed on any runtime. The endpoints run one after
//! another (the sink's port is the host's), each cleaned up before the next starts.
//!
//! `--floor` adds the row of plain TCP through the same hops to the first endpoint's sink:
//! the sender, a copy in this process (for the client's port-forward), a relay process (for
//! the daemon), the sink. On loopback the kernel's TCP work is most of the cost, so that row
//! says what the machine allows at all.

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use berth_streaming::client::{remote_command, Io, PortForwarder};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

use super::bench::{label_for, parse_labels, summary_json, summary_tables, Report, Series, Unit};
use super::bench_containers::DEFAULT_IMAGE;
use super::bench_pods::{bench_pod_config, call_timeout, remove_bench_pods, run_pod, LABEL_KEY};
use super::exec::Transport;
use super::image_spec;
use crate::client::{self, GlobalOpts};
use crate::output;

const LABEL_VALUE: &str = "exec";

#[derive(clap::Args, Debug)]
pub(crate) struct ExecArgs {
    /// CRI endpoint (repeatable; the first is the reference of the ratios; default: the
    /// global --runtime-endpoint)
    #[arg(long = "endpoint")]
    endpoints: Vec<String>,
    /// Display name of an endpoint, NAME=ENDPOINT (repeatable)
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Image of the container (needs busybox `sh`, `true` and `nc`)
    #[arg(long, default_value = DEFAULT_IMAGE)]
    image: String,
    /// Streaming transport of the client
    #[arg(long, value_enum, default_value = "spdy")]
    transport: Transport,
    /// Timed execs per endpoint
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Untimed execs first
    #[arg(long, default_value_t = 3)]
    warmup: u32,
    /// Bytes sent through the port-forward per timed transfer
    #[arg(long, default_value_t = 256 << 20)]
    bytes: u64,
    /// Timed port-forward transfers per endpoint (0: none)
    #[arg(long, default_value_t = 3)]
    transfers: u32,
    /// The sink's port (on the host's network: free on the node)
    #[arg(long, default_value_t = 19977)]
    port: u16,
    /// Also measure plain TCP relayed through the same hops (no runtime, no protocol)
    #[arg(long)]
    floor: bool,
    /// Print a machine-readable JSON summary instead of tables
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct RelayArgs {
    /// Where every accepted connection is relayed to
    #[arg(long)]
    to: String,
}

/// Buffer of each direction of a relay copy, as big as the port-forward's reads.
const RELAY_BUFFER: usize = berth_streaming::spdy::session::COPY_CHUNK;

/// The floor's daemon: prints its port, then relays each connection to `--to` both ways.
pub(crate) async fn relay(a: RelayArgs) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    loop {
        let (mut conn, _) = listener.accept().await?;
        let to = a.to.clone();
        tokio::spawn(async move {
            if let Ok(mut out) = tokio::net::TcpStream::connect(&to).await {
                let _ = tokio::io::copy_bidirectional_with_sizes(
                    &mut conn,
                    &mut out,
                    RELAY_BUFFER,
                    RELAY_BUFFER,
                )
                .await;
            }
        });
    }
}

/// The floor's relay process (killed when dropped).
struct Relay {
    _child: tokio::process::Child,
    port: u16,
}

impl Relay {
    async fn start(sink_port: u16) -> Result<Relay> {
        let exe = std::env::current_exe().context("own executable")?;
        let mut child = tokio::process::Command::new(exe)
            .args(["bench", "relay", "--to", &format!("127.0.0.1:{sink_port}")])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawn the relay")?;
        let mut out = child.stdout.take().context("relay stdout")?;
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while out.read(&mut b).await? == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        let port = String::from_utf8_lossy(&line)
            .trim()
            .parse()
            .context("relay port")?;
        Ok(Relay {
            _child: child,
            port,
        })
    }
}

struct Participant {
    label: String,
    endpoint: String,
    exec: Vec<f64>,
    throughput: Vec<f64>,
    failed: Option<String>,
}

pub(crate) async fn run(g: &GlobalOpts, a: ExecArgs) -> Result<()> {
    let g = &GlobalOpts {
        timeout: call_timeout(g),
        ..g.clone()
    };
    let labels = parse_labels(&a.labels)?;
    let endpoints = if a.endpoints.is_empty() {
        vec![g.runtime_endpoint.clone()]
    } else {
        a.endpoints.clone()
    };
    let mut ps = Vec::new();
    let mut floor = a.floor.then(|| Participant {
        label: "floor (plain TCP relay)".into(),
        endpoint: "the same hops without a runtime".into(),
        exec: Vec::new(),
        throughput: Vec::new(),
        failed: None,
    });
    for ep in &endpoints {
        let mut p = Participant {
            label: label_for(ep, &labels),
            endpoint: ep.clone(),
            exec: Vec::new(),
            throughput: Vec::new(),
            failed: None,
        };
        if let Err(e) = measure(g, &a, &mut p, floor.as_mut()).await {
            eprintln!("{}: {e:#}", p.label);
            p.failed = Some(format!("{e:#}"));
        }
        // Measured once, on the first endpoint's sink.
        if let Some(f) = floor.take() {
            ps.push(p);
            ps.push(f);
        } else {
            ps.push(p);
        }
    }
    let reports: Vec<Report> = ps
        .iter()
        .map(|p| Report {
            label: &p.label,
            endpoint: &p.endpoint,
            failed: p.failed.as_deref(),
            series: vec![
                Series {
                    name: "exec round trip (true)",
                    key: "exec",
                    unit: Unit::Seconds,
                    samples: &p.exec,
                },
                Series {
                    name: "port-forward throughput",
                    key: "port_forward",
                    unit: Unit::BytesPerSecond,
                    samples: &p.throughput,
                },
            ],
        })
        .collect();
    if a.json {
        let v = json!({
            "image": a.image,
            "transport": format!("{:?}", a.transport).to_lowercase(),
            "runs": a.runs,
            "warmup": a.warmup,
            "bytes": a.bytes,
            "transfers": a.transfers,
            "results": summary_json(&reports),
        });
        output::print(&v, output::Format::Json)?;
    } else {
        let mut out = format!(
            "image: {}; transport: {:?}; {} execs of `true` per endpoint (warm-up {}); {} \
             transfers of {} through a port-forward\n",
            a.image,
            a.transport,
            a.runs,
            a.warmup,
            a.transfers,
            output::human_size(a.bytes)
        );
        out.push_str(&summary_tables(&reports));
        std::io::stdout().lock().write_all(out.as_bytes())?;
    }
    if ps.iter().all(|p| p.failed.is_some()) {
        bail!("no endpoint could be measured");
    }
    Ok(())
}

/// Sets the endpoint up, measures, and always cleans up.
async fn measure(
    g: &GlobalOpts,
    a: &ExecArgs,
    p: &mut Participant,
    floor: Option<&mut Participant>,
) -> Result<()> {
    let ch = client::connect(&p.endpoint, g.call_timeout()).await?;
    let mut rt = RuntimeServiceClient::new(ch.clone());
    let mut live = BTreeSet::new();
    let result = measure_in_pod(g, a, p, floor, ch, &mut rt, &mut live).await;
    let (_, gone) = remove_bench_pods(g, &mut rt, LABEL_VALUE, &live, &p.label).await;
    if gone.len() < live.len() {
        eprintln!("{}: a benchmark pod could not be removed", p.label);
    }
    result
}

async fn measure_in_pod(
    g: &GlobalOpts,
    a: &ExecArgs,
    p: &mut Participant,
    floor: Option<&mut Participant>,
    ch: Channel,
    rt: &mut RuntimeServiceClient<Channel>,
    live: &mut BTreeSet<String>,
) -> Result<()> {
    let mut ic = cri::image_service_client::ImageServiceClient::new(ch);
    let req = cri::PullImageRequest {
        image: Some(image_spec(&a.image)),
        auth: None,
        sandbox_config: None,
    };
    g.call(&format!("pull image {:?}", a.image), g.timeout, req, |r| {
        ic.pull_image(r)
    })
    .await?;
    let log_dir = std::env::temp_dir().join(format!("berthctl-bench-exec-{}", std::process::id()));
    std::fs::create_dir_all(&log_dir).with_context(|| format!("create {}", log_dir.display()))?;
    let mut pod_config = bench_pod_config("bench-exec", LABEL_VALUE, cri::NamespaceMode::Node)?;
    pod_config.log_directory = log_dir.display().to_string();
    pod_config.hostname.clear();
    let pod = run_pod(g, rt, pod_config.clone(), "", &p.label).await?;
    live.insert(pod.clone());
    // The sink reads each connection to its end, then closes it: the sender sees EOF once
    // every byte has arrived.
    let script = format!("exec nc -ll -p {} -e sh -c 'cat > /dev/null'", a.port);
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "sink".into(),
            attempt: 0,
        }),
        image: Some(image_spec(&a.image)),
        command: vec!["sh".into(), "-c".into(), script],
        labels: HashMap::from([(LABEL_KEY.to_string(), LABEL_VALUE.to_string())]),
        log_path: "sink.log".into(),
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    };
    let req = cri::CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(config),
        sandbox_config: Some(pod_config),
    };
    let id = g
        .call("create the sink container", g.timeout, req, |r| {
            rt.create_container(r)
        })
        .await?
        .container_id;
    let req = cri::StartContainerRequest {
        container_id: id.clone(),
    };
    g.call("start the sink container", g.timeout, req, |r| {
        rt.start_container(r)
    })
    .await?;

    for i in 0..a.warmup + a.runs {
        let took = exec_true(g, rt, &id, a.transport).await?;
        if i >= a.warmup {
            p.exec.push(took.as_secs_f64());
        }
    }
    if a.transfers > 0 {
        wait_listening(a.port).await?;
        let req = cri::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![i32::from(a.port)],
        };
        let url = g
            .call("port-forward", g.timeout, req, |r| rt.port_forward(r))
            .await?
            .url;
        let pf = PortForwarder::connect(
            berth_streaming::client::Url {
                url: &url,
                trust: &g.stream_trust(),
            },
            a.transport.into(),
        )
        .await?;
        for _ in 0..a.transfers {
            let took = transfer(&pf, a.port, a.bytes).await?;
            p.throughput.push(a.bytes as f64 / took.as_secs_f64());
        }
        pf.close().await;
        if let Some(f) = floor {
            if let Err(e) = measure_floor(a, f).await {
                eprintln!("{}: {e:#}", f.label);
                f.failed = Some(format!("{e:#}"));
            }
        }
    }
    Ok(())
}

/// One streaming exec of `true`, from the Exec RPC to its exit status.
async fn exec_true(
    g: &GlobalOpts,
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
    transport: Transport,
) -> Result<Duration> {
    let start = Instant::now();
    let req = cri::ExecRequest {
        container_id: id.to_string(),
        cmd: vec!["true".into()],
        stdout: true,
        ..Default::default()
    };
    let url = g.call("exec", g.timeout, req, |r| rt.exec(r)).await?.url;
    let io = Io {
        stdin: None,
        stdout: Some(Box::new(tokio::io::sink())),
        stderr: None,
        tty: false,
        resize: None,
    };
    let code = remote_command(
        berth_streaming::client::Url {
            url: &url,
            trust: &g.stream_trust(),
        },
        transport.into(),
        io,
    )
    .await?;
    let took = start.elapsed();
    if code != 0 {
        bail!("`true` exited with {code}");
    }
    Ok(took)
}

/// The sink listens on the host's network (the pod shares it): wait until it accepts.
async fn wait_listening(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listens on port {port} after 10 s (is nc in the image?)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn measure_floor(a: &ExecArgs, f: &mut Participant) -> Result<()> {
    let relay = Relay::start(a.port).await?;
    for _ in 0..a.transfers {
        let (ours, theirs) = local_pair().await?;
        let start = Instant::now();
        let client_copy = async {
            let mut theirs = theirs;
            let mut out = tokio::net::TcpStream::connect(("127.0.0.1", relay.port)).await?;
            tokio::io::copy_bidirectional_with_sizes(
                &mut theirs,
                &mut out,
                RELAY_BUFFER,
                RELAY_BUFFER,
            )
            .await?;
            anyhow::Ok(())
        };
        let (copied, sent) = tokio::join!(client_copy, send_and_wait(ours, a.bytes));
        sent?;
        copied.context("relay")?;
        f.throughput
            .push(a.bytes as f64 / start.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Both ends of a fresh loopback connection: the sender's and the forwarder's.
async fn local_pair() -> Result<(tokio::net::TcpStream, tokio::net::TcpStream)> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let local = listener.local_addr()?;
    let ours = tokio::net::TcpStream::connect(local).await?;
    let (theirs, _) = listener.accept().await?;
    Ok((ours, theirs))
}

/// Writes `bytes` into `ours`, half-closes it, and waits until the far end closes.
async fn send_and_wait(mut ours: tokio::net::TcpStream, bytes: u64) -> Result<()> {
    let chunk = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        ours.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    ours.shutdown().await?;
    let mut rest = Vec::new();
    ours.read_to_end(&mut rest).await?;
    Ok(())
}

/// Sends `bytes` through one forwarded connection and waits for the sink to close it.
async fn transfer(pf: &PortForwarder, port: u16, bytes: u64) -> Result<Duration> {
    let (ours, theirs) = local_pair().await?;
    let start = Instant::now();
    let forward = pf.forward(port, theirs);
    let send = send_and_wait(ours, bytes);
    let (fwd, sent) = tokio::join!(forward, send);
    sent?;
    fwd.context("port-forward")?;
    Ok(start.elapsed())
}
