//! `berthctl runp`: run a pod sandbox from crictl's pod config file (JSON or YAML).

use std::path::PathBuf;

use anyhow::Result;
use k8s_cri::v1::RunPodSandboxRequest;

use crate::client::GlobalOpts;
use crate::podconfig::load_pod_config;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Pod config file (the CRI PodSandboxConfig as JSON or YAML)
    #[arg(value_name = "POD_CONFIG_FILE")]
    config: PathBuf,
    /// Runtime handler to use, as the runtime names them
    #[arg(long, default_value = "")]
    runtime: String,
}

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    let config = load_pod_config(&args.config)?;
    let mut c = g.runtime_client().await?;
    let req = RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: args.runtime,
    };
    // cri-client gives sandbox creation twice the ordinary deadline, as crictl does.
    let timeout = Some(g.call_timeout() * 2);
    let r = g
        .call("run pod sandbox", timeout, req, |r| c.run_pod_sandbox(r))
        .await?;
    println!("{}", r.pod_sandbox_id);
    Ok(())
}
