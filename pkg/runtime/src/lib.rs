//! Pod sandbox infrastructure around the pinned namespaces: the files a pod's containers see
//! (/etc/hostname, /etc/hosts, /etc/resolv.conf), the pod cgroup and the PID-namespace holder.

pub mod cgroup;
mod error;
pub mod holder;
pub mod mounts;
pub mod node;
pub mod podfiles;
pub mod rootfs;
pub mod runc;
mod seccomp;
pub mod shim;
pub mod shm;
pub mod spec;
pub mod stats;
pub mod user;

pub use error::{Error, Result};
