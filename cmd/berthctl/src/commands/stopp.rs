//! `berthctl stopp`: stop pod sandboxes.

use anyhow::{bail, Result};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::StopPodSandboxRequest;
use tonic::transport::Channel;

use crate::client::{GlobalOpts, RpcError};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Pods to stop
    #[arg(required = true, value_name = "POD-ID")]
    ids: Vec<String>,
}

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    let mut c = g.runtime_client().await?;
    let mut failed = false;
    for id in &args.ids {
        if let Err(e) = stop_pod(g, &mut c, id).await {
            eprintln!("berthctl: {e}");
            failed = true;
        }
    }
    if failed {
        bail!("unable to stop the pod sandbox(es)");
    }
    Ok(())
}

/// StopPodSandbox, then crictl's `Stopped sandbox <id>`.
pub(crate) async fn stop_pod(
    g: &GlobalOpts,
    c: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> Result<(), RpcError> {
    let req = StopPodSandboxRequest {
        pod_sandbox_id: id.to_string(),
    };
    g.call(
        &format!("stop pod sandbox {id:?}"),
        Some(g.call_timeout()),
        req,
        |r| c.stop_pod_sandbox(r),
    )
    .await?;
    println!("Stopped sandbox {id}");
    Ok(())
}
