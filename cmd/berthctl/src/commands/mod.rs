//! One module per subcommand, each with its clap `Args` and an async `run`.

pub(crate) mod attach;
pub(crate) mod bench;
pub(crate) mod bench_containers;
pub(crate) mod bench_exec;
pub(crate) mod bench_pods;
pub(crate) mod completion;
pub(crate) mod create;
pub(crate) mod events;
pub(crate) mod exec;
pub(crate) mod imagefsinfo;
pub(crate) mod images;
pub(crate) mod info;
pub(crate) mod inspect;
pub(crate) mod inspecti;
pub(crate) mod inspectp;
pub(crate) mod logs;
pub(crate) mod netns;
pub(crate) mod pods;
pub(crate) mod portforward;
pub(crate) mod ps;
pub(crate) mod pull;
pub(crate) mod rm;
pub(crate) mod rmi;
pub(crate) mod rmp;
pub(crate) mod run;
pub(crate) mod runp;
pub(crate) mod start;
pub(crate) mod stats;
pub(crate) mod stop;
pub(crate) mod stopp;
pub(crate) mod stream;
pub(crate) mod update;
pub(crate) mod version;

use k8s_cri::v1::ImageSpec;

/// Not a failure to report but the exit status to end with (`exec -s` ends with the
/// command's).
#[derive(Debug)]
pub(crate) struct ExitStatus(pub i32);

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for ExitStatus {}

/// An `ImageSpec` naming `image` and nothing else.
pub(crate) fn image_spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_string(),
        ..Default::default()
    }
}

/// Parses `argv` (without the program name) into a subcommand's `Args`, as clap would.
#[cfg(test)]
pub(crate) fn parse_args<T: clap::Args + clap::FromArgMatches>(
    argv: &[&str],
) -> Result<T, clap::Error> {
    let cmd = T::augment_args(clap::Command::new("test"));
    let m = cmd.try_get_matches_from(std::iter::once("test").chain(argv.iter().copied()))?;
    T::from_arg_matches(&m)
}
