//! UpdateContainerResources: new limits for a created or running container, through
//! `runc update`, kept in the record and the bundle's spec so they survive a daemon restart
//! and show in ContainerStatus.

use berth_runtime::spec::{self, NodeFacts, ResourcesSpec};
use k8s_cri::v1;
use tonic::Status;

use super::record::ContainerState;
use super::{validate, ContainerManager};
use crate::edge::{invalid, to_status};
use crate::runtime::RuntimeApi;
use crate::sandbox::lock;
use crate::task::blocking;

/// Limits this node cannot apply are refused by name here, before runc would refuse them with
/// a message about its own configuration.
pub(super) fn check_supported(
    field: &str,
    r: &ResourcesSpec,
    node: &NodeFacts,
) -> Result<(), Status> {
    if !r.unified.is_empty() && !node.cgroup_v2 {
        return Err(invalid(
            &format!("{field}.unified"),
            "cgroup v2 keys were given but this node runs cgroup v1",
        ));
    }
    Ok(())
}

fn update(mgr: &ContainerManager, id: &str, wanted: ResourcesSpec) -> Result<(), Status> {
    let rec = mgr.get(id)?;
    let guard = mgr.op_lock(&rec.id);
    let _held = lock(&guard);
    let rec = mgr.get(&rec.id)?;
    if !matches!(rec.state, ContainerState::Created | ContainerState::Running) {
        return Err(Status::failed_precondition(format!(
            "container {} is not running; only a created or running container's resources can change",
            rec.id
        )));
    }
    // oom_score_adj belongs to the process, not the cgroup: it stays as created.
    let wanted = ResourcesSpec {
        oom_score_adj: rec.resources.as_ref().and_then(|r| r.oom_score_adj),
        ..wanted
    };
    let mut oci = spec::resources(Some(&wanted), mgr.node(), Vec::new()).map_err(to_status)?;
    // The device rules were set at create; an update must not reset them.
    oci.set_devices(None);
    let handler = mgr.handler(&rec.handler)?;
    handler.update(&rec.id, &oci).map_err(to_status)?;
    match serde_json::to_value(&oci) {
        Ok(json) => rewrite_spec_resources(&rec.paths.config_json(), json),
        Err(e) => tracing::warn!(container = %rec.id, error = %e, "encoding resources"),
    }
    let mut updated = rec.clone();
    updated.resources = Some(wanted);
    mgr.persist(&updated)?;
    tracing::info!(container = %rec.id, "updated container resources");
    Ok(())
}

/// Keeps the bundle's `config.json` in step (verbose ContainerStatus shows it). Best effort: the
/// cgroup and the record are what count.
fn rewrite_spec_resources(path: &std::path::Path, mut resources: serde_json::Value) {
    let result = (|| -> Result<(), String> {
        let data = std::fs::read(path).map_err(|e| e.to_string())?;
        let mut spec: serde_json::Value =
            serde_json::from_slice(&data).map_err(|e| e.to_string())?;
        let devices = spec["linux"]["resources"]["devices"].take();
        if let Some(obj) = resources.as_object_mut() {
            obj.insert("devices".into(), devices);
        }
        spec["linux"]["resources"] = resources;
        let data = serde_json::to_vec(&spec).map_err(|e| e.to_string())?;
        berth_core::replace_file_volatile(path, &data).map_err(|e| e.to_string())
    })();
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "updating the bundle's resources");
    }
}

impl RuntimeApi {
    pub(crate) async fn update_container_resources(
        &self,
        req: v1::UpdateContainerResourcesRequest,
    ) -> Result<v1::UpdateContainerResourcesResponse, Status> {
        if req.container_id.is_empty() {
            return Err(invalid("container_id", "must name a container"));
        }
        let Some(linux) = req.linux.as_ref() else {
            return Err(invalid(
                "linux",
                "Linux resources are required (Windows resources do not apply here)",
            ));
        };
        let wanted = validate::resources(linux, "linux")?;
        check_supported("linux", &wanted, self.containers.node())?;
        let id = req.container_id;
        blocking(&self.containers, move |m| update(m, &id, wanted)).await?;
        Ok(v1::UpdateContainerResourcesResponse {})
    }
}
