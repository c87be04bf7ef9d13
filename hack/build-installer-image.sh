#!/usr/bin/env bash
# Build the node installer image (manifests/installer/daemonset.yaml) from release binaries and
# push it, without docker.
#   hack/build-installer-image.sh [--bin-dir DIR] [--out DIR] [--push REF] [--no-push]
#     --bin-dir DIR  berthd, berthctl, berth-shim to ship (default: cargo build --release, and
#                    a static shim from hack/build-shim.sh --release)
#     --out DIR      the OCI layout (default $BERTH_HACK_DIR/installer-oci)
#     --push REF     where to push (default 127.0.0.1:5000/berth/installer:dev, the local
#                    registry of hack/registry.sh); --no-push keeps the layout only
# Prints the manifest digest. The same binaries give the same digest.
set -euo pipefail

HACK_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HACK_SRC/.." && pwd)"
DIR="${BERTH_HACK_DIR:-/var/tmp/berth-hack}"
bin_dir=
out="$DIR/installer-oci"
push=127.0.0.1:5000/berth/installer:dev
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --push) push=$2; shift 2 ;;
    --no-push) push=; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown arg: $1" >&2; exit 2 ;;
  esac
done

if [ -z "$bin_dir" ]; then
  target="${CARGO_TARGET_DIR:-$REPO/target}"
  (cd "$REPO" && cargo build --release --bins)
  bash "$HACK_SRC/build-shim.sh" --release "$target/release/berth-shim"
  bin_dir="$target/release"
fi
BB=/bin/busybox
[ -x "$BB" ] || BB=/usr/bin/busybox
mkdir -p "$(dirname "$out")"
digest=$(python3 "$HACK_SRC/mkinstaller.py" --bin-dir "$bin_dir" --repo "$REPO" --busybox "$BB" \
  --out "$out" --tag dev)
if [ -n "$push" ]; then
  skopeo copy --retry-times 3 --preserve-digests --dest-tls-verify=false \
    "oci:$out:dev" "docker://$push" >/dev/null
  echo "build-installer-image: pushed $push" >&2
fi
echo "$digest"
