#!/usr/bin/env bash
# Print an access token (a JWT, aud=mlgw-gateway) from the test SSO provider.
#
#   tests/rig/oidc/token.sh CLIENT_ID [SCOPE] [RESOURCE]
#
# Uses the client_credentials grant with client_secret_basic; the secret is
# "${CLIENT_ID}-secret" unless OIDC_CLIENT_SECRET is set (e.g. to test a wrong one).
# Without SCOPE the token carries the client's registered scope; pass an explicit
# SCOPE (space separated) to narrow it. RESOURCE defaults to urn:mlgw:gateway;
# urn:mlgw:other gives a validly signed token with aud=not-mlgw-gateway.
# The issuer comes from $MLGW_TEST_OIDC_ISSUER, else from $RIG_DIR/oidc.env.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 3 || -z "$1" ]]; then
  echo "usage: $0 CLIENT_ID [SCOPE] [RESOURCE]" >&2
  exit 2
fi
client_id="$1"
scope="${2:-}"
resource="${3:-}"
secret="${OIDC_CLIENT_SECRET-${client_id}-secret}"

if [[ -z "${MLGW_TEST_OIDC_ISSUER:-}" && -n "${RIG_DIR:-}" && -f "$RIG_DIR/oidc.env" ]]; then
  MLGW_TEST_OIDC_ISSUER="$(sed -n 's/^MLGW_TEST_OIDC_ISSUER=//p' "$RIG_DIR/oidc.env")"
fi
issuer="${MLGW_TEST_OIDC_ISSUER:?MLGW_TEST_OIDC_ISSUER must be set (see \$RIG_DIR/oidc.env)}"

args=(--data-urlencode "grant_type=client_credentials")
[[ -n "$scope" ]] && args+=(--data-urlencode "scope=$scope")
[[ -n "$resource" ]] && args+=(--data-urlencode "resource=$resource")

body="$(mktemp)"
trap 'rm -f "$body"' EXIT
code="$(curl -sS --max-time 10 -o "$body" -w '%{http_code}' \
  -u "${client_id}:${secret}" "${args[@]}" "${issuer%/}/token")" || {
  echo "token.sh: request to ${issuer%/}/token failed" >&2
  exit 1
}
if [[ "$code" != 200 ]]; then
  echo "token.sh: HTTP $code from ${issuer%/}/token: $(cat "$body")" >&2
  exit 1
fi
token="$(grep -o '"access_token":"[^"]*"' "$body" | head -n 1 | cut -d'"' -f4)"
if [[ -z "$token" ]]; then
  echo "token.sh: no access_token in response: $(cat "$body")" >&2
  exit 1
fi
printf '%s\n' "$token"
