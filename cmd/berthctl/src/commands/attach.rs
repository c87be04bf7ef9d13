//! `berthctl attach [-i] [-t] CONTAINER-ID`: joins a running container's stdio.

use anyhow::Result;
use k8s_cri::v1::AttachRequest;

use super::exec::Transport;
use super::ExitStatus;
use crate::client::GlobalOpts;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The container to attach to
    container: String,
    /// Keep STDIN open
    #[arg(short = 'i', long)]
    stdin: bool,
    /// Stdin is a TTY
    #[arg(short, long)]
    tty: bool,
    /// Transport protocol to use
    #[arg(short = 'r', long, value_enum, default_value = "spdy")]
    transport: Transport,
}

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    let mut c = g.runtime_client().await?;
    let req = AttachRequest {
        container_id: args.container.clone(),
        stdin: args.stdin,
        tty: args.tty,
        stdout: true,
        stderr: !args.tty,
    };
    let what = format!("attach to container {:?}", args.container);
    let url = g
        .call(&what, Some(g.call_timeout()), req, |r| c.attach(r))
        .await?
        .url;
    let code = super::stream::attach_local(
        &url,
        &g.stream_trust(),
        args.transport,
        args.stdin,
        args.tty,
        !args.tty,
    )
    .await?;
    if code != 0 {
        return Err(ExitStatus(code).into());
    }
    Ok(())
}
