//! `berthctl stop`: stop running containers (`-a`: all of them), printing each ID.

use std::time::Duration;

use anyhow::{bail, Result};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::StopContainerRequest;
use tonic::transport::Channel;

use super::ps::{list_ids, Selector};
use crate::client::{GlobalOpts, RpcError};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Containers to stop
    #[arg(value_name = "CONTAINER-ID")]
    ids: Vec<String>,
    /// Stop all running containers
    #[arg(short, long)]
    all: bool,
    /// Seconds to wait to kill the container after a graceful stop is requested
    #[arg(short, long, default_value_t = 0)]
    timeout: i64,
}

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    if args.all && !args.ids.is_empty() {
        bail!("cannot specify CONTAINER-ID(s) when using --all");
    }
    let mut c = g.runtime_client().await?;
    let ids = if args.all {
        let sel = Selector {
            state: Some("running".to_string()),
            ..Default::default()
        };
        let ids = list_ids(g, &mut c, &sel).await?;
        if ids.is_empty() {
            println!("No running containers found.");
            return Ok(());
        }
        ids
    } else if args.ids.is_empty() {
        bail!("you must specify at least one CONTAINER-ID or use --all");
    } else {
        args.ids
    };
    for id in &ids {
        stop_container(g, &mut c, id, args.timeout).await?;
        println!("{id}");
    }
    Ok(())
}

/// StopContainer with `grace` seconds before SIGKILL; the call may take that much longer than
/// an ordinary one (cri-client's deadline is the same sum).
pub(crate) async fn stop_container(
    g: &GlobalOpts,
    c: &mut RuntimeServiceClient<Channel>,
    id: &str,
    grace: i64,
) -> Result<(), RpcError> {
    let req = StopContainerRequest {
        container_id: id.to_string(),
        timeout: grace,
    };
    let deadline = g.call_timeout() + Duration::from_secs(grace.max(0).unsigned_abs());
    g.call(
        &format!("stop container {id:?}"),
        Some(deadline),
        req,
        |r| c.stop_container(r),
    )
    .await
    .map(drop)
}
