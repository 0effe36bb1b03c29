#!/usr/bin/env bash
# Start/stop our model-server with the example model on 127.0.0.1 for the tests.
#
#   RIG_DIR=/tmp/rig MODEL_SERVER_BIN=target/debug/model-server tests/rig/model-server.sh start
#   RIG_DIR=/tmp/rig tests/rig/model-server.sh stop
#
# `start` waits until /v2/health/ready answers 200 (every model loaded and warmed
# up), then writes $RIG_DIR/model-server.env with MLGW_TEST_MODEL_SERVER_HTTP and
# MLGW_TEST_MODEL_SERVER_GRPC. A server that exits or is not ready within
# MODEL_SERVER_READY_TIMEOUT_S (default 60) fails loudly with its log tail.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
: "${RIG_DIR:?RIG_DIR must be set (directory for the rig state, created by the caller)}"
log="$RIG_DIR/model-server.log"
out="$RIG_DIR/model-server.out"
pidfile="$RIG_DIR/model-server.pid"
envfile="$RIG_DIR/model-server.env"
timeout_s="${MODEL_SERVER_READY_TIMEOUT_S:-60}"
rig_prefix="rig: model-server"
# shellcheck source=tests/rig/lib.sh
. "$here/lib.sh"

start() {
  local bin="${MODEL_SERVER_BIN:-$root/target/debug/model-server}"
  [[ -x "$bin" ]] || fail "binary $bin not found; build it first (cargo build --workspace --bins)"
  local repo="${MODEL_REPOSITORY:-$root/model-server/models}"
  local t0=$SECONDS
  "$bin" --model-repository "$repo" --http-port 0 --grpc-port 0 --host 127.0.0.1 >"$out" 2>"$log" &
  local pid=$!
  echo "$pid" >"$pidfile"
  local line="" http="" grpc=""
  while (( SECONDS - t0 < timeout_s )); do
    kill -0 "$pid" 2>/dev/null || fail "process $pid exited before it was ready"
    if [[ -z "$http" ]] && line="$(grep -m1 '^model-server listening' "$out" 2>/dev/null)"; then
      http="$(sed -E 's/.*http=([^ ]+).*/\1/' <<<"$line")"
      grpc="$(sed -E 's/.*grpc=([^ ]+).*/\1/' <<<"$line")"
    fi
    if [[ -n "$http" ]] && curl -fsS -o /dev/null --max-time 2 "http://$http/v2/health/ready"; then
      {
        echo "MLGW_TEST_MODEL_SERVER_HTTP=http://$http"
        echo "MLGW_TEST_MODEL_SERVER_GRPC=http://$grpc"
      } >"$envfile"
      echo "rig: model-server ready (models loaded and warmed up) http=$http grpc=$grpc in $((SECONDS - t0))s (pid $pid)"
      return 0
    fi
    sleep 0.2
  done
  kill "$pid" 2>/dev/null || true
  fail "not ready after ${timeout_s}s"
}

stop() {
  [[ -f "$pidfile" ]] || return 0
  local pid
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    echo "rig: model-server (pid $pid) stopped"
  fi
  rm -f "$pidfile"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
