use std::io;
use std::path::PathBuf;

use berth_core::{ErrorKind, HasKind};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the kernel-facing helpers. Every variant names what it was working on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A caller-supplied value was rejected before any syscall was made.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// The destination already holds a pinned namespace.
    #[error("{path} is already a pinned namespace")]
    AlreadyPinned { path: PathBuf },
    /// A syscall or file operation on a path failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A syscall without a path (unshare, sethostname, thread spawn) failed.
    #[error("{op}: {source}")]
    Syscall {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl Error {
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

    pub(crate) fn sys(op: &'static str, source: impl Into<io::Error>) -> Self {
        Error::Syscall {
            op,
            source: source.into(),
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

fn io_kind(e: &io::Error) -> ErrorKind {
    match e.kind() {
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
        _ => ErrorKind::Internal,
    }
}

impl HasKind for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            Error::AlreadyPinned { .. } => ErrorKind::AlreadyExists,
            Error::Io { source, .. } | Error::Syscall { source, .. } => io_kind(source),
        }
    }
}
