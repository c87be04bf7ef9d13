use std::fmt::Display;
use std::future::Future;
use std::time::Instant;

use berth_core::{ErrorKind, HasKind};
use tonic::{Code, Response, Status};
use tracing::Instrument;

/// Maps a domain error to a gRPC status: the one place kinds become codes.
pub fn to_status<E: HasKind + Display>(err: E) -> Status {
    let code = match err.kind() {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::DataLoss => Code::DataLoss,
        ErrorKind::Internal => Code::Internal,
    };
    Status::new(code, err.to_string())
}

/// How loudly an RPC is logged: kubelet polls status and list RPCs every second, so those stay at
/// trace while anything that changes state is logged at info.
#[derive(Clone, Copy)]
pub(crate) enum Verbosity {
    Mutation,
    Poll,
}

/// Wraps one RPC: a span named after it, a log line on entry and on result, error logging.
pub(crate) async fn instrument<T, F>(
    rpc: &'static str,
    verbosity: Verbosity,
    fut: F,
) -> Result<Response<T>, Status>
where
    F: Future<Output = Result<T, Status>>,
{
    let span = tracing::info_span!("cri", rpc);
    async move {
        let started = Instant::now();
        match verbosity {
            Verbosity::Mutation => tracing::info!("request"),
            Verbosity::Poll => tracing::trace!("request"),
        }
        let result = fut.await;
        let took = started.elapsed();
        let code = match &result {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        };
        berth_metrics::metrics().rpc(rpc, code_name(code), took);
        let ms = took.as_secs_f64() * 1000.0;
        match &result {
            Ok(_) => match verbosity {
                Verbosity::Mutation => tracing::info!(ms, "ok"),
                Verbosity::Poll => tracing::trace!(ms, "ok"),
            },
            Err(s) => tracing::warn!(ms, code = ?s.code(), message = s.message(), "failed"),
        }
        result.map(Response::new)
    }
    .instrument(span)
    .await
}

/// gRPC's own names for the codes (`OK`, `NotFound`), as grpc-go and containerd label them.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

pub(crate) fn invalid(field: &str, why: impl Display) -> Status {
    Status::invalid_argument(format!("{field}: {why}"))
}
