//! `berthctl logs`: a container's log, read from the CRI log file at its `log_path` as crictl
//! (kubelet's reader) does: stdout lines to stdout, stderr lines to stderr; `-f` follows the
//! file, across rotations, until the container stops.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use k8s_cri::v1::{ContainerState, ReopenContainerLogRequest};
use tonic::Code;

use super::inspect::container_status;
use crate::client::GlobalOpts;
use crate::crilog::{self, LogOptions, StdSink, Stream};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Container whose log to show
    #[arg(value_name = "CONTAINER-ID")]
    id: String,
    /// Follow log output
    #[arg(short, long)]
    follow: bool,
    /// Maximum bytes of logs to return. Defaults to no limit
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    limit_bytes: i64,
    /// Print the logs for the previous instance of the container in a pod if it exists
    #[arg(short, long)]
    previous: bool,
    /// Reopen the container logs for the provided container
    #[arg(short, long)]
    reopen: bool,
    /// Show logs since timestamp (e.g. 2013-01-02T13:23:37) or relative (e.g. 42m for 42
    /// minutes)
    #[arg(long)]
    since: Option<String>,
    /// Show specified stream (stdout or stderr). Defaults to both.
    #[arg(short, long)]
    stream: Option<String>,
    /// Number of lines to show from the end of the logs. Defaults to all
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    tail: i64,
    /// Show timestamps
    #[arg(short, long)]
    timestamps: bool,
}

impl Args {
    fn options(&self) -> Result<LogOptions> {
        let stream = match self.stream.as_deref() {
            None | Some("") => None,
            Some("stdout") => Some(Stream::Stdout),
            Some("stderr") => Some(Stream::Stderr),
            Some(other) => bail!("invalid stream {other:?}, must be \"stdout\" or \"stderr\""),
        };
        let since = self
            .since
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| crilog::parse_since(s, chrono::Utc::now()))
            .transpose()
            .map_err(anyhow::Error::msg)?;
        Ok(LogOptions {
            timestamps: self.timestamps,
            since,
            tail: usize::try_from(self.tail).ok(),
            limit_bytes: u64::try_from(self.limit_bytes).ok(),
            stream,
        })
    }
}

/// kubelet's name of the log of the previous attempt: `<dir>/<attempt - 1><.ext>`.
fn previous_log_path(path: &str, attempt: u32) -> Option<PathBuf> {
    let p = Path::new(path);
    let ext = p
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| format!(".{e}"));
    let name = format!("{}{}", attempt.checked_sub(1)?, ext.unwrap_or_default());
    Some(p.with_file_name(name))
}

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    let opts = args.options()?;
    let mut c = g.runtime_client().await?;
    let id = args.id.clone();
    if args.reopen {
        let req = ReopenContainerLogRequest {
            container_id: id.clone(),
        };
        g.call(
            &format!("reopen the log of container {id:?}"),
            Some(g.call_timeout()),
            req,
            |r| c.reopen_container_log(r),
        )
        .await?;
        eprintln!("Container logs reopened");
    }
    let status = container_status(g, &mut c, &id, false)
        .await?
        .status
        .unwrap_or_default();
    if status.log_path.is_empty() {
        bail!("the container has not set log path");
    }
    let mut path = PathBuf::from(&status.log_path);
    if args.previous {
        let meta = status.metadata.unwrap_or_default();
        match previous_log_path(&status.log_path, meta.attempt) {
            Some(p) => path = p,
            None => bail!("previous terminated container {} not found", meta.name),
        }
    }
    let is_running = || {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            match container_status(g, &mut c, &id, false).await {
                Ok(r) => Ok(r
                    .status
                    .is_some_and(|s| s.state == ContainerState::ContainerRunning as i32)),
                // a runtime being restarted still has its containers running
                Err(e) if e.code() == Code::Unavailable => Ok(true),
                Err(e) => Err(e.into()),
            }
        }
    };
    let follow = args.follow;
    let mut sink = StdSink;
    tokio::select! {
        r = crilog::read_logs(&path, &opts, follow, &mut sink, is_running) => r,
        // ^C ends following quietly, as crictl's does
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Args {
        crate::commands::parse_args(argv).unwrap()
    }

    #[test]
    fn flags_become_options() {
        let o = parse(&[
            "-f",
            "-t",
            "--tail",
            "5",
            "--limit-bytes",
            "100",
            "-s",
            "stderr",
            "c1",
        ])
        .options()
        .unwrap();
        assert!(o.timestamps);
        assert_eq!(
            (o.tail, o.limit_bytes, o.stream),
            (Some(5), Some(100), Some(Stream::Stderr))
        );
        let o = parse(&["c1"]).options().unwrap();
        assert_eq!(
            (o.tail, o.limit_bytes, o.stream, o.since),
            (None, None, None, None)
        );
        assert!(parse(&["--since", "10m", "c1"])
            .options()
            .unwrap()
            .since
            .is_some());
        assert!(parse(&["--since", "soon", "c1"]).options().is_err());
        assert!(parse(&["-s", "stdin", "c1"]).options().is_err());
    }

    #[test]
    fn previous_attempts_are_beside_the_current_log() {
        assert_eq!(
            previous_log_path("/var/log/pods/ns_p_uid/web/2.log", 2),
            Some(PathBuf::from("/var/log/pods/ns_p_uid/web/1.log"))
        );
        assert_eq!(previous_log_path("/logs/web.log", 0), None);
    }
}
