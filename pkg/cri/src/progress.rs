use std::pin::Pin;
use std::time::Duration;

use berth_image::ImageManager;
use berth_proto::v1 as bv1;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// How often a watcher is sent a fresh snapshot of the counters.
const TICK: Duration = Duration::from_millis(100);
const MAX_WAIT_MS: u32 = 60_000;

pub struct PullProgressApi {
    images: ImageManager,
}

impl PullProgressApi {
    pub fn new(images: ImageManager) -> Self {
        Self { images }
    }
}

#[tonic::async_trait]
impl bv1::pull_progress_server::PullProgress for PullProgressApi {
    type WatchStream = Pin<Box<dyn futures::Stream<Item = Result<bv1::PullEvent, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<bv1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = request.into_inner();
        if req.image.is_empty() {
            return Err(Status::invalid_argument("image: must not be empty"));
        }
        let images = self.images.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let wait = Duration::from_millis(u64::from(req.wait_ms.min(MAX_WAIT_MS)));
            let deadline = tokio::time::Instant::now() + wait;
            let progress = loop {
                if let Some(p) = images.progress(&req.image) {
                    break p;
                }
                if tokio::time::Instant::now() >= deadline {
                    let _ = tx
                        .send(Err(Status::not_found(format!(
                            "image: no pull of {} is running",
                            req.image
                        ))))
                        .await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            loop {
                let result = progress.result();
                let event = bv1::PullEvent {
                    reference: req.image.clone(),
                    layers: progress
                        .layers()
                        .iter()
                        .map(|l| bv1::LayerProgress {
                            digest: l.digest.to_string(),
                            done: l.done(),
                            total: l.total,
                            state: l.state().as_str().to_string(),
                        })
                        .collect(),
                    result: result.clone().unwrap_or_default(),
                };
                if tx.send(Ok(event)).await.is_err() || result.is_some() {
                    return;
                }
                tokio::time::sleep(TICK).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
