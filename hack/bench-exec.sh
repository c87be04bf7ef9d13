#!/usr/bin/env bash
# Streaming benchmark: the round trip of a streaming exec of `true` (Exec RPC, upgrade,
# remotecommand session, exit status) and the throughput of a port-forward, on berthd and on
# Debian's containerd 1.6 in the same run; ratios to berthd.
#   hack/bench-exec.sh [--runs N] [--transfers T] [--bytes B] [--transport spdy|websocket]
#                      [--json] [--no-build]
# (BERTHD=/path BERTHCTL=/path override the release binaries)
# Each runtime gets a host-network pod (no CNI involved) with a busybox container that sinks
# what reaches port 19977 (`nc -ll -e`), image 127.0.0.1:5000/berth/busybox:latest
# (hack/build-images.sh). Needs the local registry (hack/registry.sh start). Everything lives
# under $BERTH_BENCH_DIR (default /var/tmp/berth-bench). Stops on exit what it started.
# The floor row is plain TCP through the same hops (sender, client copy, relay process, sink):
# what the machine's loopback allows at all.
# Note: containerd 1.6 speaks only SPDY; with --transport websocket its row fails.
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE="${BERTH_BENCH_DIR:-/var/tmp/berth-bench}"
export BERTH_BENCH_DIR="$BASE"

runs=50
transfers=5
bytes=$((512 << 20))
transport=spdy
json=()
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --transfers) transfers="$2"; shift 2 ;;
    --bytes) bytes="$2"; shift 2 ;;
    --transport) transport="$2"; shift 2 ;;
    --json) json=(--json); shift ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#'; exit 0 ;;
    *) echo "bench-exec: unknown argument $1" >&2; exit 2 ;;
  esac
done

log() { echo "bench-exec: $*" >&2; }

IMAGE=127.0.0.1:5000/berth/busybox:latest
BERTH_DIR="$BASE/exec-berth"
BERTH_SOCK="$BERTH_DIR/berth.sock"
BUILTIN_BRIDGE=bbexec0
BUILTIN_SUBNET=10.239.0.0/16
BUILTIN_NFT=berth_bench_exec
RUNC="${RUNC:-runc}"

if ! curl -sf -o /dev/null -m 2 http://127.0.0.1:5000/v2/; then
  log "registry on 127.0.0.1:5000 is not up: run hack/registry.sh start"
  exit 1
fi
if ! curl -sf -o /dev/null -m 2 http://127.0.0.1:5000/v2/berth/busybox/manifests/latest \
  -H 'Accept: application/vnd.oci.image.manifest.v1+json'; then
  log "$IMAGE is not in the registry: run hack/build-images.sh"
  exit 1
fi
command -v "$RUNC" >/dev/null || { log "$RUNC not found (apt-get install runc)"; exit 1; }

BERTHD="${BERTHD:-$SRC/target/release/berthd}"
BERTHCTL="${BERTHCTL:-$SRC/target/release/berthctl}"
if [ "$build" = 1 ]; then
  log "building release berthctl"
  (cd "$SRC" && cargo build --release -p berthctl >&2)
  # berthd is another row, not a precondition: if it does not build, its row says so
  log "building release berthd and berth-shim"
  # the shim as it ships: static musl, size-optimised (hack/build-shim.sh), next to berthd
  (cd "$SRC" && cargo build --release -p berthd >&2 \
      && bash hack/build-shim.sh --release "$(dirname "$BERTHD")/berth-shim" >&2) \
    || log "berthd did not build; its row will fail"
fi
[ -x "$BERTHCTL" ] || { log "$BERTHCTL missing (cargo build --release -p berthctl)"; exit 1; }

# CONTAINERD_SOCK, CONTAINERD_ROOT, ..., BERTH_BENCH_CERTS_D
eval "$("$SRC/hack/containerd.sh" env)"

started_containerd=0
started_berthd=0
created_bridge=0
created_table=0
created_cgroups=()
# Benchmark pods a killed berthctl could not remove (it removes its own, also on ^C/SIGTERM).
remove_bench_pods() {
  local sock="$1" id
  [ -S "$sock" ] || return 0
  for id in $(timeout 10 "$BERTHCTL" -r "unix://$sock" pods -q --label io.berth.bench=exec \
      2>/dev/null); do
    timeout 60 "$BERTHCTL" -r "unix://$sock" -t 30s rmp -f "$id" >/dev/null 2>&1 || true
  done
}
cleanup() {
  local rc=$?
  local pid id c d
  [ "$started_berthd" = 1 ] && remove_bench_pods "$BERTH_SOCK"
  [ "$started_containerd" = 1 ] && remove_bench_pods "$CONTAINERD_SOCK"
  if [ "$started_berthd" = 1 ] && [ -s "$BERTH_DIR/berthd.pid" ]; then
    pid="$(cat "$BERTH_DIR/berthd.pid")"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$BERTH_DIR/berthd.pid"
    # containers berthd left to its runc (it stopped before removing them)
    for root in "$BERTH_DIR"/state/runtime/*; do
      [ -d "$root" ] || continue
      for id in $("$RUNC" --root "$root" list -q 2>/dev/null); do
        "$RUNC" --root "$root" delete --force "$id" >/dev/null 2>&1 || true
      done
    done
    # berthd's mounts under its own dirs: pinned namespaces, rootfs overlays
    grep -F " $BERTH_DIR/" /proc/self/mounts | awk '{print $2}' | sort -r \
      | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    log "berthd stopped"
  fi
  if [ "$started_containerd" = 1 ]; then
    "$SRC/hack/containerd.sh" stop || true
  fi
  [ "$created_bridge" = 1 ] && ip link del "$BUILTIN_BRIDGE" 2>/dev/null && log "bridge deleted"
  [ "$created_table" = 1 ] && nft delete table ip "$BUILTIN_NFT" 2>/dev/null && log "nft table deleted"
  # the pods' parent cgroups, children first (rmdir refuses those still in use)
  for c in ${created_cgroups[@]+"${created_cgroups[@]}"}; do
    for d in /sys/fs/cgroup/*/"$c" /sys/fs/cgroup/"$c"; do
      [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
  done
  true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Remember what did not exist before, to delete only that afterwards.
ip link show "$BUILTIN_BRIDGE" >/dev/null 2>&1 || created_bridge=1
nft list table ip "$BUILTIN_NFT" >/dev/null 2>&1 || created_table=1
for c in berth-bench-exec k8s.io; do
  compgen -G "/sys/fs/cgroup/*/$c" >/dev/null || [ -d "/sys/fs/cgroup/$c" ] || created_cgroups+=("$c")
done

if "$SRC/hack/containerd.sh" status >/dev/null 2>&1; then
  log "using the running containerd at $CONTAINERD_SOCK"
else
  "$SRC/hack/containerd.sh" start
  started_containerd=1
fi

# berthd: started when it is there; when it is not, or does not come up, its row says so.
start_berthd() {
  [ -x "$BERTHD" ] || { log "$BERTHD missing; the berth row will fail"; return 0; }
  if [ -s "$BERTH_DIR/berthd.pid" ] && kill -0 "$(cat "$BERTH_DIR/berthd.pid")" 2>/dev/null; then
    log "using the running berthd at $BERTH_SOCK"
    return 0
  fi
  mkdir -p "$BERTH_DIR/root" "$BERTH_DIR/state" "$BERTH_DIR/no-cni"
  cat >"$BERTH_DIR/config.toml" <<TOML
root = "$BERTH_DIR/root"
state = "$BERTH_DIR/state"
listen = "$BERTH_SOCK"
cgroup_parent = "/berth-bench-exec"

[registry]
config_path = "$BERTH_BENCH_CERTS_D"

[network]
bridge = "$BUILTIN_BRIDGE"
subnet = "$BUILTIN_SUBNET"
nft_table = "$BUILTIN_NFT"
cni_conf_dir = "$BERTH_DIR/no-cni"
TOML
  rm -f "$BERTH_SOCK"
  setsid "$BERTHD" --config "$BERTH_DIR/config.toml" </dev/null >>"$BERTH_DIR/berthd.log" 2>&1 &
  echo $! >"$BERTH_DIR/berthd.pid"
  started_berthd=1
  for _ in $(seq 1 100); do
    [ -S "$BERTH_SOCK" ] && "$BERTHCTL" -r "unix://$BERTH_SOCK" version >/dev/null 2>&1 && break
    if ! kill -0 "$(cat "$BERTH_DIR/berthd.pid")" 2>/dev/null; then
      log "berthd exited; see $BERTH_DIR/berthd.log; the berth row will fail"
      tail -n 5 "$BERTH_DIR/berthd.log" >&2
      return 0
    fi
    sleep 0.1
  done
  log "berthd started (pid $(cat "$BERTH_DIR/berthd.pid")), log $BERTH_DIR/berthd.log"
}
start_berthd

log "$runs execs and $transfers transfers of $bytes bytes per row ($transport)"
"$BERTHCTL" bench exec \
  --endpoint "unix://$BERTH_SOCK" --label "berth=unix://$BERTH_SOCK" \
  --endpoint "unix://$CONTAINERD_SOCK" --label "containerd=unix://$CONTAINERD_SOCK" \
  --image "$IMAGE" --transport "$transport" \
  --runs "$runs" --transfers "$transfers" --bytes "$bytes" --floor \
  ${json[@]+"${json[@]}"}
