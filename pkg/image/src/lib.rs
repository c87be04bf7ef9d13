//! Images: content store, layer apply, overlay snapshots, pulls and the image catalogue.

pub mod apply;
pub mod compression;
pub mod content;
mod error;
mod manager;
pub mod pull;
pub mod snapshot;

pub use apply::{apply_layer, AppliedLayer};
pub use compression::Compression;
pub use content::{ContentStore, Ingest};
pub use error::ImageError;
pub use manager::{FsUsage, ImageManager};
pub use pull::{LayerProgress, LayerState, PullProgress};
pub use snapshot::{Snapshotter, StagingDir};
