#!/usr/bin/env bash
# A private containerd (Debian's /usr/bin/containerd, 1.6.x) for comparing against berthd.
#   hack/containerd.sh start|stop|status|env
# Everything lives under $BERTH_BENCH_DIR/containerd (default /var/tmp/berth-bench/containerd):
# its own root, state, gRPC socket, config, CNI conf dir and log. It never touches
# /run/containerd or /var/lib/containerd, so a system containerd keeps running undisturbed.
# The CRI plugin resolves 127.0.0.1:5000 through $BERTH_BENCH_DIR/certs.d (hosts.toml, plain
# HTTP), the same directory berthd's [registry] config_path points at.
set -euo pipefail

BASE="${BERTH_BENCH_DIR:-/var/tmp/berth-bench}"
DIR="$BASE/containerd"
ROOT="$DIR/root"
STATE="$DIR/state"
SOCK="$DIR/containerd.sock"
CONFIG="$DIR/config.toml"
PIDFILE="$DIR/containerd.pid"
LOG="$DIR/containerd.log"
CERTS_D="$BASE/certs.d"
REGISTRY="${BERTH_BENCH_REGISTRY:-127.0.0.1:5000}"
SANDBOX_IMAGE="${BERTH_BENCH_SANDBOX_IMAGE:-$REGISTRY/berth/pause:3.9}"
CONTAINERD="${CONTAINERD:-/usr/bin/containerd}"
CNI_BIN_DIR="${CNI_BIN_DIR:-/usr/lib/cni}"
# Where root may not lower oom_score_adj (some sandboxed VMs), runc fails to start pause
# containers ("can't get final child's PID from pipe") unless the CRI plugin clamps the -998 it
# asks for to containerd's own score: auto-detected, or CONTAINERD_RESTRICT_OOM_SCORE_ADJ=true|false.
if [ -z "${CONTAINERD_RESTRICT_OOM_SCORE_ADJ:-}" ]; then
  if (echo -999 >/proc/self/oom_score_adj) 2>/dev/null; then
    CONTAINERD_RESTRICT_OOM_SCORE_ADJ=false
  else
    CONTAINERD_RESTRICT_OOM_SCORE_ADJ=true
  fi
fi

log() { echo "containerd.sh: $*" >&2; }

running() {
  [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

write_hosts() {
  mkdir -p "$CERTS_D/$REGISTRY"
  cat >"$CERTS_D/$REGISTRY/hosts.toml" <<TOML
server = "http://$REGISTRY"

[host."http://$REGISTRY"]
  capabilities = ["pull", "resolve"]
TOML
}

write_config() {
  mkdir -p "$ROOT" "$STATE" "$DIR/cni/net.d" "$DIR/opt"
  cat >"$CONFIG" <<TOML
version = 2
root = "$ROOT"
state = "$STATE"
# plugins not needed by CRI pulls stay out of the way of a system containerd
disabled_plugins = ["io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "$SOCK"

[ttrpc]
  address = "$SOCK.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$DIR/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$SANDBOX_IMAGE"
  restrict_oom_score_adj = $CONTAINERD_RESTRICT_OOM_SCORE_ADJ
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$DIR/cni/net.d"

  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$CERTS_D"
TOML
}

start() {
  if running; then
    log "already running (pid $(cat "$PIDFILE")), socket $SOCK"
    return 0
  fi
  [ -x "$CONTAINERD" ] || { log "$CONTAINERD not found (apt-get install containerd)"; exit 1; }
  mkdir -p "$DIR"
  write_hosts
  write_config
  rm -f "$SOCK" "$SOCK.ttrpc"
  # setsid: not in our process group, so ^C of a caller does not take it down mid-bench
  setsid "$CONTAINERD" --config "$CONFIG" --log-level "${CONTAINERD_LOG_LEVEL:-info}" \
    </dev/null >>"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 100); do
    if [ -S "$SOCK" ] && ctr --address "$SOCK" version >/dev/null 2>&1; then
      log "started (pid $(cat "$PIDFILE")), socket $SOCK, log $LOG"
      return 0
    fi
    if ! running; then
      log "exited during startup; last log lines:"
      tail -n 20 "$LOG" >&2
      exit 1
    fi
    sleep 0.1
  done
  log "socket $SOCK did not come up within 10s; log $LOG"
  exit 1
}

stop() {
  if ! running; then
    log "not running"
    rm -f "$PIDFILE"
    return 0
  fi
  local pid
  pid="$(cat "$PIDFILE")"
  kill -TERM "$pid"
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid did not exit after 10s, killing"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE" "$SOCK" "$SOCK.ttrpc"
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status)
    if running; then echo "running (pid $(cat "$PIDFILE")) $SOCK"; else echo "stopped"; exit 1; fi ;;
  env)
    echo "CONTAINERD_SOCK=$SOCK"
    echo "CONTAINERD_ROOT=$ROOT"
    echo "CONTAINERD_CNI_CONF_DIR=$DIR/cni/net.d"
    echo "CONTAINERD_CNI_BIN_DIR=$CNI_BIN_DIR"
    echo "BERTH_BENCH_CERTS_D=$CERTS_D" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
