#!/usr/bin/env bash
# Pod sandbox benchmark: RunPodSandbox and StopPodSandbox + RemovePodSandbox latencies, one pod
# at a time and 20 at once, on berthd and on Debian's containerd 1.6 (CRI plugin, pause image,
# real CNI plugins), alternating order, ratios to berthd printed.
#   hack/bench-pods.sh [--runs N] [--parallel M] [--parallel-runs R] [--no-cni] [--json]
#                      [--no-build] [--berth-only]
# (BERTHD=/path BERTHCTL=/path override the release binaries)
# --berth-only: only the berth row (no containerd, no CNI; no pause image needed).
# Rows:
#   berth       berthd, built-in networking: bridge bbpods0, 10.237.0.0/16, nft table
#               berth_bench_pods
#   berth-cni   berthd in CNI mode with the conflist below (skipped with --no-cni)
#   containerd  hack/containerd.sh; sandbox image 127.0.0.1:5000/berth/pause:3.9 (built and
#               pushed by hack/pause-image.sh, pulled before timing)
# CNI conflist of berth-cni and containerd (cniVersion 1.0.0, plugins from /usr/lib/cni):
# bridge bbench0 (isGateway, ipMasq, hairpin: containerd's example config) + host-local
# 10.236.0.0/16 + portmap + loopback.
# Needs the local registry (hack/registry.sh start). Everything lives under $BERTH_BENCH_DIR
# (default /var/tmp/berth-bench). Stops on exit what it started, and deletes the bridges and
# nft tables the benchmark created.
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE="${BERTH_BENCH_DIR:-/var/tmp/berth-bench}"
export BERTH_BENCH_DIR="$BASE"

runs=20
parallel=20
parallel_runs=3
cni=1
json=()
build=1
containerd=1
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --parallel) parallel="$2"; shift 2 ;;
    --parallel-runs) parallel_runs="$2"; shift 2 ;;
    --no-cni) cni=0; shift ;;
    --json) json=(--json); shift ;;
    --no-build) build=0; shift ;;
    --berth-only) containerd=0; cni=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#'; exit 0 ;;
    *) echo "bench-pods: unknown argument $1" >&2; exit 2 ;;
  esac
done

log() { echo "bench-pods: $*" >&2; }

BUILTIN_BRIDGE=bbpods0
BUILTIN_SUBNET=10.237.0.0/16
BUILTIN_NFT=berth_bench_pods
CNI_BRIDGE=bbench0
CNI_SUBNET=10.236.0.0/16
CNI_NFT=berth_bench_podscni
CNI_NET=berth-bench-pods

if ! curl -sf -o /dev/null -m 2 http://127.0.0.1:5000/v2/; then
  log "registry on 127.0.0.1:5000 is not up: run hack/registry.sh start"
  exit 1
fi
if [ "$containerd" = 1 ]; then
  PAUSE_IMAGE="$("$SRC/hack/pause-image.sh")"   # ref@digest
  PAUSE_IMAGE="${PAUSE_IMAGE%@*}"
fi

if [ "$build" = 1 ]; then
  log "building release berthd, berth-shim and berthctl"
  (cd "$SRC" && cargo build --release -p berthd -p berth-shim -p berthctl >&2)
fi
BERTHD="${BERTHD:-$SRC/target/release/berthd}"
BERTHCTL="${BERTHCTL:-$SRC/target/release/berthctl}"
for b in "$BERTHD" "$BERTHCTL"; do
  [ -x "$b" ] || { log "$b missing (cargo build --release -p berthd -p berth-shim -p berthctl)"; exit 1; }
done

# CONTAINERD_SOCK, CONTAINERD_CNI_CONF_DIR, CONTAINERD_CNI_BIN_DIR, BERTH_BENCH_CERTS_D
eval "$("$SRC/hack/containerd.sh" env)"
CNI_BIN_DIR="$CONTAINERD_CNI_BIN_DIR"

write_conflist() {
  mkdir -p "$1"
  cat >"$1/10-berth-bench.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NET",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$CNI_SUBNET"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$BASE/cni-ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
JSON
}

started_containerd=0
started_berthds=()
created_bridges=()
created_tables=()
created_cgroups=()
hostport_chains=0
cleanup() {
  local rc=$?
  local dir pid
  for dir in ${started_berthds[@]+"${started_berthds[@]}"}; do
    [ -s "$dir/berthd.pid" ] || continue
    pid="$(cat "$dir/berthd.pid")"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$dir/berthd.pid"
    # berthd's shared mount for pinned namespaces (its pods are gone)
    umount "$dir/state/ns" 2>/dev/null || true
    log "berthd stopped ($dir)"
  done
  if [ "$started_containerd" = 1 ]; then
    "$SRC/hack/containerd.sh" stop || true
  fi
  local b t
  for b in ${created_bridges[@]+"${created_bridges[@]}"}; do
    ip link del "$b" 2>/dev/null && log "bridge $b deleted" || true
  done
  for t in ${created_tables[@]+"${created_tables[@]}"}; do
    nft delete table ip "$t" 2>/dev/null && log "nft table $t deleted" || true
  done
  # the pods' parent cgroups (empty once the pods are gone; rmdir refuses otherwise)
  local c
  for c in ${created_cgroups[@]+"${created_cgroups[@]}"}; do
    rmdir /sys/fs/cgroup/*/"$c" /sys/fs/cgroup/"$c" 2>/dev/null || true
  done
  # the portmap plugin's CNI-HOSTPORT-* chains, which its DEL leaves behind
  if [ "$hostport_chains" = 1 ] && iptables -t nat -S CNI-HOSTPORT-DNAT >/dev/null 2>&1; then
    iptables -t nat -D PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT 2>/dev/null || true
    iptables -t nat -D OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT 2>/dev/null || true
    iptables -t nat -D POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" \
      -j CNI-HOSTPORT-MASQ 2>/dev/null || true
    for c in CNI-HOSTPORT-DNAT CNI-HOSTPORT-MASQ CNI-HOSTPORT-SETMARK; do
      iptables -t nat -F "$c" 2>/dev/null || true
      iptables -t nat -X "$c" 2>/dev/null || true
    done
    log "portmap's CNI-HOSTPORT-* iptables chains deleted"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Remember what did not exist before, to delete only that afterwards.
for b in "$BUILTIN_BRIDGE" "$CNI_BRIDGE"; do
  ip link show "$b" >/dev/null 2>&1 || created_bridges+=("$b")
done
for t in "$BUILTIN_NFT" "$CNI_NFT"; do
  nft list table ip "$t" >/dev/null 2>&1 || created_tables+=("$t")
done
for c in berth-bench-pods-berth berth-bench-pods-berth-cni k8s.io; do
  compgen -G "/sys/fs/cgroup/*/$c" >/dev/null || [ -d "/sys/fs/cgroup/$c" ] || created_cgroups+=("$c")
done
if command -v iptables >/dev/null && ! iptables -t nat -S CNI-HOSTPORT-DNAT >/dev/null 2>&1; then
  hostport_chains=1
fi

# containerd: the conflist goes in before it starts (1.6 loads it at start and on changes).
if [ "$containerd" = 1 ]; then
  write_conflist "$CONTAINERD_CNI_CONF_DIR"
  if "$SRC/hack/containerd.sh" status >/dev/null 2>&1; then
    log "using the running containerd at $CONTAINERD_SOCK (CNI from $CONTAINERD_CNI_CONF_DIR)"
  else
    CNI_BIN_DIR="$CNI_BIN_DIR" "$SRC/hack/containerd.sh" start
    started_containerd=1
  fi
fi

# start_berthd NAME NETWORK_TOML: a berthd under $BASE/NAME; sets SOCK to its socket.
start_berthd() {
  local name="$1" net="$2"
  local dir="$BASE/$name"
  local sock="$dir/berth.sock"
  if [ -s "$dir/berthd.pid" ] && kill -0 "$(cat "$dir/berthd.pid")" 2>/dev/null; then
    log "using the running berthd at $sock"
    SOCK="$sock"
    return 0
  fi
  mkdir -p "$dir/root" "$dir/state"
  cat >"$dir/config.toml" <<TOML
root = "$dir/root"
state = "$dir/state"
listen = "$sock"
cgroup_parent = "/berth-bench-$name"

[registry]
config_path = "$BERTH_BENCH_CERTS_D"

[network]
$net
TOML
  rm -f "$sock"
  setsid "$BERTHD" --config "$dir/config.toml" </dev/null >>"$dir/berthd.log" 2>&1 &
  echo $! >"$dir/berthd.pid"
  started_berthds+=("$dir")
  for _ in $(seq 1 100); do
    [ -S "$sock" ] && "$BERTHCTL" -r "unix://$sock" version >/dev/null 2>&1 && break
    kill -0 "$(cat "$dir/berthd.pid")" 2>/dev/null \
      || { log "berthd exited; see $dir/berthd.log"; tail -n 20 "$dir/berthd.log" >&2; return 1; }
    sleep 0.1
  done
  [ -S "$sock" ] || { log "berthd socket did not come up; see $dir/berthd.log"; return 1; }
  log "berthd $name started (pid $(cat "$dir/berthd.pid")), log $dir/berthd.log"
  SOCK="$sock"
}

# An empty cni_conf_dir keeps the built-in row in built-in mode whatever /etc/cni/net.d holds.
mkdir -p "$BASE/pods-berth/no-cni"
start_berthd pods-berth "bridge = \"$BUILTIN_BRIDGE\"
subnet = \"$BUILTIN_SUBNET\"
nft_table = \"$BUILTIN_NFT\"
cni_conf_dir = \"$BASE/pods-berth/no-cni\""
BERTH_SOCK="$SOCK"

endpoints=(--endpoint "unix://$BERTH_SOCK" --label "berth=unix://$BERTH_SOCK")
if [ "$cni" = 1 ]; then
  write_conflist "$BASE/pods-berth-cni/net.d"
  start_berthd pods-berth-cni "nft_table = \"$CNI_NFT\"
cni_conf_dir = \"$BASE/pods-berth-cni/net.d\"
cni_bin_dirs = [\"$CNI_BIN_DIR\"]"
  BERTH_CNI_SOCK="$SOCK"
  endpoints+=(--endpoint "unix://$BERTH_CNI_SOCK" --label "berth-cni=unix://$BERTH_CNI_SOCK")
fi
if [ "$containerd" = 1 ]; then
  endpoints+=(--endpoint "unix://$CONTAINERD_SOCK" --label "containerd=unix://$CONTAINERD_SOCK")
  log "pulling $PAUSE_IMAGE into containerd (its sandbox image)"
  "$BERTHCTL" -r "unix://$CONTAINERD_SOCK" pull "$PAUSE_IMAGE" >/dev/null
fi

log "$runs sequential pods, $parallel_runs x $parallel parallel pods per endpoint"
"$BERTHCTL" bench pods "${endpoints[@]}" \
  --runs "$runs" --parallel "$parallel" --parallel-runs "$parallel_runs" \
  ${json[@]+"${json[@]}"}
