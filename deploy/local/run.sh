#!/usr/bin/env bash
# Runs the whole product on one machine with the embedded feature store: the
# model-server with the example fraud model, demo feature data for 10,000
# customers loaded by a real refresh job, and the gateway in front. Prints
# ready-to-paste curl and grpcurl lines carrying the dev issuer's token, then
# serves until Ctrl-C.
#
#   deploy/local/run.sh            # ports: gateway 8080 (REST) / 8081 (gRPC),
#                                  #        model-server 8000 / 8001
#
# Everything it writes is under target/mlgw-demo/. Needs Rust (cargo) and curl.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
DEMO="$ROOT/target/mlgw-demo"
mkdir -p "$DEMO"
DEFS="$ROOT/feature-store/definitions/example.toml"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"

die() { echo "run.sh: $*" >&2; exit 1; }

echo "==> building (release; the first build takes several minutes)"
cargo build --release --locked -p model-server -p gateway -p feature-store

for port in 8000 8001 8080 8081; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port is in use; stop what listens there (an earlier run?) and retry"
  fi
done

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

echo "==> starting the model-server (example fraud model)"
"$BIN/model-server" --model-repository "$ROOT/model-server/models" \
  --http-port 8000 --grpc-port 8001 >"$DEMO/model-server.out" 2>"$DEMO/model-server.log" &
pids+=($!)

echo "==> loading demo features into $DEMO/features.redb"
export MLGW_FEATURES_EMBEDDED="$DEMO/features.redb"
"$BIN/mlgw-features" schema apply >/dev/null
# 10,000 customers with plausible profiles (deterministic, no randomness).
awk 'BEGIN {
  print "customer_id,account_age_days,avg_txn_amount_30d,txn_count_30d,chargeback_count_1y,home_country_risk"
  for (i = 0; i < 10000; i++)
    printf "c-%04d,%d,%.2f,%d,%d,%.2f\n", i, 30 + (i * 37) % 3000, 15 + (i * 13) % 200 + 0.5, (i * 7) % 90, (i % 23 == 0) ? 2 : 0, ((i * 11) % 100) / 100
}' >"$DEMO/customer_profile.csv"
"$BIN/mlgw-features" refresh run -d "$DEFS" --job customer_profile_daily \
  --file "$DEMO/customer_profile.csv" --script-version demo-1
"$BIN/mlgw-features" push -d "$DEFS" --view customer_activity --entity c-0042 \
  --set distinct_merchants_24h=6 --set minutes_since_last_txn=1.5 >/dev/null
# The windowed aggregates are computed by the store from raw events: three
# transactions in the last hour (txn_count_1h = 3, txn_amount_sum_1h = 2350)
# and four failed authorisations (failed_auth_count_24h = 4), all at start-up
# (an hour later the transactions have left their window).
for t in "t-1 1200" "t-2 800" "t-3 350"; do
  read -r id amount <<<"$t"
  "$BIN/mlgw-features" push -d "$DEFS" --view customer_activity --entity c-0042 \
    --field transaction_id="$id" --field amount="$amount" --event-id "$id" >/dev/null
done
for f in f-1 f-2 f-3 f-4; do
  "$BIN/mlgw-features" push -d "$DEFS" --view customer_activity --entity c-0042 \
    --field failed_auth_id="$f" --event-id "$f" >/dev/null
done

# The merchants' embeddings; the refresh also builds their similarity index.
"$BIN/mlgw-features" refresh run -d "$DEFS" --job merchant_embedding_weekly \
  --file "$ROOT/feature-store/definitions/exports/merchant_embedding.csv"

# Wait for the model-server before the gateway checks its models.
for _ in $(seq 1 300); do
  if (exec 3<>/dev/tcp/127.0.0.1/8000) 2>/dev/null \
    && grep -q "ready" "$DEMO/model-server.out" 2>/dev/null; then break; fi
  kill -0 "${pids[0]}" 2>/dev/null || { tail -20 "$DEMO/model-server.log" >&2; die "the model-server exited"; }
  sleep 0.2
done

echo "==> starting the gateway (gateway/config/gateway.toml)"
"$BIN/gateway" --config "$ROOT/gateway/config/gateway.toml" \
  >"$DEMO/gateway.out" 2>"$DEMO/gateway.log" &
pids+=($!)
for _ in $(seq 1 150); do
  grep -q "^gateway listening" "$DEMO/gateway.out" 2>/dev/null && break
  kill -0 "${pids[1]}" 2>/dev/null || { tail -20 "$DEMO/gateway.log" >&2; die "the gateway exited"; }
  sleep 0.2
done
grep -q "^gateway listening" "$DEMO/gateway.out" || die "the gateway did not start; see $DEMO/gateway.log"

TOKEN="$(sed -n 's/^dev token ([^)]*): //p' "$DEMO/gateway.out" | head -n 1)"
[[ -n "$TOKEN" ]] || die "the gateway printed no dev token; see $DEMO/gateway.out"
EXPIRES="$(sed -n 's/^dev token (.*expires \([^)]*\)).*/\1/p' "$DEMO/gateway.out" | head -n 1)"
echo "$TOKEN" >"$DEMO/dev-token"

echo "==> scoring customer_risk for the 10,000 customers (inside the gateway)"
curl -sf -X POST localhost:8080/v1/admin/scoring/jobs/customer_risk_daily/run \
  -H "Authorization: Bearer $TOKEN" >/dev/null || die "the scoring run did not start; see $DEMO/gateway.log"
for _ in $(seq 1 150); do
  curl -sf localhost:8080/v1/admin/scoring/jobs/customer_risk_daily/batches -H "Authorization: Bearer $TOKEN" \
    | grep -q '"served":true' && break
  sleep 0.2
done

cat <<TXT

The product is running: gateway REST on 127.0.0.1:8080, gRPC on 127.0.0.1:8081;
model-server on 8000/8001. Logs: target/mlgw-demo/*.log. Ctrl-C stops everything.

Every call needs an SSO token. This demo uses the gateway's own dev issuer
([auth] mode = "dev" in gateway/config/gateway.toml; refused in production):
the lines below carry its token (subject dev-user, group fraud-team, expires
$EXPIRES), also kept in target/mlgw-demo/dev-token.

A prediction for customer c-0042 (busy recent activity) over REST:

  curl -s localhost:8080/v1/models/fraud_detector/predict -H "Authorization: Bearer $TOKEN" \\
    -H 'content-type: application/json' \\
    -d '{"entity": {"customer_id": "c-0042"}, "request_features": {"amount": 980.0, "is_card_present": false, "hour_of_day": 3, "distance_from_home_km": 1200}}'

The same over gRPC (reflection is on):

  grpcurl -plaintext -H "authorization: Bearer $TOKEN" \\
    -d '{"model": "fraud_detector", "entity": {"keys": {"customer_id": "c-0042"}},
    "request_features": {"amount": {"double_value": 980}, "is_card_present": {"bool_value": false},
    "hour_of_day": {"int64_value": 3}}}' localhost:8081 gateway.v1.PredictionService/Predict

Without the header both answer 401 / UNAUTHENTICATED.

The web console (models and rollouts, refresh jobs with the tuner's plot,
live figures), signed in through the dev issuer's sign-in page:

  open http://127.0.0.1:8080/console/

Precomputed predictions: customer_risk answers from the batch the scoring job
just wrote ("source": "precomputed", with the batch and its age); an unknown
customer is computed live:

  curl -s localhost:8080/v1/models/customer_risk/predict -H "Authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' -d '{"entity": {"customer_id": "c-0042"}}'
  curl -s localhost:8080/v1/admin/scoring/jobs/customer_risk_daily/batches -H "Authorization: Bearer $TOKEN"

txn_pattern is keyed by the combination of its inputs (amount and hour
binned): live until its job scores the week's most frequent patterns from the
prediction log; then any amount in the same bin answers from the store:

  curl -s localhost:8080/v1/models/txn_pattern/predict -H "Authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' \
    -d '{"request_features": {"merchant_category": 5411, "merchant_country": 840, "amount": 42.0, "hour_of_day": 9, "is_card_present": true}}'
  curl -s -X POST localhost:8080/v1/admin/scoring/jobs/txn_pattern_hourly/run -H "Authorization: Bearer $TOKEN"

Rollout: version 1 answers; version 2 (the MLP) and version 3 (the boosted
trees) run as silent shadows. Compare them, then try a canary (and roll it
back):

  $BIN/mlgw-admin --token-file target/mlgw-demo/dev-token shadow-report fraud_detector
  $BIN/mlgw-admin --token-file target/mlgw-demo/dev-token canary fraud_detector 2 --percent 10
  $BIN/mlgw-admin --token-file target/mlgw-demo/dev-token rollback fraud_detector

Similar merchants: the 2,000 merchants' embeddings (a vector(64) view,
trained from co-occurrence) are indexed; the 5 nearest to m-00042, then the
same over gRPC:

  curl -s localhost:8080/v1/similar/merchant_embedding -H "Authorization: Bearer $TOKEN" \\
    -H 'content-type: application/json' -d '{"entity": {"merchant_id": "m-00042"}, "k": 5}'
  grpcurl -plaintext -H "authorization: Bearer $TOKEN" \\
    -d '{"view": "merchant_embedding", "entity": {"keys": {"merchant_id": "m-00042"}}, "k": 5}' \\
    localhost:8081 gateway.v1.SimilarityService/Similar

How small could the embeddings be? Recall against exact search, latency and
memory for smaller dimensions, from the export file (table and plot in
target/mlgw-demo/sizing):

  $BIN/mlgw-features index size -d feature-store/definitions/example.toml --view merchant_embedding \\
    --file feature-store/definitions/exports/merchant_embedding.csv --out target/mlgw-demo/sizing

The model-server serves four versions of fraud_detector: 1 logistic
regression, 2 MLP, 3 gradient-boosted trees (300 trees), 4 random forest;
calls naming no version get its default_version, 2. Put the boosted trees
on a canary, or ask the model-server directly (its repository index, then
one row scored by the trees):

  $BIN/mlgw-admin --token-file target/mlgw-demo/dev-token canary fraud_detector 3 --percent 10
  curl -s -X POST localhost:8000/v2/repository/index
  curl -s localhost:8000/v2/models/fraud_detector/versions/3/infer -H 'content-type: application/json' \\
    -d '{"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 15], "data": [38, 69.32, 7, 0, 0.026, 1, 41.91, 1, 2, 41.5, 1184.56, 0.234, 0, 13, 795.6]}]}'

TXT
wait -n "${pids[@]}" || true
echo "run.sh: a process exited; stopping" >&2
