#!/usr/bin/env bash
# Builds berth-shim as a static binary and copies it to DEST.
#
#   hack/build-shim.sh [--release|--debug] DEST     (default --debug)
#
# One shim runs per container, so its RSS matters (target <= 1 MiB): a static musl binary is
# about a third of a dynamic glibc one. Without the musl target (and no rustup to add it) the
# shim is built static against glibc instead, with a warning. berthd looks for the shim next to
# its own binary, e.g. `hack/build-shim.sh target/debug/berth-shim`.
#
# --release also sets, for this build only (environment variables, not the workspace profile,
# which berthd shares): opt-level "z" (~60 kB less RSS than "s" here), fat LTO, one codegen
# unit, panic=abort, stripped symbols.
# The artifacts live under the target triple's own directory (target/<triple>/...), so they
# never clobber berthd's target/debug or target/release. CARGO_TARGET_DIR is honoured;
# BERTH_SHIM_NO_MUSL=1 forces the glibc fallback (to test it).
set -euo pipefail

usage() {
    echo "usage: $0 [--release|--debug] DEST" >&2
    exit 2
}

profile=debug
case "${1:-}" in
--release)
    profile=release
    shift
    ;;
--debug) shift ;;
-h | --help) usage ;;
esac
[[ $# -eq 1 ]] || usage
dest=$1

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

musl=x86_64-unknown-linux-musl
host=$(rustc -vV | sed -n 's/^host: //p')

have_musl() {
    rustup target list --installed 2>/dev/null | grep -qx "$musl"
}

if [[ -z ${BERTH_SHIM_NO_MUSL:-} ]] && { have_musl || { command -v rustup >/dev/null && rustup target add "$musl" >&2 && have_musl; }; }; then
    target=$musl
    kind=musl
    rustflags=${RUSTFLAGS:-}
else
    echo "warning: Rust target $musl is unavailable; building a static glibc berth-shim" \
        "(about twice the RSS of the musl one, over the 1 MiB budget)" >&2
    target=$host
    kind="glibc static"
    # RUSTFLAGS apply to the target only because --target is given: build scripts and proc
    # macros stay ordinary host binaries.
    rustflags="-C target-feature=+crt-static -C relocation-model=static"
fi

args=(build -p berth-shim --target "$target")
if [[ $profile == release ]]; then
    args+=(--release)
    export CARGO_PROFILE_RELEASE_OPT_LEVEL=z
    export CARGO_PROFILE_RELEASE_LTO=fat
    export CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
    export CARGO_PROFILE_RELEASE_PANIC=abort
    export CARGO_PROFILE_RELEASE_STRIP=symbols
fi

RUSTFLAGS=$rustflags cargo "${args[@]}"

bin="${CARGO_TARGET_DIR:-$root/target}/$target/$profile/berth-shim"
[[ -x $bin ]] || {
    echo "error: cargo built no $bin" >&2
    exit 1
}
if command -v file >/dev/null && ! file -L "$bin" | grep -q "statically linked\|static-pie linked"; then
    echo "warning: $bin is not statically linked: $(file -L "$bin")" >&2
fi

if [[ -d $dest || $dest == */ ]]; then
    dest="${dest%/}/berth-shim"
fi
mkdir -p "$(dirname "$dest")"
# Copy then rename: a running shim keeps its old inode, and a berthd starting one never
# execs a half-written file.
cp "$bin" "$dest.tmp.$$"
chmod 0755 "$dest.tmp.$$"
mv -f "$dest.tmp.$$" "$dest"
echo "berth-shim ($kind, $profile, $(stat -c %s "$dest") bytes) -> $dest" >&2
