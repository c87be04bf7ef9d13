//! Types every berth crate shares: validated digests, error kinds and crash-safe file writes.

mod digest;
mod error;
mod fsutil;

pub use digest::{Digest, DigestError, Sha256Writer};
pub use error::{ErrorKind, HasKind};
pub use fsutil::{atomic_write, fsync_dir, replace_file_volatile};

/// Now, in nanoseconds since the Unix epoch: the unit of every CRI timestamp.
pub fn unix_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
        .unwrap_or(0)
}
