//! The container RPCs: request checks on the async side, kernel and shim work on a blocking
//! thread.

use std::collections::HashMap;
use std::time::Duration;

use k8s_cri::v1;
use tonic::Status;

use super::record::ContainerRecord;
use super::{create, exec, lifecycle, lock, validate, ContainerManager};
use crate::runtime::RuntimeApi;
use crate::task::{blocking, CallerPresent};

fn matches_filter(c: &ContainerRecord, f: &v1::ContainerFilter) -> bool {
    if !f.id.is_empty() && !c.id.starts_with(&f.id) {
        return false;
    }
    if !f.pod_sandbox_id.is_empty() && !c.pod_id.starts_with(&f.pod_sandbox_id) {
        return false;
    }
    if let Some(state) = &f.state {
        if c.cri_state() != state.state {
            return false;
        }
    }
    f.label_selector
        .iter()
        .all(|(k, v)| c.labels.get(k) == Some(v))
}

/// What `ContainerStatus` with `verbose` adds, in containerd's key names where it has them.
fn verbose_info(rec: &ContainerRecord) -> HashMap<String, String> {
    let spec: serde_json::Value = std::fs::read(rec.paths.config_json())
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok())
        .unwrap_or(serde_json::Value::Null);
    let security = effective_security(&spec);
    let info = serde_json::json!({
        "sandboxID": rec.pod_id,
        "pid": rec.pid,
        "shimPid": rec.shim_pid,
        "runtimeHandler": rec.handler,
        "bundle": rec.paths.bundle,
        "rootfs": rec.paths.rootfs(),
        "upperDir": rec.paths.upper(),
        "cgroupsPath": rec.cgroups_path,
        "stopSignal": rec.stop_signal,
        "user": rec.user,
        "effectiveSecurityContext": security,
        "runtimeSpec": spec,
    });
    HashMap::from([("info".to_string(), info.to_string())])
}

/// What the container's process really runs with, read back from its OCI spec: the answer to
/// "what did my securityContext turn into" without reading the whole spec.
fn effective_security(spec: &serde_json::Value) -> serde_json::Value {
    let process = &spec["process"];
    let linux = &spec["linux"];
    let seccomp = match linux.get("seccomp") {
        None | Some(serde_json::Value::Null) => serde_json::json!("unconfined"),
        Some(s) => serde_json::json!({
            "defaultAction": s["defaultAction"],
            "rules": s["syscalls"].as_array().map_or(0, Vec::len),
        }),
    };
    serde_json::json!({
        "user": process["user"],
        "capabilities": process["capabilities"],
        "noNewPrivileges": process["noNewPrivileges"].as_bool().unwrap_or(false),
        "seccomp": seccomp,
        "apparmorProfile": process["apparmorProfile"],
        "readonlyRootfs": spec["root"]["readonly"].as_bool().unwrap_or(false),
        "maskedPaths": linux["maskedPaths"],
        "readonlyPaths": linux["readonlyPaths"],
        "namespaces": linux["namespaces"],
    })
}

impl RuntimeApi {
    pub(crate) async fn create_container(
        &self,
        req: v1::CreateContainerRequest,
    ) -> Result<v1::CreateContainerResponse, Status> {
        let req = validate::container_request(req)?;
        // Cleared if tonic drops this future (the client gave up) before the container is
        // handed over; the retry then receives it instead of ALREADY_EXISTS.
        let caller = CallerPresent::default();
        let present = caller.flag();
        let container_id = blocking(&self.containers, move |m: &ContainerManager| {
            let (id, key) = create::create(m, req)?;
            if !present.still_waiting() {
                lock(&m.unclaimed).insert(key, id.clone());
            }
            if let Ok(rec) = m.get(&id) {
                m.announce(
                    &id,
                    &rec.pod_id,
                    v1::ContainerEventType::ContainerCreatedEvent,
                );
            }
            Ok(id)
        })
        .await?;
        // The flag was read inside the closure, which has finished: dropping now changes nothing.
        drop(caller);
        Ok(v1::CreateContainerResponse { container_id })
    }

    pub(crate) async fn start_container(
        &self,
        req: v1::StartContainerRequest,
    ) -> Result<v1::StartContainerResponse, Status> {
        blocking(&self.containers, move |m| {
            lifecycle::start(m, &req.container_id)
        })
        .await?;
        Ok(v1::StartContainerResponse {})
    }

    pub(crate) async fn stop_container(
        &self,
        req: v1::StopContainerRequest,
    ) -> Result<v1::StopContainerResponse, Status> {
        let timeout = Duration::from_secs(req.timeout.max(0) as u64);
        blocking(&self.containers, move |m| {
            lifecycle::stop(m, &req.container_id, timeout)
        })
        .await?;
        Ok(v1::StopContainerResponse {})
    }

    pub(crate) async fn remove_container(
        &self,
        req: v1::RemoveContainerRequest,
    ) -> Result<v1::RemoveContainerResponse, Status> {
        blocking(&self.containers, move |m| {
            lifecycle::remove(m, &req.container_id)
        })
        .await?;
        Ok(v1::RemoveContainerResponse {})
    }

    pub(crate) async fn list_containers(
        &self,
        req: v1::ListContainersRequest,
    ) -> Result<v1::ListContainersResponse, Status> {
        let containers = self
            .containers
            .list()
            .iter()
            .filter(|c| req.filter.as_ref().is_none_or(|f| matches_filter(c, f)))
            .map(ContainerRecord::to_cri)
            .collect();
        Ok(v1::ListContainersResponse { containers })
    }

    pub(crate) async fn container_status(
        &self,
        req: v1::ContainerStatusRequest,
    ) -> Result<v1::ContainerStatusResponse, Status> {
        let rec = self.containers.get(&req.container_id)?;
        let info = if req.verbose {
            let r = rec.clone();
            blocking(&self.containers, move |_| Ok(verbose_info(&r))).await?
        } else {
            HashMap::new()
        };
        Ok(v1::ContainerStatusResponse {
            status: Some(rec.to_cri_status()),
            info,
        })
    }

    pub(crate) async fn exec_sync(
        &self,
        req: v1::ExecSyncRequest,
    ) -> Result<v1::ExecSyncResponse, Status> {
        blocking(&self.containers, move |m| exec::exec_sync(m, req)).await
    }

    pub(crate) async fn reopen_container_log(
        &self,
        req: v1::ReopenContainerLogRequest,
    ) -> Result<v1::ReopenContainerLogResponse, Status> {
        blocking(&self.containers, move |m| {
            exec::reopen_log(m, &req.container_id)
        })
        .await?;
        Ok(v1::ReopenContainerLogResponse {})
    }
}
