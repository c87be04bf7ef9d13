#!/usr/bin/env bash
# Unpacks Debian's kubectl 1.20 (package kubernetes-client: SPDY-only streaming) into a
# directory without installing it, for the streaming interop tests. Prints the binary's path.
# Usage: hack/kubectl-old.sh [DIR]   (default /var/tmp/berth-hack/kubectl-1.20)
set -euo pipefail

dir="${1:-/var/tmp/berth-hack/kubectl-1.20}"
bin="$dir/usr/bin/kubectl"
if [[ -x "$bin" ]]; then
    echo "$bin"
    exit 0
fi
mkdir -p "$dir"
work="$(mktemp -d)"
chmod 755 "$work"  # apt downloads as _apt
trap 'rm -rf "$work"' EXIT
# Empty package lists (a fresh image) know no kubernetes-client: update them once and retry.
if ! (cd "$work" && apt-get download -qq kubernetes-client >/dev/null 2>&1); then
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq >&2
    (cd "$work" && apt-get download -qq kubernetes-client >/dev/null)
fi
dpkg-deb -x "$work"/kubernetes-client_*.deb "$dir"
"$bin" version --client >/dev/null 2>&1 || { echo "unpacked kubectl does not run" >&2; exit 1; }
echo "$bin"
