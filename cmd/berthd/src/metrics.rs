//! `[metrics] address`: Prometheus text on `GET /metrics` (off unless configured, as in
//! containerd). The record gauges (pods and containers by state, shims alive) are read from the
//! managers at each scrape, so they cannot drift from what berthd holds.

use std::convert::Infallible;
use std::sync::Arc;

use anyhow::Context;
use berth_cri::{ContainerManager, PodManager};
use berth_metrics::Metrics;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::{ContainerState, PodSandboxState};

const POD_STATES: &[&str] = &["ready", "notready"];
const CONTAINER_STATES: &[&str] = &["created", "running", "exited", "unknown"];

/// `SANDBOX_NOTREADY` → `notready`, `CONTAINER_RUNNING` → `running`.
fn state_label(name: &str) -> String {
    name.split_once('_')
        .map_or(name, |(_, s)| s)
        .to_ascii_lowercase()
}

/// A pid recorded for a shim is only counted while it is still a berth-shim (not a reused pid).
fn is_shim(pid: i32) -> bool {
    pid > 0
        && std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim_end().starts_with("berth-shim"))
}

pub struct Sources {
    pub pods: Arc<PodManager>,
    pub containers: Arc<ContainerManager>,
}

impl Sources {
    fn refresh(&self) {
        let m = berth_metrics::metrics();
        let pods = self.pods.list();
        let counts: Vec<(String, i64)> = pods
            .iter()
            .map(|p| {
                let s = PodSandboxState::try_from(p.cri_state())
                    .map_or("unknown".into(), |s| state_label(s.as_str_name()));
                (s, 1)
            })
            .collect();
        let counts: Vec<(&str, i64)> = counts.iter().map(|(s, n)| (s.as_str(), *n)).collect();
        Metrics::set_by_state(&m.pods, POD_STATES, &counts);
        let containers = self.containers.list();
        let counts: Vec<(String, i64)> = containers
            .iter()
            .map(|c| {
                let s = ContainerState::try_from(c.cri_state())
                    .map_or("unknown".into(), |s| state_label(s.as_str_name()));
                (s, 1)
            })
            .collect();
        let counts: Vec<(&str, i64)> = counts.iter().map(|(s, n)| (s.as_str(), *n)).collect();
        Metrics::set_by_state(&m.containers, CONTAINER_STATES, &counts);
        let shims = containers.iter().filter(|c| is_shim(c.shim_pid)).count()
            + pods
                .iter()
                .filter_map(|p| p.holder.as_ref())
                .filter(|h| is_shim(h.pid))
                .count();
        m.shims_running.set(shims as i64);
    }

    fn answer(&self, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let reply = |status, ctype: &str, body: String| {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = status;
            if let Ok(v) = ctype.parse() {
                r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
            }
            r
        };
        match (req.method(), req.uri().path()) {
            (&hyper::Method::GET, "/metrics") => {
                self.refresh();
                reply(
                    StatusCode::OK,
                    berth_metrics::CONTENT_TYPE,
                    berth_metrics::encode(),
                )
            }
            (_, "/metrics") => reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "GET only\n".into(),
            ),
            _ => reply(StatusCode::NOT_FOUND, "text/plain", "see /metrics\n".into()),
        }
    }
}

/// Binds `address` now (a taken port fails the start, not a later scrape) and serves it in the
/// background for the daemon's life.
pub async fn serve(address: &str, sources: Sources) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("metrics.address {address}"))?;
    tracing::info!(address = %listener.local_addr().map_or(address.to_string(), |a| a.to_string()), "serving metrics");
    let sources = Arc::new(sources);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let sources = sources.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let sources = sources.clone();
                    async move { Ok::<_, Infallible>(sources.answer(&req)) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(error = %e, "metrics connection");
                }
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_labels_drop_the_prefix() {
        assert_eq!(
            state_label(PodSandboxState::SandboxNotready.as_str_name()),
            "notready"
        );
        assert_eq!(
            state_label(ContainerState::ContainerRunning.as_str_name()),
            "running"
        );
        assert!(!is_shim(std::process::id() as i32));
        assert!(!is_shim(0));
    }
}
