//! `berthctl pull`: CRI PullImage, with a live bar per layer from berth's PullProgress API
//! (a spinner only when the runtime does not have it, e.g. containerd).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine;
use berth_proto::v1::pull_progress_client::PullProgressClient;
use berth_proto::v1::{PullEvent, WatchRequest};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{AuthConfig, PullImageRequest, PullImageResponse};
use tonic::transport::Channel;

use crate::client::{GlobalOpts, RpcError};
use crate::podconfig::load_pod_config;

/// How long berthd waits for our PullImage to show up before ending the Watch stream.
const WATCH_WAIT_MS: u32 = 10_000;
/// How long to wait for the progress stream to end once PullImage has returned.
const WATCH_LINGER: Duration = Duration::from_millis(200);

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Image to pull
    image: String,
    /// Credentials for the registry, USERNAME[:PASSWORD]
    #[arg(long)]
    creds: Option<String>,
    /// Base64 of USERNAME:PASSWORD
    #[arg(long)]
    auth: Option<String>,
    /// Registry user name (the password is read from --password or stdin)
    #[arg(short, long)]
    username: Option<String>,
    /// Registry password, with --username
    #[arg(long)]
    password: Option<String>,
    /// Pod sandbox config (JSON or YAML) to pull the image for
    #[arg(short, long = "pod-config")]
    pod_config: Option<PathBuf>,
    /// Annotation KEY=VALUE of the image spec (repeatable)
    #[arg(short, long = "annotation")]
    annotation: Vec<String>,
}

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    let auth = build_auth(
        args.creds.as_deref(),
        args.auth.as_deref(),
        args.username.as_deref(),
        args.password.as_deref(),
    )?;
    let sandbox_config = args
        .pod_config
        .as_deref()
        .map(load_pod_config)
        .transpose()?;
    let mut spec = super::image_spec(&args.image);
    for a in &args.annotation {
        let Some((k, v)) = a.split_once('=') else {
            bail!("annotation {a:?} is not KEY=VALUE");
        };
        spec.annotations.insert(k.to_string(), v.to_string());
    }
    let channel = g.image_channel().await?;
    let req = PullImageRequest {
        image: Some(spec),
        auth,
        sandbox_config,
    };
    let progress = Progress::new(&args.image, std::io::stderr().is_terminal());
    let (res, _) = pull_with_progress(g, channel, &args.image, req, &progress).await;
    progress.clear();
    let r = res?;
    println!("Image is up to date for {}", r.image_ref);
    Ok(())
}

/// Runs PullImage while following berth's progress stream on the same channel. Returns the
/// pull's result and the layer bars as they ended (empty without a PullProgress service).
async fn pull_with_progress(
    g: &GlobalOpts,
    channel: Channel,
    image: &str,
    req: PullImageRequest,
    progress: &Progress,
) -> (Result<PullImageResponse, RpcError>, LayerBars) {
    let mut watcher = tokio::spawn(watch(channel.clone(), image.to_string(), progress.clone()));
    let mut client = ImageServiceClient::new(channel);
    let res = g
        .call(&format!("pull image {image:?}"), g.timeout, req, |r| {
            client.pull_image(r)
        })
        .await;
    // The stream ends with the pull; give its last event a moment, then stop following.
    let bars = match tokio::time::timeout(WATCH_LINGER, &mut watcher).await {
        Ok(Ok(bars)) => bars,
        _ => {
            watcher.abort();
            LayerBars::default()
        }
    };
    (res, bars)
}

/// crictl's `getAuth`: `--creds` or `--auth` or `--username`, at most one of the first two.
pub(crate) fn build_auth(
    creds: Option<&str>,
    auth: Option<&str>,
    username: Option<&str>,
    password: Option<&str>,
) -> Result<Option<AuthConfig>> {
    let pair = |username: &str, password: &str| AuthConfig {
        username: username.to_string(),
        password: password.to_string(),
        ..Default::default()
    };
    if creds.is_some() && auth.is_some() {
        bail!("both `--creds` and `--auth` are specified");
    }
    if let Some(creds) = creds {
        if creds.is_empty() {
            bail!("credentials can't be empty");
        }
        return match creds.split_once(':') {
            None => Ok(Some(pair(creds, ""))),
            Some(("", _)) => bail!("username can't be empty"),
            Some((u, p)) => Ok(Some(pair(u, p))),
        };
    }
    if let Some(auth) = auth {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .context("decode --auth")?;
        let decoded = String::from_utf8(decoded).context("decode --auth")?;
        let parts: Vec<&str> = decoded.split(':').collect();
        let [u, p] = parts[..] else {
            bail!("invalid decoded auth: expected USERNAME:PASSWORD");
        };
        return Ok(Some(pair(u, p)));
    }
    if let Some(u) = username {
        let p = match password {
            Some(p) => p.to_string(),
            None => read_password()?,
        };
        return Ok(Some(pair(u, &p)));
    }
    Ok(None)
}

fn read_password() -> Result<String> {
    if std::io::stdin().is_terminal() {
        eprint!("Enter Password: ");
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("read password from stdin")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// The pull display: a spinner line, then one bar per layer once berthd reports layers.
#[derive(Clone)]
struct Progress {
    multi: MultiProgress,
    spinner: ProgressBar,
}

impl Progress {
    /// Drawn on stderr when `visible` (stderr is a terminal), hidden otherwise.
    fn new(image: &str, visible: bool) -> Self {
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let spinner = multi.add(ProgressBar::new_spinner());
        spinner.set_style(
            ProgressStyle::with_template("{spinner} pulling {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        spinner.set_message(image.to_string());
        spinner.enable_steady_tick(Duration::from_millis(100));
        Self { multi, spinner }
    }

    fn clear(&self) {
        self.spinner.finish_and_clear();
        // Nothing useful to do if the terminal cannot be written to.
        let _ = self.multi.clear();
    }
}

/// Follows berthd's progress stream for `image` until it ends; quietly keeps only the spinner
/// when the runtime has no PullProgress service (UNIMPLEMENTED) or the stream fails.
async fn watch(channel: Channel, image: String, progress: Progress) -> LayerBars {
    let mut bars = LayerBars::default();
    let mut client = PullProgressClient::new(channel);
    let req = WatchRequest {
        image,
        wait_ms: WATCH_WAIT_MS,
    };
    let Ok(resp) = client.watch(req).await else {
        return bars;
    };
    let mut stream = resp.into_inner();
    while let Ok(Some(ev)) = stream.message().await {
        bars.update(&progress.multi, &ev);
    }
    bars
}

#[derive(Default)]
struct LayerBars {
    bars: BTreeMap<String, ProgressBar>,
}

fn layer_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:.bold} {wide_bar:.cyan/blue} {bytes:>10}/{total_bytes:<10} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

/// `sha256:0123456789abcdef…` → `0123456789ab`, as docker shows layer IDs.
fn short_digest(d: &str) -> String {
    let hex = d.split_once(':').map_or(d, |(_, h)| h);
    hex.chars().take(12).collect()
}

impl LayerBars {
    /// (digest, position, length, finished) of each layer, by digest.
    #[cfg(test)]
    fn states(&self) -> Vec<(String, u64, Option<u64>, bool)> {
        self.bars
            .iter()
            .map(|(d, b)| (d.clone(), b.position(), b.length(), b.is_finished()))
            .collect()
    }

    fn update(&mut self, multi: &MultiProgress, ev: &PullEvent) {
        for l in &ev.layers {
            let bar = self.bars.entry(l.digest.clone()).or_insert_with(|| {
                let b = multi.add(ProgressBar::new(l.total));
                b.set_style(layer_style());
                b.set_prefix(short_digest(&l.digest));
                b
            });
            if bar.is_finished() {
                continue;
            }
            if l.total > 0 {
                bar.set_length(l.total);
            }
            bar.set_position(l.done);
            match l.state.as_str() {
                "exists" => bar.finish_with_message("already exists"),
                "done" => {
                    bar.set_position(l.total.max(l.done));
                    bar.finish_with_message("done");
                }
                "failed" => bar.abandon_with_message("failed"),
                other => bar.set_message(other.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creds_split_on_first_colon() {
        let a = build_auth(Some("user:pa:ss"), None, None, None)
            .ok()
            .flatten();
        assert_eq!(
            a.map(|a| (a.username, a.password)),
            Some(("user".into(), "pa:ss".into()))
        );
        assert!(build_auth(Some(":x"), None, None, None).is_err());
        assert!(build_auth(Some(""), None, None, None).is_err());
        assert!(build_auth(Some("u:p"), Some("dTpw"), None, None).is_err());
    }

    #[test]
    fn auth_is_base64_of_user_colon_password() {
        // "berth:berthpass"
        let a = build_auth(None, Some("YmVydGg6YmVydGhwYXNz"), None, None)
            .ok()
            .flatten();
        assert_eq!(
            a.map(|a| (a.username, a.password)),
            Some(("berth".into(), "berthpass".into()))
        );
        assert!(build_auth(None, Some("!!notbase64"), None, None).is_err());
        assert!(build_auth(None, Some("bm9jb2xvbg=="), None, None).is_err());
    }

    #[test]
    fn username_with_password_flag() {
        let a = build_auth(None, None, Some("u"), Some("p")).ok().flatten();
        assert_eq!(
            a.map(|a| (a.username, a.password)),
            Some(("u".into(), "p".into()))
        );
        assert!(matches!(build_auth(None, None, None, None), Ok(None)));
    }

    mod fake {
        use std::pin::Pin;

        use berth_proto::v1::pull_progress_server::{PullProgress, PullProgressServer};
        use berth_proto::v1::LayerProgress;
        use k8s_cri::v1::image_service_server::{ImageService, ImageServiceServer};
        use k8s_cri::v1::*;
        use tokio_stream::Stream;
        use tonic::{Request, Response, Status};

        use super::*;

        pub(super) struct Images;

        #[tonic::async_trait]
        impl ImageService for Images {
            async fn list_images(
                &self,
                _: Request<ListImagesRequest>,
            ) -> Result<Response<ListImagesResponse>, Status> {
                Err(Status::unimplemented("fake"))
            }
            async fn image_status(
                &self,
                _: Request<ImageStatusRequest>,
            ) -> Result<Response<ImageStatusResponse>, Status> {
                Err(Status::unimplemented("fake"))
            }
            async fn pull_image(
                &self,
                r: Request<PullImageRequest>,
            ) -> Result<Response<PullImageResponse>, Status> {
                tokio::time::sleep(Duration::from_millis(300)).await;
                match r.into_inner().image {
                    Some(s) if s.image == "missing" => Err(Status::not_found("no such image")),
                    _ => Ok(Response::new(PullImageResponse {
                        image_ref: "sha256:feed".into(),
                    })),
                }
            }
            async fn remove_image(
                &self,
                _: Request<RemoveImageRequest>,
            ) -> Result<Response<RemoveImageResponse>, Status> {
                Err(Status::unimplemented("fake"))
            }
            async fn image_fs_info(
                &self,
                _: Request<ImageFsInfoRequest>,
            ) -> Result<Response<ImageFsInfoResponse>, Status> {
                Err(Status::unimplemented("fake"))
            }
        }

        pub(super) struct Progress;

        fn layer(digest: &str, done: u64, total: u64, state: &str) -> LayerProgress {
            LayerProgress {
                digest: digest.into(),
                done,
                total,
                state: state.into(),
            }
        }

        #[tonic::async_trait]
        impl PullProgress for Progress {
            type WatchStream = Pin<Box<dyn Stream<Item = Result<PullEvent, Status>> + Send>>;
            async fn watch(
                &self,
                r: Request<WatchRequest>,
            ) -> Result<Response<Self::WatchStream>, Status> {
                let reference = r.into_inner().image;
                let ev = |layers, result: &str| {
                    Ok(PullEvent {
                        reference: reference.clone(),
                        layers,
                        result: result.into(),
                    })
                };
                let events = vec![
                    ev(
                        vec![
                            layer("sha256:aaaa", 50, 100, "downloading"),
                            layer("sha256:bbbb", 0, 10, "exists"),
                        ],
                        "",
                    ),
                    ev(
                        vec![
                            layer("sha256:aaaa", 100, 100, "done"),
                            layer("sha256:bbbb", 0, 10, "exists"),
                        ],
                        "done",
                    ),
                ];
                Ok(Response::new(Box::pin(tokio_stream::iter(events))))
            }
        }

        /// Serves the fake image service (and the progress service when `progress`) on a
        /// unix socket in `dir`; returns global options pointing at it.
        pub(super) async fn serve(dir: &std::path::Path, progress: bool) -> GlobalOpts {
            let sock = dir.join("fake.sock");
            let listener = tokio::net::UnixListener::bind(&sock).ok();
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(
                listener.unwrap_or_else(|| panic!("bind {}", sock.display())),
            );
            let router = tonic::transport::Server::builder()
                .add_service(ImageServiceServer::new(Images))
                .add_optional_service(progress.then(|| PullProgressServer::new(Progress)));
            tokio::spawn(router.serve_with_incoming(incoming));
            GlobalOpts {
                runtime_endpoint: format!("unix://{}", sock.display()),
                image_endpoint: None,
                timeout: None,
                debug: false,
                stream_ca: None,
            }
        }
    }

    async fn fake_pull(progress_service: bool, image: &str) -> (Result<String, String>, LayerBars) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let g = fake::serve(dir.path(), progress_service).await;
        let channel = g
            .image_channel()
            .await
            .unwrap_or_else(|e| panic!("connect: {e:#}"));
        let req = PullImageRequest {
            image: Some(crate::commands::image_spec(image)),
            ..Default::default()
        };
        let progress = Progress::new(image, false);
        let (res, bars) = pull_with_progress(&g, channel, image, req, &progress).await;
        progress.clear();
        (res.map(|r| r.image_ref).map_err(|e| e.to_string()), bars)
    }

    #[tokio::test]
    async fn progress_stream_drives_layer_bars() {
        let (res, bars) = fake_pull(true, "reg/img:1").await;
        assert_eq!(res, Ok("sha256:feed".to_string()));
        assert_eq!(
            bars.states(),
            [
                ("sha256:aaaa".to_string(), 100, Some(100), true),
                ("sha256:bbbb".to_string(), 10, Some(10), true),
            ]
        );
    }

    #[tokio::test]
    async fn pull_works_without_progress_service() {
        let (res, bars) = fake_pull(false, "reg/img:1").await;
        assert_eq!(res, Ok("sha256:feed".to_string()));
        assert!(bars.states().is_empty());
    }

    #[tokio::test]
    async fn pull_errors_carry_status_and_code() {
        let (res, _) = fake_pull(true, "missing").await;
        assert_eq!(
            res,
            Err("pull image \"missing\": no such image (code: NotFound)".to_string())
        );
    }

    #[test]
    fn layer_ids_are_shortened() {
        assert_eq!(
            short_digest("sha256:0123456789abcdef0123456789abcdef"),
            "0123456789ab"
        );
        assert_eq!(short_digest("abc"), "abc");
    }
}
