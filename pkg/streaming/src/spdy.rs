//! SPDY/3.1 framing and stream multiplexing.

pub mod frame;
pub mod session;

pub use frame::{header, Headers, Limits};
pub use session::{Session, Stream, StreamWriter};
