#!/usr/bin/env bash
# Generate berthctl's man pages (berthctl.1, berthctl-<command>.1) from its clap definitions.
#   hack/gen-man.sh [DIR]    default DIR: $CARGO_TARGET_DIR/man (target/man)
# Install with e.g. `install -m 0644 DIR/*.1 /usr/local/share/man/man1/`.
# Shell completions come from the binary itself: `berthctl completion bash|zsh|fish`.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$REPO/target}"
dir="${1:-$target/man}"
(cd "$REPO" && cargo build -q -p berthctl)
"$target/debug/berthctl" man "$dir"
echo "gen-man: $(ls "$dir" | wc -l) pages in $dir"
