//! Pod sandboxes: RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus,
//! ListPodSandbox, and their recovery after a daemon restart.
//!
//! A sandbox is a set of kernel objects, not a process: namespaces created and pinned by berth
//! (no pause image), a cgroup, the pod network, per-pod files and, only when the pod shares its
//! PID namespace, a `berth-shim pause` holder. Every acquired piece has an undo that runs when a
//! later step fails, and the record is persisted before the first piece is acquired so a crash
//! leaves enough to clean up.

mod record;
mod rpc;
mod run;
mod validate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use berth_network::NetworkManager;
use berth_store::{Bucket, Store};
use tonic::Status;

pub use record::{PodRecord, PodState};
pub(crate) use rpc::cri_status;

use crate::edge::to_status;

/// Everything sandbox RPCs need, wired once by berthd.
pub struct PodManager {
    store: Store,
    network: Arc<NetworkManager>,
    state_dir: PathBuf,
    shim_bin: PathBuf,
    cgroup_root: String,
    pods: RwLock<HashMap<String, PodRecord>>,
    /// `name_namespace_uid_attempt` → pod ID: the name registrar.
    names: Mutex<HashMap<String, String>>,
    /// One lifecycle operation per pod at a time (stop racing remove must not double-free).
    pod_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Pods whose RunPodSandbox finished after its caller had hung up (kubelet's deadline), by
    /// name key: the caller's retry is answered with this pod instead of ALREADY_EXISTS, as
    /// CRI-O's resource store does.
    pub(crate) unclaimed: Mutex<HashMap<String, String>>,
    /// Runtime handler names a pod may ask for.
    pub(crate) handlers: Vec<String>,
}

pub struct PodManagerConfig {
    /// The configured runtime handler names (RuntimeClass handlers).
    pub handlers: Vec<String>,
    pub state_dir: PathBuf,
    pub shim_bin: PathBuf,
    /// cgroup parent used when the request names none.
    pub cgroup_root: String,
}

impl PodManager {
    /// Loads every pod record and makes the node agree with them: half-created pods are torn
    /// down, pods whose namespaces vanished (a reboot) become NotReady, and network leases or
    /// hostPort rules that no live pod owns are released.
    pub fn open(
        store: Store,
        network: Arc<NetworkManager>,
        cfg: PodManagerConfig,
    ) -> Result<Self, Status> {
        let mgr = Self {
            store,
            network,
            state_dir: cfg.state_dir,
            shim_bin: cfg.shim_bin,
            cgroup_root: cfg.cgroup_root,
            pods: RwLock::default(),
            names: Mutex::default(),
            pod_locks: Mutex::default(),
            unclaimed: Mutex::default(),
            handlers: cfg.handlers,
        };
        let records = mgr
            .store
            .list::<PodRecord>(Bucket::Pods)
            .map_err(to_status)?;
        for (_, mut rec) in records {
            if rec.state == PodState::Creating {
                tracing::warn!(pod = %rec.id, "cleaning up a pod whose creation was interrupted");
                run::undo_all(&mgr, &mut rec);
                let _ = mgr.store.delete(Bucket::Pods, &rec.id);
                continue;
            }
            if rec.state == PodState::Ready && !run::namespaces_alive(&rec) {
                tracing::warn!(pod = %rec.id, "pod namespaces are gone; marking it not ready");
                if let Err(e) = run::stop_pod(&mgr, &mut rec) {
                    tracing::warn!(pod = %rec.id, error = %e.message(), "releasing a vanished pod");
                }
                mgr.store
                    .put(Bucket::Pods, &rec.id, &rec)
                    .map_err(to_status)?;
            }
            lock(&mgr.names).insert(rec.meta.reservation_key(), rec.id.clone());
            write(&mgr.pods).insert(rec.id.clone(), rec);
        }
        let live: Vec<(String, berth_network::PodNetwork)> = read(&mgr.pods)
            .values()
            .filter_map(|p| p.network.clone().map(|n| (p.id.clone(), n)))
            .collect();
        if let Err(e) = mgr.network.reconcile(&live) {
            tracing::error!(error = %e, "reconciling pod network state");
        }
        Ok(mgr)
    }

    pub fn network(&self) -> &NetworkManager {
        &self.network
    }

    pub(crate) fn persist(&self, rec: &PodRecord) -> Result<(), Status> {
        self.store
            .put(Bucket::Pods, &rec.id, rec)
            .map_err(to_status)?;
        write(&self.pods).insert(rec.id.clone(), rec.clone());
        Ok(())
    }

    pub(crate) fn forget(&self, rec: &PodRecord) -> Result<(), Status> {
        self.store
            .delete(Bucket::Pods, &rec.id)
            .map_err(to_status)?;
        write(&self.pods).remove(&rec.id);
        let mut names = lock(&self.names);
        if names.get(&rec.meta.reservation_key()) == Some(&rec.id) {
            names.remove(&rec.meta.reservation_key());
        }
        Ok(())
    }

    /// Finds a pod by full ID or unique ID prefix, as crictl users type them.
    pub fn get(&self, id: &str) -> Result<PodRecord, Status> {
        crate::task::by_id_or_prefix(&read(&self.pods), id, "pod_sandbox_id", "pod sandbox")
    }

    pub fn list(&self) -> Vec<PodRecord> {
        let mut all: Vec<PodRecord> = read(&self.pods).values().cloned().collect();
        all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        all
    }

    pub(crate) fn pod_lock(&self, id: &str) -> Arc<Mutex<()>> {
        lock(&self.pod_locks)
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    pub(crate) fn ns_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("ns").join(id)
    }

    pub(crate) fn files_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("pods").join(id)
    }

    pub(crate) fn shim_bin(&self) -> &Path {
        &self.shim_bin
    }

    /// Stops the pod: holder, network and namespaces released; the record stays (NotReady).
    pub fn stop(&self, id: &str) -> Result<(), Status> {
        let mut rec = match self.get(id) {
            Ok(r) => r,
            // CRI: stopping a pod that is already gone succeeds.
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
            Err(s) => return Err(s),
        };
        let guard = self.pod_lock(&rec.id);
        let _held = lock(&guard);
        // Re-read under the lock: a concurrent stop may have finished already.
        rec = self.get(&rec.id)?;
        if rec.state == PodState::NotReady
            && rec.network.is_none()
            && rec.pinned.is_none()
            && rec.shm.is_none()
        {
            return Ok(());
        }
        let clean = run::stop_pod(self, &mut rec);
        self.persist(&rec)?;
        clean
    }

    /// Removes the pod, stopping it first; unknown pods are not an error.
    pub fn remove(&self, id: &str) -> Result<(), Status> {
        let rec = match self.get(id) {
            Ok(r) => r,
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
            Err(s) => return Err(s),
        };
        self.stop(&rec.id)?;
        let guard = self.pod_lock(&rec.id);
        let _held = lock(&guard);
        let Ok(mut rec) = self.get(&rec.id) else {
            return Ok(());
        };
        run::remove_leftovers(self, &mut rec)?;
        self.forget(&rec)?;
        lock(&self.pod_locks).remove(&rec.id);
        tracing::info!(pod = %rec.id, name = %rec.meta.reservation_key(), "removed pod sandbox");
        Ok(())
    }
}

// A poisoned lock means a panic mid-update of in-memory maps that the store can rebuild;
// carrying on beats taking the node's runtime down.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
pub(crate) fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}
pub(crate) fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}
