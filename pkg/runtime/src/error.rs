use std::io;
use std::path::PathBuf;

use berth_core::{ErrorKind, HasKind};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the pod sandbox infrastructure. Every variant names the field, path or cgroup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field was rejected; `field` uses the CRI spelling (`dns_config.servers[1]`).
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// The request is valid, but the node is not in a state to honour it (a propagating mount
    /// whose host side does not propagate).
    #[error("{field}: {reason}")]
    Precondition { field: String, reason: String },
    /// The cgroup still has processes, so it cannot be removed.
    #[error("cgroup {path} still has {count} process(es)")]
    CgroupBusy { path: String, count: usize },
    #[error("cgroup {path}: {op}: {reason}")]
    Cgroup {
        op: &'static str,
        path: String,
        reason: String,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The holder process did not start as expected.
    #[error("pid namespace holder: {reason}")]
    Holder { reason: String },
    /// The holder did not exit after SIGKILL.
    #[error("pid namespace holder {pid} did not exit")]
    HolderStuck { pid: i32 },
    /// The OCI runtime binary refused an operation; `message` is its own error.
    #[error("{op} container {id}: {message}")]
    Runtime {
        op: &'static str,
        id: String,
        message: String,
    },
    /// The container's shim failed, refused a request or is gone.
    #[error("shim of container {id}: {message}")]
    Shim { id: String, message: String },
    /// The container's shim is not running (it exited with its container, or died).
    #[error("shim of container {id} is gone")]
    ShimGone { id: String },
    #[error(transparent)]
    Sys(#[from] berth_sys::Error),
}

impl Error {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<io::Error>,
    ) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source: source.into(),
        }
    }
}

impl HasKind for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            Error::CgroupBusy { .. } | Error::Precondition { .. } => ErrorKind::FailedPrecondition,
            Error::Cgroup { .. } | Error::Holder { .. } => ErrorKind::Internal,
            Error::HolderStuck { .. } => ErrorKind::DeadlineExceeded,
            Error::Io { source, .. } => match source.kind() {
                io::ErrorKind::NotFound => ErrorKind::NotFound,
                io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
                _ => ErrorKind::Internal,
            },
            Error::Runtime { .. } | Error::Shim { .. } => ErrorKind::Internal,
            Error::ShimGone { .. } => ErrorKind::FailedPrecondition,
            Error::Sys(e) => e.kind(),
        }
    }
}
