"""Turns the benchmark's CSV exports into the Feast repo's parquet sources.

    python load.py PROFILES_CSV ACTIVITY_CSV DATA_DIR

with MLGW_FEAST_CASSANDRA_HOST, MLGW_FEAST_CASSANDRA_PORT and
MLGW_FEAST_KEYSPACE set as for feature_store.yaml.

PROFILES_CSV is what the gateway's refresh job loads (benches::demo::
write_profiles), ACTIVITY_CSV the dynamic values the benchmark writes into
the gateway's store; both are keyed by customer_id. The parquet files get
the feature views' exact types and one event timestamp per view (the
profile: one hour ago, as a daily batch; the activity: one minute ago), so
`feast materialize` over the last two days loads every row. Prints one line
of counts; fails loudly on a missing column or an empty file. It also
creates the keyspace (replication factor 1), which Feast's Cassandra online
store expects to exist before `feast apply` makes its tables.
"""

import os
import sys
from datetime import datetime, timedelta, timezone

import pandas as pd
from cassandra.cluster import Cluster

PROFILE_TYPES = {
    "account_age_days": "int64",
    "avg_txn_amount_30d": "float32",
    "txn_count_30d": "int64",
    "chargeback_count_1y": "int64",
    "home_country_risk": "float32",
}
ACTIVITY_TYPES = {
    "txn_count_1h": "int64",
    "txn_amount_sum_1h": "float64",
    "distinct_merchants_24h": "int64",
    "failed_auth_count_24h": "int64",
    "minutes_since_last_txn": "float32",
}


def convert(csv_path, types, at, out_path):
    frame = pd.read_csv(csv_path, dtype={"customer_id": "string"})
    missing = [c for c in ["customer_id", *types] if c not in frame.columns]
    if missing or frame.empty:
        sys.exit(f"load.py: {csv_path}: missing columns {missing} or no rows")
    frame = frame.astype(types)
    frame["customer_id"] = frame["customer_id"].astype(str)
    frame["event_timestamp"] = pd.Timestamp(at)
    frame.to_parquet(out_path, index=False)
    return len(frame)


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: load.py PROFILES_CSV ACTIVITY_CSV DATA_DIR")
    profiles, activity, data = sys.argv[1:]
    now = datetime.now(timezone.utc).replace(microsecond=0)
    n_profiles = convert(
        profiles, PROFILE_TYPES, now - timedelta(hours=1), f"{data}/customer_profile.parquet"
    )
    n_activity = convert(
        activity, ACTIVITY_TYPES, now - timedelta(minutes=1), f"{data}/customer_activity.parquet"
    )
    host = os.environ["MLGW_FEAST_CASSANDRA_HOST"]
    port = int(os.environ["MLGW_FEAST_CASSANDRA_PORT"])
    keyspace = os.environ["MLGW_FEAST_KEYSPACE"]
    cluster = Cluster([host], port=port, protocol_version=5)
    try:
        session = cluster.connect()
        session.execute(
            f'CREATE KEYSPACE IF NOT EXISTS "{keyspace}" WITH replication = '
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        )
    finally:
        cluster.shutdown()
    print(f"parquet: {n_profiles} profiles, {n_activity} activity rows; keyspace {keyspace}")


if __name__ == "__main__":
    main()
