"""The Feast definitions of the peer benchmark (benches/benches/peer_feast.rs).

They mirror feature-store/definitions/fraud.toml: the entity `customer`
keyed by `customer_id`, the static view `customer_profile` and the dynamic
view `customer_activity` with the same feature names and types, so
`/get-online-features` returns the ten store features the model
`fraud_detector` takes. The offline sources are the parquet files that
load.py writes from the same demo customers the gateway's store holds;
their folder comes from MLGW_FEAST_DATA (set by the benchmark).
"""

import os
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource
from feast.types import Float32, Float64, Int64
from feast.value_type import ValueType

DATA = os.environ["MLGW_FEAST_DATA"]

customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.STRING,
    description="A card holder, keyed c-NNNNNNN as in the gateway's demo data.",
)

profile_source = FileSource(
    name="customer_profile_source",
    path=os.path.join(DATA, "customer_profile.parquet"),
    timestamp_field="event_timestamp",
)

activity_source = FileSource(
    name="customer_activity_source",
    path=os.path.join(DATA, "customer_activity.parquet"),
    timestamp_field="event_timestamp",
)

# max_age 36h in fraud.toml.
customer_profile = FeatureView(
    name="customer_profile",
    entities=[customer],
    ttl=timedelta(hours=36),
    schema=[
        Field(name="account_age_days", dtype=Int64),
        Field(name="avg_txn_amount_30d", dtype=Float32),
        Field(name="txn_count_30d", dtype=Int64),
        Field(name="chargeback_count_1y", dtype=Int64),
        Field(name="home_country_risk", dtype=Float32),
    ],
    online=True,
    source=profile_source,
)

# max_age 24h in fraud.toml.
customer_activity = FeatureView(
    name="customer_activity",
    entities=[customer],
    ttl=timedelta(hours=24),
    schema=[
        Field(name="txn_count_1h", dtype=Int64),
        Field(name="txn_amount_sum_1h", dtype=Float64),
        Field(name="distinct_merchants_24h", dtype=Int64),
        Field(name="failed_auth_count_24h", dtype=Int64),
        Field(name="minutes_since_last_txn", dtype=Float32),
    ],
    online=True,
    source=activity_source,
)

# Both views' features in the model's column order.
fraud_detector = FeatureService(
    name="fraud_detector",
    features=[customer_profile, customer_activity],
)
