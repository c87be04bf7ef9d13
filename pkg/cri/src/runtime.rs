use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use k8s_cri::v1;
use tonic::{Request, Response, Status};

use crate::edge::{instrument, Verbosity};
use crate::sandbox::PodManager;

/// What the daemon knows about itself for Version and Status.
#[derive(Debug, Clone)]
pub struct RuntimeInfo {
    pub version: String,
    pub root: String,
    pub state: String,
}

pub struct RuntimeApi {
    info: RuntimeInfo,
    pub(crate) pods: Arc<PodManager>,
}

impl RuntimeApi {
    pub fn new(info: RuntimeInfo, pods: Arc<PodManager>) -> Self {
        Self { info, pods }
    }

    fn version(&self) -> v1::VersionResponse {
        v1::VersionResponse {
            // The kubelet-facing API version CRI implementations report.
            version: "0.1.0".to_string(),
            runtime_name: "berth".to_string(),
            runtime_version: self.info.version.clone(),
            runtime_api_version: "v1".to_string(),
        }
    }

    fn status(&self, verbose: bool) -> v1::StatusResponse {
        // Truthful: sandboxes run, containers do not exist yet.
        let (net_ok, net_reason, net_message) = match self.pods.network().status() {
            Ok(()) => (true, String::new(), String::new()),
            Err(why) => (false, "NetworkPluginNotReady".to_string(), why),
        };
        let conditions = vec![
            v1::RuntimeCondition {
                r#type: "RuntimeReady".to_string(),
                status: false,
                reason: "ContainersNotBuilt".to_string(),
                message: "pod sandboxes and images are served; container RPCs are not implemented in this build".to_string(),
            },
            v1::RuntimeCondition {
                r#type: "NetworkReady".to_string(),
                status: net_ok,
                reason: net_reason,
                message: net_message,
            },
        ];
        let mut info = HashMap::new();
        if verbose {
            info.insert(
                "config".to_string(),
                serde_json::json!({
                    "root": self.info.root,
                    "state": self.info.state,
                    "version": self.info.version,
                })
                .to_string(),
            );
        }
        v1::StatusResponse {
            status: Some(v1::RuntimeStatus { conditions }),
            info,
            runtime_handlers: Vec::new(),
            features: None,
        }
    }
}

fn not_built(rpc: &str) -> Status {
    Status::unimplemented(format!("{rpc} is not implemented by berth yet"))
}

/// Expands to the whole `RuntimeService` impl: RPCs that exist delegate to inherent code, the
/// rest answer UNIMPLEMENTED naming the RPC. One list keeps the two in step with the trait.
macro_rules! runtime_service {
    (
        built { $($bmethod:ident($breq:ident) -> $bresp:ident = $brpc:literal, $verbosity:ident;)* }
        not_built { $($method:ident($req:ident) -> $resp:ident = $rpc:literal;)* }
    ) => {
        #[tonic::async_trait]
        impl v1::runtime_service_server::RuntimeService for RuntimeApi {
            type GetContainerEventsStream = Pin<
                Box<dyn futures::Stream<Item = Result<v1::ContainerEventResponse, Status>> + Send>,
            >;

            async fn version(
                &self,
                _request: Request<v1::VersionRequest>,
            ) -> Result<Response<v1::VersionResponse>, Status> {
                instrument("Version", Verbosity::Poll, async { Ok(RuntimeApi::version(self)) }).await
            }

            async fn status(
                &self,
                request: Request<v1::StatusRequest>,
            ) -> Result<Response<v1::StatusResponse>, Status> {
                let verbose = request.get_ref().verbose;
                instrument("Status", Verbosity::Poll, async { Ok(RuntimeApi::status(self, verbose)) }).await
            }

            async fn get_container_events(
                &self,
                _request: Request<v1::GetEventsRequest>,
            ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
                Err(not_built("GetContainerEvents"))
            }

            $(
                async fn $bmethod(
                    &self,
                    request: Request<v1::$breq>,
                ) -> Result<Response<v1::$bresp>, Status> {
                    instrument($brpc, Verbosity::$verbosity, RuntimeApi::$bmethod(self, request.into_inner())).await
                }
            )*

            $(
                async fn $method(
                    &self,
                    _request: Request<v1::$req>,
                ) -> Result<Response<v1::$resp>, Status> {
                    Err(not_built($rpc))
                }
            )*
        }
    };
}

runtime_service! {
    built {
    run_pod_sandbox(RunPodSandboxRequest) -> RunPodSandboxResponse = "RunPodSandbox", Mutation;
    stop_pod_sandbox(StopPodSandboxRequest) -> StopPodSandboxResponse = "StopPodSandbox", Mutation;
    remove_pod_sandbox(RemovePodSandboxRequest) -> RemovePodSandboxResponse = "RemovePodSandbox", Mutation;
    pod_sandbox_status(PodSandboxStatusRequest) -> PodSandboxStatusResponse = "PodSandboxStatus", Poll;
    list_pod_sandbox(ListPodSandboxRequest) -> ListPodSandboxResponse = "ListPodSandbox", Poll;
    runtime_config(RuntimeConfigRequest) -> RuntimeConfigResponse = "RuntimeConfig", Poll;
    update_runtime_config(UpdateRuntimeConfigRequest) -> UpdateRuntimeConfigResponse = "UpdateRuntimeConfig", Mutation;
    }
    not_built {
    create_container(CreateContainerRequest) -> CreateContainerResponse = "CreateContainer";
    start_container(StartContainerRequest) -> StartContainerResponse = "StartContainer";
    stop_container(StopContainerRequest) -> StopContainerResponse = "StopContainer";
    remove_container(RemoveContainerRequest) -> RemoveContainerResponse = "RemoveContainer";
    list_containers(ListContainersRequest) -> ListContainersResponse = "ListContainers";
    container_status(ContainerStatusRequest) -> ContainerStatusResponse = "ContainerStatus";
    update_container_resources(UpdateContainerResourcesRequest) -> UpdateContainerResourcesResponse = "UpdateContainerResources";
    reopen_container_log(ReopenContainerLogRequest) -> ReopenContainerLogResponse = "ReopenContainerLog";
    exec_sync(ExecSyncRequest) -> ExecSyncResponse = "ExecSync";
    exec(ExecRequest) -> ExecResponse = "Exec";
    attach(AttachRequest) -> AttachResponse = "Attach";
    port_forward(PortForwardRequest) -> PortForwardResponse = "PortForward";
    container_stats(ContainerStatsRequest) -> ContainerStatsResponse = "ContainerStats";
    list_container_stats(ListContainerStatsRequest) -> ListContainerStatsResponse = "ListContainerStats";
    pod_sandbox_stats(PodSandboxStatsRequest) -> PodSandboxStatsResponse = "PodSandboxStats";
    list_pod_sandbox_stats(ListPodSandboxStatsRequest) -> ListPodSandboxStatsResponse = "ListPodSandboxStats";
    checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse = "CheckpointContainer";
    list_metric_descriptors(ListMetricDescriptorsRequest) -> ListMetricDescriptorsResponse = "ListMetricDescriptors";
    list_pod_sandbox_metrics(ListPodSandboxMetricsRequest) -> ListPodSandboxMetricsResponse = "ListPodSandboxMetrics";
    }
}
