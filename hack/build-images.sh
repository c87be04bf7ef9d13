#!/usr/bin/env bash
# Build berth's test images without docker and push them to the local registries
# started by hack/registry.sh.
#   hack/build-images.sh            small images (busybox[:latest,:v2], sibling, multiarch, zstd, evil-*)
#   hack/build-images.sh --big      also berth/debian:bookworm (debootstrap minbase, cached in
#                                   $BERTH_HACK_DIR/cache; first run ~1-2 min) — or BERTH_BIG_IMAGE=1
# Writes $BERTH_HACK_DIR/images.env (shell vars) and images.json (digests, config IDs,
# diff IDs, chain IDs). Deterministic: reruns produce identical digests.
set -euo pipefail

HACK_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="${BERTH_HACK_DIR:-/var/tmp/berth-hack}"
mkdir -p "$DIR"

args=()
big="${BERTH_BIG_IMAGE:-0}"
for a in "$@"; do
  case "$a" in
    --big) big=1 ;;
    --no-push) args+=(--no-push) ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "unknown arg: $a" >&2; exit 2 ;;
  esac
done
[ "$big" = 1 ] && args+=(--big)

if [[ " ${args[*]-} " != *" --no-push "* ]]; then
  if ! curl -sf -o /dev/null -m 2 http://127.0.0.1:5000/v2/; then
    echo "build-images: registry on 127.0.0.1:5000 is not up; run hack/registry.sh start" >&2
    exit 1
  fi
fi

BB=/bin/busybox
[ -x "$BB" ] || BB=/usr/bin/busybox
python3 "$HACK_SRC/mkimages.py" --dir "$DIR" --busybox "$BB" ${args[@]+"${args[@]}"}
