//! OCI distribution client: references, manifests, platform selection, hosts.toml, auth.

mod auth;
mod client;
mod error;
mod hosts;
mod manifest;
mod reference;

pub use auth::{parse_challenges, Challenge, Credentials};
pub use client::{BlobStream, ClientOptions, RegistryClient, Resolved};
pub use error::RegistryError;
pub use hosts::{hosts_for, Capabilities, ClientCert, RegistryHost};
pub use manifest::*;
pub use reference::{Reference, ReferenceError, DEFAULT_REGISTRY};
