//! The sandbox RPCs: request checks on the async side, kernel work on a blocking thread.

use k8s_cri::v1;
use tonic::Status;

use super::{run, validate, PodRecord};
use crate::container::ContainerRecord;
use crate::runtime::RuntimeApi;
use crate::task::{blocking, CallerPresent};

fn matches_filter(p: &PodRecord, f: &v1::PodSandboxFilter) -> bool {
    if !f.id.is_empty() && !p.id.starts_with(&f.id) {
        return false;
    }
    if let Some(state) = &f.state {
        if p.cri_state() != state.state {
            return false;
        }
    }
    f.label_selector
        .iter()
        .all(|(k, v)| p.labels.get(k) == Some(v))
}

impl RuntimeApi {
    pub(crate) async fn run_pod_sandbox(
        &self,
        req: v1::RunPodSandboxRequest,
    ) -> Result<v1::RunPodSandboxResponse, Status> {
        let spec = validate::pod_spec(req, &self.pods.handlers)?;
        let key = spec.meta.reservation_key();
        // Cleared if tonic drops this future (the client gave up) before the pod is handed over.
        let caller = CallerPresent::default();
        let present = caller.flag();
        let pod_sandbox_id = blocking(&self.pods, move |m| {
            let id = run::run_pod(m, spec)?;
            if !present.still_waiting() {
                super::lock(&m.unclaimed).insert(key, id.clone());
            }
            Ok(id)
        })
        .await?;
        // The flag was read inside the closure, which has finished: dropping now changes nothing.
        drop(caller);
        // Pod events carry the pod's ID as the container ID, as containerd's do.
        for kind in [
            v1::ContainerEventType::ContainerCreatedEvent,
            v1::ContainerEventType::ContainerStartedEvent,
        ] {
            self.containers
                .announce(&pod_sandbox_id, &pod_sandbox_id, kind);
        }
        Ok(v1::RunPodSandboxResponse { pod_sandbox_id })
    }

    pub(crate) async fn stop_pod_sandbox(
        &self,
        req: v1::StopPodSandboxRequest,
    ) -> Result<v1::StopPodSandboxResponse, Status> {
        let id = req.pod_sandbox_id;
        let mut was_ready = None;
        if let Ok(pod) = self.pods.get(&id) {
            // The pod's processes go first: StopPodSandbox means none of them runs any more.
            let pod_id = pod.id.clone();
            blocking(&self.containers, move |c| {
                crate::container::stop_all_in_pod(c, &pod_id)
            })
            .await?;
            was_ready = (pod.state == super::PodState::Ready).then_some(pod.id);
        }
        blocking(&self.pods, move |m| m.stop(&id)).await?;
        // A repeated stop (kubelet retries them) is not a new event.
        if let Some(pod_id) = was_ready {
            self.containers.announce(
                &pod_id,
                &pod_id,
                v1::ContainerEventType::ContainerStoppedEvent,
            );
        }
        Ok(v1::StopPodSandboxResponse {})
    }

    pub(crate) async fn remove_pod_sandbox(
        &self,
        req: v1::RemovePodSandboxRequest,
    ) -> Result<v1::RemovePodSandboxResponse, Status> {
        let id = req.pod_sandbox_id;
        let mut existed = None;
        if let Ok(pod) = self.pods.get(&id) {
            let pod_id = pod.id.clone();
            blocking(&self.containers, move |c| {
                crate::container::remove_all_in_pod(c, &pod_id)
            })
            .await?;
            existed = Some(pod.id);
        }
        blocking(&self.pods, move |m| m.remove(&id)).await?;
        if let Some(pod_id) = existed {
            self.containers.announce(
                &pod_id,
                &pod_id,
                v1::ContainerEventType::ContainerDeletedEvent,
            );
        }
        Ok(v1::RemovePodSandboxResponse {})
    }

    pub(crate) async fn pod_sandbox_status(
        &self,
        req: v1::PodSandboxStatusRequest,
    ) -> Result<v1::PodSandboxStatusResponse, Status> {
        let verbose = req.verbose;
        let id = req.pod_sandbox_id;
        let resp = blocking(&self.pods, move |m| {
            let rec = m.get(&id)?;
            let status = cri_status(&rec);
            let mut info = std::collections::HashMap::new();
            if verbose {
                info.insert("info".to_string(), run::status_info(m, &rec).to_string());
            }
            Ok(v1::PodSandboxStatusResponse {
                status: Some(status),
                info,
                containers_statuses: Vec::new(),
                timestamp: 0,
            })
        })
        .await?;
        // kubelet's evented PLEG takes the containers from here when a timestamp is set.
        let mut resp = resp;
        if let Some(status) = &resp.status {
            resp.containers_statuses = self
                .containers
                .in_pod(&status.id)
                .iter()
                .map(ContainerRecord::to_cri_status)
                .collect();
            resp.timestamp = crate::task::unix_nanos();
        }
        Ok(resp)
    }

    pub(crate) async fn list_pod_sandbox(
        &self,
        req: v1::ListPodSandboxRequest,
    ) -> Result<v1::ListPodSandboxResponse, Status> {
        let items = self
            .pods
            .list()
            .iter()
            .filter(|p| req.filter.as_ref().is_none_or(|f| matches_filter(p, f)))
            .map(PodRecord::to_cri)
            .collect();
        Ok(v1::ListPodSandboxResponse { items })
    }

    pub(crate) async fn runtime_config(
        &self,
        _req: v1::RuntimeConfigRequest,
    ) -> Result<v1::RuntimeConfigResponse, Status> {
        Ok(v1::RuntimeConfigResponse {
            linux: Some(v1::LinuxRuntimeConfiguration {
                cgroup_driver: v1::CgroupDriver::Cgroupfs as i32,
            }),
        })
    }

    pub(crate) async fn update_runtime_config(
        &self,
        req: v1::UpdateRuntimeConfigRequest,
    ) -> Result<v1::UpdateRuntimeConfigResponse, Status> {
        // kubelet sends the node's pod CIDR here; berth's IPAM subnet comes from its own config,
        // so the value is recorded (Status verbose shows it) but does not move the subnet.
        if let Some(cidr) = req
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
        {
            tracing::info!(pod_cidr = %cidr, "kubelet reported the pod CIDR");
            *crate::sandbox::lock(&self.pod_cidr) = cidr;
        }
        Ok(v1::UpdateRuntimeConfigResponse {})
    }
}

/// A pod's CRI status, as PodSandboxStatus and container events carry it.
pub(crate) fn cri_status(rec: &PodRecord) -> v1::PodSandboxStatus {
    v1::PodSandboxStatus {
        id: rec.id.clone(),
        metadata: Some(rec.meta.to_cri()),
        state: rec.cri_state(),
        created_at: rec.created_at,
        network: run::cri_network_status(rec),
        linux: Some(v1::LinuxPodSandboxStatus {
            namespaces: Some(v1::Namespace {
                options: Some(rec.namespace_option()),
            }),
        }),
        labels: rec.labels.clone().into_iter().collect(),
        annotations: rec.annotations.clone().into_iter().collect(),
        runtime_handler: rec.runtime_handler.clone(),
    }
}
