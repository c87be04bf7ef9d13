use berth_core::Digest;
use serde::{Deserialize, Serialize};

/// A pulled image. Keyed by the hex of its ID (the config digest). Written only after every
/// snapshot it needs is committed, so a record never points at missing content.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    pub id: Digest,
    /// Fully normalised `name:tag` references.
    pub repo_tags: Vec<String>,
    /// `name@sha256:...` of the manifest (for an index pull, of the index) per repository.
    pub repo_digests: Vec<String>,
    pub manifest_digest: Digest,
    pub media_type: String,
    /// Compressed layer blobs, bottom first.
    pub layers: Vec<Digest>,
    /// Snapshot keys, bottom first.
    pub chain_ids: Vec<Digest>,
    /// Compressed size of config and layers, as containerd reports image size.
    pub size: u64,
    /// The config's `User` (`name`, `uid` or `uid:gid`), kept here so ListImages and
    /// ImageStatus, which kubelet polls, never re-read and re-hash image configs.
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub pinned: bool,
    /// Unix nanoseconds of the first pull.
    #[serde(default)]
    pub pulled_at: i64,
}
