//! `berthctl completion SHELL` (as crictl's) and the hidden `berthctl man DIR`: shell completion
//! scripts and man pages generated from the clap definitions, so they never fall behind them.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap_complete::Shell;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Load with e.g. `source <(berthctl completion bash)`, or write the \
    output to /etc/bash_completion.d/berthctl, a zsh $fpath dir as _berthctl, or \
    ~/.config/fish/completions/berthctl.fish"
)]
pub(crate) struct Args {
    /// The shell to complete for
    #[arg(value_enum, default_value_t = CompletionShell::Bash)]
    shell: CompletionShell,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

pub(crate) fn run(mut cmd: clap::Command, args: Args) -> Result<()> {
    let shell = match args.shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, &mut std::io::stdout());
    Ok(())
}

#[derive(clap::Args, Debug)]
pub(crate) struct ManArgs {
    /// Directory to write berthctl.1 and one berthctl-<command>.1 per subcommand into
    dir: PathBuf,
}

pub(crate) fn man(cmd: clap::Command, args: ManArgs) -> Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    clap_mangen::generate_to(cmd, &args.dir)
        .with_context(|| format!("writing man pages to {}", args.dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn generated(shell: Shell) -> String {
        let mut cmd = crate::Cli::command();
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd, "berthctl", &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_shell_completes_every_subcommand() {
        let cmd = crate::Cli::command();
        let subs: Vec<String> = cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| s.get_name().to_string())
            .collect();
        assert!(subs.iter().any(|s| s == "completion"));
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let text = generated(shell);
            for s in &subs {
                assert!(text.contains(s.as_str()), "{shell}: no {s}");
            }
            // Flags of subcommands too, not only their names.
            assert!(text.contains("runtime-endpoint"), "{shell}");
        }
    }

    #[test]
    fn man_pages_cover_the_subcommands() {
        let dir = tempfile::tempdir().unwrap();
        man(
            crate::Cli::command(),
            ManArgs {
                dir: dir.path().to_path_buf(),
            },
        )
        .unwrap();
        let top = std::fs::read_to_string(dir.path().join("berthctl.1")).unwrap();
        assert!(top.contains(".TH berthctl"), "{top}");
        for s in ["pods", "ps", "logs", "exec", "netns", "completion"] {
            assert!(top.contains(s), "berthctl.1 does not list {s}");
            let page = dir.path().join(format!("berthctl-{s}.1"));
            assert!(page.is_file(), "no {}", page.display());
        }
    }
}
