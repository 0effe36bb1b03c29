#!/usr/bin/env bash
# Prints the path of a python interpreter in a cached venv that has a
# requirements file installed. Without arguments: Triton's official Python
# clients (tests/interop/requirements.txt, for tests/interop/) in interop-venv.
#
#   py="$(tests/rig/python-venv.sh)" && "$py" tests/interop/tritonclient_check.py GRPC HTTP
#   py="$(tests/rig/python-venv.sh deploy-venv tests/deploy/requirements.txt 'import yaml')"
#
# Arguments: NAME (the venv's folder), REQUIREMENTS (a file), and an optional
# python statement that must run in a usable venv (e.g. the imports it needs).
# The venv lives at ${XDG_CACHE_HOME:-$HOME/.cache}/mlgw/NAME and is reused
# while the sha256 of the requirements file equals the stamp in the venv
# (.mlgw-requirements.sha256, written only after a successful install). Otherwise
# the venv is made anew and `pip install -r` runs (pip's own cache is used as usual).
# Concurrent runs are serialised with flock. The base interpreter is $MLGW_PYTHON,
# else python3 (>= 3.9). Progress goes to stderr, stdout carries only the path.
# On failure: pip's output tail on stderr and a non-zero exit.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
name="${1:-interop-venv}"
req="${2:-$root/tests/interop/requirements.txt}"
check="${3:-}"
[[ "$req" == /* ]] || req="$root/$req"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/mlgw"
venv="$cache/$name"
stamp="$venv/.mlgw-requirements.sha256"
log="$venv/.mlgw-pip.log"
base_python="${MLGW_PYTHON:-python3}"

rig_prefix="$name"
# shellcheck source=tests/rig/lib.sh
. "$here/lib.sh"

[[ -f "$req" ]] || die "$req not found"
want="$(sha256sum "$req" | cut -d' ' -f1)"

# Healthy and up to date: the interpreter runs and the stamp matches.
usable() {
  [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && "$venv/bin/python" -c "$check" 2>/dev/null
}

mkdir -p "$cache"
lock "$venv.lock"

if ! usable; then
  t0=$SECONDS
  command -v "$base_python" >/dev/null || die "$base_python not found (set MLGW_PYTHON to a python >= 3.9)"
  "$base_python" -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
    || die "$("$base_python" --version 2>&1) is too old: the test tools need python >= 3.9 (set MLGW_PYTHON)"
  if [[ -e "$venv" ]]; then
    say "requirements changed or venv unusable: recreating $venv"
    rm -rf "$venv"
  fi
  say "creating $venv ($("$base_python" --version 2>&1)) and installing ${req#"$root"/}..."
  venv_out="$("$base_python" -m venv "$venv" 2>&1)" || {
    rm -rf "$venv"
    printf '%s\n' "$venv_out" >&2
    die "'$base_python -m venv' failed (on Debian: apt-get install python3-venv)"
  }
  if ! "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$req" >"$log" 2>&1; then
    {
      echo "---- last 40 lines of pip's output ($log) ----"
      tail -n 40 "$log"
      echo "---- end of pip's output ----"
    } >&2
    die "pip install -r ${req#"$root"/} failed"
  fi
  echo "$want" >"$stamp"
  say "ready in $((SECONDS - t0))s"
fi

echo "$venv/bin/python"
