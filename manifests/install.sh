#!/usr/bin/env bash
# Installs berth on a node from a build tree: binaries, default config, systemd unit.
# Usage: manifests/install.sh [--no-start]   (run from the repository root after `cargo build --release`)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
for bin in berthd berthctl berth-shim; do
  install -m 0755 "$here/target/release/$bin" /usr/local/bin/$bin
done
install -d -m 0755 /etc/berth /etc/berth/certs.d
[ -e /etc/berth/config.toml ] || install -m 0644 "$here/manifests/config.toml" /etc/berth/config.toml
install -m 0644 "$here/manifests/berthd.service" /etc/systemd/system/berthd.service
if [ "${1:-}" != "--no-start" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable --now berthd
fi
echo "berth installed; point kubelet at unix:///run/berth/berth.sock (see manifests/kubelet-config.yaml)"
