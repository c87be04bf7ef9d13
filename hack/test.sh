#!/usr/bin/env bash
# berth's full test suite: fmt, clippy, unit tests, then e2e against local registries.
#   hack/test.sh              everything
#   BERTH_SKIP_LINT=1         skip fmt/clippy   BERTH_SKIP_UNIT=1  skip unit tests
#   BERTH_SKIP_E2E=1          skip e2e           BERTH_BIG_IMAGE=1  also build the debian image
# Extra args are passed to the e2e cargo test (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export BERTH_HACK_DIR="${BERTH_HACK_DIR:-/var/tmp/berth-hack}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { echo; echo "=== $* ==="; }

# Every cargo test's output is also kept here so the run can end with one total line.
results=$(mktemp)
trap 'rm -f "$results"' EXIT
tally() {
  awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
       END { printf "total: %d passed, %d failed\n", p, f }' "$results"
}

if [ "${BERTH_SKIP_LINT:-0}" != 1 ]; then
  step "cargo fmt --check"
  cargo fmt --all -- --check
  step "cargo clippy"
  cargo clippy --workspace --all-targets -- -D warnings
fi

if [ "${BERTH_SKIP_UNIT:-0}" != 1 ]; then
  step "unit tests"
  cargo test --workspace --exclude berth-e2e 2>&1 | tee -a "$results"
fi

if [ "${BERTH_SKIP_E2E:-0}" != 1 ]; then
  step "build binaries"
  cargo build --bins
  # One shim runs per container: it is built static (musl where available) to stay small.
  bash hack/build-shim.sh target/debug/berth-shim
  step "registries + test images"
  trap 'bash hack/registry.sh stop || true; rm -f "$results"' EXIT
  bash hack/registry.sh start
  bash hack/build-images.sh
  step "e2e tests"
  export BERTH_E2E_REQUIRE=1
  export BERTHD_BIN="${BERTHD_BIN:-$PWD/target/debug/berthd}"
  cargo test -p berth-e2e -- --test-threads=1 "$@" 2>&1 | tee -a "$results"
  bash hack/registry.sh stop
  trap 'rm -f "$results"' EXIT
fi

tally
