//! `berthctl exec`: without `-s` a streaming Exec in one container (`-i` stdin, `-t` a TTY in
//! raw mode with window resizes); with `-s` ExecSync in one or more containers. Either way the
//! command's stdout goes to our stdout, its stderr to our stderr, and its exit code becomes ours.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use k8s_cri::v1::{ExecRequest, ExecSyncRequest};
use tonic::Code;

use super::ps::{list_ids, Selector};
use super::ExitStatus;
use crate::client::GlobalOpts;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Spdy,
    Websocket,
}

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// [CONTAINER-ID] COMMAND [ARG...]: the ID only when no filter flag selects containers
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CONTAINER-ID COMMAND"
    )]
    args: Vec<String>,
    /// Ignore errors during command execution
    #[arg(short = 'e', long)]
    ignore_errors: bool,
    /// Exec command for all containers matching this container image filter
    #[arg(long)]
    image: Option<String>,
    /// Keep STDIN open
    #[arg(short, long)]
    interactive: bool,
    /// Exec command for all containers matching this key=value label filter
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Exec command for all last n containers, set to 0 for unlimited
    #[arg(short = 'n', long)]
    last: Option<usize>,
    /// Exec command for the most recently created container
    #[arg(short, long)]
    latest: bool,
    /// Exec command for all containers matching this name filter regular expression pattern
    #[arg(long)]
    name: Option<String>,
    /// Run the command in parallel if multiple containers are selected
    #[arg(short = 'x', long)]
    parallel: bool,
    /// Exec command for all containers matching this pod ID filter
    #[arg(short, long)]
    pod: Option<String>,
    /// Do not print the container ID if multiple containers are selected
    #[arg(short, long)]
    quiet: bool,
    /// Exec command for all containers matching this container state filter
    #[arg(long)]
    state: Option<String>,
    /// Run the command synchronously
    #[arg(short, long)]
    sync: bool,
    /// Timeout in seconds (0: none)
    #[arg(long, default_value_t = 0)]
    timeout: i64,
    /// Path to the streaming TLS CA certificate
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Path to the streaming TLS certificate
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// Path to the streaming TLS key
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Server name used in the TLS client to check server certificates against
    #[arg(long, visible_alias = "tls-server-name", default_value = "localhost")]
    tls_sni: String,
    /// Transport protocol to use
    #[arg(short = 'r', long, value_enum, default_value = "spdy")]
    transport: Transport,
    /// Allocate a pseudo-TTY
    #[arg(short, long)]
    tty: bool,
}

impl Args {
    fn filtered(&self) -> bool {
        self.name.is_some()
            || self.pod.is_some()
            || self.image.is_some()
            || self.state.is_some()
            || !self.labels.is_empty()
            || self.latest
            || self.last.is_some()
    }
}

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    if !args.sync {
        return streaming(g, args).await;
    }
    let mut c = g.runtime_client().await?;
    let (ids, cmd, show_ids) = if args.filtered() {
        let sel = Selector {
            pod: args.pod.clone(),
            name: args.name.clone(),
            image: args.image.clone(),
            state: args.state.clone(),
            labels: args.labels.clone(),
            latest: args.latest,
            last: args.last.unwrap_or(0),
            ..Default::default()
        };
        let ids = list_ids(g, &mut c, &sel).await?;
        if ids.is_empty() {
            bail!("no containers found per filter flags");
        }
        (ids, args.args.clone(), !args.quiet && !args.parallel)
    } else {
        let [id, cmd @ ..] = args.args.as_slice() else {
            bail!("no container ID given");
        };
        if cmd.is_empty() {
            bail!("no command given: exec -s CONTAINER-ID COMMAND [ARG...]");
        }
        (vec![id.clone()], cmd.to_vec(), false)
    };
    if cmd.is_empty() {
        bail!("no command given");
    }

    let run_one = |id: String| {
        let mut c = c.clone();
        let cmd = cmd.clone();
        async move {
            let req = ExecSyncRequest {
                container_id: id.clone(),
                cmd: cmd.clone(),
                timeout: args.timeout,
            };
            // cri-client: no deadline without --timeout, else the runtime's time to clean up
            let deadline = (args.timeout > 0)
                .then(|| g.call_timeout() + Duration::from_secs(args.timeout.unsigned_abs()));
            let what = format!("exec {:?} in container {id:?}", cmd.join(" "));
            match g.call(&what, deadline, req, |r| c.exec_sync(r)).await {
                Ok(r) => Ok((id, r)),
                Err(e) if e.code() == Code::DeadlineExceeded => Err(anyhow::anyhow!(
                    "{:?} timed out after {}s in container {id:?}",
                    cmd.join(" "),
                    args.timeout
                )),
                Err(e) => Err(e.into()),
            }
        }
    };

    let mut results = Vec::new();
    if args.parallel {
        for r in futures::future::join_all(ids.into_iter().map(run_one)).await {
            print_result(&r, false)?;
            results.push(r);
        }
    } else {
        for id in ids {
            // printed as we go, so that a long series shows progress
            let r = run_one(id).await;
            print_result(&r, show_ids)?;
            results.push(r);
        }
    }
    let mut code = 0;
    let mut failed = false;
    for r in &results {
        match r {
            Ok((_, resp)) if resp.exit_code != 0 && code == 0 => code = resp.exit_code,
            Ok(_) => {}
            Err(e) => {
                eprintln!("berthctl: {e:#}");
                failed = true;
            }
        }
    }
    if args.ignore_errors {
        return Ok(());
    }
    if failed {
        bail!("exec failed");
    }
    if code != 0 {
        return Err(ExitStatus(code).into());
    }
    Ok(())
}

/// A streaming Exec in one container, as crictl does it (no filters: one ID).
async fn streaming(g: &GlobalOpts, args: Args) -> Result<()> {
    if args.filtered() {
        bail!("streaming exec runs in one container: give its ID (filters need -s)");
    }
    let [id, cmd @ ..] = args.args.as_slice() else {
        bail!("no container ID given");
    };
    if cmd.is_empty() {
        bail!("no command given: exec CONTAINER-ID COMMAND [ARG...]");
    }
    let mut c = g.runtime_client().await?;
    let req = ExecRequest {
        container_id: id.clone(),
        cmd: cmd.to_vec(),
        tty: args.tty,
        stdin: args.interactive,
        stdout: true,
        stderr: !args.tty,
    };
    let what = format!("exec {:?} in container {id:?}", cmd.join(" "));
    let url = g
        .call(&what, Some(g.call_timeout()), req, |r| c.exec(r))
        .await?
        .url;
    let code = super::stream::attach_local(
        &url,
        &g.stream_trust(),
        args.transport,
        args.interactive,
        args.tty,
        !args.tty,
    )
    .await?;
    if code != 0 && !args.ignore_errors {
        return Err(ExitStatus(code).into());
    }
    Ok(())
}

fn print_result(r: &Result<(String, k8s_cri::v1::ExecSyncResponse)>, show_id: bool) -> Result<()> {
    let Ok((id, resp)) = r else {
        return Ok(());
    };
    let mut out = std::io::stdout().lock();
    if show_id {
        writeln!(out, "{id}:")?;
    }
    out.write_all(&resp.stdout)?;
    out.flush()?;
    std::io::stderr().lock().write_all(&resp.stderr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Args {
        crate::commands::parse_args(argv).unwrap()
    }

    #[test]
    fn the_command_keeps_its_own_flags() {
        let a = parse(&["-s", "--timeout", "5", "c1", "sh", "-c", "echo hi; exit 3"]);
        assert!(a.sync && !a.filtered());
        assert_eq!(a.timeout, 5);
        assert_eq!(a.args, ["c1", "sh", "-c", "echo hi; exit 3"]);
        let a = parse(&["-it", "c1", "ls", "-l", "--all"]);
        assert!(a.interactive && a.tty && !a.sync);
        assert_eq!(a.args, ["c1", "ls", "-l", "--all"]);
    }

    #[test]
    fn streaming_flags_are_accepted() {
        let a = parse(&[
            "-r",
            "websocket",
            "--tls-server-name",
            "node1",
            "--tls-ca",
            "/ca.crt",
            "-e",
            "-x",
            "-q",
            "c1",
            "true",
        ]);
        assert_eq!(a.transport, Transport::Websocket);
        assert_eq!(a.tls_sni, "node1");
        assert!(a.ignore_errors && a.parallel && a.quiet);
    }

    #[test]
    fn filters_select_containers_instead_of_an_id() {
        let a = parse(&["-s", "--name", "web", "-n", "2", "cat", "/etc/hostname"]);
        assert!(a.filtered());
        assert_eq!(a.args, ["cat", "/etc/hostname"]);
        assert!(parse(&["-s", "-l", "true"]).filtered());
        assert!(parse(&["-s", "--label", "a=b", "true"]).filtered());
    }

    #[tokio::test]
    async fn streaming_exec_takes_one_container() {
        let g = GlobalOpts {
            runtime_endpoint: "/nonexistent.sock".into(),
            image_endpoint: None,
            timeout: None,
            debug: false,
            stream_ca: None,
        };
        let e = run(&g, parse(&["--name", "web", "true"]))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("one container") && e.contains("-s"), "{e}");
    }
}
