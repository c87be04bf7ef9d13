//! `berthctl inspectp`: verbose PodSandboxStatus of each pod, `{"status": ..., <info>...}`.

use anyhow::{bail, Result};
use k8s_cri::v1::PodSandboxStatusRequest;

use crate::client::GlobalOpts;
use crate::output::{self, Format};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Pods to inspect
    #[arg(required = true, value_name = "POD-ID")]
    ids: Vec<String>,
    /// Output format
    #[arg(short, long, value_enum, default_value = "json")]
    output: Format,
}

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    let mut c = g.runtime_client().await?;
    for id in &args.ids {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: true,
        };
        let what = format!("pod sandbox status of {id:?}");
        let r = g
            .call(&what, Some(g.call_timeout()), req, |r| {
                c.pod_sandbox_status(r)
            })
            .await?;
        let Some(status) = &r.status else {
            bail!("no status returned for pod sandbox {id:?}");
        };
        let v = output::status_with_info(Some(output::to_cri_json(status)?), Vec::new(), &r.info);
        output::print(&v, args.output)?;
    }
    Ok(())
}
