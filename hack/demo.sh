#!/usr/bin/env bash
# berth's main job on this machine, from nothing: packages, build, local registry with test
# images, berthd up, images pulled, a pod with its own network namespace and IP, a busybox
# container in it (runc under berth-shim) serving HTTP on hostPort 8080, fetched from the node,
# and the container's CRI log.
#   hack/demo.sh         set up and run the demo (berthd keeps running afterwards)
#   hack/demo.sh stop    stop the demo daemon and the registries
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DEMO="${BERTH_DEMO_DIR:-/var/tmp/berth-demo}"
SOCK="$DEMO/berth.sock"
export BERTH_HACK_DIR="${BERTH_HACK_DIR:-/var/tmp/berth-hack}"

stop_pods() {
  [ -S "$SOCK" ] && target/release/berthctl -r "unix://$SOCK" rmp -a -f >/dev/null 2>&1 || true
}

stop_daemon() {
  stop_pods
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
hack/build-shim.sh --release target/release/berth-shim
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

step "a pod with its own network namespace, IP and hostPort 8080 -> 80"
cat > "$DEMO/pod.json" <<JSON
{
  "metadata": {"name": "web", "namespace": "demo", "uid": "demo-web-1", "attempt": 0},
  "hostname": "web",
  "log_directory": "$DEMO/logs/web",
  "port_mappings": [{"protocol": "TCP", "container_port": 80, "host_port": 8080}],
  "labels": {"app": "web"}
}
JSON
POD=$(target/release/berthctl -r "unix://$SOCK" runp "$DEMO/pod.json")
echo "pod: $POD"
ctl pods
ctl netns "$POD"
POD_IP=$(target/release/berthctl -r "unix://$SOCK" inspectp -o json "$POD" | jq -r '.status.network.ip')

step "a busybox container in the pod serving HTTP on port 80 (runc under berth-shim)"
cat > "$DEMO/web.json" <<JSON
{
  "metadata": {"name": "httpd"},
  "image": {"image": "127.0.0.1:5000/berth/busybox:latest"},
  "command": ["sh", "-c", "mkdir -p /www && echo \"hello from container httpd in pod web (\$(hostname), $POD_IP) via berth\" > /www/index.html && echo serving on :80 && exec httpd -f -v -p 80 -h /www"],
  "log_path": "httpd/0.log",
  "labels": {"app": "web"}
}
JSON
CTR=$(target/release/berthctl -r "unix://$SOCK" create "$POD" "$DEMO/web.json" "$DEMO/pod.json")
ctl start "$CTR"
ctl ps
for _ in $(seq 50); do curl -fsS -o /dev/null http://127.0.0.1:8080/ 2>/dev/null && break; sleep 0.1; done
NODE_IP=$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | grep -v '^10\.88\.' | head -1)
echo "+ curl http://127.0.0.1:8080/"; curl -fsS http://127.0.0.1:8080/
if [ -n "$NODE_IP" ]; then echo "+ curl http://$NODE_IP:8080/"; curl -fsS "http://$NODE_IP:8080/"; fi
echo "+ curl http://$POD_IP/ (pod IP, through the bridge)"; curl -fsS "http://$POD_IP/"
ctl exec -s "$CTR" ps
step "the container's CRI log"
ctl logs "$CTR"
echo
echo "berthd is running (log: $DEMO/berthd.log). Try: target/release/berthctl -r unix://$SOCK inspect $CTR"
echo "Stop everything with: hack/demo.sh stop"
