//! One module per subcommand, each with its clap `Args` and an async `run`.

pub(crate) mod bench;
pub(crate) mod bench_pods;
pub(crate) mod imagefsinfo;
pub(crate) mod images;
pub(crate) mod info;
pub(crate) mod inspecti;
pub(crate) mod inspectp;
pub(crate) mod netns;
pub(crate) mod pods;
pub(crate) mod pull;
pub(crate) mod rmi;
pub(crate) mod rmp;
pub(crate) mod runp;
pub(crate) mod stopp;
pub(crate) mod version;

use k8s_cri::v1::ImageSpec;

/// An `ImageSpec` naming `image` and nothing else.
pub(crate) fn image_spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_string(),
        ..Default::default()
    }
}
