//! berthctl: a CRI client with crictl's subcommand and flag names. Works against any CRI
//! socket (berthd's or containerd's); draws live pull progress when the runtime is berthd.

mod client;
mod commands;
mod containerconfig;
mod crilog;
mod duration;
mod output;
mod podconfig;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::client::GlobalOpts;

#[derive(Parser, Debug)]
#[command(
    name = "berthctl",
    version,
    about = "CRI client for berth (and any CRI runtime), with crictl's commands and flags"
)]
pub(crate) struct Cli {
    #[command(flatten)]
    global: GlobalOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Display runtime version information
    Version(commands::version::Args),
    /// Display information of the container runtime
    Info(commands::info::Args),
    /// Pull an image from a registry
    Pull(commands::pull::Args),
    /// List images
    #[command(visible_aliases = ["image", "img"])]
    Images(commands::images::Args),
    /// Return the status of one or more images
    Inspecti(commands::inspecti::Args),
    /// Remove one or more images
    Rmi(commands::rmi::Args),
    /// Return image filesystem info
    Imagefsinfo(commands::imagefsinfo::Args),
    /// Run a new pod
    Runp(commands::runp::Args),
    /// Stop one or more running pods
    Stopp(commands::stopp::Args),
    /// Remove one or more pods
    Rmp(commands::rmp::Args),
    /// Create a new container
    Create(commands::create::Args),
    /// Start one or more created containers
    Start(commands::start::Args),
    /// Stop one or more running containers
    Stop(commands::stop::Args),
    /// Remove one or more containers
    Rm(commands::rm::Args),
    /// List containers
    Ps(commands::ps::Args),
    /// Display the status of one or more containers
    Inspect(commands::inspect::Args),
    /// Fetch the logs of a container
    Logs(commands::logs::Args),
    /// Run a command in a running container
    Exec(commands::exec::Args),
    /// Attach to a running container
    Attach(commands::attach::Args),
    /// Forward local ports to a pod
    PortForward(commands::portforward::Args),
    /// Run a new container inside a sandbox
    Run(commands::run::Args),
    /// List container(s) resource usage statistics
    Stats(commands::stats::Args),
    /// List pod statistics
    Statsp(commands::stats::PodArgs),
    /// Update one or more running containers
    Update(commands::update::Args),
    /// Stream the events of containers
    Events(commands::events::Args),
    /// List pods
    Pods(commands::pods::Args),
    /// Display the status of one or more pods
    Inspectp(commands::inspectp::Args),
    /// Show a pod's network: IP, veth, routes, hostPorts (berth only, not in crictl)
    Netns(commands::netns::Args),
    /// Benchmarks (berth only, not in crictl)
    Bench(commands::bench::Args),
    /// Output shell completion code (bash, zsh or fish)
    Completion(commands::completion::Args),
    /// Write man pages into a directory (hack/gen-man.sh)
    #[command(hide = true)]
    Man(commands::completion::ManArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A streaming session is a chain of copies between sockets: on one thread each hand-off
    // between its tasks is a queue push instead of waking another thread, which on loopback
    // is a good part of the cost per byte.
    let streaming = match &cli.command {
        Command::Exec(_) | Command::Attach(_) | Command::PortForward(_) => true,
        Command::Bench(a) => a.is_streaming(),
        _ => false,
    };
    let runtime = if streaming {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    match runtime {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => {
            eprintln!("berthctl: starting the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    let g = &cli.global;
    let res = match cli.command {
        Command::Version(a) => commands::version::run(g, a).await,
        Command::Info(a) => commands::info::run(g, a).await,
        Command::Pull(a) => commands::pull::run(g, a).await,
        Command::Images(a) => commands::images::run(g, a).await,
        Command::Inspecti(a) => commands::inspecti::run(g, a).await,
        Command::Rmi(a) => commands::rmi::run(g, a).await,
        Command::Imagefsinfo(a) => commands::imagefsinfo::run(g, a).await,
        Command::Runp(a) => commands::runp::run(g, a).await,
        Command::Stopp(a) => commands::stopp::run(g, a).await,
        Command::Rmp(a) => commands::rmp::run(g, a).await,
        Command::Create(a) => commands::create::run(g, a).await,
        Command::Start(a) => commands::start::run(g, a).await,
        Command::Stop(a) => commands::stop::run(g, a).await,
        Command::Rm(a) => commands::rm::run(g, a).await,
        Command::Ps(a) => commands::ps::run(g, a).await,
        Command::Inspect(a) => commands::inspect::run(g, a).await,
        Command::Logs(a) => commands::logs::run(g, a).await,
        Command::Exec(a) => commands::exec::run(g, a).await,
        Command::Attach(a) => commands::attach::run(g, a).await,
        Command::PortForward(a) => commands::portforward::run(g, a).await,
        Command::Run(a) => commands::run::run(g, a).await,
        Command::Stats(a) => commands::stats::run(g, a).await,
        Command::Statsp(a) => commands::stats::run_pods(g, a).await,
        Command::Update(a) => commands::update::run(g, a).await,
        Command::Events(a) => commands::events::run(g, a).await,
        Command::Pods(a) => commands::pods::run(g, a).await,
        Command::Inspectp(a) => commands::inspectp::run(g, a).await,
        Command::Netns(a) => commands::netns::run(g, a).await,
        Command::Bench(a) => commands::bench::run(g, a).await,
        Command::Completion(a) => commands::completion::run(Cli::command(), a),
        Command::Man(a) => commands::completion::man(Cli::command(), a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<commands::ExitStatus>().is_some() => {
            let code = e.downcast_ref::<commands::ExitStatus>().map_or(1, |s| s.0);
            // exit statuses are 0..=255; a runtime's other codes still mean failure
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Err(e) => {
            eprintln!("berthctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
