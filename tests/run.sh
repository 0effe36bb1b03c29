#!/usr/bin/env bash
# The whole test suite, from a fresh clone: formatting and lint checks, the build,
# the real parts (Cassandra, Kafka, oidc-provider, Chromium with ChromeDriver, our
# model-server with the example model) started on 127.0.0.1, then every unit and
# integration test.
#
#   ./tests/run.sh
#
# Downloads (Cassandra jars, npm packages) and build outputs are cached under
# ${XDG_CACHE_HOME:-$HOME/.cache}/mlgw. A part that cannot start fails the run with
# its log tail; everything started is stopped on exit, also on failure.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/mlgw"
mkdir -p "$cache"
# Shared build cache, so a fresh clone (CI) does not rebuild every dependency.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/cargo-target}"
# Two cores: bound the build and the test threads (each test starts processes).
jobs="${MLGW_TEST_JOBS:-2}"

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -j "$jobs" -- -D warnings

step "cargo build --workspace --all-targets"
cargo build --workspace --all-targets --locked -j "$jobs"

summary=""
RIG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/mlgw-rig.XXXXXX")"
export RIG_DIR
# The build cache may be shared with other checkouts, whose builds overwrite
# target/debug/<bin>: the tests run private copies of the binaries just built
# (rig::binary and model-server.sh read these variables).
mkdir -p "$RIG_DIR/bin"
for bin in gateway model-server mlgw-features mlgw-admin mlgw-score; do
  cp "$CARGO_TARGET_DIR/debug/$bin" "$RIG_DIR/bin/$bin"
done
export MLGW_GATEWAY_BIN="$RIG_DIR/bin/gateway"
export MLGW_MODEL_SERVER_BIN="$RIG_DIR/bin/model-server"
export MLGW_MLGW_FEATURES_BIN="$RIG_DIR/bin/mlgw-features"
export MLGW_MLGW_ADMIN_BIN="$RIG_DIR/bin/mlgw-admin"
export MLGW_MLGW_SCORE_BIN="$RIG_DIR/bin/mlgw-score"
cleanup() {
  local rc=$?
  step "stopping the rig"
  tests/rig/model-server.sh stop || true
  tests/rig/oidc.sh stop || true
  tests/rig/chromium.sh stop || true
  tests/rig/kafka.sh stop || true
  tests/rig/cassandra.sh stop || true
  if [[ $rc -eq 0 ]]; then rm -rf "$RIG_DIR"; else echo "rig state kept in $RIG_DIR"; fi
  if [[ -n "$summary" ]]; then printf '\n%s\n' "$summary"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "starting the real parts"
tests/rig/cassandra.sh start
tests/rig/kafka.sh start
tests/rig/oidc.sh start
tests/rig/chromium.sh start
MODEL_SERVER_BIN="$MLGW_MODEL_SERVER_BIN" tests/rig/model-server.sh start
# Python with NVIDIA's tritonclient, for the interoperability test.
MLGW_TEST_INTEROP_PYTHON="$(tests/rig/python-venv.sh)"
export MLGW_TEST_INTEROP_PYTHON
echo "rig: interop python ready: $MLGW_TEST_INTEROP_PYTHON"
# kubernetes-validate and the Compose Specification's schema, for the deploy test.
tests/rig/deploy-tools.sh >"$RIG_DIR/deploy.env"
echo "rig: deploy validators ready: $(tr '\n' ' ' <"$RIG_DIR/deploy.env")"
set -a
# shellcheck disable=SC1091
. "$RIG_DIR/cassandra.env"
# shellcheck disable=SC1091
. "$RIG_DIR/kafka.env"
# shellcheck disable=SC1091
. "$RIG_DIR/oidc.env"
# shellcheck disable=SC1091
. "$RIG_DIR/chromium.env"
# shellcheck disable=SC1091
. "$RIG_DIR/model-server.env"
# shellcheck disable=SC1091
. "$RIG_DIR/deploy.env"
set +a

step "cargo test --workspace"
status=0
cargo test --workspace --locked --no-fail-fast -j "$jobs" -- --test-threads="$jobs" 2>&1 |
  tee "$RIG_DIR/cargo-test.log" || status=$?
# One closing line over every test binary (cargo prints one "test result" each).
# Printed last, after the rig stops (see cleanup), so it is the run's closing line.
summary="$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed", p, f }' "$RIG_DIR/cargo-test.log")"
exit "$status"
