//! `berthctl create`: CreateContainer in a pod from crictl's container and pod config files,
//! pulling the image first only with `--with-pull` (crictl's default, pull-image-on-create
//! off). The pull flags are shared with `run`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{CreateContainerRequest, PodSandboxConfig, PullImageRequest};
use tonic::transport::Channel;

use super::pull::build_auth;
use crate::client::GlobalOpts;
use crate::containerconfig::load_container_config;
use crate::duration::parse_duration;
use crate::podconfig::load_pod_config_checked;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Pod to create the container in
    #[arg(value_name = "POD")]
    pod_id: String,
    #[command(flatten)]
    files: ConfigFiles,
    #[command(flatten)]
    pull: PullArgs,
}

/// The two config files of `create` and `run`.
#[derive(clap::Args, Debug)]
pub(crate) struct ConfigFiles {
    /// Container config file (the CRI ContainerConfig as JSON or YAML)
    #[arg(value_name = "CONTAINER-CONFIG")]
    pub config: PathBuf,
    /// Pod config file (the CRI PodSandboxConfig as JSON or YAML)
    #[arg(value_name = "POD-CONFIG")]
    pub pod_config: PathBuf,
}

/// crictl's image pull flags of `create` and `run`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct PullArgs {
    /// Use AUTH_STRING for accessing the registry. AUTH_STRING is a base64 encoded
    /// 'USERNAME[:PASSWORD]'
    #[arg(long, value_name = "AUTH_STRING")]
    auth: Option<String>,
    /// Seconds to wait for a container create request to complete before cancelling the
    /// request (0s: the global --timeout)
    #[arg(short = 'T', long, value_parser = parse_duration, default_value = "0s")]
    cancel_timeout: Duration,
    /// Use USERNAME[:PASSWORD] for accessing the registry
    #[arg(long, value_name = "USERNAME[:PASSWORD]")]
    creds: Option<String>,
    /// Do not pull the image before creating the container
    #[arg(long)]
    no_pull: bool,
    /// Maximum time to be used for pulling the image, disabled if set to 0s
    #[arg(long, visible_alias = "pt", env = "CRICTL_PULL_TIMEOUT", value_parser = parse_duration,
          default_value = "0s")]
    pull_timeout: Duration,
    /// Use USERNAME for accessing the registry. The password is read from stdin
    #[arg(long, value_name = "USERNAME")]
    username: Option<String>,
    /// Pull the image before creating the container
    #[arg(long)]
    with_pull: bool,
}

impl PullArgs {
    /// Whether to pull, given the command's default (`create`: no, `run`: yes).
    pub(crate) fn pull(&self, default: bool) -> Result<bool> {
        if self.no_pull && self.with_pull {
            bail!("conflict: no-pull and with-pull are both set");
        }
        Ok(self.with_pull || (default && !self.no_pull))
    }

    /// The deadline of the create and start calls: `--cancel-timeout`, else the global one.
    pub(crate) fn call_timeout(&self, g: &GlobalOpts) -> Duration {
        if self.cancel_timeout.is_zero() {
            g.call_timeout()
        } else {
            self.cancel_timeout
        }
    }
}

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    let pull = args.pull.pull(false)?;
    let pod_config = load_pod_config_checked(&args.files.pod_config)?;
    let mut c = g.runtime_client().await?;
    let id = create_container(
        g,
        &mut c,
        &args.pod_id,
        &args.files.config,
        pod_config,
        &args.pull,
        pull,
    )
    .await?;
    println!("{id}");
    Ok(())
}

/// crictl's `CreateContainer`: loads the container config, pulls its image (and those of image
/// mounts) when `pull`, then CreateContainer; returns the container ID.
pub(crate) async fn create_container(
    g: &GlobalOpts,
    c: &mut RuntimeServiceClient<Channel>,
    pod_id: &str,
    config_path: &Path,
    pod_config: PodSandboxConfig,
    flags: &PullArgs,
    pull: bool,
) -> Result<String> {
    let mut config = load_container_config(config_path)?;
    let spec = config.image.get_or_insert_with(Default::default);
    if spec.user_specified_image.is_empty() {
        spec.user_specified_image = spec.image.clone();
    }
    if pull {
        let auth = build_auth(
            flags.creds.as_deref(),
            flags.auth.as_deref(),
            flags.username.as_deref(),
            None,
        )?;
        let images = std::iter::once(spec.clone()).chain(
            config
                .mounts
                .iter()
                .filter_map(|m| m.image.clone())
                .filter(|i| !i.image.is_empty()),
        );
        let annotations = spec.annotations.clone();
        let mut ic = g.image_client().await?;
        for image in images {
            let name = image.image.clone();
            let req = PullImageRequest {
                image: Some(k8s_cri::v1::ImageSpec {
                    image: image.image,
                    annotations: annotations.clone(),
                    ..Default::default()
                }),
                auth: auth.clone(),
                sandbox_config: Some(pod_config.clone()),
            };
            let timeout = (!flags.pull_timeout.is_zero()).then_some(flags.pull_timeout);
            g.call(&format!("pull image {name:?}"), timeout, req, |r| {
                ic.pull_image(r)
            })
            .await?;
        }
    }
    let req = CreateContainerRequest {
        pod_sandbox_id: pod_id.to_string(),
        config: Some(config),
        sandbox_config: Some(pod_config),
    };
    let r = g
        .call(
            &format!("create container in pod {pod_id:?}"),
            Some(flags.call_timeout(g)),
            req,
            |r| c.create_container(r),
        )
        .await
        .context("creating container")?;
    Ok(r.container_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        crate::commands::parse_args(argv)
    }

    #[test]
    fn flags_parse_like_crictl() {
        let a = parse(&[
            "--no-pull",
            "-T",
            "5s",
            "--pt",
            "1m",
            "--creds",
            "u:p",
            "pod1",
            "c.yaml",
            "p.json",
        ])
        .unwrap();
        assert_eq!(a.pod_id, "pod1");
        assert_eq!(a.files.config, PathBuf::from("c.yaml"));
        assert_eq!(a.pull.cancel_timeout, Duration::from_secs(5));
        assert_eq!(a.pull.pull_timeout, Duration::from_secs(60));
        assert_eq!(a.pull.creds.as_deref(), Some("u:p"));
        assert!(parse(&["pod1", "c.yaml"]).is_err());
    }

    #[test]
    fn pull_defaults_follow_the_command() {
        let a = parse(&["p", "c", "pc"]).unwrap();
        assert!(!a.pull.pull(false).unwrap() && a.pull.pull(true).unwrap());
        let a = parse(&["--with-pull", "p", "c", "pc"]).unwrap();
        assert!(a.pull.pull(false).unwrap());
        let a = parse(&["--no-pull", "p", "c", "pc"]).unwrap();
        assert!(!a.pull.pull(true).unwrap());
        let a = parse(&["--no-pull", "--with-pull", "p", "c", "pc"]).unwrap();
        assert!(a.pull.pull(true).is_err());
    }
}
