#!/usr/bin/env bash
# Start/stop the headless browser for the console's tests: Debian's Chromium
# driven through ChromeDriver (WebDriver) on 127.0.0.1.
#
#   RIG_DIR=/tmp/rig tests/rig/chromium.sh start   # writes $RIG_DIR/chromium.env
#   RIG_DIR=/tmp/rig tests/rig/chromium.sh stop
#
# The packages (chromium, chromium-driver) are installed with apt-get when
# missing, which needs root; without them the run fails, it never skips.
# $RIG_DIR/chromium.env gives MLGW_TEST_WEBDRIVER (ChromeDriver's URL) and
# MLGW_TEST_CHROMIUM (the browser binary the tests ask ChromeDriver for).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${RIG_DIR:?RIG_DIR must be set (directory for the rig state, created by the caller)}"
mkdir -p "$RIG_DIR"
RIG_DIR="$(cd "$RIG_DIR" && pwd)"

log="$RIG_DIR/chromedriver.log"
pidfile="$RIG_DIR/chromedriver.pid"
envfile="$RIG_DIR/chromium.env"
browser=/usr/bin/chromium
driver=/usr/bin/chromedriver
rig_prefix="rig: chromium"
# shellcheck source=tests/rig/lib.sh
. "$here/lib.sh"

ensure_packages() {
  [[ -x "$browser" && -x "$driver" ]] && return 0
  [[ "$(id -u)" == 0 ]] || die "Chromium is not installed and this user cannot install it: run 'apt-get install chromium chromium-driver' as root"
  lock "${XDG_CACHE_HOME:-$HOME/.cache}/mlgw-chromium-apt.lock"
  [[ -x "$browser" && -x "$driver" ]] && return 0
  say "installing chromium and chromium-driver (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends chromium chromium-driver >"$RIG_DIR/chromium-apt.log" 2>&1; then
    # A fresh machine may not have the package lists yet.
    apt-get update >>"$RIG_DIR/chromium-apt.log" 2>&1 || true
    apt-get install -y --no-install-recommends chromium chromium-driver >>"$RIG_DIR/chromium-apt.log" 2>&1 ||
      { log="$RIG_DIR/chromium-apt.log"; fail "apt-get could not install chromium and chromium-driver"; }
  fi
  [[ -x "$browser" && -x "$driver" ]] || die "apt-get ran but $browser or $driver is missing"
}

is_ours() {
  local pid="$1"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'chromedriver'
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
      kill -KILL "$pid" 2>/dev/null || true
      echo "rig: chromedriver stopped (pid $pid)"
    fi
    rm -f "$pidfile"
  fi
  # Browsers a killed test left behind (each has its own profile folder under RIG_DIR).
  pkill -f -- "--user-data-dir=$RIG_DIR/chromium-" 2>/dev/null || true
  rm -f "$envfile"
}

start() {
  stop
  ensure_packages
  local port
  port="$(python3 "$here/pick-ports.py" 1)"
  "$driver" --port="$port" --allowed-ips=127.0.0.1 >"$log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$port/status" 2>/dev/null | grep -q '"ready": *true'; then
      {
        echo "MLGW_TEST_WEBDRIVER=http://127.0.0.1:$port"
        echo "MLGW_TEST_CHROMIUM=$browser"
        echo "MLGW_TEST_CHROMIUM_PROFILES=$RIG_DIR"
      } >"$envfile"
      echo "rig: chromedriver ready on 127.0.0.1:$port ($("$browser" --version 2>/dev/null | head -1))"
      return 0
    fi
    is_ours "$(cat "$pidfile")" || fail "chromedriver exited at start"
    sleep 0.1
  done
  fail "chromedriver did not answer /status within 10 s"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) die "usage: $0 start|stop" ;;
esac
