//! `berthctl run`: crictl's `run`, RunPodSandbox + (pull) + CreateContainer + StartContainer
//! from a container config and a pod config; prints the container ID. The image is pulled
//! unless `--no-pull`, as crictl does (disable-pull-on-run off).

use anyhow::{Context, Result};
use k8s_cri::v1::RunPodSandboxRequest;

use super::create::{create_container, ConfigFiles, PullArgs};
use super::start::start_container;
use crate::client::GlobalOpts;
use crate::podconfig::load_pod_config_checked;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(flatten)]
    files: ConfigFiles,
    #[command(flatten)]
    pull: PullArgs,
    /// Runtime handler to use. Available options are defined by the container runtime.
    #[arg(short, long, default_value = "")]
    runtime: String,
}

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    let pull = args.pull.pull(true)?;
    let pod_config = load_pod_config_checked(&args.files.pod_config)?;
    let mut c = g.runtime_client().await?;
    let timeout = args.pull.call_timeout(g);
    let req = RunPodSandboxRequest {
        config: Some(pod_config.clone()),
        runtime_handler: args.runtime.clone(),
    };
    // cri-client gives sandbox creation twice the ordinary deadline
    let pod = g
        .call("run pod sandbox", Some(timeout * 2), req, |r| {
            c.run_pod_sandbox(r)
        })
        .await
        .context("run pod sandbox")?
        .pod_sandbox_id;
    // like crictl, a pod whose container could not be made stays: say which one
    let id = create_container(
        g,
        &mut c,
        &pod,
        &args.files.config,
        pod_config,
        &args.pull,
        pull,
    )
    .await
    .with_context(|| format!("pod {pod} was left running"))?;
    start_container(g, &mut c, &id, timeout)
        .await
        .with_context(|| format!("starting the container {id:?} (pod {pod} was left running)"))?;
    println!("{id}");
    Ok(())
}
