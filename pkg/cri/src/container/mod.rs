//! Containers: CreateContainer, StartContainer, StopContainer, RemoveContainer,
//! ContainerStatus, ListContainers, ExecSync, ReopenContainerLog, and their recovery after a
//! daemon restart.
//!
//! A container is an overlay rootfs over the image's snapshots, an OCI bundle, and a
//! `berth-shim` that ran `runc create` and stays the container's parent. berthd keeps no
//! container process as a child: it talks to the shim over its socket, learns exits from the
//! exit files shims write (an inotify watch, no polling), and after a restart reconnects to the
//! live shims and reads the exit files of the others. CreateContainer has the shape of
//! RunPodSandbox: one durable `Creating` record naming everything that will be made, the pieces
//! acquired in order, all of it undone in reverse on failure or at the next start after a crash.

mod create;
mod exec;
mod lifecycle;
mod record;
mod resources;
mod rpc;
mod stats;
mod stream;
mod validate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};

use berth_image::ImageManager;
use berth_runtime::runc::Handler;
use berth_runtime::shim::watch_exits;
use berth_runtime::spec::NodeFacts;
use berth_store::{Bucket, Store};
use k8s_cri::v1;
use tonic::Status;

pub use lifecycle::{remove_all_in_pod, stop_all_in_pod};
pub use record::{ContainerRecord, ContainerState};
pub use stream::StreamBackend;

use crate::edge::to_status;
use crate::events::EventHub;
use crate::sandbox::{lock, read, write, PodManager};

/// Sockets live here, with 16-hex names: a unix socket path must stay under 108 bytes.
const SOCKET_DIR: &str = "s";
/// The longest socket path berth makes below the state dir: `s/<16 hex>.c`.
const SOCKET_SUFFIX_LEN: usize = 2 + 16 + 2;
const SUN_PATH_MAX: usize = 107;

/// How berthd runs containers; wired once by berthd from its config.
pub struct ContainerManagerConfig {
    /// berth's persistent root (`/var/lib/berth`): container upper dirs live below it.
    pub root: PathBuf,
    /// berth's run dir (`/run/berth`): bundles, sockets, exit files.
    pub state: PathBuf,
    pub shim_bin: PathBuf,
    /// Every configured handler; `default_handler` names the one for an empty RuntimeClass.
    pub handlers: Vec<Handler>,
    pub default_handler: String,
}

pub struct ContainerManager {
    store: Store,
    pods: Arc<PodManager>,
    images: ImageManager,
    cfg: ContainerManagerConfig,
    node: NodeFacts,
    containers: RwLock<HashMap<String, ContainerRecord>>,
    /// `<pod id>_<name>_<attempt>` → container ID: the name registrar.
    names: Mutex<HashMap<String, String>>,
    /// One lifecycle operation per container at a time.
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Containers whose CreateContainer finished after its caller had hung up, by name key.
    pub(crate) unclaimed: Mutex<HashMap<String, String>>,
    /// The last CPU reading of each cgroup, by cgroup path, for `usage_nano_cores`.
    cpu_samples: Mutex<HashMap<String, berth_runtime::stats::CgroupSample>>,
    events: EventHub,
}

impl ContainerManager {
    /// Loads every container record and makes the node agree with them (see the module doc),
    /// then starts watching for exits.
    pub fn open(
        store: Store,
        pods: Arc<PodManager>,
        images: ImageManager,
        cfg: ContainerManagerConfig,
    ) -> Result<Arc<Self>, Status> {
        let socket_dir = cfg.state.join(SOCKET_DIR);
        if socket_dir.as_os_str().len() + SOCKET_SUFFIX_LEN > SUN_PATH_MAX {
            return Err(Status::invalid_argument(format!(
                "state: {} is too long for container sockets below it (unix socket paths are at most {SUN_PATH_MAX} bytes)",
                cfg.state.display()
            )));
        }
        for dir in [
            socket_dir,
            cfg.state.join("containers"),
            cfg.root.join("containers"),
        ] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| Status::internal(format!("creating {}: {e}", dir.display())))?;
        }
        let mgr = Arc::new(Self {
            store,
            pods,
            images,
            node: berth_runtime::node::detect(),
            cfg,
            containers: RwLock::default(),
            names: Mutex::default(),
            locks: Mutex::default(),
            unclaimed: Mutex::default(),
            cpu_samples: Mutex::default(),
            events: EventHub::default(),
        });
        // Watching starts before the records are read, so an exit that happens while they are
        // reconciled is not missed (the handler is idempotent).
        let weak: Weak<Self> = Arc::downgrade(&mgr);
        watch_exits(&mgr.exits_dir(), move |id| {
            if let Some(m) = weak.upgrade() {
                m.exit_noticed(id);
            }
        })
        .map_err(to_status)?;
        lifecycle::recover(&mgr)?;
        Ok(mgr)
    }

    pub(crate) fn exits_dir(&self) -> PathBuf {
        self.cfg.state.join("exits")
    }

    pub(crate) fn node(&self) -> &NodeFacts {
        &self.node
    }

    pub(crate) fn pods(&self) -> &PodManager {
        &self.pods
    }

    pub(crate) fn images(&self) -> &ImageManager {
        &self.images
    }

    pub(crate) fn events(&self) -> &EventHub {
        &self.events
    }

    /// The directory holding every container's writable layer.
    pub(crate) fn containers_storage(&self) -> PathBuf {
        self.cfg.root.join("containers")
    }

    pub(crate) fn shim_bin(&self) -> &Path {
        &self.cfg.shim_bin
    }

    /// The handler for a pod's RuntimeClass handler name (empty: the default).
    pub(crate) fn handler(&self, name: &str) -> Result<&Handler, Status> {
        let name = if name.is_empty() {
            self.cfg.default_handler.as_str()
        } else {
            name
        };
        self.cfg
            .handlers
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| {
                Status::failed_precondition(format!("runtime handler {name:?} is not configured"))
            })
    }

    pub fn handlers(&self) -> &[Handler] {
        &self.cfg.handlers
    }

    pub fn default_handler(&self) -> &str {
        &self.cfg.default_handler
    }

    pub(crate) fn paths(&self, id: &str) -> record::ContainerPaths {
        let short = &id[..16.min(id.len())];
        let sockets = self.cfg.state.join(SOCKET_DIR);
        record::ContainerPaths {
            storage: self.cfg.root.join("containers").join(id),
            bundle: self.cfg.state.join("containers").join(id),
            socket: sockets.join(format!("{short}.s")),
            console_socket: sockets.join(format!("{short}.c")),
            exit_file: self.exits_dir().join(id),
        }
    }

    /// Writes the record durably (fsync) and updates the in-memory copy.
    pub(crate) fn persist(&self, rec: &ContainerRecord) -> Result<(), Status> {
        self.store
            .put(Bucket::Containers, &rec.id, rec)
            .map_err(to_status)?;
        write(&self.containers).insert(rec.id.clone(), rec.clone());
        Ok(())
    }

    /// Applies `change` to the in-memory record and writes it back without waiting for the
    /// disk: state that follows `Created` can be re-derived from the shim and the exit files, so
    /// a lost write costs nothing. Returns the updated record.
    pub(crate) fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut ContainerRecord),
    ) -> Option<ContainerRecord> {
        let updated = {
            let mut map = write(&self.containers);
            let rec = map.get_mut(id)?;
            change(rec);
            rec.clone()
        };
        if let Err(e) = self.store.put_volatile(Bucket::Containers, id, &updated) {
            tracing::warn!(container = %id, error = %e, "writing container record");
        }
        Some(updated)
    }

    pub(crate) fn forget(&self, rec: &ContainerRecord) -> Result<(), Status> {
        self.store
            .delete(Bucket::Containers, &rec.id)
            .map_err(to_status)?;
        write(&self.containers).remove(&rec.id);
        let key = name_key(&rec.pod_id, &rec.meta);
        let mut names = lock(&self.names);
        if names.get(&key) == Some(&rec.id) {
            names.remove(&key);
        }
        drop(names);
        lock(&self.locks).remove(&rec.id);
        lock(&self.cpu_samples).remove(&rec.cgroups_path);
        Ok(())
    }

    /// Finds a container by full ID or unique ID prefix.
    pub fn get(&self, id: &str) -> Result<ContainerRecord, Status> {
        crate::task::by_id_or_prefix(&read(&self.containers), id, "container_id", "container")
    }

    pub fn list(&self) -> Vec<ContainerRecord> {
        self.matching(|_| true)
    }

    /// A pod's containers; PodSandboxStatus polls and every event ask, so only they are copied.
    pub(crate) fn in_pod(&self, pod_id: &str) -> Vec<ContainerRecord> {
        self.matching(|c| c.pod_id == pod_id)
    }

    /// The records `keep` accepts, oldest first.
    fn matching(&self, keep: impl Fn(&ContainerRecord) -> bool) -> Vec<ContainerRecord> {
        let mut v: Vec<ContainerRecord> = read(&self.containers)
            .values()
            .filter(|c| keep(c))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        v
    }

    pub(crate) fn op_lock(&self, id: &str) -> Arc<Mutex<()>> {
        lock(&self.locks).entry(id.to_string()).or_default().clone()
    }

    /// An exit file appeared: record the exit. Called from the watcher thread, so it must not
    /// wait for a container's operation lock (a stop may hold it for its whole grace period).
    fn exit_noticed(&self, id: &str) {
        let path = self.exits_dir().join(id);
        match berth_runtime::shim::read_exit(&path) {
            Ok(Some(exit)) => {
                if read(&self.containers).contains_key(id) {
                    self.apply_exit(id, &exit);
                } else if !id.starts_with('.') {
                    // A container removed while its shim was finishing: nothing to record.
                    let _ = std::fs::remove_file(&path);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(container = %id, error = %e, "reading exit file"),
        }
    }

    /// Records how a container ended. Idempotent, and never moves a record backwards; the
    /// transition to exited is announced once.
    pub(crate) fn apply_exit(
        &self,
        id: &str,
        exit: &berth_shim_proto::Exit,
    ) -> Option<ContainerRecord> {
        let mut ended = false;
        let rec = self.update(id, |rec| {
            if rec.state == ContainerState::Exited {
                return;
            }
            ended = true;
            rec.state = ContainerState::Exited;
            rec.exit_code = exit.exit_code;
            rec.finished_at = exit.finished_at;
            // kubelet reads these words: `OOMKilled` marks a cgroup OOM kill.
            rec.reason = if exit.oom_killed {
                "OOMKilled"
            } else if exit.exit_code == 0 {
                "Completed"
            } else {
                "Error"
            }
            .to_string();
            tracing::info!(container = %rec.id, exit_code = exit.exit_code, reason = %rec.reason, "container exited");
        })?;
        if ended {
            self.announce(
                &rec.id,
                &rec.pod_id,
                v1::ContainerEventType::ContainerStoppedEvent,
            );
        }
        Some(rec)
    }

    /// Publishes a lifecycle event of `id` (a container, or a pod for pod events) with the
    /// pod's status and its containers' statuses as they are now.
    pub(crate) fn announce(&self, id: &str, pod_id: &str, kind: v1::ContainerEventType) {
        if self.events.subscribers() == 0 {
            return;
        }
        let pod_sandbox_status = self
            .pods
            .get(pod_id)
            .ok()
            .map(|p| crate::sandbox::cri_status(&p));
        let containers_statuses = self
            .in_pod(pod_id)
            .iter()
            .map(ContainerRecord::to_cri_status)
            .collect();
        self.events.publish(v1::ContainerEventResponse {
            container_id: id.to_string(),
            container_event_type: kind as i32,
            created_at: crate::task::unix_nanos(),
            pod_sandbox_status,
            containers_statuses,
        });
    }

    /// Reserves `key` for `id`, or answers with the container a timed-out earlier call created
    /// for the same name.
    pub(crate) fn reserve_name(&self, key: &str, id: &str) -> Result<Option<String>, Status> {
        let mut names = lock(&self.names);
        if let Some(holder) = names.get(key) {
            if lock(&self.unclaimed).remove(key).as_ref() == Some(holder) {
                tracing::info!(container = %holder, name = %key, "handing a container created after its caller left to the retry");
                return Ok(Some(holder.clone()));
            }
            return Err(Status::already_exists(format!(
                "container name {key:?} is already reserved for {holder}"
            )));
        }
        names.insert(key.to_string(), id.to_string());
        Ok(None)
    }

    /// A fresh ID whose 16-hex socket prefix no other container uses.
    pub(crate) fn fresh_id(&self) -> String {
        loop {
            let id = crate::task::new_id();
            let taken = read(&self.containers)
                .keys()
                .any(|other| other.get(..16) == id.get(..16));
            if !taken && !self.paths(&id).socket.exists() {
                return id;
            }
        }
    }
}

/// The key two containers of one pod must not share: kubelet names containers per pod and
/// attempt.
pub(crate) fn name_key(pod_id: &str, meta: &record::ContainerMeta) -> String {
    format!("{}_{}_{}", pod_id, meta.name, meta.attempt)
}
