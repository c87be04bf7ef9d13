//! StartContainer, StopContainer, RemoveContainer, the teardown they share with a failed
//! CreateContainer, and recovery after a daemon restart. Synchronous: callers run them on a
//! blocking thread.

use std::time::Duration;

use berth_runtime::{rootfs, shim};
use berth_shim_proto::{Request, Status as ShimStatus};
use tonic::Status;

use super::record::{ContainerRecord, ContainerState};
use super::{name_key, ContainerManager};
use crate::edge::to_status;
use crate::sandbox::lock;
use crate::task::unix_nanos;

/// Exit code recorded for a container whose shim vanished without writing an exit file.
const UNKNOWN_EXIT: i32 = 255;

pub fn start(mgr: &ContainerManager, id: &str) -> Result<(), Status> {
    let rec = mgr.get(id)?;
    let guard = mgr.op_lock(&rec.id);
    let _held = lock(&guard);
    let rec = mgr.get(&rec.id)?;
    match rec.state {
        ContainerState::Created => {}
        ContainerState::Creating => {
            return Err(Status::failed_precondition(format!(
                "container {} is still being created",
                rec.id
            )))
        }
        ContainerState::Running => {
            return Err(Status::failed_precondition(format!(
                "container {} is already running",
                rec.id
            )))
        }
        ContainerState::Exited => {
            return Err(Status::failed_precondition(format!(
                "container {} has exited; create a new one",
                rec.id
            )))
        }
    }
    let state = match shim::call(&rec.id, &rec.paths.socket, &Request::Start) {
        Ok(s) => s,
        Err(berth_runtime::Error::ShimGone { .. }) => {
            settle_without_shim(mgr, &rec);
            return Err(Status::failed_precondition(format!(
                "container {} is no longer alive (its shim is gone)",
                rec.id
            )));
        }
        Err(e) => return Err(to_status(e)),
    };
    mgr.update(&rec.id, |r| {
        // An exit recorded meanwhile (a process that ends at once) stays recorded.
        if r.state == ContainerState::Created {
            r.state = ContainerState::Running;
        }
        r.started_at = state.started_at;
    });
    mgr.announce(
        &rec.id,
        &rec.pod_id,
        k8s_cri::v1::ContainerEventType::ContainerStartedEvent,
    );
    if let Some(exit) = state.exit {
        mgr.apply_exit(&rec.id, &exit);
    }
    Ok(())
}

/// Stops a running container: its stop signal, SIGKILL after `timeout`, back as soon as it is
/// gone. Unknown, created-but-never-started and exited containers are left as they are (kubelet
/// retries stops, and a created container only ends through RemoveContainer).
pub fn stop(mgr: &ContainerManager, id: &str, timeout: Duration) -> Result<(), Status> {
    if_known(mgr, id, |rec| {
        if rec.state != ContainerState::Running {
            return Ok(());
        }
        kill_and_wait(mgr, &rec, rec.stop_signal, timeout)
    })
}

/// Runs `f` under the container's operation lock with its record as it is once the lock is
/// held. A container that is unknown, or gone by then, is success: kubelet retries stops and
/// removes, so both must be idempotent.
fn if_known(
    mgr: &ContainerManager,
    id: &str,
    f: impl FnOnce(ContainerRecord) -> Result<(), Status>,
) -> Result<(), Status> {
    let rec = match mgr.get(id) {
        Ok(r) => r,
        Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
        Err(s) => return Err(s),
    };
    let guard = mgr.op_lock(&rec.id);
    let _held = lock(&guard);
    match mgr.get(&rec.id) {
        Ok(rec) => f(rec),
        Err(_) => Ok(()),
    }
}

/// Ends the container's process through its shim (which escalates to SIGKILL itself) and
/// records the exit.
fn kill_and_wait(
    mgr: &ContainerManager,
    rec: &ContainerRecord,
    signal: i32,
    timeout: Duration,
) -> Result<(), Status> {
    let req = Request::Stop {
        signal,
        timeout_ms: timeout.as_millis().min(u128::from(u64::MAX)) as u64,
    };
    match shim::call(&rec.id, &rec.paths.socket, &req) {
        Ok(state) => {
            match state.exit {
                Some(exit) => {
                    mgr.apply_exit(&rec.id, &exit);
                }
                None if state.status != ShimStatus::Exited => {
                    return Err(Status::deadline_exceeded(format!(
                        "container {} did not exit after SIGKILL",
                        rec.id
                    )))
                }
                None => {}
            }
            Ok(())
        }
        Err(berth_runtime::Error::ShimGone { .. }) => {
            settle_without_shim(mgr, rec);
            Ok(())
        }
        Err(e) => Err(to_status(e)),
    }
}

/// The shim is gone: its exit file says how the container ended; without one (the shim died,
/// or the node rebooted) whatever is left of the container is killed and the exit is unknown.
pub(crate) fn settle_without_shim(mgr: &ContainerManager, rec: &ContainerRecord) {
    match shim::read_exit(&rec.paths.exit_file) {
        Ok(Some(exit)) => {
            mgr.apply_exit(&rec.id, &exit);
        }
        _ => {
            if let Ok(h) = mgr.handler(&rec.handler) {
                if let Err(e) = h.delete_force(&rec.id) {
                    tracing::warn!(container = %rec.id, error = %e, "deleting a container whose shim vanished");
                }
            }
            tracing::warn!(container = %rec.id, "container shim vanished without an exit record");
            mgr.update(&rec.id, |r| {
                if r.state != ContainerState::Exited {
                    r.state = ContainerState::Exited;
                    r.exit_code = UNKNOWN_EXIT;
                    r.finished_at = unix_nanos();
                    r.reason = "Unknown".into();
                    r.message =
                        "the container's shim exited without recording an exit status".into();
                }
            });
        }
    }
}

/// Removes the container, killing it first if it still runs (or was never started). Unknown
/// containers are not an error.
pub fn remove(mgr: &ContainerManager, id: &str) -> Result<(), Status> {
    if_known(mgr, id, |rec| {
        if matches!(rec.state, ContainerState::Created | ContainerState::Running) {
            kill_and_wait(mgr, &rec, libc::SIGKILL, Duration::ZERO)?;
        }
        let rec = mgr.get(&rec.id)?;
        // The CRI log stays: kubelet owns log files and removes them with the pod.
        teardown(mgr, &rec);
        mgr.forget(&rec)?;
        mgr.announce(
            &rec.id,
            &rec.pod_id,
            k8s_cri::v1::ContainerEventType::ContainerDeletedEvent,
        );
        tracing::info!(container = %rec.id, name = %name_key(&rec.pod_id, &rec.meta), "removed container");
        Ok(())
    })
}

/// Releases everything a container holds, by the paths derived from its ID (so it also cleans
/// what a crash left unrecorded): the runtime's state and cgroup, the rootfs mount, the bundle,
/// the upper dir, sockets and the exit file. Best effort: each failure is logged and the rest
/// still runs.
pub(crate) fn teardown(mgr: &ContainerManager, rec: &ContainerRecord) {
    let paths = &rec.paths;
    if let Ok(h) = mgr.handler(&rec.handler) {
        // A shim that recorded an exit has run `runc delete` itself; a process spawn saved is
        // a third of RemoveContainer.
        if h.knows(&rec.id) {
            if let Err(e) = h.delete_force(&rec.id) {
                tracing::warn!(container = %rec.id, error = %e, "runtime delete");
            }
        }
    }
    if let Err(e) = rootfs::unmount_all(&paths.rootfs()) {
        tracing::warn!(container = %rec.id, error = %e, "unmounting rootfs");
    }
    for dir in [&paths.bundle, &paths.storage] {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(container = %rec.id, path = %dir.display(), error = %e, "removing container directory")
            }
        }
    }
    for file in [&paths.socket, &paths.console_socket, &paths.exit_file] {
        let _ = std::fs::remove_file(file);
    }
}

/// Stops every container of a pod right away (StopPodSandbox stops its processes), returning
/// the first failure after trying all.
pub fn stop_all_in_pod(mgr: &ContainerManager, pod_id: &str) -> Result<(), Status> {
    let mut first = None;
    for c in mgr.in_pod(pod_id) {
        if let Err(e) = stop(mgr, &c.id, Duration::ZERO) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

pub fn remove_all_in_pod(mgr: &ContainerManager, pod_id: &str) -> Result<(), Status> {
    let mut first = None;
    for c in mgr.in_pod(pod_id) {
        if let Err(e) = remove(mgr, &c.id) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// After a restart: half-created containers are torn down, live shims are asked where their
/// containers are, and containers whose shim finished meanwhile get the exit it recorded.
pub(crate) fn recover(mgr: &ContainerManager) -> Result<(), Status> {
    let records = mgr
        .store
        .list::<ContainerRecord>(berth_store::Bucket::Containers)
        .map_err(to_status)?;
    let mut live = std::collections::HashSet::new();
    for (_, rec) in records {
        if rec.state == ContainerState::Creating {
            tracing::warn!(container = %rec.id, "cleaning up a container whose creation was interrupted");
            if rec.paths.socket.exists() {
                let _ = shim::call(
                    &rec.id,
                    &rec.paths.socket,
                    &Request::Stop {
                        signal: libc::SIGKILL,
                        timeout_ms: 0,
                    },
                );
            }
            teardown(mgr, &rec);
            let _ = mgr.store.delete(berth_store::Bucket::Containers, &rec.id);
            continue;
        }
        live.insert(rec.id.clone());
        lock(&mgr.names).insert(name_key(&rec.pod_id, &rec.meta), rec.id.clone());
        super::write(&mgr.containers).insert(rec.id.clone(), rec.clone());
        if rec.state == ContainerState::Exited {
            continue;
        }
        if let Ok(Some(exit)) = shim::read_exit(&rec.paths.exit_file) {
            mgr.apply_exit(&rec.id, &exit);
            continue;
        }
        match shim::call(&rec.id, &rec.paths.socket, &Request::State) {
            Ok(state) => {
                mgr.update(&rec.id, |r| {
                    if state.status == ShimStatus::Running && r.state == ContainerState::Created {
                        r.state = ContainerState::Running;
                        r.started_at = state.started_at;
                    }
                    r.pid = state.pid;
                });
                if let Some(exit) = state.exit {
                    mgr.apply_exit(&rec.id, &exit);
                }
                tracing::info!(container = %rec.id, pid = state.pid, "reconnected to container shim");
            }
            Err(_) => settle_without_shim(mgr, &rec),
        }
    }
    // Exit files of containers that were removed while their shim finished.
    if let Ok(dir) = std::fs::read_dir(mgr.exits_dir()) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !live.contains(&name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}
