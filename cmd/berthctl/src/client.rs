//! Connecting to CRI sockets and calling them with crictl's deadlines and error reporting.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request, Response, Status};

use crate::duration::parse_duration;

pub(crate) const DEFAULT_ENDPOINT: &str = "unix:///run/berth/berth.sock";
/// Deadline of ordinary calls when `--timeout` is not given (crictl's default).
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// crictl's global flags. Like crictl's they go before the subcommand: several subcommands
/// give `-t`, `-i` and `-r` other meanings (`stop -t`, `exec -i -t -r`, `run -r`, `ps -r`).
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct GlobalOpts {
    /// Container runtime endpoint (unix:///path or /path)
    #[arg(
        short = 'r',
        long,
        env = "CONTAINER_RUNTIME_ENDPOINT",
        default_value = DEFAULT_ENDPOINT
    )]
    pub runtime_endpoint: String,
    /// Image service endpoint; defaults to the runtime endpoint
    #[arg(short = 'i', long, env = "IMAGE_SERVICE_ENDPOINT")]
    pub image_endpoint: Option<String>,
    /// Timeout of calls, e.g. 2s, 1m (default 2s; pulls have none unless given)
    #[arg(short = 't', long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Print requests and responses to stderr
    #[arg(short = 'D', long)]
    pub debug: bool,
    /// CA certificates (PEM) an https streaming server must chain to; without it any
    /// certificate is accepted, as crictl does
    #[arg(long, value_name = "PEM", env = "BERTHCTL_STREAM_CA")]
    pub stream_ca: Option<std::path::PathBuf>,
}

impl GlobalOpts {
    pub(crate) fn image_endpoint(&self) -> &str {
        self.image_endpoint
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or(&self.runtime_endpoint)
    }

    /// How https streaming servers are trusted.
    pub(crate) fn stream_trust(&self) -> berth_streaming::client::Trust {
        match &self.stream_ca {
            Some(path) => berth_streaming::client::Trust::CaFile(path.clone()),
            None => berth_streaming::client::Trust::AnyCertificate,
        }
    }

    /// Deadline of an ordinary (non-pull) call.
    pub(crate) fn call_timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_TIMEOUT)
    }

    pub(crate) async fn runtime_client(&self) -> Result<RuntimeServiceClient<Channel>> {
        let ch = connect(&self.runtime_endpoint, self.call_timeout()).await?;
        Ok(RuntimeServiceClient::new(ch))
    }

    pub(crate) async fn image_channel(&self) -> Result<Channel> {
        connect(self.image_endpoint(), self.call_timeout()).await
    }

    pub(crate) async fn image_client(&self) -> Result<ImageServiceClient<Channel>> {
        Ok(ImageServiceClient::new(self.image_channel().await?))
    }

    /// Runs one unary call under `timeout` (if any), printing it when `--debug` is set.
    pub(crate) async fn call<Req, Resp, F, Fut>(
        &self,
        what: &str,
        timeout: Option<Duration>,
        req: Req,
        f: F,
    ) -> Result<Resp, RpcError>
    where
        Req: fmt::Debug,
        Resp: fmt::Debug,
        F: FnOnce(Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        if self.debug {
            eprintln!("DEBUG: {what} request: {req:?}");
        }
        let resp = call_with_timeout(what, timeout, req, f).await;
        if self.debug {
            match &resp {
                Ok(r) => eprintln!("DEBUG: {what} response: {r:?}"),
                Err(e) => eprintln!("DEBUG: {what} error: {e}"),
            }
        }
        resp
    }
}

/// Calls `f` with `req` under an optional deadline, sent to the server as grpc-timeout too.
pub(crate) async fn call_with_timeout<Req, Resp, F, Fut>(
    what: &str,
    timeout: Option<Duration>,
    req: Req,
    f: F,
) -> Result<Resp, RpcError>
where
    F: FnOnce(Request<Req>) -> Fut,
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    let mut request = Request::new(req);
    let res = match timeout {
        Some(d) => {
            request.set_timeout(d);
            match tokio::time::timeout(d, f(request)).await {
                Ok(r) => r,
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "context deadline exceeded after {d:?}"
                ))),
            }
        }
        None => f(request).await,
    };
    res.map(Response::into_inner)
        .map_err(|status| RpcError::new(what, status))
}

/// A failed gRPC call: what we were doing and the status the server (or transport) gave.
#[derive(Debug)]
pub(crate) struct RpcError {
    pub what: String,
    pub status: Status,
}

impl RpcError {
    pub(crate) fn new(what: &str, status: Status) -> Self {
        Self {
            what: what.to_string(),
            status,
        }
    }

    pub(crate) fn code(&self) -> Code {
        self.status.code()
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let msg = self.status.message();
        let msg = if msg.is_empty() {
            self.status.code().description()
        } else {
            msg
        };
        write!(f, "{}: {msg} (code: {:?})", self.what, self.status.code())
    }
}

impl std::error::Error for RpcError {}

/// Accepts `unix:///path` or a plain path; anything else (tcp://, npipe://) is refused.
pub(crate) fn parse_endpoint(endpoint: &str) -> Result<PathBuf> {
    let s = endpoint.trim();
    if s.is_empty() {
        bail!("empty endpoint");
    }
    if let Some(path) = s.strip_prefix("unix://") {
        if path.is_empty() {
            bail!("endpoint {endpoint:?} has no socket path");
        }
        return Ok(PathBuf::from(path));
    }
    if let Some((scheme, _)) = s.split_once("://") {
        bail!("endpoint {endpoint:?}: scheme {scheme:?} is not supported, only unix sockets are");
    }
    if s.starts_with("unix:") {
        bail!("endpoint {endpoint:?}: expected unix:///absolute/path");
    }
    Ok(PathBuf::from(s))
}

/// Opens a gRPC channel over the unix socket named by `endpoint`.
pub(crate) async fn connect(endpoint: &str, timeout: Duration) -> Result<Channel> {
    let path = parse_endpoint(endpoint)?;
    let connector = tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
    });
    // The URI is a placeholder: the connector ignores it and dials the socket.
    let endpoint_uri = Endpoint::try_from("http://[::]:50051")?;
    tokio::time::timeout(timeout, endpoint_uri.connect_with_connector(connector))
        .await
        .map_err(|_| anyhow!("connect to {endpoint}: timed out after {timeout:?}"))?
        .map_err(|e| {
            // tonic's transport error repeats its cause: report only the innermost one
            let mut cause: &dyn std::error::Error = &e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            anyhow!("connect to {endpoint}: {cause}")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_urls_and_plain_paths_are_accepted() {
        assert_eq!(
            parse_endpoint("unix:///run/berth/berth.sock").ok(),
            Some(PathBuf::from("/run/berth/berth.sock"))
        );
        assert_eq!(
            parse_endpoint("/var/tmp/c.sock").ok(),
            Some(PathBuf::from("/var/tmp/c.sock"))
        );
        assert_eq!(
            parse_endpoint(" unix:///a.sock ").ok(),
            Some(PathBuf::from("/a.sock"))
        );
        assert_eq!(
            parse_endpoint("relative.sock").ok(),
            Some(PathBuf::from("relative.sock"))
        );
    }

    #[test]
    fn other_schemes_are_refused() {
        for bad in [
            "",
            "unix://",
            "tcp://127.0.0.1:1234",
            "npipe:////./pipe/x",
            "unix:/x",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn rpc_errors_show_message_and_code() {
        let e = RpcError::new("pull image \"x\"", Status::not_found("image not found"));
        assert_eq!(
            e.to_string(),
            "pull image \"x\": image not found (code: NotFound)"
        );
        let e = RpcError::new("version", Status::unavailable(""));
        assert!(e.to_string().starts_with("version: "));
        assert!(e.to_string().ends_with("(code: Unavailable)"));
    }
}
