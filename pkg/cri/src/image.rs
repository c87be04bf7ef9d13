use std::collections::HashMap;

use berth_image::ImageManager;
use berth_registry::Credentials;
use berth_store::ImageRecord;
use k8s_cri::v1;
use tonic::{Request, Response, Status};

use crate::edge::{instrument, invalid, to_status, Verbosity};

pub struct ImageApi {
    images: ImageManager,
}

impl ImageApi {
    pub fn new(images: ImageManager) -> Self {
        Self { images }
    }

    fn to_cri(&self, rec: &ImageRecord) -> v1::Image {
        let (uid, username) = user_of(&rec.user);
        v1::Image {
            id: rec.id.to_string(),
            repo_tags: rec.repo_tags.clone(),
            repo_digests: rec.repo_digests.clone(),
            size: rec.size,
            uid,
            username,
            spec: Some(v1::ImageSpec {
                image: rec.id.to_string(),
                ..Default::default()
            }),
            pinned: rec.pinned,
        }
    }

    fn verbose_info(&self, rec: &ImageRecord) -> HashMap<String, String> {
        let spec = self
            .images
            .config(rec)
            .ok()
            .and_then(|c| serde_json::to_value(c).ok())
            .unwrap_or(serde_json::Value::Null);
        let info = serde_json::json!({
            "chainID": rec.chain_ids.last().map(|c| c.to_string()),
            "imageSpec": spec,
            "manifestDigest": rec.manifest_digest.to_string(),
            "mediaType": rec.media_type,
            "snapshots": rec.chain_ids.iter().map(|c| self.images.snapshots().path(c)).collect::<Vec<_>>(),
        });
        HashMap::from([("info".to_string(), info.to_string())])
    }
}

/// The image's default user as CRI wants it: a numeric UID, or else a name. A `user:group` form
/// contributes only the user part, as containerd does.
fn user_of(user: &str) -> (Option<v1::Int64Value>, String) {
    let user = user.split(':').next().unwrap_or("");
    if user.is_empty() {
        return (Some(v1::Int64Value { value: 0 }), String::new());
    }
    match user.parse::<i64>() {
        Ok(uid) => (Some(v1::Int64Value { value: uid }), String::new()),
        Err(_) => (None, user.to_string()),
    }
}

fn image_name(spec: Option<&v1::ImageSpec>) -> Result<&str, Status> {
    match spec.map(|s| s.image.as_str()) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(invalid("image.image", "must not be empty")),
    }
}

fn credentials(auth: Option<v1::AuthConfig>) -> Option<Credentials> {
    let a = auth?;
    let empty = a.username.is_empty()
        && a.password.is_empty()
        && a.auth.is_empty()
        && a.identity_token.is_empty()
        && a.registry_token.is_empty();
    (!empty).then_some(Credentials {
        username: a.username,
        password: a.password,
        auth: a.auth,
        identity_token: a.identity_token,
        registry_token: a.registry_token,
    })
}

#[tonic::async_trait]
impl v1::image_service_server::ImageService for ImageApi {
    async fn list_images(
        &self,
        request: Request<v1::ListImagesRequest>,
    ) -> Result<Response<v1::ListImagesResponse>, Status> {
        let req = request.into_inner();
        instrument("ListImages", Verbosity::Poll, async {
            let wanted = req
                .filter
                .and_then(|f| f.image)
                .map(|s| s.image)
                .filter(|s| !s.is_empty());
            let records = match wanted {
                Some(name) => self
                    .images
                    .find(&name)
                    .map_err(to_status)?
                    .into_iter()
                    .collect(),
                None => self.images.list(),
            };
            Ok(v1::ListImagesResponse {
                images: records.iter().map(|r| self.to_cri(r)).collect(),
            })
        })
        .await
    }

    async fn image_status(
        &self,
        request: Request<v1::ImageStatusRequest>,
    ) -> Result<Response<v1::ImageStatusResponse>, Status> {
        let req = request.into_inner();
        instrument("ImageStatus", Verbosity::Poll, async {
            let name = image_name(req.image.as_ref())?;
            // CRI: an image that does not exist is a nil image, not an error.
            let Some(rec) = self.images.find(name).map_err(to_status)? else {
                return Ok(v1::ImageStatusResponse::default());
            };
            Ok(v1::ImageStatusResponse {
                image: Some(self.to_cri(&rec)),
                info: if req.verbose {
                    self.verbose_info(&rec)
                } else {
                    HashMap::new()
                },
            })
        })
        .await
    }

    async fn pull_image(
        &self,
        request: Request<v1::PullImageRequest>,
    ) -> Result<Response<v1::PullImageResponse>, Status> {
        let req = request.into_inner();
        instrument("PullImage", Verbosity::Mutation, async {
            let name = image_name(req.image.as_ref())?;
            let id = self
                .images
                .pull(name, credentials(req.auth))
                .await
                .map_err(to_status)?;
            Ok(v1::PullImageResponse {
                image_ref: id.to_string(),
            })
        })
        .await
    }

    async fn remove_image(
        &self,
        request: Request<v1::RemoveImageRequest>,
    ) -> Result<Response<v1::RemoveImageResponse>, Status> {
        let req = request.into_inner();
        instrument("RemoveImage", Verbosity::Mutation, async {
            let name = image_name(req.image.as_ref())?;
            self.images.remove(name).await.map_err(to_status)?;
            Ok(v1::RemoveImageResponse {})
        })
        .await
    }

    async fn image_fs_info(
        &self,
        _request: Request<v1::ImageFsInfoRequest>,
    ) -> Result<Response<v1::ImageFsInfoResponse>, Status> {
        instrument("ImageFsInfo", Verbosity::Poll, async {
            let images = self.images.clone();
            let usage = tokio::task::spawn_blocking(move || images.fs_usage())
                .await
                .map_err(|e| Status::internal(format!("image fs usage: {e}")))?;
            let timestamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0);
            Ok(v1::ImageFsInfoResponse {
                image_filesystems: vec![v1::FilesystemUsage {
                    timestamp,
                    fs_id: Some(v1::FilesystemIdentifier {
                        mountpoint: self.images.root().join("snapshots").display().to_string(),
                    }),
                    used_bytes: Some(v1::UInt64Value { value: usage.bytes }),
                    inodes_used: Some(v1::UInt64Value {
                        value: usage.inodes,
                    }),
                }],
                container_filesystems: Vec::new(),
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_forms_map_to_uid_or_name() {
        assert_eq!(user_of("1000:100").0.map(|u| u.value), Some(1000));
        assert_eq!(user_of("nobody").1, "nobody");
        assert_eq!(user_of("").0.map(|u| u.value), Some(0));
    }

    #[test]
    fn empty_auth_means_anonymous() {
        assert!(credentials(Some(v1::AuthConfig::default())).is_none());
        assert!(credentials(None).is_none());
    }
}
