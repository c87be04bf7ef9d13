#!/usr/bin/env bash
# Installs berth on this node from a build tree through berth-install (the node installer's
# script): binaries, default config (an existing one is kept), systemd unit, then enables,
# starts and checks berthd.
# Usage: manifests/install.sh [--no-start]   (from the repository root after `cargo build --release`
#        and `hack/build-shim.sh --release target/release/berth-shim`)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$here/target}
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
mkdir "$src/bin"
for bin in berthd berthctl berth-shim; do
  cp "$target/release/$bin" "$src/bin/$bin"
done
cp "$here/manifests/config.toml" "$here/manifests/berthd.service" "$here/docs/operations.md" "$src/"
sh "$here/manifests/installer/berth-install" --src "$src" "$@"
