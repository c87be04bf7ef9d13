#!/usr/bin/env bash
# Cold-pull benchmark: berthd vs containerd (Debian's 1.6, CRI plugin) vs a curl | tar baseline,
# same image, same local registry, alternating order, cold state before every timed pull.
#   hack/bench-pull.sh [--runs N] [--image REF] [--json] [--no-build]
# (BERTHD=/path BERTHCTL=/path override the release binaries)
# Needs the local registry and the big image:
#   hack/registry.sh start && hack/build-images.sh --big
# Starts berthd (target/release/berthd) and containerd (hack/containerd.sh) under
# $BERTH_BENCH_DIR (default /var/tmp/berth-bench) unless already running, and stops on exit
# only what it started.
#
# Cold state before each timed pull:
#   berthd      CRI RemoveImage (done by berthctl bench)
#   containerd  CRI RemoveImage: containerd 1.6 deletes every ref of the image and runs a
#               synchronous GC, which removes the blobs from its content store and the
#               overlayfs snapshots; the hook then checks that no blob of the image is left
#               (and removes stragglers with `ctr content rm`)
#   curl+tar    the extraction directory is removed
#   all         `sync` so the previous run's writeback does not land in the next timing, and
#               drop_caches when the kernel lets us (not inside most containers)
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE="${BERTH_BENCH_DIR:-/var/tmp/berth-bench}"
HACK_DIR="${BERTH_HACK_DIR:-/var/tmp/berth-hack}"
export BERTH_BENCH_DIR="$BASE"

runs=5
image=""
json=()
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --image) image="$2"; shift 2 ;;
    --json) json=(--json); shift ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#'; exit 0 ;;
    *) echo "bench-pull: unknown argument $1" >&2; exit 2 ;;
  esac
done

log() { echo "bench-pull: $*" >&2; }

if ! curl -sf -o /dev/null -m 2 http://127.0.0.1:5000/v2/; then
  log "registry on 127.0.0.1:5000 is not up: run hack/registry.sh start"
  exit 1
fi
if [ ! -s "$HACK_DIR/images.env" ]; then
  log "$HACK_DIR/images.env missing: run hack/build-images.sh --big"
  exit 1
fi
# shellcheck disable=SC1091
. "$HACK_DIR/images.env"
if [ -z "$image" ]; then
  if [ -z "${DEBIAN_REF:-}" ]; then
    log "no berth/debian image in images.env: run hack/build-images.sh --big"
    exit 1
  fi
  image="$DEBIAN_REF"
fi

# Layers of the image, for the baseline and for checking containerd's content store.
registry="${image%%/*}"
repo_tag="${image#*/}"
repo="${repo_tag%%[:@]*}"
ref="${repo_tag#"$repo"}"; ref="${ref#[:@]}"
manifest="$(curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
  -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
  "http://$registry/v2/$repo/manifests/$ref")" || { log "cannot fetch manifest of $image"; exit 1; }
layers="$(printf '%s' "$manifest" | python3 -c 'import json,sys; m=json.load(sys.stdin); print(" ".join(l["digest"] for l in m.get("layers", [])))')"
if [ -z "$layers" ]; then
  log "$image: not a single-platform image manifest (no layers)"
  exit 1
fi

if [ "$build" = 1 ]; then
  log "building release berthd and berthctl"
  (cd "$SRC" && cargo build --release -p berthd -p berthctl >&2)
fi
BERTHD="${BERTHD:-$SRC/target/release/berthd}"
BERTHCTL="${BERTHCTL:-$SRC/target/release/berthctl}"
for b in "$BERTHD" "$BERTHCTL"; do
  [ -x "$b" ] || { log "$b missing (cargo build --release -p berthd -p berthctl)"; exit 1; }
done

eval "$("$SRC/hack/containerd.sh" env)"   # CONTAINERD_SOCK, BERTH_BENCH_CERTS_D
BERTH_DIR="$BASE/berth"
BERTH_SOCK="$BERTH_DIR/berth.sock"
BERTH_PID="$BERTH_DIR/berthd.pid"
BASELINE_DIR="$BASE/baseline"
HOOK="$BASE/pre-run.sh"

started_containerd=0
started_berthd=0
cleanup() {
  local rc=$?
  if [ "$started_berthd" = 1 ] && [ -s "$BERTH_PID" ]; then
    local pid
    pid="$(cat "$BERTH_PID")"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$BERTH_PID"
    log "berthd stopped"
  fi
  if [ "$started_containerd" = 1 ]; then
    "$SRC/hack/containerd.sh" stop || true
  fi
  rm -rf "$BASELINE_DIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if "$SRC/hack/containerd.sh" status >/dev/null 2>&1; then
  log "using the running containerd at $CONTAINERD_SOCK"
else
  "$SRC/hack/containerd.sh" start
  started_containerd=1
fi

berthd_running() { [ -s "$BERTH_PID" ] && kill -0 "$(cat "$BERTH_PID")" 2>/dev/null; }
if berthd_running; then
  log "using the running berthd at $BERTH_SOCK"
else
  mkdir -p "$BERTH_DIR/root" "$BERTH_DIR/state"
  cat >"$BERTH_DIR/config.toml" <<TOML
[registry]
config_path = "$BERTH_BENCH_CERTS_D"
TOML
  rm -f "$BERTH_SOCK"
  setsid "$BERTHD" --root "$BERTH_DIR/root" --state "$BERTH_DIR/state" --listen "$BERTH_SOCK" \
    --config "$BERTH_DIR/config.toml" </dev/null >>"$BERTH_DIR/berthd.log" 2>&1 &
  echo $! >"$BERTH_PID"
  started_berthd=1
  for _ in $(seq 1 100); do
    [ -S "$BERTH_SOCK" ] && "$BERTHCTL" -r "unix://$BERTH_SOCK" version >/dev/null 2>&1 && break
    berthd_running || { log "berthd exited; see $BERTH_DIR/berthd.log"; tail -n 20 "$BERTH_DIR/berthd.log" >&2; exit 1; }
    sleep 0.1
  done
  [ -S "$BERTH_SOCK" ] || { log "berthd socket did not come up; see $BERTH_DIR/berthd.log"; exit 1; }
  log "berthd started (pid $(cat "$BERTH_PID")), log $BERTH_DIR/berthd.log"
fi

cat >"$HOOK" <<HOOKEOF
#!/bin/sh
# generated by hack/bench-pull.sh: runs before every timed pull (env from berthctl bench)
set -eu
case "\$BENCH_KIND:\$BENCH_LABEL" in
  baseline:*)
    rm -rf "$BASELINE_DIR" && mkdir -p "$BASELINE_DIR" ;;
  cri:containerd)
    # RemoveImage ran already; make sure nothing of the image is left in the content store.
    ctr -a "$CONTAINERD_SOCK" -n k8s.io images ls -q | grep -F "$registry/$repo" \\
      | xargs -r ctr -a "$CONTAINERD_SOCK" -n k8s.io images rm --sync >/dev/null || true
    for d in $layers; do
      if ctr -a "$CONTAINERD_SOCK" -n k8s.io content ls -q | grep -qx "\$d"; then
        echo "pre-run: containerd still had \$d, removing" >&2
        ctr -a "$CONTAINERD_SOCK" -n k8s.io content rm "\$d" >/dev/null
      fi
    done ;;
esac
sync
echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
HOOKEOF
chmod +x "$HOOK"

baseline="set -e; "
for l in $layers; do
  baseline="${baseline}curl -sf http://$registry/v2/$repo/blobs/$l | tar -xzf - -C $BASELINE_DIR; "
done

log "image $image ($(echo "$layers" | wc -w) layers), $runs runs"
"$BERTHCTL" bench pull "$image" \
  --endpoint "unix://$BERTH_SOCK" --label "berth=unix://$BERTH_SOCK" \
  --endpoint "unix://$CONTAINERD_SOCK" --label "containerd=unix://$CONTAINERD_SOCK" \
  --runs "$runs" --pre-run "$HOOK" \
  --baseline-cmd "$baseline" --baseline-label curl+tar \
  ${json[@]+"${json[@]}"}
