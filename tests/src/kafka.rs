//! A private Kafka broker for one test (tests/rig/kafka.sh with its own
//! RIG_DIR), for fault tests that stop and restart it; the shared rig's
//! broker is never touched.

/// A broker in its own RIG_DIR, stopped when dropped.
pub type OwnKafka = crate::OwnRig<crate::Kafka>;

/// The dynamic view of [`activity_definitions`].
pub const ACTIVITY_VIEW: &str = "activity";

/// Feature definitions with one dynamic view, [`ACTIVITY_VIEW`] of the
/// `customer` entity, fed by JSON events on Kafka topic `topic`: windowed
/// counts, sums and a max of the events' `transaction_id`, `amount` and
/// `failed_auth_id` (the ingest tests and bench).
pub fn activity_definitions(topic: &str) -> String {
    format!(
        r#"[[entity]]
name = "customer"
keys = ["customer_id"]

[[dynamic_view]]
name = "{ACTIVITY_VIEW}"
entity = "customer"
ttl = "48h"
max_age = "24h"
source = {{ kafka = {{ topic = "{topic}", encoding = "json" }} }}

[[dynamic_view.feature]]
name = "txn_count_1h"
type = "int64"
default = 0
aggregate = {{ function = "count", window = "1h", of = "transaction_id" }}

[[dynamic_view.feature]]
name = "amount_sum_1h"
type = "float64"
default = 0.0
aggregate = {{ function = "sum", window = "1h", of = "amount" }}

[[dynamic_view.feature]]
name = "amount_max_24h"
type = "float64"
default = 0.0
aggregate = {{ function = "max", window = "24h", of = "amount" }}

[[dynamic_view.feature]]
name = "failed_auth_count_24h"
type = "int64"
default = 0
aggregate = {{ function = "count", window = "24h", of = "failed_auth_id" }}
"#
    )
}
