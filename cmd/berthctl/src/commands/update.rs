//! `berthctl update`: new resource limits for running containers, with crictl's flags.

use anyhow::{bail, Result};
use k8s_cri::v1::{LinuxContainerResources, UpdateContainerResourcesRequest};

use crate::client::GlobalOpts;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Containers to update
    #[arg(value_name = "CONTAINER-ID")]
    ids: Vec<String>,
    /// CPU CFS period to be used for hardcapping (in usecs). 0 to use system default
    #[arg(long, default_value_t = 0)]
    cpu_period: i64,
    /// CPU CFS hardcap limit (in usecs). Allowed cpu time in a given period
    #[arg(long, default_value_t = 0)]
    cpu_quota: i64,
    /// CPU shares (relative weight vs. other containers)
    #[arg(long = "cpu-share", default_value_t = 0)]
    cpu_share: i64,
    /// CPU(s) to use
    #[arg(long, default_value = "")]
    cpuset_cpus: String,
    /// Memory node(s) to use
    #[arg(long, default_value = "")]
    cpuset_mems: String,
    /// Memory limit (in bytes)
    #[arg(long, default_value_t = 0)]
    memory: i64,
    /// OOM Killer score to use
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    oom_score_adj: i64,
    /// (Windows only) Number of CPUs available to the container
    #[arg(long, default_value_t = 0)]
    cpu_count: i64,
    /// (Windows only) Portion of CPU cycles specified as a percentage * 100
    #[arg(long, default_value_t = 0)]
    cpu_maximum: i64,
}

impl Args {
    fn resources(&self) -> LinuxContainerResources {
        LinuxContainerResources {
            cpu_period: self.cpu_period,
            cpu_quota: self.cpu_quota,
            cpu_shares: self.cpu_share,
            cpuset_cpus: self.cpuset_cpus.clone(),
            cpuset_mems: self.cpuset_mems.clone(),
            memory_limit_in_bytes: self.memory,
            oom_score_adj: self.oom_score_adj,
            ..Default::default()
        }
    }
}

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    if args.ids.is_empty() {
        bail!("ID cannot be empty");
    }
    let mut c = g.runtime_client().await?;
    for id in &args.ids {
        let req = UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(args.resources()),
            ..Default::default()
        };
        g.call(
            &format!("update resources of {id:?}"),
            Some(g.call_timeout()),
            req,
            |r| c.update_container_resources(r),
        )
        .await?;
        println!("{id}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_map_to_linux_resources_like_crictl() {
        let a: Args = crate::commands::parse_args(&[
            "--cpu-period",
            "100000",
            "--cpu-quota",
            "20000",
            "--cpu-share",
            "512",
            "--cpuset-cpus",
            "0-1",
            "--memory",
            "1048576",
            "--oom-score-adj",
            "-5",
            "c1",
            "c2",
        ])
        .unwrap();
        assert_eq!(a.ids, ["c1", "c2"]);
        let r = a.resources();
        assert_eq!(
            (r.cpu_period, r.cpu_quota, r.cpu_shares),
            (100_000, 20_000, 512)
        );
        assert_eq!(
            (r.cpuset_cpus.as_str(), r.memory_limit_in_bytes),
            ("0-1", 1 << 20)
        );
        assert_eq!(r.oom_score_adj, -5);
    }
}
