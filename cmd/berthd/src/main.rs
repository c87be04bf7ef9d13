//! berthd: the berth node daemon. Reads config, wires the services together, serves CRI v1 on a
//! unix socket until SIGTERM/SIGINT.

mod config;
mod listener;
mod logging;
mod metrics;
mod notify;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use berth_cri::{
    ContainerManager, ContainerManagerConfig, ImageApi, PodManager, PodManagerConfig,
    PullProgressApi, RuntimeApi, RuntimeInfo, StreamBackend,
};
use berth_image::ImageManager;
use berth_store::Store;
use clap::Parser;
use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;

use crate::config::Config;

/// CRI messages can be large (ListContainers on a busy node); kubelet allows 16 MiB.
const MAX_MESSAGE_BYTES: usize = 16 << 20;

#[derive(Parser, Debug)]
#[command(name = "berthd", version, about = "berth CRI runtime daemon")]
struct Args {
    /// TOML config file (default /etc/berth/config.toml; absent means defaults)
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Persistent state directory (config key `root`)
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Runtime state directory (config key `state`)
    #[arg(long, global = true)]
    state: Option<PathBuf>,
    /// CRI unix socket path (config key `listen`)
    #[arg(long, global = true)]
    listen: Option<PathBuf>,
    /// Tracing filter in RUST_LOG syntax, e.g. `info,berth_image=debug` (config key
    /// `log_level`; this flag beats RUST_LOG, which beats the config)
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Log format (config key `log_format`)
    #[arg(long, global = true, value_enum)]
    log_format: Option<config::LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Print configuration, as `containerd config` does
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(clap::Subcommand, Debug)]
enum ConfigCommand {
    /// The default configuration: every key, commented (a starting /etc/berth/config.toml)
    Default,
    /// The effective configuration: the config file with the command-line flags applied
    Dump,
    /// A Kubernetes RuntimeClass for each handler of the effective configuration
    Runtimeclasses,
}

impl Args {
    /// The config file with the flags applied: what the daemon would run with.
    fn effective_config(&self) -> anyhow::Result<Config> {
        let mut cfg = Config::load(self.config.as_deref())?;
        if let Some(v) = &self.root {
            cfg.root = v.clone();
        }
        if let Some(v) = &self.state {
            cfg.state = v.clone();
        }
        if let Some(v) = &self.listen {
            cfg.listen = v.clone();
        }
        if let Some(v) = &self.log_level {
            cfg.log_level = v.clone();
        }
        if let Some(v) = self.log_format {
            cfg.log_format = v;
        }
        Ok(cfg)
    }
}

/// Descriptors berthd inherited (a lock its starter holds, a terminal) must not live on in the
/// shims and containers it starts, which outlive it: marked close-on-exec before any is started.
fn close_inherited_fds_on_exec() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: fcntl on a descriptor number only changes its flags; one that is not open
        // (the directory's own, closed by now) just fails with EBADF.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Config(c)) = &args.command {
        let text = match c {
            ConfigCommand::Default => Config::default().render(true)?,
            ConfigCommand::Dump => args.effective_config()?.render(false)?,
            ConfigCommand::Runtimeclasses => args.effective_config()?.runtime_classes()?,
        };
        print!("{text}");
        return Ok(());
    }
    let cfg = args.effective_config()?;
    close_inherited_fds_on_exec();
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = logging::filter(
        args.log_level.as_deref(),
        rust_log.as_deref(),
        &cfg.log_level,
    )?;
    logging::init(cfg.log_format, filter);

    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(cfg))
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.root)
        .with_context(|| format!("creating root {}", cfg.root.display()))?;
    std::fs::create_dir_all(&cfg.state)
        .with_context(|| format!("creating state {}", cfg.state.display()))?;
    // Held for the daemon's life: a second berthd on the same root would corrupt the store.
    let _root_lock = listener::lock_root(&cfg.root)?;
    // Bound before any state is touched: a socket held by another daemon must stop this one
    // before it changes bridges or rules. Connections queue until serving starts below.
    let incoming = listener::bind(&cfg.listen)?;

    let store = Store::open(&cfg.root).context("opening the metadata store")?;
    let images = ImageManager::open(
        &cfg.root,
        store.clone(),
        cfg.registry.config_path.clone(),
        cfg.registry.client_options(),
        cfg.registry.max_concurrent_downloads,
    )
    .context("opening the image store")?;

    let handlers = cfg.runtime.handlers(&cfg.state)?;
    let pods = open_pods(&cfg, store.clone(), &handlers)?;
    let containers = ContainerManager::open(
        store,
        pods.clone(),
        images.clone(),
        ContainerManagerConfig {
            root: cfg.root.clone(),
            state: cfg.state.clone(),
            shim_bin: shim_path(&cfg),
            handlers,
            default_handler: cfg.runtime.default_handler.clone(),
        },
    )
    .map_err(|s| anyhow::anyhow!("recovering containers: {}", s.message()))?;
    if !cfg.metrics.address.is_empty() {
        metrics::serve(
            &cfg.metrics.address,
            metrics::Sources {
                pods: pods.clone(),
                containers: containers.clone(),
            },
        )
        .await?;
    }
    let streaming = berth_streaming::Server::start(
        cfg.streaming.server_config()?,
        Arc::new(StreamBackend::new(containers.clone())),
    )
    .await
    .context("starting the streaming server")?;
    tracing::info!(addr = %streaming.addr(), "streaming server listening");
    let runtime = RuntimeApi::new(
        RuntimeInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            root: cfg.root.display().to_string(),
            state: cfg.state.display().to_string(),
        },
        pods,
        containers,
    );
    runtime.set_streaming(streaming);
    tracing::info!(socket = %cfg.listen.display(), root = %cfg.root.display(), "berthd serving CRI v1");
    // The socket has been bound since start; connections queue until the server below runs.
    notify::notify("READY=1");

    let stopping = Arc::new(tokio::sync::Notify::new());
    let serve = tonic::transport::Server::builder()
        .add_service(
            RuntimeServiceServer::new(runtime)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            ImageServiceServer::new(ImageApi::new(images.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            berth_proto::v1::pull_progress_server::PullProgressServer::new(PullProgressApi::new(
                images,
            )),
        )
        .serve_with_incoming_shutdown(incoming, {
            let stopping = stopping.clone();
            async move {
                shutdown_signal().await;
                stopping.notify_one();
            }
        });
    // A client that keeps its connection (an event subscriber, an idle channel) must not hold
    // the daemon: in-flight calls get a moment, then berthd stops anyway. Containers do not
    // depend on it.
    tokio::select! {
        r = serve => r.context("serving gRPC")?,
        () = async {
            stopping.notified().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open; stopping anyway"),
    }
    let _ = std::fs::remove_file(&cfg.listen);
    tracing::info!("berthd stopped");
    Ok(())
}

/// Networking and pod records: the network is initialised first so recovery can release what
/// dead pods held. A network that cannot be set up leaves the daemon serving with NetworkReady
/// false rather than not serving at all.
fn open_pods(
    cfg: &Config,
    store: Store,
    handlers: &[berth_runtime::runc::Handler],
) -> anyhow::Result<Arc<PodManager>> {
    let mut net_cfg = cfg.network.clone();
    if net_cfg.state_dir == berth_network::NetworkConfig::default().state_dir {
        net_cfg.state_dir = cfg.root.clone();
    }
    let network = berth_network::NetworkManager::new(net_cfg, store.clone())
        .context("network configuration")?;
    if let Err(e) = network.init() {
        tracing::error!(error = %e, "pod network setup failed; pods cannot start until it is fixed");
    }
    let ns_root = cfg.state.join("ns");
    berth_sys::mount::make_shared_root(&ns_root)
        .with_context(|| format!("preparing {}", ns_root.display()))?;
    let pods = PodManager::open(
        store,
        Arc::new(network),
        PodManagerConfig {
            handlers: handlers.iter().map(|h| h.name.clone()).collect(),
            state_dir: cfg.state.clone(),
            shim_bin: shim_path(cfg),
            cgroup_root: cfg.cgroup_parent.clone(),
        },
    )
    .map_err(|s| anyhow::anyhow!("recovering pods: {}", s.message()))?;
    Ok(Arc::new(pods))
}

fn shim_path(cfg: &Config) -> PathBuf {
    if let Some(p) = &cfg.shim_path {
        return p.clone();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("berth-shim")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("berth-shim"))
}

/// How long open connections may delay a stop after SIGTERM/SIGINT.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop berthd with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}
