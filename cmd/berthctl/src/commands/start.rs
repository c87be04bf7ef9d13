//! `berthctl start`: start created containers, printing each ID as crictl does.

use std::time::Duration;

use anyhow::Result;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::StartContainerRequest;
use tonic::transport::Channel;

use crate::client::{GlobalOpts, RpcError};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Containers to start
    #[arg(required = true, value_name = "CONTAINER-ID")]
    ids: Vec<String>,
}

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    let mut c = g.runtime_client().await?;
    // like crictl: the first failure ends the command
    for id in &args.ids {
        start_container(g, &mut c, id, g.call_timeout()).await?;
        println!("{id}");
    }
    Ok(())
}

pub(crate) async fn start_container(
    g: &GlobalOpts,
    c: &mut RuntimeServiceClient<Channel>,
    id: &str,
    timeout: Duration,
) -> Result<(), RpcError> {
    let req = StartContainerRequest {
        container_id: id.to_string(),
    };
    g.call(
        &format!("start container {id:?}"),
        Some(timeout),
        req,
        |r| c.start_container(r),
    )
    .await
    .map(drop)
}
