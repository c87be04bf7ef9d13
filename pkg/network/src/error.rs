use std::io;
use std::path::PathBuf;

use berth_core::{ErrorKind, HasKind};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid port mapping {index}: {reason}")]
    InvalidPortMapping { index: usize, reason: String },
    #[error("host port {protocol}/{host_port} on {host_ip} is already used by pod {owner}")]
    HostPortInUse {
        protocol: String,
        host_port: u16,
        host_ip: String,
        owner: String,
    },
    #[error("no free ip in {subnet}")]
    NoFreeIp { subnet: String },
    #[error("pod {pod_id} already has ip {ip}")]
    LeaseExists { pod_id: String, ip: String },
    #[error("invalid sysctl {key:?}: {reason}")]
    InvalidSysctl { key: String, reason: String },
    #[error("invalid network config: {0}")]
    InvalidConfig(String),
    #[error("netlink {op} on {target}: {source}")]
    Netlink {
        op: &'static str,
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("namespace {path}: {source}")]
    Namespace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("sysctl write {key}={value}: {source}")]
    SysctlWrite {
        key: String,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("nft in table {table}: {message}")]
    Nft { table: String, message: String },
    #[error("cni config {path}: {reason}")]
    CniConfig { path: PathBuf, reason: String },
    #[error("cni plugin {plugin} {command} failed: {message}")]
    CniPlugin {
        plugin: String,
        command: &'static str,
        message: String,
    },
    #[error("cni {command} not supported for cniVersion {version}")]
    CniUnsupported {
        command: &'static str,
        version: String,
    },
    #[error("cni result cache {path}: {source}")]
    CniCache {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("lease store: {0}")]
    Store(#[from] berth_store::StoreError),
    #[error("io on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl HasKind for NetworkError {
    fn kind(&self) -> ErrorKind {
        use NetworkError::*;
        match self {
            InvalidPortMapping { .. } | InvalidSysctl { .. } | InvalidConfig(_) => {
                ErrorKind::InvalidArgument
            }
            HostPortInUse { .. } | LeaseExists { .. } => ErrorKind::AlreadyExists,
            NoFreeIp { .. } => ErrorKind::ResourceExhausted,
            CniConfig { .. } | CniUnsupported { .. } => ErrorKind::FailedPrecondition,
            Namespace { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            Store(e) => e.kind(),
            Netlink { .. }
            | Namespace { .. }
            | SysctlWrite { .. }
            | Nft { .. }
            | CniPlugin { .. }
            | CniCache { .. }
            | Io { .. } => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = NetworkError> = std::result::Result<T, E>;

pub(crate) fn nl_err(
    op: &'static str,
    target: impl Into<String>,
) -> impl FnOnce(io::Error) -> NetworkError {
    let target = target.into();
    move |source| NetworkError::Netlink { op, target, source }
}
