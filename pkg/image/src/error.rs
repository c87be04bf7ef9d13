use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use berth_core::{Digest, ErrorKind, HasKind};

/// Everything that can go wrong in the content store, layer apply and snapshots.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A filesystem operation on a path the store owns failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("blob {digest} not found")]
    BlobNotFound { digest: Digest },
    #[error("blob {expected} digest mismatch: got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {digest} size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {digest} is {size} bytes, over the limit of {max} bytes")]
    BlobTooLarge { digest: Digest, size: u64, max: u64 },
    #[error("ingest of blob {digest} already in progress")]
    IngestInProgress { digest: Digest },
    /// The compressed or uncompressed layer stream could not be read or decoded.
    #[error("reading layer stream: {source}")]
    LayerStream {
        #[source]
        source: io::Error,
    },
    #[error("layer entry {entry} escapes the root")]
    EntryEscapes { entry: String },
    #[error("layer entry {entry}: {reason}")]
    InvalidEntry { entry: String, reason: String },
    /// Creating or updating a layer entry on disk failed.
    #[error("layer entry {entry}: {op}: {source}")]
    EntryIo {
        entry: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("snapshot {chain_id} not found")]
    SnapshotNotFound { chain_id: Digest },
    // Pull-level errors.
    #[error("image {reference} has no manifest for platform {platform}")]
    NoMatchingPlatform { reference: String, platform: String },
    #[error("{what} {digest} is too large")]
    TooLarge { what: &'static str, digest: Digest },
    #[error("index {digest} points to another index, which is not supported")]
    NestedIndex { digest: Digest },
    #[error("image config {digest}: {reason}")]
    BadConfig { digest: Digest, reason: String },
    #[error("layer {digest} has unsupported media type {media_type:?}")]
    UnsupportedMediaType { media_type: String, digest: Digest },
    #[error("layer {layer} unpacked to diff ID {actual}, but the image config expects {expected}")]
    DiffIdMismatch {
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error(transparent)]
    Registry(#[from] berth_registry::RegistryError),
    #[error(transparent)]
    Reference(#[from] berth_registry::ReferenceError),
    #[error(transparent)]
    Store(#[from] berth_store::StoreError),
    /// The result of a pull job shared by several callers.
    #[error("{0}")]
    Shared(Arc<ImageError>),
    /// A blocking task or spawned job panicked or was cancelled.
    #[error("background task failed: {0}")]
    TaskFailed(String),
}

impl ImageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn entry_io(entry: &str, op: &'static str, source: impl Into<io::Error>) -> Self {
        Self::EntryIo {
            entry: entry.to_string(),
            op,
            source: source.into(),
        }
    }

    pub(crate) fn invalid_entry(entry: &str, reason: impl Into<String>) -> Self {
        Self::InvalidEntry {
            entry: entry.to_string(),
            reason: reason.into(),
        }
    }
}

/// Maps an I/O error to a kind: a full disk is something the operator can fix, a missing file is
/// not an internal bug, everything else is.
fn io_kind(e: &io::Error) -> ErrorKind {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => return ErrorKind::ResourceExhausted,
        Some(libc::EACCES) | Some(libc::EPERM) => return ErrorKind::PermissionDenied,
        _ => {}
    }
    match e.kind() {
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        io::ErrorKind::TimedOut => ErrorKind::DeadlineExceeded,
        _ => ErrorKind::Internal,
    }
}

impl HasKind for ImageError {
    fn kind(&self) -> ErrorKind {
        match self {
            ImageError::Io { source, .. } => io_kind(source),
            ImageError::BlobNotFound { .. } | ImageError::SnapshotNotFound { .. } => {
                ErrorKind::NotFound
            }
            ImageError::DigestMismatch { .. } | ImageError::SizeMismatch { .. } => {
                ErrorKind::DataLoss
            }
            ImageError::BlobTooLarge { .. } => ErrorKind::InvalidArgument,
            ImageError::IngestInProgress { .. } => ErrorKind::Unavailable,
            // A stream that does not decode is corrupt data; anything else is the transport below
            // us failing (the caller's reader wraps the network), which is worth a retry.
            ImageError::LayerStream { source } => match source.kind() {
                io::ErrorKind::InvalidData
                | io::ErrorKind::InvalidInput
                | io::ErrorKind::UnexpectedEof => ErrorKind::DataLoss,
                _ => match io_kind(source) {
                    ErrorKind::Internal => ErrorKind::Unavailable,
                    kind => kind,
                },
            },
            ImageError::EntryEscapes { .. } | ImageError::InvalidEntry { .. } => {
                ErrorKind::InvalidArgument
            }
            ImageError::EntryIo { source, .. } => io_kind(source),
            ImageError::NoMatchingPlatform { .. } => ErrorKind::NotFound,
            ImageError::TooLarge { .. }
            | ImageError::NestedIndex { .. }
            | ImageError::BadConfig { .. }
            | ImageError::UnsupportedMediaType { .. } => ErrorKind::InvalidArgument,
            ImageError::DiffIdMismatch { .. } => ErrorKind::DataLoss,
            ImageError::Registry(e) => e.kind(),
            ImageError::Reference(e) => e.kind(),
            ImageError::Store(e) => e.kind(),
            ImageError::Shared(inner) => inner.kind(),
            ImageError::TaskFailed(_) => ErrorKind::Internal,
        }
    }
}
