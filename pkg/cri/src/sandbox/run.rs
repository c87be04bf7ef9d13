//! The steps of a pod's life that touch the kernel. Synchronous: callers run them on a blocking
//! thread.

use std::time::Duration;

use berth_network::PodNetworkRequest;
use berth_runtime::{cgroup, holder, podfiles, shm};
use berth_sys::ns::{self, NsKind};
use k8s_cri::v1;
use tonic::Status;

use super::record::{PodRecord, PodState};
use super::validate::PodSpec;
use super::{lock, PodManager};
use crate::edge::to_status;
use crate::task::{new_id, unix_nanos};

const HOLDER_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Creates the pod. On failure everything acquired so far is released and the name is free.
pub fn run_pod(mgr: &PodManager, spec: PodSpec) -> Result<String, Status> {
    // setup() checks these again; checking first keeps a conflict from costing a durable write.
    if !spec.host.network {
        mgr.network
            .validate_port_mappings(&spec.ports)
            .map_err(to_status)?;
    }
    let key = spec.meta.reservation_key();
    let id = new_id();
    {
        let mut names = lock(&mgr.names);
        if let Some(holder) = names.get(&key) {
            if lock(&mgr.unclaimed).remove(&key).as_ref() == Some(holder) {
                tracing::info!(pod = %holder, name = %key, "handing a pod created after its caller left to the retry");
                return Ok(holder.clone());
            }
            return Err(Status::already_exists(format!(
                "pod sandbox name {key:?} is already reserved for {holder}"
            )));
        }
        names.insert(key.clone(), id.clone());
    }
    let mut rec = PodRecord {
        id: id.clone(),
        meta: spec.meta.clone(),
        state: PodState::Creating,
        created_at: unix_nanos(),
        labels: spec.labels.clone(),
        annotations: spec.annotations.clone(),
        runtime_handler: spec.runtime_handler.clone(),
        hostname: spec.hostname.clone(),
        log_directory: spec.log_directory.clone(),
        host: spec.host,
        shared_pid: spec.shared_pid,
        ns_dir: mgr.ns_dir(&id),
        files_dir: mgr.files_dir(&id),
        pinned: None,
        cgroup: None,
        network: None,
        files: None,
        holder: None,
        sysctls: spec.sysctls.clone(),
        shm: None,
        privileged: spec.privileged,
    };
    // The Creating record names everything the steps below may create (all paths derive from
    // the ID), so it is the only write before Ready: a crash midway is undone from it at the next
    // start, and the network layer releases leases and rules of pods that are not live.
    let result = cgroup::pod_cgroup_path(cgroup_parent(mgr, &spec), &id)
        .map_err(to_status)
        .and_then(|path| {
            rec.cgroup = Some(path);
            rec.pinned = Some(Default::default());
            mgr.persist(&rec)
        })
        .and_then(|()| acquire(mgr, &spec, &mut rec));
    match result {
        Ok(()) => {
            rec.state = PodState::Ready;
            mgr.persist(&rec)?;
            tracing::info!(pod = %id, name = %key, ip = ?rec.network.as_ref().map(|n| n.ip), "pod sandbox ready");
            Ok(id)
        }
        Err(status) => {
            undo_all(mgr, &mut rec);
            if let Err(e) = mgr.forget(&rec) {
                tracing::error!(pod = %id, error = %e, "forgetting a failed pod");
            }
            Err(status)
        }
    }
}

fn cgroup_parent<'a>(mgr: &'a PodManager, spec: &'a PodSpec) -> &'a str {
    if spec.cgroup_parent.is_empty() {
        &mgr.cgroup_root
    } else {
        &spec.cgroup_parent
    }
}

/// Acquires each resource and records it in `rec` right away, so `undo_all` knows what to free.
fn acquire(mgr: &PodManager, spec: &PodSpec, rec: &mut PodRecord) -> Result<(), Status> {
    let mut kinds = Vec::new();
    if !spec.host.network {
        // The UTS namespace goes with the network one, as in Kubernetes: a host-network pod
        // sees the node's hostname.
        kinds.push(NsKind::Net);
        kinds.push(NsKind::Uts);
    }
    if !spec.host.ipc {
        kinds.push(NsKind::Ipc);
    }
    let hostname = (!spec.host.network).then_some(spec.hostname.as_str());
    rec.pinned =
        Some(ns::pin_namespaces(&rec.ns_dir, &kinds, hostname, &spec.sysctls).map_err(to_status)?);
    let pinned = rec.pinned.clone().unwrap_or_default();

    let parent = cgroup_parent(mgr, spec);
    rec.cgroup = Some(cgroup::create_pod_cgroup(parent, &rec.id, None).map_err(to_status)?);

    let dns = spec.dns.as_ref().map(|d| podfiles::DnsConfig {
        servers: d.servers.clone(),
        searches: d.searches.clone(),
        options: d.options.clone(),
    });
    if let Some(netns) = pinned.net.as_ref() {
        let net = mgr
            .network
            .setup(&PodNetworkRequest {
                pod_id: rec.id.clone(),
                name: spec.meta.name.clone(),
                namespace: spec.meta.namespace.clone(),
                uid: spec.meta.uid.clone(),
                netns: netns.clone(),
                port_mappings: spec.ports.clone(),
                dns: dns.as_ref().map(|d| berth_network::DnsConfig {
                    servers: d.servers.clone(),
                    searches: d.searches.clone(),
                    options: d.options.clone(),
                }),
                cgroup_parent: rec.cgroup.clone().unwrap_or_default(),
            })
            .map_err(to_status)?;
        rec.network = Some(net);
    }

    let pod_ips: Vec<std::net::IpAddr> = rec.network.iter().map(|n| n.ip).collect();
    rec.files = Some(
        podfiles::write_pod_files(
            &rec.files_dir,
            &spec.hostname,
            dns.as_ref(),
            spec.host.network,
            &pod_ips,
        )
        .map_err(to_status)?,
    );

    if !spec.host.ipc {
        let dir = rec.files_dir.join("shm");
        shm::mount_pod_shm(&dir, shm::DEFAULT_SHM_BYTES).map_err(to_status)?;
        rec.shm = Some(dir);
    }

    if spec.shared_pid && !spec.host.pid {
        let infra = rec
            .cgroup
            .as_deref()
            .map(cgroup::infra_cgroup)
            .transpose()
            .map_err(to_status)?;
        rec.holder = Some(
            holder::spawn_holder(mgr.shim_bin(), &rec.ns_dir, &pinned, infra.as_deref())
                .map_err(to_status)?,
        );
    }
    Ok(())
}

/// Releases whatever `rec` says is held, in reverse order of acquisition. Best effort: each
/// failure is logged and the rest still runs.
pub fn undo_all(mgr: &PodManager, rec: &mut PodRecord) {
    let _ = stop_pod(mgr, rec);
    // A holder spawned just before a crash is not in the record, but it is in the pod cgroup.
    if let Some(cg) = &rec.cgroup {
        for pid in cgroup::cgroup_procs(cg).unwrap_or_default() {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    if let Err(e) = remove_leftovers(mgr, rec) {
        tracing::warn!(pod = %rec.id, error = %e.message(), "cleaning up a failed pod");
    }
}

/// Stops a pod: holder, network, namespaces. Returns the first failure but tries every step;
/// what could not be released stays in the record so a retried StopPodSandbox finishes it.
pub fn stop_pod(mgr: &PodManager, rec: &mut PodRecord) -> Result<(), Status> {
    let mut errors: Vec<(&str, Status)> = Vec::new();
    if let Some(h) = rec.holder.clone() {
        match holder::stop_holder(&h, HOLDER_STOP_TIMEOUT) {
            Ok(()) => rec.holder = None,
            Err(e) => errors.push(("holder", to_status(e))),
        }
    }
    if let Some(net) = rec.network.clone() {
        let netns = rec.pinned.as_ref().and_then(|p| p.net.clone());
        match mgr.network.teardown(&rec.id, netns.as_deref(), &net) {
            Ok(()) => rec.network = None,
            Err(e) => errors.push(("network", to_status(e))),
        }
    }
    if let Some(dir) = rec.shm.clone() {
        match shm::unmount_pod_shm(&dir) {
            Ok(()) => rec.shm = None,
            Err(e) => errors.push(("shm", to_status(e))),
        }
    }
    if rec.pinned.is_some() {
        match ns::unpin(&rec.ns_dir) {
            Ok(()) => rec.pinned = None,
            Err(e) => errors.push(("namespaces", to_status(e))),
        }
    }
    if rec.state != PodState::Creating {
        rec.state = PodState::NotReady;
    }
    for (step, e) in &errors {
        tracing::error!(pod = %rec.id, step, error = %e.message(), "stop step failed");
    }
    match errors.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// What stays after stop and goes with remove: the cgroup and the pod's files.
pub fn remove_leftovers(_mgr: &PodManager, rec: &mut PodRecord) -> Result<(), Status> {
    if let Some(cg) = rec.cgroup.clone() {
        cgroup::remove_pod_cgroup(&cg).map_err(to_status)?;
        rec.cgroup = None;
    }
    // By path, not by `rec.shm`: a crash between the mount and the record leaves it unnamed.
    shm::unmount_pod_shm(&rec.files_dir.join("shm")).map_err(to_status)?;
    rec.shm = None;
    match std::fs::remove_dir_all(&rec.files_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Status::internal(format!(
                "removing {}: {e}",
                rec.files_dir.display()
            )))
        }
    }
    rec.files = None;
    Ok(())
}

/// After a reboot `/run` is empty: a Ready record whose pinned namespaces are gone is a pod
/// that no longer exists on the node.
pub fn namespaces_alive(rec: &PodRecord) -> bool {
    match &rec.pinned {
        Some(p) => [&p.net, &p.ipc, &p.uts]
            .into_iter()
            .flatten()
            .all(|path| ns::is_pinned(path)),
        None => rec.host.network && rec.host.ipc,
    }
}

pub fn status_info(mgr: &PodManager, rec: &PodRecord) -> serde_json::Value {
    let network = match (
        &rec.network,
        rec.pinned.as_ref().and_then(|p| p.net.as_ref()),
    ) {
        (Some(net), Some(netns)) => mgr.network.debug_view(&rec.id, netns, net),
        _ => serde_json::Value::Null,
    };
    serde_json::json!({
        "pid": rec.holder.as_ref().map(|h| h.pid),
        "namespaces": rec.pinned,
        "cgroupPath": rec.cgroup,
        "hostname": rec.hostname,
        "files": rec.files,
        "sysctls": rec.sysctls,
        "runtimeHandler": rec.runtime_handler,
        "network": network,
        "config": {
            "metadata": rec.meta.to_cri(),
            "logDirectory": rec.log_directory,
        }
    })
}

pub fn cri_network_status(rec: &PodRecord) -> Option<v1::PodSandboxNetworkStatus> {
    rec.network.as_ref().map(|n| v1::PodSandboxNetworkStatus {
        ip: n.ip.to_string(),
        additional_ips: Vec::new(),
    })
}
