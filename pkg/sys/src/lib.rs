//! Kernel-facing helpers for berth: namespace pinning (CRI-O `pinns` style, no pause image) and
//! bind mounts, each behind a small trait with a Linux implementation and a recording fake so the
//! logic above can be unit-tested without root.

mod error;
pub mod mount;
pub mod ns;
pub mod process;
pub mod root;

pub use error::{Error, Result};
