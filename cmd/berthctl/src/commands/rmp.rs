//! `berthctl rmp`: remove pod sandboxes; `-a` all of them, `-f` stopping Ready ones first.

use anyhow::{bail, Result};
use k8s_cri::v1::{
    ListPodSandboxRequest, PodSandboxState, PodSandboxStatusRequest, RemovePodSandboxRequest,
};

use super::stopp::stop_pod;
use crate::client::GlobalOpts;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Pods to remove
    #[arg(value_name = "POD-ID")]
    ids: Vec<String>,
    /// Force removal of the pod sandbox, disregarding if running
    #[arg(short, long)]
    force: bool,
    /// Remove all pods
    #[arg(short, long)]
    all: bool,
}

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    if args.ids.is_empty() && !args.all {
        bail!("no pod ID given; use POD-ID... or --all");
    }
    let mut c = g.runtime_client().await?;
    let timeout = Some(g.call_timeout());
    let mut ids = args.ids.clone();
    if args.all {
        let list = g
            .call(
                "list pod sandboxes",
                timeout,
                ListPodSandboxRequest { filter: None },
                |r| c.list_pod_sandbox(r),
            )
            .await?;
        ids.extend(list.items.into_iter().map(|p| p.id));
        if ids.is_empty() {
            eprintln!("No pods to remove");
            return Ok(());
        }
    }

    let mut failed = false;
    for id in &ids {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        };
        let status = match g
            .call(
                &format!("pod sandbox status of {id:?}"),
                timeout,
                req,
                |r| c.pod_sandbox_status(r),
            )
            .await
        {
            Ok(s) => s,
            Err(e) => {
                eprintln!("berthctl: {e}");
                failed = true;
                continue;
            }
        };
        let ready = status
            .status
            .is_some_and(|s| s.state == PodSandboxState::SandboxReady as i32);
        if ready {
            if !args.force {
                bail!("pod sandbox {id:?} is running, please stop it first (or use --force)");
            }
            if let Err(e) = stop_pod(g, &mut c, id).await {
                bail!("stopping the pod sandbox {id:?} failed: {e}");
            }
        }
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        };
        match g
            .call(&format!("remove pod sandbox {id:?}"), timeout, req, |r| {
                c.remove_pod_sandbox(r)
            })
            .await
        {
            Ok(_) => println!("Removed sandbox {id}"),
            Err(e) => {
                eprintln!("berthctl: {e}");
                failed = true;
            }
        }
    }
    if failed {
        bail!("unable to remove the pod sandbox(es)");
    }
    Ok(())
}
