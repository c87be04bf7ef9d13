//! CreateContainer: the steps that touch the kernel, in order, each recorded so the undo knows
//! what to free. Synchronous: callers run it on a blocking thread.

use std::path::{Path, PathBuf};

use berth_registry::ImageConfig;
use berth_runtime::spec::{
    ImageDefaults, NsJoin, PidNs, PodContext, PodFilePaths, ResolvedUser, SpecInput,
};
use berth_runtime::{cgroup, rootfs, shim, spec, user};
use berth_shim_proto::{ShimConfig, PROTOCOL_VERSION};
use berth_store::ImageRecord;
use tonic::Status;

use super::record::{ContainerImage, ContainerRecord, ContainerState};
use super::validate::{ContainerRequest, PidMode};
use super::{lifecycle, name_key, ContainerManager};
use crate::edge::to_status;
use crate::sandbox::{PodRecord, PodState};
use crate::task::unix_nanos;

/// Creates the container; returns its ID and name key. On failure everything acquired so far
/// is released and the name is free again.
pub fn create(
    mgr: &ContainerManager,
    mut req: ContainerRequest,
) -> Result<(String, String), Status> {
    for (i, d) in req.spec.devices.iter_mut().enumerate() {
        d.nodes = spec::devices::device_nodes(&d.host_path, &d.container_path)
            .map_err(|e| Status::invalid_argument(format!("config.devices[{i}].host_path: {e}")))?;
    }
    if let Some(r) = &req.spec.resources {
        super::resources::check_supported("config.linux.resources", r, mgr.node())?;
    }
    let pod = mgr.pods().get(&req.pod_id)?;
    if pod.state != PodState::Ready {
        return Err(Status::failed_precondition(format!(
            "pod sandbox {} is not ready",
            pod.id
        )));
    }
    let image = mgr
        .images()
        .find(&req.image.image)
        .map_err(to_status)?
        .ok_or_else(|| Status::not_found(format!("image {:?} not found", req.image.image)))?;
    let config = mgr.images().config(&image).map_err(to_status)?;
    let defaults = image_defaults(&config);
    // containerd's "no privileged container allowed in sandbox": a pod that did not ask for
    // privileges was admitted (by the API server's pod security) without them.
    if req.spec.security.privileged && !pod.privileged {
        return Err(Status::invalid_argument(format!(
            "config.linux.security_context.privileged: pod sandbox {} is not privileged, so its containers may not be",
            pod.id
        )));
    }
    if req.spec.mounts.iter().any(|m| m.recursive_read_only) && !mgr.node().recursive_read_only {
        return Err(Status::invalid_argument(
            "config.mounts.recursive_read_only: this kernel has no mount_setattr(2) (Linux 5.12 or later is needed)",
        ));
    }
    let handler = mgr.handler(&pod.runtime_handler)?.clone();
    let pid_ns = pid_namespace(mgr, &pod, &req.pid_mode)?;
    let stop_signal = parse_signal(&defaults.stop_signal).ok_or_else(|| {
        Status::invalid_argument(format!(
            "image {}: STOPSIGNAL {:?} is not a signal",
            req.image.image, defaults.stop_signal
        ))
    })?;

    let key = name_key(&pod.id, &req.meta);
    let id = mgr.fresh_id();
    if let Some(existing) = mgr.reserve_name(&key, &id)? {
        return Ok((existing, key));
    }
    let log_path = (!req.log_path.as_os_str().is_empty() && !pod.log_directory.is_empty())
        .then(|| Path::new(&pod.log_directory).join(&req.log_path));
    let cgroups_path = format!(
        "{}/{}",
        pod.cgroup.as_deref().unwrap_or(cgroup::DEFAULT_PARENT),
        id
    );
    let mut rec = ContainerRecord {
        id: id.clone(),
        pod_id: pod.id.clone(),
        meta: req.meta.clone(),
        state: ContainerState::Creating,
        created_at: unix_nanos(),
        started_at: 0,
        finished_at: 0,
        exit_code: 0,
        reason: String::new(),
        message: String::new(),
        image: ContainerImage {
            requested: req.image.image.clone(),
            id: image.id.to_string(),
            image_ref: image
                .repo_digests
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.to_string()),
            annotations: req.image.annotations.clone().into_iter().collect(),
            runtime_handler: req.image.runtime_handler.clone(),
        },
        labels: req.labels.clone(),
        annotations: req.annotations.clone(),
        log_path,
        handler: handler.name.clone(),
        tty: req.spec.tty,
        stdin: req.spec.stdin,
        stdin_once: req.spec.stdin_once,
        mounts: req.spec.mounts.clone(),
        resources: req.spec.resources.clone(),
        user: ResolvedUser::default(),
        stop_signal,
        cgroups_path,
        paths: mgr.paths(&id),
        pid: 0,
        shim_pid: 0,
    };
    // The only durable write before the runtime is called: it names every path the steps
    // below may create, so a crash midway is undone from it at the next start.
    let result = mgr
        .persist(&rec)
        .and_then(|()| {
            acquire(
                mgr, &req, &pod, &image, &defaults, &handler, pid_ns, &mut rec,
            )
        })
        .and_then(|()| {
            rec.state = ContainerState::Created;
            mgr.persist(&rec)
        });
    match result {
        Ok(()) => {
            tracing::info!(container = %id, name = %key, pid = rec.pid, "container created");
            Ok((id, key))
        }
        Err(status) => {
            lifecycle::teardown(mgr, &rec);
            // Also frees the name.
            if let Err(e) = mgr.forget(&rec) {
                tracing::error!(container = %id, error = %e, "forgetting a failed container");
            }
            Err(status)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn acquire(
    mgr: &ContainerManager,
    req: &ContainerRequest,
    pod: &PodRecord,
    image: &ImageRecord,
    defaults: &ImageDefaults,
    handler: &berth_runtime::runc::Handler,
    pid_ns: PidNs,
    rec: &mut ContainerRecord,
) -> Result<(), Status> {
    let paths = rec.paths.clone();
    let rootfs_dir = paths.rootfs();
    for dir in [paths.upper(), paths.work(), rootfs_dir.clone()] {
        std::fs::create_dir_all(&dir)
            .map_err(|e| Status::internal(format!("creating {}: {e}", dir.display())))?;
    }
    let snapshots = mgr.images().snapshots();
    let mut lowers: Vec<PathBuf> = image
        .chain_ids
        .iter()
        .rev()
        .map(|c| snapshots.path(c))
        .collect();
    if lowers.is_empty() {
        let empty = paths.storage.join("empty");
        std::fs::create_dir_all(&empty)
            .map_err(|e| Status::internal(format!("creating {}: {e}", empty.display())))?;
        lowers.push(empty);
    }
    // Not recorded: teardown unmounts by path, so a crash right after the mount is covered.
    rootfs::mount_overlay(&lowers, &paths.upper(), &paths.work(), &rootfs_dir)
        .map_err(to_status)?;

    rec.user =
        user::resolve_user(&rootfs_dir, &req.spec.security, &defaults.user).map_err(to_status)?;
    let cwd = [req.spec.working_dir.as_str(), defaults.working_dir.as_str()]
        .into_iter()
        .find(|d| !d.is_empty())
        .unwrap_or("/");
    berth_sys::root::mkdir_all_in_root(&rootfs_dir, cwd, 0o755)
        .map_err(|e| Status::invalid_argument(format!("working_dir: {e}")))?;
    let volumes = image_volumes(&rootfs_dir, &paths.volumes(), defaults, req)?;

    let mut container = req.spec.clone();
    for (i, m) in container.mounts.iter_mut().enumerate() {
        m.host_path = host_mount_source(i, &m.host_path)?;
    }
    check_propagation(&container.mounts)?;
    let ctx = pod_context(pod, pid_ns, &rec.cgroups_path);
    // Only a privileged container sees the host's devices; /dev is read now, not at startup,
    // because it changes while berthd runs.
    let privileged_node;
    let node = if req.spec.security.privileged {
        let mut n = mgr.node().clone();
        n.host_devices = spec::devices::host_devices().map_err(to_status)?;
        privileged_node = n;
        &privileged_node
    } else {
        mgr.node()
    };
    let oci = spec::build_spec(&SpecInput {
        container: &container,
        image: defaults,
        pod: &ctx,
        user: &rec.user,
        rootfs: rootfs_dir.clone(),
        volumes,
        node,
    })
    .map_err(to_status)?;
    let data = serde_json::to_vec(&oci)
        .map_err(|e| Status::internal(format!("encoding the OCI spec: {e}")))?;
    berth_core::replace_file_volatile(&paths.config_json(), &data)
        .map_err(|e| Status::internal(format!("writing {}: {e}", paths.config_json().display())))?;

    if let Some(log) = &rec.log_path {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                Status::internal(format!("creating log directory {}: {e}", dir.display()))
            })?;
        }
    }
    let shim_config = ShimConfig {
        protocol: PROTOCOL_VERSION,
        id: rec.id.clone(),
        bundle: paths.bundle.clone(),
        runtime: handler.path.clone(),
        runtime_root: handler.root.clone(),
        runtime_log: paths.bundle.join("runc.log"),
        socket: paths.socket.clone(),
        console_socket: paths.console_socket.clone(),
        pid_file: paths.bundle.join("init.pid"),
        log_path: rec.log_path.clone(),
        exit_file: paths.exit_file.clone(),
        oom_file: cgroup::oom_events_file(&rec.cgroups_path),
        tty: rec.tty,
        stdin: rec.stdin,
        stdin_once: rec.stdin_once,
    };
    let spawned =
        shim::spawn(mgr.shim_bin(), &shim_config, &paths.shim_log()).map_err(to_status)?;
    rec.pid = spawned.pid;
    rec.shim_pid = spawned.shim_pid;
    // runc has set up the mounts but started nothing yet: the submounts of recursive read-only
    // binds become read-only before any process of the container can write to them. A failure
    // fails the create, and the caller's teardown deletes the container.
    let rro: Vec<String> = container
        .mounts
        .iter()
        .filter(|m| m.recursive_read_only)
        .map(|m| m.container_path.clone())
        .collect();
    let writable: Vec<String> = oci
        .mounts()
        .iter()
        .flatten()
        .filter(|m| {
            !m.options()
                .iter()
                .flatten()
                .any(|o| o == "ro" || o == "rro")
        })
        .map(|m| m.destination().to_string_lossy().into_owned())
        .collect();
    berth_runtime::mounts::make_recursive_read_only(rec.pid, &rro, &writable).map_err(to_status)?;
    Ok(())
}

/// containerd's `ensureShared` / `ensureSharedOrSlave`: a propagating mount whose host side
/// does not propagate would silently behave as a private one.
fn check_propagation(mounts: &[spec::MountSpec]) -> Result<(), Status> {
    if mounts
        .iter()
        .all(|m| m.propagation == spec::Propagation::Private)
    {
        return Ok(());
    }
    let host = berth_runtime::mounts::host_mounts().map_err(to_status)?;
    for (i, m) in mounts.iter().enumerate() {
        berth_runtime::mounts::check_propagation(
            &host,
            &m.host_path,
            m.propagation,
            &format!("config.mounts[{i}].propagation"),
        )
        .map_err(to_status)?;
    }
    Ok(())
}

/// The host side of a bind mount as runc gets it: created as a directory when missing and
/// symlinks resolved on the host, as containerd does (a hostPath volume's directory may not
/// exist yet on a fresh node).
fn host_mount_source(i: usize, path: &Path) -> Result<PathBuf, Status> {
    let field = || format!("config.mounts[{i}].host_path");
    match std::fs::symlink_metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path).map_err(|e| {
                Status::invalid_argument(format!("{}: creating {}: {e}", field(), path.display()))
            })?;
        }
        Err(e) => {
            return Err(Status::invalid_argument(format!(
                "{}: {}: {e}",
                field(),
                path.display()
            )))
        }
    }
    std::fs::canonicalize(path).map_err(|e| {
        Status::invalid_argument(format!("{}: resolving {}: {e}", field(), path.display()))
    })
}

/// The image's `VOLUME`s as empty directories of the container's own storage, each mounted at
/// its path (created inside the rootfs, never through a symlink out of it). A request mount
/// at the same path replaces the volume, as in containerd.
fn image_volumes(
    rootfs_dir: &Path,
    volumes_dir: &Path,
    defaults: &ImageDefaults,
    req: &ContainerRequest,
) -> Result<Vec<(String, PathBuf)>, Status> {
    let mut out = Vec::new();
    for (i, vol) in defaults.volumes.iter().enumerate() {
        let Some(rel) = super::validate::clean_relative(vol) else {
            continue;
        };
        let container_path = format!("/{}", rel.display());
        if container_path == "/"
            || req
                .spec
                .mounts
                .iter()
                .any(|m| m.container_path == container_path)
        {
            continue;
        }
        let host = volumes_dir.join(i.to_string());
        std::fs::create_dir_all(&host)
            .map_err(|e| Status::internal(format!("creating {}: {e}", host.display())))?;
        berth_sys::root::mkdir_all_in_root(rootfs_dir, &container_path, 0o755)
            .map_err(|e| Status::invalid_argument(format!("image volume {vol:?}: {e}")))?;
        out.push((container_path, host));
    }
    Ok(out)
}

fn pod_context(pod: &PodRecord, pid: PidNs, cgroups_path: &str) -> PodContext {
    let pinned = pod.pinned.clone().unwrap_or_default();
    let join = |host: bool, path: Option<PathBuf>| match (host, path) {
        (false, Some(p)) => NsJoin::Path(p),
        _ => NsJoin::Host,
    };
    PodContext {
        hostname: pod.hostname.clone(),
        network: join(pod.host.network, pinned.net.clone()),
        // The UTS namespace goes with the network one (see the sandbox module).
        uts: join(pod.host.network, pinned.uts.clone()),
        ipc: join(pod.host.ipc, pinned.ipc.clone()),
        pid,
        files: pod.files.as_ref().map(|f| PodFilePaths {
            hostname: f.hostname.clone(),
            hosts: f.hosts.clone(),
            resolv_conf: f.resolv_conf.clone(),
        }),
        shm: pod.shm.clone().unwrap_or_else(|| PathBuf::from("/dev/shm")),
        cgroups_path: cgroups_path.to_string(),
    }
}

fn pid_namespace(mgr: &ContainerManager, pod: &PodRecord, mode: &PidMode) -> Result<PidNs, Status> {
    Ok(match mode {
        PidMode::Node => PidNs::Host,
        _ if pod.host.pid => PidNs::Host,
        PidMode::Container => PidNs::Container,
        PidMode::Pod => match &pod.holder {
            Some(h) => PidNs::Path(h.pidns.clone()),
            None => {
                return Err(Status::failed_precondition(format!(
                    "pod sandbox {} does not share a PID namespace",
                    pod.id
                )))
            }
        },
        PidMode::Target(target) => {
            let t = mgr.get(target).map_err(|s| {
                if s.code() == tonic::Code::NotFound {
                    Status::not_found(format!(
                        "config.linux.security_context.namespace_options.target_id: container {target} not found"
                    ))
                } else {
                    s
                }
            })?;
            // containerd's `validateTargetContainer`: only a container of the same pod.
            if t.pod_id != pod.id {
                return Err(Status::invalid_argument(format!(
                    "config.linux.security_context.namespace_options.target_id: container {target} belongs to another pod sandbox"
                )));
            }
            if t.state != ContainerState::Running && t.state != ContainerState::Created {
                return Err(Status::failed_precondition(format!(
                    "target container {target} is not running"
                )));
            }
            PidNs::Path(PathBuf::from(format!("/proc/{}/ns/pid", t.pid)))
        }
    })
}

pub(crate) fn image_defaults(config: &ImageConfig) -> ImageDefaults {
    let c = &config.config;
    let mut volumes: Vec<String> = c.volumes.keys().cloned().collect();
    volumes.sort();
    ImageDefaults {
        entrypoint: c.entrypoint.clone().unwrap_or_default(),
        cmd: c.cmd.clone().unwrap_or_default(),
        env: c.env.clone(),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        user: c.user.clone().unwrap_or_default(),
        volumes,
        stop_signal: c.stop_signal.clone().unwrap_or_default(),
    }
}

/// `SIGTERM`, `TERM`, `15` → 15; empty → SIGTERM.
pub(crate) fn parse_signal(s: &str) -> Option<i32> {
    let s = s.trim();
    if s.is_empty() {
        return Some(libc::SIGTERM);
    }
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|sig| sig as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals_parse_in_every_spelling() {
        assert_eq!(parse_signal(""), Some(15));
        assert_eq!(parse_signal("SIGTERM"), Some(15));
        assert_eq!(parse_signal("term"), Some(15));
        assert_eq!(parse_signal("SIGKILL"), Some(9));
        assert_eq!(parse_signal("2"), Some(2));
        assert_eq!(parse_signal("SIGFLY"), None);
        assert_eq!(parse_signal("99"), None);
    }
}
