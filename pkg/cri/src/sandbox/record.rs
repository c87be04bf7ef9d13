use std::collections::BTreeMap;
use std::path::PathBuf;

use berth_network::PodNetwork;
use berth_runtime::holder::Holder;
use berth_runtime::podfiles::PodFiles;
use berth_sys::ns::PinnedNamespaces;
use k8s_cri::v1;
use serde::{Deserialize, Serialize};

/// Lifecycle of a sandbox as persisted. `Creating` exists only so that a crash in the middle of
/// RunPodSandbox leaves a record naming what to clean up at the next start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodState {
    Creating,
    Ready,
    NotReady,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodMeta {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
}

impl PodMeta {
    /// The key two RunPodSandbox calls must not share, as kubelet builds pod sandbox names.
    pub fn reservation_key(&self) -> String {
        format!(
            "{}_{}_{}_{}",
            self.name, self.namespace, self.uid, self.attempt
        )
    }

    pub fn to_cri(&self) -> v1::PodSandboxMetadata {
        v1::PodSandboxMetadata {
            name: self.name.clone(),
            uid: self.uid.clone(),
            namespace: self.namespace.clone(),
            attempt: self.attempt,
        }
    }
}

/// Which of the pod's namespaces are the node's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostNamespaces {
    pub network: bool,
    pub ipc: bool,
    pub pid: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    pub meta: PodMeta,
    pub state: PodState,
    pub created_at: i64,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub runtime_handler: String,
    pub hostname: String,
    pub log_directory: String,
    pub host: HostNamespaces,
    /// The pod shares one PID namespace among its containers (held by `berth-shim pause`).
    pub shared_pid: bool,
    pub ns_dir: PathBuf,
    pub files_dir: PathBuf,
    pub pinned: Option<PinnedNamespaces>,
    pub cgroup: Option<String>,
    pub network: Option<PodNetwork>,
    pub files: Option<PodFiles>,
    pub holder: Option<Holder>,
    pub sysctls: Vec<(String, String)>,
    /// The pod's own `/dev/shm` tmpfs (pods with an IPC namespace of their own), bind-mounted
    /// into each of its containers.
    #[serde(default)]
    pub shm: Option<PathBuf>,
    /// `linux.security_context.privileged`: only then may its containers be privileged.
    #[serde(default)]
    pub privileged: bool,
}

impl PodRecord {
    pub fn cri_state(&self) -> i32 {
        match self.state {
            PodState::Ready => v1::PodSandboxState::SandboxReady as i32,
            PodState::Creating | PodState::NotReady => v1::PodSandboxState::SandboxNotready as i32,
        }
    }

    pub fn namespace_option(&self) -> v1::NamespaceOption {
        let mode = |host: bool, pod: bool| {
            if host {
                v1::NamespaceMode::Node as i32
            } else if pod {
                v1::NamespaceMode::Pod as i32
            } else {
                v1::NamespaceMode::Container as i32
            }
        };
        v1::NamespaceOption {
            network: mode(self.host.network, true),
            pid: mode(self.host.pid, self.shared_pid),
            ipc: mode(self.host.ipc, true),
            ..Default::default()
        }
    }

    pub fn to_cri(&self) -> v1::PodSandbox {
        v1::PodSandbox {
            id: self.id.clone(),
            metadata: Some(self.meta.to_cri()),
            state: self.cri_state(),
            created_at: self.created_at,
            labels: self.labels.clone().into_iter().collect(),
            annotations: self.annotations.clone().into_iter().collect(),
            runtime_handler: self.runtime_handler.clone(),
        }
    }
}
