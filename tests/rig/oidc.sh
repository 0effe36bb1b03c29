#!/usr/bin/env bash
# Start/stop the test SSO provider (oidc-provider on 127.0.0.1) for mlgw integration tests.
#
#   RIG_DIR=/tmp/rig tests/rig/oidc.sh start   # writes $RIG_DIR/oidc.env (MLGW_TEST_OIDC_ISSUER=...)
#   RIG_DIR=/tmp/rig tests/rig/oidc.sh stop
#   RIG_DIR=/tmp/rig tests/rig/oidc.sh rotate  # new signing key first, old ones still published
#   RIG_DIR=/tmp/rig tests/rig/oidc.sh retire  # publish only the newest key
#
# Optional env for `start`: OIDC_PORT (default: a free port below the ephemeral range), OIDC_JWKS_FILE (reuse/rotate keys),
# OIDC_TOKEN_TTL (seconds, default 600). See tests/rig/README.md.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
app="$here/oidc"

: "${RIG_DIR:?RIG_DIR must be set (directory for the rig state, created by the caller)}"
mkdir -p "$RIG_DIR"
RIG_DIR="$(cd "$RIG_DIR" && pwd)"
export RIG_DIR

log="$RIG_DIR/oidc.log"
pidfile="$RIG_DIR/oidc.pid"
envfile="$RIG_DIR/oidc.env"
start_timeout="${OIDC_START_TIMEOUT:-30}"
rig_prefix="rig: oidc-provider"
# shellcheck source=tests/rig/lib.sh
. "$here/lib.sh"

# Is $1 a live process running our server.mjs? (guards against pid reuse)
is_ours() {
  local pid="$1"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'server\.mjs'
}

ensure_deps() {
  command -v node >/dev/null || fail "node is not installed (needs Node.js >= 20.18)"
  command -v npm >/dev/null || fail "npm is not installed"
  command -v curl >/dev/null || fail "curl is not installed"
  local major
  major="$(node -p 'process.versions.node.split(".")[0]')"
  (( major >= 20 )) || fail "Node.js >= 20.18 required, found $(node --version)"

  # Reinstall when node_modules is missing or was installed from a different lock file.
  local want have="" stamp="$app/node_modules/.mlgw-lock.sha256"
  want="$(sha256sum "$app/package-lock.json" | cut -d' ' -f1)"
  [[ -f "$stamp" ]] && have="$(cat "$stamp")"
  if [[ ! -d "$app/node_modules/oidc-provider" || "$want" != "$have" ]]; then
    local cache="${XDG_CACHE_HOME:-$HOME/.cache}/mlgw/npm"
    mkdir -p "$cache"
    echo "rig: oidc-provider: npm ci (cache $cache)" >&2
    if ! (cd "$app" && npm ci --cache "$cache" --prefer-offline --no-audit --no-fund --loglevel=error) >"$RIG_DIR/oidc-npm.log" 2>&1; then
      cat "$RIG_DIR/oidc-npm.log" >&2
      fail "npm ci failed in $app (see above)"
    fi
    echo "$want" >"$stamp"
  fi
}

stop() {
  local pid
  if [[ -f "$pidfile" ]]; then
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    if is_ours "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      if kill -0 "$pid" 2>/dev/null; then
        echo "rig: oidc-provider (pid $pid) ignored TERM, sending KILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
      fi
      echo "rig: oidc-provider stopped (pid $pid)"
    fi
    rm -f "$pidfile"
  fi
  rm -f "$envfile"
}

start() {
  local t0 pid issuer="" version elapsed
  t0="$(date +%s%N)"

  if [[ -f "$pidfile" ]] && is_ours "$(cat "$pidfile")"; then
    echo "rig: oidc-provider already running (pid $(cat "$pidfile")), restarting it" >&2
    stop >/dev/null
  fi
  rm -f "$envfile"

  ensure_deps
  version="$(node -p 'require(process.argv[1]).version' "$app/node_modules/oidc-provider/package.json")"

  # Not port 0: stop / start and key rotation restart it on the same port,
  # so it must come from below the ephemeral range (pick-ports.py says why).
  if [[ -z "${OIDC_PORT:-}" || "${OIDC_PORT}" == "0" ]]; then
    OIDC_PORT="$(python3 "$here/pick-ports.py" 1)" || fail "no free port for the provider"
    export OIDC_PORT
  fi

  : >"$log"
  (cd "$app" && exec node server.mjs) </dev/null >>"$log" 2>&1 &
  pid=$!
  echo "$pid" >"$pidfile"

  local deadline=$(( $(date +%s) + start_timeout ))
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      local rc=0
      wait "$pid" || rc=$?
      rm -f "$pidfile"
      fail "process exited during startup (exit code $rc)"
    fi
    if [[ -z "$issuer" ]]; then
      issuer="$(sed -n 's/^oidc-provider ready issuer=\(http[^ ]*\)$/\1/p' "$log" | tail -n 1)"
    fi
    if [[ -n "$issuer" ]] && curl -fsS --max-time 2 "$issuer/.well-known/openid-configuration" 2>/dev/null \
        | grep -qF "\"issuer\":\"$issuer\""; then
      break
    fi
    if (( $(date +%s) >= deadline )); then
      kill -KILL "$pid" 2>/dev/null || true
      rm -f "$pidfile"
      fail "not ready after ${start_timeout}s (issuer=${issuer:-unknown}); killed pid $pid"
    fi
    sleep 0.2
  done

  {
    echo "MLGW_TEST_OIDC_ISSUER=$issuer"
    echo "MLGW_TEST_OIDC_AUDIENCE=mlgw-gateway"
    echo "MLGW_TEST_OIDC_KEYS_FILE=${OIDC_JWKS_FILE:-$RIG_DIR/oidc-keys.json}"
  } >"$envfile"

  elapsed="$(( ($(date +%s%N) - t0) / 1000000 ))"
  printf 'rig: oidc-provider %s ready at %s in %d.%01ds (pid %s)\n' \
    "$version" "$issuer" $(( elapsed / 1000 )) $(( (elapsed % 1000) / 100 )) "$pid"
}

# rotate|retire: write a new key file from the one in use and restart the running
# provider on the same port with it (same issuer; a short outage while it restarts).
rekey() {
  local cmd="$1" issuer keys port next
  [[ -f "$envfile" ]] || fail "$cmd: no running provider in $RIG_DIR (start it first)"
  issuer="$(sed -n 's/^MLGW_TEST_OIDC_ISSUER=//p' "$envfile")"
  keys="$(sed -n 's/^MLGW_TEST_OIDC_KEYS_FILE=//p' "$envfile")"
  port="${issuer##*:}"
  [[ "$port" =~ ^[0-9]+$ && -f "$keys" ]] || fail "$cmd: cannot read issuer/keys from $envfile"
  next="$RIG_DIR/oidc-keys-$(date +%s%N).json"
  node "$app/keys.mjs" "$cmd" "$keys" "$next" >/dev/null || fail "$cmd: keys.mjs failed"
  stop >/dev/null
  OIDC_PORT="$port" OIDC_JWKS_FILE="$next" start
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  rotate) rekey rotate ;;
  retire) rekey retire ;;
  *) echo "usage: RIG_DIR=DIR $0 start|stop|restart|rotate|retire" >&2; exit 2 ;;
esac
