#!/usr/bin/env bash
# berth's main job on this machine, from nothing: packages, build, local registry with test
# images, berthd up, an image pulled and shown.
#   hack/demo.sh         set up and run the demo (berthd keeps running afterwards)
#   hack/demo.sh stop    stop the demo daemon and the registries
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DEMO="${BERTH_DEMO_DIR:-/var/tmp/berth-demo}"
SOCK="$DEMO/berth.sock"
export BERTH_HACK_DIR="${BERTH_HACK_DIR:-/var/tmp/berth-hack}"

stop_daemon() {
  if [ -s "$DEMO/berthd.pid" ] && kill -0 "$(cat "$DEMO/berthd.pid")" 2>/dev/null; then
    kill "$(cat "$DEMO/berthd.pid")"
    for _ in $(seq 50); do kill -0 "$(cat "$DEMO/berthd.pid")" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$DEMO/berthd.pid"
}

if [ "${1:-}" = stop ]; then
  stop_daemon
  hack/registry.sh stop
  exit 0
fi

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "packages"
hack/deps.sh
step "build (release)"
cargo build --release --bins
step "local registries and test images"
hack/registry.sh start
hack/build-images.sh

step "berthd"
stop_daemon
mkdir -p "$DEMO/certs.d/127.0.0.1:5000"
cp hack/hosts/127.0.0.1:5000/hosts.toml "$DEMO/certs.d/127.0.0.1:5000/hosts.toml"
cat > "$DEMO/config.toml" <<TOML
root = "$DEMO/root"
state = "$DEMO/state"
listen = "$SOCK"

[registry]
config_path = "$DEMO/certs.d"
TOML
nohup target/release/berthd --config "$DEMO/config.toml" >"$DEMO/berthd.log" 2>&1 &
echo $! > "$DEMO/berthd.pid"
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.05; done
[ -S "$SOCK" ] || { cat "$DEMO/berthd.log"; echo "berthd did not start" >&2; exit 1; }

ctl() { echo "+ berthctl $*"; target/release/berthctl -r "unix://$SOCK" "$@"; }
step "CRI over $SOCK"
ctl version
ctl pull 127.0.0.1:5000/berth/busybox:latest
ctl pull 127.0.0.1:5000/berth/multiarch:latest
ctl images
ctl imagefsinfo
echo
echo "berthd is running (log: $DEMO/berthd.log). Try: target/release/berthctl -r unix://$SOCK inspecti 127.0.0.1:5000/berth/busybox:latest"
echo "Stop everything with: hack/demo.sh stop"
