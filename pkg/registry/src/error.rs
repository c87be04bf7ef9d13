use std::path::PathBuf;

use berth_core::{ErrorKind, HasKind};

use crate::reference::ReferenceError;

/// Every failure the registry client reports. Messages name the host, repository or URL involved
/// so that a kubelet event is actionable on its own.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("invalid {what}: {reason}")]
    InvalidContent { what: &'static str, reason: String },
    #[error("unsupported manifest: {reason}")]
    UnsupportedManifest { reason: String },
    #[error("invalid registry hosts config {path}: {reason}")]
    HostsConfig { path: PathBuf, reason: String },
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid tls settings for {host}: {reason}")]
    Tls { host: String, reason: String },
    #[error("no configured host for {registry} can {capability}")]
    NoHosts {
        registry: String,
        capability: &'static str,
    },
    #[error("{what} {reference} not found")]
    NotFound {
        what: &'static str,
        reference: String,
    },
    #[error("pull access denied for {repository} by {host}: {reason}")]
    Unauthenticated {
        host: String,
        repository: String,
        reason: String,
    },
    #[error("access to {repository} forbidden by {host}")]
    PermissionDenied { host: String, repository: String },
    #[error("token request to {realm} failed: {reason}")]
    Token {
        realm: String,
        status: Option<u16>,
        reason: String,
    },
    #[error("{what} digest mismatch from {url}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: &'static str,
        url: String,
        expected: String,
        actual: String,
    },
    #[error("{what} from {url} exceeds the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        url: String,
        limit: usize,
    },
    #[error("request to {url} failed: {reason}")]
    Network { url: String, reason: String },
    #[error("request to {url} timed out after {after:?}")]
    Timeout {
        url: String,
        after: std::time::Duration,
    },
    #[error("no data for {after:?} from {url}")]
    Stalled {
        url: String,
        after: std::time::Duration,
    },
    #[error("unexpected status {status} from {url}{detail}")]
    Status {
        url: String,
        status: u16,
        detail: String,
    },
}

impl HasKind for RegistryError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Reference(_)
            | Self::InvalidContent { .. }
            | Self::UnsupportedManifest { .. }
            | Self::HostsConfig { .. }
            | Self::Tls { .. } => ErrorKind::InvalidArgument,
            Self::Io { .. } => ErrorKind::Internal,
            Self::NoHosts { .. } => ErrorKind::FailedPrecondition,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::Unauthenticated { .. } => ErrorKind::Unauthenticated,
            Self::PermissionDenied { .. } => ErrorKind::PermissionDenied,
            Self::Token { status, .. } => match status {
                Some(401) => ErrorKind::Unauthenticated,
                Some(403) => ErrorKind::PermissionDenied,
                _ => ErrorKind::Unavailable,
            },
            Self::DigestMismatch { .. } => ErrorKind::DataLoss,
            Self::TooLarge { .. } => ErrorKind::ResourceExhausted,
            Self::Network { .. } => ErrorKind::Unavailable,
            Self::Timeout { .. } | Self::Stalled { .. } => ErrorKind::DeadlineExceeded,
            Self::Status { status, .. } => match status {
                429 | 500..=599 => ErrorKind::Unavailable,
                _ => ErrorKind::FailedPrecondition,
            },
        }
    }
}

/// Formats an error with its whole source chain: reqwest's top-level message alone ("error
/// sending request") hides whether DNS, TCP or TLS failed.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}
