use std::collections::BTreeMap;
use std::path::PathBuf;

use berth_runtime::spec::{MountSpec, ResolvedUser, ResourcesSpec};
use k8s_cri::v1;
use serde::{Deserialize, Serialize};

/// Lifecycle of a container as persisted. `Creating` exists only so a crash in the middle of
/// CreateContainer leaves a record naming what to clean up at the next start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Creating,
    Created,
    Running,
    Exited,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerMeta {
    pub name: String,
    pub attempt: u32,
}

/// Where a container's pieces live; every path derives from the ID and the daemon's dirs, so a
/// `Creating` record already names everything a crash could leave behind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPaths {
    /// `<root>/containers/<id>`: upper and work dirs, volume dirs (on disk, not in /run).
    pub storage: PathBuf,
    /// `<state>/containers/<id>`: the OCI bundle (`config.json`, `rootfs/`), shim files.
    pub bundle: PathBuf,
    /// The shim's control socket (short: `<state>/s/<16 hex>`).
    pub socket: PathBuf,
    pub console_socket: PathBuf,
    /// `<state>/exits/<id>`, written by the shim when the container ends.
    pub exit_file: PathBuf,
}

impl ContainerPaths {
    pub fn rootfs(&self) -> PathBuf {
        self.bundle.join("rootfs")
    }
    pub fn upper(&self) -> PathBuf {
        self.storage.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.storage.join("work")
    }
    pub fn volumes(&self) -> PathBuf {
        self.storage.join("volumes")
    }
    pub fn config_json(&self) -> PathBuf {
        self.bundle.join("config.json")
    }
    pub fn shim_log(&self) -> PathBuf {
        self.bundle.join("shim.log")
    }
}

/// The image a container was created from: as asked, and as resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerImage {
    /// `ImageSpec.image` exactly as the request gave it.
    pub requested: String,
    /// The image ID (config digest), as PullImage returned it.
    pub id: String,
    /// A repo digest (`name@sha256:…`) when the image has one, else the ID.
    pub image_ref: String,
    pub annotations: BTreeMap<String, String>,
    pub runtime_handler: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    pub meta: ContainerMeta,
    pub state: ContainerState,
    pub created_at: i64,
    #[serde(default)]
    pub started_at: i64,
    #[serde(default)]
    pub finished_at: i64,
    #[serde(default)]
    pub exit_code: i32,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    pub image: ContainerImage,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The CRI log file on the host (`log_directory` + `log_path`); `None` discards output.
    pub log_path: Option<PathBuf>,
    /// The runtime handler (RuntimeClass) the pod asked for; empty: the default.
    pub handler: String,
    pub tty: bool,
    pub stdin: bool,
    pub stdin_once: bool,
    pub mounts: Vec<MountSpec>,
    pub resources: Option<ResourcesSpec>,
    pub user: ResolvedUser,
    pub stop_signal: i32,
    pub cgroups_path: String,
    pub paths: ContainerPaths,
    /// Host PID of the container's init once created.
    #[serde(default)]
    pub pid: i32,
    #[serde(default)]
    pub shim_pid: i32,
}

impl ContainerRecord {
    pub fn cri_state(&self) -> i32 {
        match self.state {
            ContainerState::Creating | ContainerState::Created => {
                v1::ContainerState::ContainerCreated as i32
            }
            ContainerState::Running => v1::ContainerState::ContainerRunning as i32,
            ContainerState::Exited => v1::ContainerState::ContainerExited as i32,
        }
    }

    pub fn metadata(&self) -> v1::ContainerMetadata {
        v1::ContainerMetadata {
            name: self.meta.name.clone(),
            attempt: self.meta.attempt,
        }
    }

    pub fn image_spec(&self) -> v1::ImageSpec {
        v1::ImageSpec {
            image: self.image.requested.clone(),
            annotations: self.image.annotations.clone().into_iter().collect(),
            user_specified_image: self.image.requested.clone(),
            runtime_handler: self.image.runtime_handler.clone(),
        }
    }

    pub fn to_cri(&self) -> v1::Container {
        v1::Container {
            id: self.id.clone(),
            pod_sandbox_id: self.pod_id.clone(),
            metadata: Some(self.metadata()),
            image: Some(self.image_spec()),
            image_ref: self.image.image_ref.clone(),
            state: self.cri_state(),
            created_at: self.created_at,
            labels: self.labels.clone().into_iter().collect(),
            annotations: self.annotations.clone().into_iter().collect(),
            image_id: self.image.id.clone(),
        }
    }

    pub fn cri_mounts(&self) -> Vec<v1::Mount> {
        self.mounts
            .iter()
            .map(|m| v1::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.display().to_string(),
                readonly: m.readonly,
                selinux_relabel: false,
                propagation: match m.propagation {
                    berth_runtime::spec::Propagation::Private => {
                        v1::MountPropagation::PropagationPrivate as i32
                    }
                    berth_runtime::spec::Propagation::HostToContainer => {
                        v1::MountPropagation::PropagationHostToContainer as i32
                    }
                    berth_runtime::spec::Propagation::Bidirectional => {
                        v1::MountPropagation::PropagationBidirectional as i32
                    }
                },
                uid_mappings: Vec::new(),
                gid_mappings: Vec::new(),
                recursive_read_only: m.recursive_read_only,
                image: None,
            })
            .collect()
    }

    pub fn cri_resources(&self) -> Option<v1::ContainerResources> {
        let r = self.resources.as_ref()?;
        Some(v1::ContainerResources {
            linux: Some(v1::LinuxContainerResources {
                cpu_period: r.cpu_period.unwrap_or(0) as i64,
                cpu_quota: r.cpu_quota.unwrap_or(0),
                cpu_shares: r.cpu_shares.unwrap_or(0) as i64,
                memory_limit_in_bytes: r.memory_limit_in_bytes.unwrap_or(0),
                oom_score_adj: r.oom_score_adj.unwrap_or(0),
                cpuset_cpus: r.cpuset_cpus.clone(),
                cpuset_mems: r.cpuset_mems.clone(),
                hugepage_limits: r
                    .hugepage_limits
                    .iter()
                    .map(|(page_size, limit)| v1::HugepageLimit {
                        page_size: page_size.clone(),
                        limit: *limit,
                    })
                    .collect(),
                unified: r.unified.clone().into_iter().collect(),
                memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes.unwrap_or(0),
            }),
            windows: None,
        })
    }

    /// The identity the process starts with. `supplemental_groups` lists every group the
    /// process holds, the primary one included, sorted — what `id -G` shows inside and what
    /// kubelet compares with the pod's request.
    pub fn cri_user(&self) -> v1::ContainerUser {
        let mut groups: Vec<i64> = std::iter::once(self.user.gid)
            .chain(self.user.additional_gids.iter().copied())
            .map(i64::from)
            .collect();
        groups.sort_unstable();
        groups.dedup();
        v1::ContainerUser {
            linux: Some(v1::LinuxContainerUser {
                uid: i64::from(self.user.uid),
                gid: i64::from(self.user.gid),
                supplemental_groups: groups,
            }),
        }
    }

    pub fn to_cri_status(&self) -> v1::ContainerStatus {
        v1::ContainerStatus {
            id: self.id.clone(),
            metadata: Some(self.metadata()),
            state: self.cri_state(),
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            exit_code: self.exit_code,
            image: Some(self.image_spec()),
            image_ref: self.image.image_ref.clone(),
            reason: self.reason.clone(),
            message: self.message.clone(),
            labels: self.labels.clone().into_iter().collect(),
            annotations: self.annotations.clone().into_iter().collect(),
            mounts: self.cri_mounts(),
            log_path: self
                .log_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            resources: self.cri_resources(),
            image_id: self.image.id.clone(),
            user: Some(self.cri_user()),
        }
    }
}
