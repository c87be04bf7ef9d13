use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use k8s_cri::v1;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::container::ContainerManager;
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
    pub(crate) containers: Arc<ContainerManager>,
    /// The node's pod CIDR as kubelet last reported it (UpdateRuntimeConfig).
    pub(crate) pod_cidr: std::sync::Mutex<String>,
    /// Where Exec/Attach/PortForward URLs point; set once by berthd.
    pub(crate) streaming: std::sync::OnceLock<berth_streaming::Server>,
}

impl RuntimeApi {
    pub fn new(
        info: RuntimeInfo,
        pods: Arc<PodManager>,
        containers: Arc<ContainerManager>,
    ) -> Self {
        Self {
            info,
            pods,
            containers,
            pod_cidr: Default::default(),
            streaming: Default::default(),
        }
    }

    /// Wires the streaming server in (once; later calls are ignored).
    pub fn set_streaming(&self, server: berth_streaming::Server) {
        let _ = self.streaming.set(server);
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
        let (net_ok, net_reason, net_message) = match self.pods.network().status() {
            Ok(()) => (true, String::new(), String::new()),
            Err(why) => (false, "NetworkPluginNotReady".to_string(), why),
        };
        let (rt_ok, rt_reason, rt_message) = match self.containers.handler("") {
            Ok(h) if h.path.is_file() => (true, String::new(), String::new()),
            Ok(h) => (
                false,
                "RuntimeNotFound".to_string(),
                format!(
                    "OCI runtime {} of handler {:?} is not installed",
                    h.path.display(),
                    h.name
                ),
            ),
            Err(e) => (
                false,
                "RuntimeNotConfigured".to_string(),
                e.message().to_string(),
            ),
        };
        let conditions = vec![
            v1::RuntimeCondition {
                r#type: "RuntimeReady".to_string(),
                status: rt_ok,
                reason: rt_reason,
                message: rt_message,
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
                    "defaultRuntimeHandler": self.containers.default_handler(),
                    "runtimeHandlers": self.containers.handlers(),
                    "podCIDR": *crate::sandbox::lock(&self.pod_cidr),
                })
                .to_string(),
            );
        }
        // The empty name stands for the default handler, as the CRI asks. Recursive read-only
        // mounts are berth's own work (mount_setattr after `runc create`), so every handler has
        // them where the kernel does.
        let rro = self.containers.node().recursive_read_only;
        let features = || {
            Some(v1::RuntimeHandlerFeatures {
                recursive_read_only_mounts: rro,
                user_namespaces: false,
            })
        };
        let runtime_handlers = std::iter::once(String::new())
            .chain(self.containers.handlers().iter().map(|h| h.name.clone()))
            .map(|name| v1::RuntimeHandler {
                name,
                features: features(),
            })
            .collect();
        v1::StatusResponse {
            status: Some(v1::RuntimeStatus { conditions }),
            info,
            runtime_handlers,
            features: Some(v1::RuntimeFeatures {
                supplemental_groups_policy: true,
            }),
        }
    }
}

impl RuntimeApi {
    /// berth exports no metrics of its own through the CRI (kubelet then keeps its cAdvisor
    /// ones); an empty answer, not UNIMPLEMENTED, is what kubelet's CRI metrics path expects.
    async fn list_metric_descriptors(
        &self,
        _req: v1::ListMetricDescriptorsRequest,
    ) -> Result<v1::ListMetricDescriptorsResponse, Status> {
        Ok(v1::ListMetricDescriptorsResponse::default())
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _req: v1::ListPodSandboxMetricsRequest,
    ) -> Result<v1::ListPodSandboxMetricsResponse, Status> {
        Ok(v1::ListPodSandboxMetricsResponse::default())
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
                tracing::debug!("GetContainerEvents: new subscriber");
                let events = self.containers.events().subscribe();
                let stream = tokio_stream::wrappers::ReceiverStream::new(events).map(Ok);
                Ok(Response::new(Box::pin(stream)))
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
    create_container(CreateContainerRequest) -> CreateContainerResponse = "CreateContainer", Mutation;
    start_container(StartContainerRequest) -> StartContainerResponse = "StartContainer", Mutation;
    stop_container(StopContainerRequest) -> StopContainerResponse = "StopContainer", Mutation;
    remove_container(RemoveContainerRequest) -> RemoveContainerResponse = "RemoveContainer", Mutation;
    list_containers(ListContainersRequest) -> ListContainersResponse = "ListContainers", Poll;
    container_status(ContainerStatusRequest) -> ContainerStatusResponse = "ContainerStatus", Poll;
    reopen_container_log(ReopenContainerLogRequest) -> ReopenContainerLogResponse = "ReopenContainerLog", Mutation;
    exec_sync(ExecSyncRequest) -> ExecSyncResponse = "ExecSync", Poll;
    exec(ExecRequest) -> ExecResponse = "Exec", Mutation;
    attach(AttachRequest) -> AttachResponse = "Attach", Mutation;
    port_forward(PortForwardRequest) -> PortForwardResponse = "PortForward", Mutation;
    runtime_config(RuntimeConfigRequest) -> RuntimeConfigResponse = "RuntimeConfig", Poll;
    update_runtime_config(UpdateRuntimeConfigRequest) -> UpdateRuntimeConfigResponse = "UpdateRuntimeConfig", Mutation;
    update_container_resources(UpdateContainerResourcesRequest) -> UpdateContainerResourcesResponse = "UpdateContainerResources", Mutation;
    container_stats(ContainerStatsRequest) -> ContainerStatsResponse = "ContainerStats", Poll;
    list_container_stats(ListContainerStatsRequest) -> ListContainerStatsResponse = "ListContainerStats", Poll;
    pod_sandbox_stats(PodSandboxStatsRequest) -> PodSandboxStatsResponse = "PodSandboxStats", Poll;
    list_pod_sandbox_stats(ListPodSandboxStatsRequest) -> ListPodSandboxStatsResponse = "ListPodSandboxStats", Poll;
    list_metric_descriptors(ListMetricDescriptorsRequest) -> ListMetricDescriptorsResponse = "ListMetricDescriptors", Poll;
    list_pod_sandbox_metrics(ListPodSandboxMetricsRequest) -> ListPodSandboxMetricsResponse = "ListPodSandboxMetrics", Poll;
    }
    not_built {
    checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse = "CheckpointContainer";
    }
}
