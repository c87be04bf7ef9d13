#!/usr/bin/env bash
# Install every Debian package berth's build, tests and hack scripts need.
# Idempotent and fast: packages already installed (dpkg -s) are skipped, and
# `apt-get update` runs at most once, only when something must be installed.
set -euo pipefail

PKGS=(
  protobuf-compiler
  docker-registry
  runc
  containerd
  skopeo
  umoci
  containernetworking-plugins
  busybox-static
  debootstrap
  nftables
  iproute2
  netcat-openbsd
  iputils-ping
  apache2-utils
  jq
  systemd
  openssl
  python3
  zstd
  ca-certificates
  debian-archive-keyring
  curl
  attr
  xz-utils
  pkg-config
  build-essential
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg -s "$p" >/dev/null 2>&1 || ! dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed'; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "deps: all ${#PKGS[@]} packages present"
else
  echo "deps: installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  echo "deps: done"
fi

# Debian's kubectl 1.20 (SPDY-only streaming) for e2e/tests/kubectl.rs, unpacked, not installed.
echo "deps: kubectl 1.20 at $(bash "$(dirname "$0")/kubectl-old.sh")"
