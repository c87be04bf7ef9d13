//! Types every berth crate shares: validated digests, error kinds and crash-safe file writes.

mod digest;
mod error;
mod fsutil;

pub use digest::{Digest, DigestError, Sha256Writer};
pub use error::{ErrorKind, HasKind};
pub use fsutil::{atomic_write, fsync_dir, replace_file_volatile};
