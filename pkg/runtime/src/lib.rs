//! Pod sandbox infrastructure around the pinned namespaces: the files a pod's containers see
//! (/etc/hostname, /etc/hosts, /etc/resolv.conf), the pod cgroup and the PID-namespace holder.

pub mod cgroup;
mod error;
pub mod holder;
pub mod podfiles;

pub use error::{Error, Result};
