//! `berthctl info`: the runtime's Status (conditions, handlers, info map) as crictl prints it.

use anyhow::Result;
use k8s_cri::v1::StatusRequest;

use crate::client::GlobalOpts;
use crate::output::{self, Format};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Output format
    #[arg(short, long, value_enum, default_value = "json")]
    output: Format,
    /// Do not ask for the verbose info map
    #[arg(short, long)]
    quiet: bool,
}

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    let mut c = g.runtime_client().await?;
    let req = StatusRequest {
        verbose: !args.quiet,
    };
    let r = g
        .call("status", Some(g.call_timeout()), req, |r| c.status(r))
        .await?;
    let status = r.status.as_ref().map(output::to_cri_json).transpose()?;
    let mut extra = Vec::new();
    if !r.runtime_handlers.is_empty() {
        extra.push(("runtimeHandlers", output::to_cri_json(&r.runtime_handlers)?));
    }
    if let Some(features) = &r.features {
        extra.push(("features", output::to_cri_json(features)?));
    }
    let v = output::status_with_info(status, extra, &r.info);
    output::print(&v, args.output)
}
