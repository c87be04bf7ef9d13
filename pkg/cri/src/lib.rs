//! The CRI v1 gRPC services (and berth's own pull-progress service) over the domain crates.
//!
//! One module per concern; every RPC goes through [`edge::instrument`], the single place that
//! logs, opens a span and maps domain error kinds to gRPC codes.

mod container;
mod edge;
mod events;
mod image;
mod progress;
mod runtime;
mod sandbox;
mod task;

pub use container::{ContainerManager, ContainerManagerConfig, StreamBackend};
pub use edge::to_status;
pub use image::ImageApi;
pub use progress::PullProgressApi;
pub use runtime::{RuntimeApi, RuntimeInfo};
pub use sandbox::{PodManager, PodManagerConfig};
