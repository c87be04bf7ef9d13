//! `berthctl port-forward POD-ID [LOCAL:]REMOTE...`: listens on 127.0.0.1 and forwards each
//! connection to the port inside the pod, over one streaming connection.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use berth_streaming::client::PortForwarder;
use k8s_cri::v1::PortForwardRequest;
use tokio::net::TcpListener;

use super::exec::Transport;
use crate::client::GlobalOpts;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The pod sandbox
    pod: String,
    /// [LOCAL_PORT:]REMOTE_PORT, one or more (LOCAL 0 picks a free port)
    #[arg(required = true, value_name = "[LOCAL:]REMOTE")]
    ports: Vec<String>,
    /// Transport protocol to use (websocket: SPDY tunneled in a WebSocket, as kubectl does)
    #[arg(short = 'r', long, value_enum, default_value = "spdy")]
    transport: Transport,
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    address: String,
}

pub(crate) fn parse_mapping(s: &str) -> Result<(u16, u16)> {
    let (l, r) = match s.split_once(':') {
        Some((l, r)) => (l, r),
        None => (s, s),
    };
    let port = |p: &str| -> Result<u16> {
        p.parse::<u16>()
            .with_context(|| format!("{s:?}: {p:?} is not a port"))
    };
    let (l, r) = (port(l)?, port(r)?);
    if r == 0 {
        bail!("{s:?}: the remote port must not be 0");
    }
    Ok((l, r))
}

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    let maps = args
        .ports
        .iter()
        .map(|p| parse_mapping(p))
        .collect::<Result<Vec<_>>>()?;
    let mut c = g.runtime_client().await?;
    let req = PortForwardRequest {
        pod_sandbox_id: args.pod.clone(),
        port: maps.iter().map(|(_, r)| i32::from(*r)).collect(),
    };
    let what = format!("port-forward to pod {:?}", args.pod);
    let url = g
        .call(&what, Some(g.call_timeout()), req, |r| c.port_forward(r))
        .await?
        .url;
    let pf = Arc::new(
        PortForwarder::connect(
            berth_streaming::client::Url {
                url: &url,
                trust: &g.stream_trust(),
            },
            args.transport.into(),
        )
        .await?,
    );
    let mut listeners = Vec::new();
    for (local, remote) in maps {
        let l = TcpListener::bind((args.address.as_str(), local))
            .await
            .with_context(|| format!("listening on {}:{local}", args.address))?;
        println!("Forwarding from {} -> {remote}", l.local_addr()?);
        listeners.push((l, remote));
    }
    let mut tasks = Vec::new();
    for (l, remote) in listeners {
        let pf = pf.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok((conn, _)) = l.accept().await {
                let _ = conn.set_nodelay(true);
                let pf = pf.clone();
                tokio::spawn(async move {
                    if let Err(e) = pf.forward(remote, conn).await {
                        eprintln!("berthctl: port {remote}: {e}");
                    }
                });
            }
        }));
    }
    let closed = {
        let pf = pf.clone();
        async move {
            while !pf.is_closed() {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = closed => bail!("the streaming connection was closed"),
    }
    pf.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_parse_like_crictl() {
        assert_eq!(parse_mapping("8080:80").unwrap(), (8080, 80));
        assert_eq!(parse_mapping("80").unwrap(), (80, 80));
        assert_eq!(parse_mapping("0:80").unwrap(), (0, 80));
        assert!(parse_mapping("80:0").is_err());
        assert!(parse_mapping("x:80").is_err());
    }
}
