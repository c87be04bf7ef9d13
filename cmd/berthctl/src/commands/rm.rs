//! `berthctl rm`: remove containers (`-a`: all, `-f`: stopping running ones first) and, unless
//! `-k`, their log files with kubelet's rotations (`<log>.*`), as crictl does.

use std::path::Path;

use anyhow::{bail, Result};
use futures::future::join_all;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{ContainerState, ListContainersRequest, RemoveContainerRequest};
use tonic::transport::Channel;

use super::inspect::container_status;
use super::stop::stop_container;
use crate::client::{GlobalOpts, RpcError};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Containers to remove
    #[arg(value_name = "CONTAINER-ID")]
    ids: Vec<String>,
    /// Remove all containers
    #[arg(short, long)]
    all: bool,
    /// Force removal of the container, disregarding if running
    #[arg(short, long)]
    force: bool,
    /// Preserve the container log file and its rotations
    #[arg(short, long)]
    keep_logs: bool,
}

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    let mut c = g.runtime_client().await?;
    let mut ids = args.ids.clone();
    if args.all {
        let r = g
            .call(
                "list containers",
                Some(g.call_timeout()),
                ListContainersRequest { filter: None },
                |r| c.list_containers(r),
            )
            .await?;
        ids = r.containers.into_iter().map(|c| c.id).collect();
        if ids.is_empty() {
            eprintln!("No containers to remove");
            return Ok(());
        }
    }
    if ids.is_empty() {
        bail!("no container ID given; use CONTAINER-ID... or --all");
    }
    // all at once, as crictl does
    let results = join_all(ids.iter().map(|id| {
        let c = c.clone();
        async move { remove_one(g, c, id, args.force, args.keep_logs).await }
    }))
    .await;
    let mut failed = false;
    for r in results {
        match r {
            Ok(id) => println!("{id}"),
            Err(e) => {
                eprintln!("berthctl: {e:#}");
                failed = true;
            }
        }
    }
    if failed {
        bail!("unable to remove the container(s)");
    }
    Ok(())
}

async fn remove_one(
    g: &GlobalOpts,
    mut c: RuntimeServiceClient<Channel>,
    id: &str,
    force: bool,
    keep_logs: bool,
) -> Result<String> {
    let status = container_status(g, &mut c, id, false)
        .await?
        .status
        .unwrap_or_default();
    if status.state == ContainerState::ContainerRunning as i32 {
        if !force {
            bail!("container {id:?} is running, please stop it first (or use --force)");
        }
        stop_container(g, &mut c, id, 0).await?;
        // crictl prints the ID of what it stopped too
        println!("{id}");
    }
    remove_container(g, &mut c, id).await?;
    if !keep_logs && !status.log_path.is_empty() {
        remove_logs(Path::new(&status.log_path), id);
    }
    Ok(id.to_string())
}

pub(crate) async fn remove_container(
    g: &GlobalOpts,
    c: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> Result<(), RpcError> {
    let req = RemoveContainerRequest {
        container_id: id.to_string(),
    };
    g.call(
        &format!("remove container {id:?}"),
        Some(g.call_timeout()),
        req,
        |r| c.remove_container(r),
    )
    .await
    .map(drop)
}

/// The log file and its rotations `<log>.<anything>`; failures are reported, not fatal.
fn remove_logs(log: &Path, id: &str) {
    let mut files = rotations(log);
    files.push(log.to_path_buf());
    for f in files {
        if let Err(e) = std::fs::remove_file(&f) {
            eprintln!(
                "berthctl: removing log file {} for container {id:?} failed: {e}",
                f.display()
            );
        }
    }
}

/// Files beside `log` named `<its name>.<something>`, as crictl's `filepath.Glob(log + ".*")`.
fn rotations(log: &Path) -> Vec<std::path::PathBuf> {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let prefix = format!("{name}.");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotations_are_the_log_name_with_a_suffix() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "0.log",
            "0.log.20240501-100000",
            "0.log.1.gz",
            "1.log",
            "0.logx",
        ] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let log = dir.path().join("0.log");
        let names: Vec<String> = rotations(&log)
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(String::from))
            .collect();
        assert_eq!(names, ["0.log.1.gz", "0.log.20240501-100000"]);
        remove_logs(&log, "c1");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str().map(String::from))
            .collect();
        left.sort();
        assert_eq!(left, ["0.logx", "1.log"]);
    }
}
