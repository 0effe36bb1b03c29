//! The ScyllaDB backend (Apache Cassandra speaks the same protocol and runs it
//! in tests), with the `scylla` driver.
//!
//! Tables (keyspace configurable):
//! - `static_rows ((view_name, entity), batch_id)`: a lookup is one single-partition
//!   read by a prepared statement, routed token-aware by the driver. Rows are
//!   written `USING TTL retention`, which is how superseded batches go away
//!   without a scan.
//! - `dynamic_values ((view_name, entity), feature)`: written `USING TIMESTAMP
//!   <event time µs> AND TTL <seconds left>`, so the cell's timestamp is the
//!   event time, last-write-wins keeps the newest event whatever the arrival
//!   order, and `WRITETIME(value)` reads the event time back.
//! - `dynamic_events ((view_name, entity), event_time DESC, event_id)`: the
//!   raw events behind windowed aggregates, one row each, written `USING TTL
//!   <seconds left>` (event time + the view's ttl − now); a read is one
//!   single-partition slice of the widest window, newest first, with a
//!   `LIMIT` one above the reader's cap (so it knows the cap was hit).
//! - `refresh_batches ((view_name), batch_id)` and `current_batch (view)`.
//! - `prediction_log ((hour, shard), prediction_id)` and `feedback` keyed the
//!   same way: the hour and shard come from the UUIDv7 prediction ID itself,
//!   so a prediction and its feedback are found from the ID alone, one hour
//!   of traffic spreads over [`LOG_SHARDS`] partitions, and a time window is
//!   read partition by partition. Written `USING TTL retention`.
//! - `tuner_state (job)`: the refresh tuner's state per job, one JSON text.
//! - `model_routing (model)`: the gateway's routing document per model and its
//!   revision, changed only by lightweight transactions (`IF revision = ?`).
//! - `leases (name)`: holder and expiry, taken and released with lightweight
//!   transactions (`IF NOT EXISTS` / `IF holder = ? AND expires_at = ?`) and
//!   read at SERIAL, so two schedulers never both win one job.
//! - `job_schedule (job)` and `run_requests (job)`: the scheduler's record
//!   and the latest run request per job, one JSON text each.
//! - `schema_meta`: the schema version.
//!
//! Times are stored as `bigint` microseconds, the driver's and ScyllaDB's
//! native write-timestamp unit, so both backends keep the same precision.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::stream::{self, StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use tokio::sync::OnceCell;

use super::{
    BatchRecord, BatchStatus, CurrentBatch, DynamicWrite, EventWrite, FeatureStore, Lease,
    LeaseOutcome, RoutingRecord, SchemaReport, StaticWrite, StoreError, from_micros, to_micros,
};
use crate::aggregate::{Event, EventRange};
use crate::codec;
use crate::freshness::{StoredRow, StoredValue};
use crate::log::{
    FeedbackRecord, LOG_SHARDS, LogEntry, PredictionKey, PredictionRecord, hours, id_lower_bound,
    unix_ms,
};
use crate::schedule::{RunRequest, ScheduleState};
use crate::source::RejectedRow;
use crate::tuner::controller::JobState;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 5;

/// Extra attempts for an idempotent refresh write that timed out or found
/// the cluster busy (backoff 0.4 s, 1.6 s, 6.4 s).
const WRITE_RETRIES: u32 = 3;

/// Connection and behaviour settings.
#[derive(Debug, Clone)]
pub struct ScyllaConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// The keyspace holding the tables.
    pub keyspace: String,
    /// The replication map used when `apply_schema` creates the keyspace,
    /// e.g. `{'class': 'NetworkTopologyStrategy', 'dc1': 3}`.
    pub replication: String,
    /// Consistency of reads (LOCAL_ONE by default: one replica in the local
    /// DC answers, the fastest read; refresh batches are complete before they
    /// are served, so a lagging replica only delays a switch).
    pub read_consistency: Consistency,
    /// Consistency of writes.
    pub write_consistency: Consistency,
    /// Deadline of one read.
    pub read_timeout: Duration,
    /// Deadline of one write (a batch of rows) or schema statement.
    pub write_timeout: Duration,
    /// Deadline for the first connection.
    pub connect_timeout: Duration,
    /// Row batches written at once by a refresh.
    pub write_parallelism: usize,
    /// Rows per unlogged batch (grouped by the replica that owns them).
    pub write_batch_rows: usize,
}

impl Default for ScyllaConfig {
    fn default() -> Self {
        ScyllaConfig {
            nodes: vec!["127.0.0.1:9042".to_owned()],
            keyspace: "mlgw_features".to_owned(),
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".to_owned(),
            read_consistency: Consistency::LocalOne,
            write_consistency: Consistency::LocalQuorum,
            read_timeout: Duration::from_millis(500),
            write_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            // Measured on a 2-core single node: 32 x 16 loads ~21k rows/s,
            // 64-100 x 32 ~27k; larger batches pass Cassandra's 5 KB batch
            // warning threshold without loading faster.
            write_parallelism: 32,
            write_batch_rows: 64,
        }
    }
}

/// Parses a consistency name as written in config (`local_one`, `QUORUM`, …).
pub fn parse_consistency(text: &str) -> Option<Consistency> {
    Some(match text.to_ascii_lowercase().as_str() {
        "any" => Consistency::Any,
        "one" => Consistency::One,
        "two" => Consistency::Two,
        "three" => Consistency::Three,
        "quorum" => Consistency::Quorum,
        "all" => Consistency::All,
        "local_quorum" => Consistency::LocalQuorum,
        "each_quorum" => Consistency::EachQuorum,
        "local_one" => Consistency::LocalOne,
        _ => return None,
    })
}

struct Statements {
    read_static: PreparedStatement,
    write_static: PreparedStatement,
    read_dynamic: PreparedStatement,
    write_dynamic: PreparedStatement,
    write_event: PreparedStatement,
    read_events: PreparedStatement,
    put_batch: PreparedStatement,
    list_batches: PreparedStatement,
    set_current: PreparedStatement,
    current_batches: PreparedStatement,
    write_prediction: PreparedStatement,
    read_prediction: PreparedStatement,
    scan_predictions: PreparedStatement,
    write_feedback: PreparedStatement,
    scan_feedback: PreparedStatement,
    get_tuner: PreparedStatement,
    put_tuner: PreparedStatement,
    get_routing: PreparedStatement,
    insert_routing: PreparedStatement,
    update_routing: PreparedStatement,
    read_lease: PreparedStatement,
    insert_lease: PreparedStatement,
    update_lease: PreparedStatement,
    delete_lease: PreparedStatement,
    get_schedule: PreparedStatement,
    put_schedule: PreparedStatement,
    get_request: PreparedStatement,
    put_request: PreparedStatement,
}

/// Predictions written at once by one `write_predictions` call.
const LOG_WRITE_PARALLELISM: usize = 16;

/// The ScyllaDB-backed store.
pub struct ScyllaStore {
    session: Session,
    config: ScyllaConfig,
    statements: OnceCell<Statements>,
}

impl std::fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn map_err(e: ExecutionError) -> StoreError {
    match e {
        ExecutionError::RequestTimeout(d) => StoreError::Timeout(d),
        ExecutionError::ConnectionPoolError(_) | ExecutionError::EmptyPlan => {
            StoreError::Unavailable(e.to_string())
        }
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(ref db, _))
            if is_transient_db_error(db) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        ExecutionError::LastAttemptError(ref a) if is_connection_problem(&a.to_string()) => {
            StoreError::Unavailable(e.to_string())
        }
        other => StoreError::Backend(other.to_string()),
    }
}

/// Server answers that mean "not now" rather than "never": the coordinator
/// is overloaded (also what Cassandra answers, "Server is shutting down",
/// while a stopping node drains), still starting, or short of live replicas
/// or of their replies in time. A later call may succeed.
fn is_transient_db_error(e: &DbError) -> bool {
    matches!(
        e,
        DbError::Overloaded
            | DbError::IsBootstrapping
            | DbError::Unavailable { .. }
            | DbError::ReadTimeout { .. }
            | DbError::WriteTimeout { .. }
    )
}

/// Whether a last-attempt error means the node could not be reached (as
/// opposed to a query it refused). The driver's attempt errors wrap I/O and
/// broken-connection errors whose variants are not all public, so the message
/// is the only stable signal.
fn is_connection_problem(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "broken",
        "connection",
        "unavailable",
        "timed out",
        "refused",
        "reset",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

fn rows_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("unexpected result shape: {e}"))
}

/// Runs `fut` with a deadline, so no call can hang past it even if the driver
/// is stuck establishing a connection.
async fn deadline<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or(Err(StoreError::Timeout(limit)))
}

impl ScyllaStore {
    /// Connects to the cluster. Tables are created by
    /// [`FeatureStore::apply_schema`]; statements are prepared on first use.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if no contact point answers within the
    /// connect timeout.
    pub async fn connect(config: ScyllaConfig) -> Result<Self, StoreError> {
        let session = deadline(config.connect_timeout, async {
            SessionBuilder::new()
                .known_nodes(&config.nodes)
                .connection_timeout(config.connect_timeout)
                .build()
                .await
                .map_err(|e| {
                    StoreError::Unavailable(format!(
                        "cannot connect to {}: {e}",
                        config.nodes.join(", ")
                    ))
                })
        })
        .await?;
        Ok(ScyllaStore {
            session,
            config,
            statements: OnceCell::new(),
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &ScyllaConfig {
        &self.config
    }

    async fn prepare(&self, cql: String, read: bool) -> Result<PreparedStatement, StoreError> {
        let mut p = self.session.prepare(cql).await.map_err(|e| {
            let message = e.to_string();
            if message.contains("unconfigured table") || message.contains("does not exist") {
                StoreError::SchemaVersion {
                    found: 0,
                    needed: SCHEMA_VERSION,
                }
            } else {
                StoreError::Backend(format!("cannot prepare statement: {message}"))
            }
        })?;
        if read {
            p.set_consistency(self.config.read_consistency);
            p.set_request_timeout(Some(self.config.read_timeout));
        } else {
            p.set_consistency(self.config.write_consistency);
            p.set_request_timeout(Some(self.config.write_timeout));
        }
        Ok(p)
    }

    async fn schema_version(&self) -> Result<u32, StoreError> {
        let ks = &self.config.keyspace;
        let cql = format!("SELECT version FROM {ks}.schema_meta WHERE name = 'features'");
        match self.session.query_unpaged(cql, ()).await {
            Ok(result) => {
                let rows = result.into_rows_result().map_err(rows_err)?;
                let row: Option<(i32,)> = rows.maybe_first_row().map_err(rows_err)?;
                Ok(row.map_or(0, |(v,)| u32::try_from(v).unwrap_or(0)))
            }
            Err(e) => {
                let message = e.to_string();
                if message.contains("unconfigured table")
                    || message.contains("does not exist")
                    || message.contains("Keyspace")
                {
                    Ok(0)
                } else {
                    Err(map_err(e))
                }
            }
        }
    }

    async fn statements(&self) -> Result<&Statements, StoreError> {
        self.statements
            .get_or_try_init(|| async {
                let found = self.schema_version().await?;
                if found != SCHEMA_VERSION {
                    return Err(StoreError::SchemaVersion {
                        found,
                        needed: SCHEMA_VERSION,
                    });
                }
                let ks = &self.config.keyspace;
                // prediction_log and feedback share one layout.
                let log_insert = |table: &str| {
                    format!(
                        "INSERT INTO {ks}.{table} (hour, shard, prediction_id, record) \
                         VALUES (?, ?, ?, ?) USING TTL ?"
                    )
                };
                let log_scan = |table: &str| {
                    format!(
                        "SELECT prediction_id, record FROM {ks}.{table} \
                         WHERE hour = ? AND shard = ? AND prediction_id >= ? AND prediction_id < ?"
                    )
                };
                Ok(Statements {
                    read_static: self
                        .prepare(
                            format!(
                                "SELECT written_at, features FROM {ks}.static_rows \
                                 WHERE view_name = ? AND entity = ? AND batch_id = ?"
                            ),
                            true,
                        )
                        .await?,
                    write_static: self
                        .prepare(
                            format!(
                                "INSERT INTO {ks}.static_rows (view_name, entity, batch_id, written_at, features) \
                                 VALUES (?, ?, ?, ?, ?) USING TTL ?"
                            ),
                            false,
                        )
                        .await?,
                    read_dynamic: self
                        .prepare(
                            format!(
                                "SELECT feature, value, WRITETIME(value) FROM {ks}.dynamic_values \
                                 WHERE view_name = ? AND entity = ?"
                            ),
                            true,
                        )
                        .await?,
                    write_dynamic: self
                        .prepare(
                            format!(
                                "INSERT INTO {ks}.dynamic_values (view_name, entity, feature, value) \
                                 VALUES (?, ?, ?, ?) USING TIMESTAMP ? AND TTL ?"
                            ),
                            false,
                        )
                        .await?,
                    write_event: self
                        .prepare(
                            format!(
                                "INSERT INTO {ks}.dynamic_events (view_name, entity, event_time, event_id, fields) \
                                 VALUES (?, ?, ?, ?, ?) USING TTL ?"
                            ),
                            false,
                        )
                        .await?,
                    read_events: self
                        .prepare(
                            format!(
                                "SELECT event_time, event_id, fields FROM {ks}.dynamic_events \
                                 WHERE view_name = ? AND entity = ? AND event_time >= ? AND event_time <= ? \
                                 LIMIT ?"
                            ),
                            true,
                        )
                        .await?,
                    put_batch: self
                        .prepare(
                            format!(
                                "INSERT INTO {ks}.refresh_batches (view_name, batch_id, job, ingested_at, \
                                 started_at, finished_at, source, fingerprint, script_version, status, \
                                 rows_written, rows_rejected, rejections, error) \
                                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                            ),
                            false,
                        )
                        .await?,
                    list_batches: self
                        .prepare(
                            format!(
                                "SELECT view_name, batch_id, job, ingested_at, started_at, finished_at, source, \
                                 fingerprint, script_version, status, rows_written, rows_rejected, \
                                 rejections, error FROM {ks}.refresh_batches WHERE view_name = ? LIMIT ?"
                            ),
                            true,
                        )
                        .await?,
                    set_current: self
                        .prepare(
                            format!(
                                "INSERT INTO {ks}.current_batch (view_name, batch_id, written_at, fingerprint) \
                                 VALUES (?, ?, ?, ?)"
                            ),
                            false,
                        )
                        .await?,
                    current_batches: self
                        .prepare(
                            format!(
                                "SELECT view_name, batch_id, written_at, fingerprint FROM {ks}.current_batch"
                            ),
                            true,
                        )
                        .await?,
                    write_prediction: self.prepare(log_insert("prediction_log"), false).await?,
                    read_prediction: self
                        .prepare(
                            format!(
                                "SELECT record FROM {ks}.prediction_log \
                                 WHERE hour = ? AND shard = ? AND prediction_id = ?"
                            ),
                            true,
                        )
                        .await?,
                    scan_predictions: self.prepare(log_scan("prediction_log"), true).await?,
                    write_feedback: self.prepare(log_insert("feedback"), false).await?,
                    scan_feedback: self.prepare(log_scan("feedback"), true).await?,
                    get_tuner: self
                        .prepare(
                            format!("SELECT state FROM {ks}.tuner_state WHERE job = ?"),
                            true,
                        )
                        .await?,
                    put_tuner: self
                        .prepare(
                            format!("INSERT INTO {ks}.tuner_state (job, state) VALUES (?, ?)"),
                            false,
                        )
                        .await?,
                    get_routing: self
                        .prepare(
                            format!(
                                "SELECT revision, document FROM {ks}.model_routing WHERE model = ?"
                            ),
                            true,
                        )
                        .await?,
                    insert_routing: self
                        .prepare(
                            format!(
                                "INSERT INTO {ks}.model_routing (model, revision, document) \
                                 VALUES (?, 1, ?) IF NOT EXISTS"
                            ),
                            false,
                        )
                        .await?,
                    update_routing: self
                        .prepare(
                            format!(
                                "UPDATE {ks}.model_routing SET revision = ?, document = ? \
                                 WHERE model = ? IF revision = ?"
                            ),
                            false,
                        )
                        .await?,
                    read_lease: {
                        let mut p = self
                            .prepare(
                                format!("SELECT holder, expires_at FROM {ks}.leases WHERE name = ?"),
                                true,
                            )
                            .await?;
                        // Linearizable with the lightweight transactions.
                        p.set_consistency(Consistency::Serial);
                        p
                    },
                    insert_lease: self
                        .prepare(
                            format!(
                                "INSERT INTO {ks}.leases (name, holder, expires_at) VALUES (?, ?, ?) IF NOT EXISTS"
                            ),
                            false,
                        )
                        .await?,
                    update_lease: self
                        .prepare(
                            format!(
                                "UPDATE {ks}.leases SET holder = ?, expires_at = ? WHERE name = ? \
                                 IF holder = ? AND expires_at = ?"
                            ),
                            false,
                        )
                        .await?,
                    delete_lease: self
                        .prepare(
                            format!("DELETE FROM {ks}.leases WHERE name = ? IF holder = ?"),
                            false,
                        )
                        .await?,
                    get_schedule: self
                        .prepare(
                            format!("SELECT state FROM {ks}.job_schedule WHERE job = ?"),
                            false,
                        )
                        .await?,
                    put_schedule: self
                        .prepare(
                            format!("INSERT INTO {ks}.job_schedule (job, state) VALUES (?, ?)"),
                            false,
                        )
                        .await?,
                    get_request: self
                        .prepare(
                            format!("SELECT request FROM {ks}.run_requests WHERE job = ?"),
                            false,
                        )
                        .await?,
                    put_request: self
                        .prepare(
                            format!("INSERT INTO {ks}.run_requests (job, request) VALUES (?, ?)"),
                            false,
                        )
                        .await?,
                })
            })
            .await
    }

    /// The (ID, record) rows of one log partition with IDs in `[lo, hi)`.
    async fn scan_log(
        &self,
        prepared: &PreparedStatement,
        (hour, shard): (i64, i32),
        lo: &str,
        hi: &str,
        limit: Duration,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        deadline(limit, async {
            let mut pages = self
                .session
                .execute_iter(prepared.clone(), (hour, shard, lo, hi))
                .await
                .map_err(|e| StoreError::Backend(e.to_string()))?
                .rows_stream::<(String, Vec<u8>)>()
                .map_err(rows_err)?;
            let mut out = Vec::new();
            while let Some(row) = pages.next().await {
                out.push(row.map_err(rows_err)?);
            }
            Ok(out)
        })
        .await
    }

    /// The primary replica of a static row's partition, to group rows of one
    /// unlogged batch by the node that stores them (a multi-partition batch
    /// is only cheap when one replica owns every partition in it).
    fn owner(&self, statement: &PreparedStatement, view: &str, entity: &str) -> Option<uuid::Uuid> {
        let values = (view, entity, "", 0i64, &[] as &[u8], 0i32);
        let token = statement.calculate_token(&values).ok()??;
        let state = self.session.get_cluster_state();
        state
            .get_token_endpoints(&self.config.keyspace, "static_rows", token)
            .first()
            .map(|(node, _)| node.host_id)
    }
}

fn ttl_seconds(retention: Duration) -> i32 {
    i32::try_from(retention.as_secs().max(1)).unwrap_or(i32::MAX)
}

fn decode_prediction(id: &str, blob: &[u8]) -> Result<PredictionRecord, StoreError> {
    PredictionRecord::from_bytes(blob)
        .map_err(|e| StoreError::Backend(format!("damaged log record {id}: {e}")))
}

fn decode_log_record<T: serde::de::DeserializeOwned>(
    id: &str,
    blob: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(blob)
        .map_err(|e| StoreError::Backend(format!("damaged log record {id}: {e}")))
}

type BatchRow = (
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<String>,
    Option<String>,
);

/// Whether a lightweight transaction applied (its first column, `[applied]`).
fn applied(result: scylla::response::query_result::QueryResult) -> Result<bool, StoreError> {
    let rows = result.into_rows_result().map_err(rows_err)?;
    let row: scylla::value::Row = rows.first_row().map_err(rows_err)?;
    row.columns
        .first()
        .and_then(|c| c.as_ref())
        .and_then(scylla::value::CqlValue::as_boolean)
        .ok_or_else(|| {
            StoreError::Backend("a lightweight transaction answered no [applied]".into())
        })
}

impl ScyllaStore {
    /// The JSON text in the one-column table read by `prepared`.
    async fn get_doc<T: serde::de::DeserializeOwned>(
        &self,
        prepared: &PreparedStatement,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        deadline(
            self.config.read_timeout.max(Duration::from_secs(2)),
            async {
                let result = self
                    .session
                    .execute_unpaged(prepared, (key,))
                    .await
                    .map_err(map_err)?;
                let rows = result.into_rows_result().map_err(rows_err)?;
                let row: Option<(Option<String>,)> = rows.maybe_first_row().map_err(rows_err)?;
                row.and_then(|(t,)| t)
                    .map(|text| decode_log_record(key, text.as_bytes()))
                    .transpose()
            },
        )
        .await
    }

    /// Writes a JSON text with `prepared` (`(key, text)`).
    async fn put_doc<T: serde::Serialize>(
        &self,
        prepared: &PreparedStatement,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let text = serde_json::to_string(value).map_err(|e| StoreError::Backend(e.to_string()))?;
        deadline(self.config.write_timeout, async {
            self.session
                .execute_unpaged(prepared, (key, text))
                .await
                .map(drop)
                .map_err(map_err)
        })
        .await
    }
}

impl FeatureStore for ScyllaStore {
    async fn apply_schema(&self) -> Result<SchemaReport, StoreError> {
        let ks = &self.config.keyspace;
        let from = self.schema_version().await?;
        if from > SCHEMA_VERSION {
            return Err(StoreError::Backend(format!(
                "keyspace {ks} has schema version {from}, newer than this build's {SCHEMA_VERSION}; use a newer mlgw-features"
            )));
        }
        // prediction_log and feedback: one record per prediction ID.
        let log_table = |table: &str| {
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.{table} (hour bigint, shard int, \
                 prediction_id text, record blob, PRIMARY KEY ((hour, shard), prediction_id))"
            )
        };
        let statements = [
            (
                format!("keyspace {ks}"),
                format!(
                    "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}",
                    self.config.replication
                ),
            ),
            (
                "table schema_meta".to_owned(),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.schema_meta (name text PRIMARY KEY, version int)"
                ),
            ),
            (
                "table static_rows".to_owned(),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.static_rows (view_name text, entity text, batch_id text, \
                     written_at bigint, features blob, PRIMARY KEY ((view_name, entity), batch_id)) \
                     WITH CLUSTERING ORDER BY (batch_id DESC)"
                ),
            ),
            (
                "table dynamic_values".to_owned(),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.dynamic_values (view_name text, entity text, feature text, \
                     value blob, PRIMARY KEY ((view_name, entity), feature))"
                ),
            ),
            (
                "table dynamic_events".to_owned(),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.dynamic_events (view_name text, entity text, \
                     event_time bigint, event_id text, fields blob, \
                     PRIMARY KEY ((view_name, entity), event_time, event_id)) \
                     WITH CLUSTERING ORDER BY (event_time DESC, event_id ASC)"
                ),
            ),
            (
                "table refresh_batches".to_owned(),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.refresh_batches (view_name text, batch_id text, job text, \
                     ingested_at bigint, started_at bigint, finished_at bigint, source text, \
                     fingerprint text, script_version text, status text, rows_written bigint, \
                     rows_rejected bigint, rejections text, error text, PRIMARY KEY ((view_name), batch_id)) \
                     WITH CLUSTERING ORDER BY (batch_id DESC)"
                ),
            ),
            (
                "table current_batch".to_owned(),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.current_batch (view_name text PRIMARY KEY, batch_id text, \
                     written_at bigint, fingerprint text)"
                ),
            ),
            (
                "table prediction_log".to_owned(),
                log_table("prediction_log"),
            ),
            ("table feedback".to_owned(), log_table("feedback")),
            (
                "table tuner_state".to_owned(),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.tuner_state (job text PRIMARY KEY, state text)"
                ),
            ),
            (
                "table model_routing".to_owned(),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.model_routing (model text PRIMARY KEY, \
                     revision bigint, document text)"
                ),
            ),
            (
                "table leases".to_owned(),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.leases (name text PRIMARY KEY, holder text, expires_at bigint)"
                ),
            ),
            (
                "table job_schedule".to_owned(),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.job_schedule (job text PRIMARY KEY, state text)"
                ),
            ),
            (
                "table run_requests".to_owned(),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.run_requests (job text PRIMARY KEY, request text)"
                ),
            ),
            (
                format!("schema version {SCHEMA_VERSION}"),
                format!(
                    "INSERT INTO {ks}.schema_meta (name, version) VALUES ('features', {SCHEMA_VERSION})"
                ),
            ),
        ];
        let mut applied = Vec::new();
        for (what, cql) in statements {
            let mut statement = scylla::statement::Statement::new(cql);
            statement.set_request_timeout(Some(self.config.write_timeout));
            deadline(self.config.write_timeout, async {
                self.session
                    .query_unpaged(statement, ())
                    .await
                    .map_err(map_err)
            })
            .await?;
            applied.push(what);
        }
        self.session
            .await_schema_agreement()
            .await
            .map_err(|e| StoreError::Backend(format!("schema agreement: {e}")))?;
        Ok(SchemaReport {
            from_version: from,
            to_version: SCHEMA_VERSION,
            applied,
        })
    }

    async fn read_static(
        &self,
        view: &str,
        batch_id: &str,
        entity_key: &str,
    ) -> Result<Option<StoredRow>, StoreError> {
        deadline(self.config.read_timeout, async {
            let st = self.statements().await?;
            let result = self
                .session
                .execute_unpaged(&st.read_static, (view, entity_key, batch_id))
                .await
                .map_err(map_err)?;
            let rows = result.into_rows_result().map_err(rows_err)?;
            let Some((micros, blob)) =
                rows.maybe_first_row::<(i64, Vec<u8>)>().map_err(rows_err)?
            else {
                return Ok(None);
            };
            let written_at = from_micros(micros);
            let values = codec::decode(&blob).map_err(|source| StoreError::Corrupt {
                view: view.to_owned(),
                entity: entity_key.to_owned(),
                source,
            })?;
            Ok(Some(StoredRow {
                values: values
                    .into_iter()
                    .map(|(k, value)| (k, StoredValue { value, written_at }))
                    .collect(),
                written_at,
                batch_id: Some(Arc::from(batch_id)),
            }))
        })
        .await
    }

    async fn write_static(&self, write: StaticWrite<'_>) -> Result<(), StoreError> {
        let st = deadline(self.config.write_timeout, self.statements()).await?;
        let ttl = i32::try_from(write.retention.as_secs().max(1)).unwrap_or(i32::MAX);
        let micros = to_micros(write.written_at);
        // Group rows by owning replica, then cut each group into batches.
        let mut groups: HashMap<Option<uuid::Uuid>, Vec<usize>> = HashMap::new();
        for (i, row) in write.rows.iter().enumerate() {
            let owner = self.owner(&st.write_static, write.view, &row.entity_key);
            groups.entry(owner).or_default().push(i);
        }
        let per_batch = self.config.write_batch_rows.max(1);
        let chunks: Vec<Vec<usize>> = groups
            .into_values()
            .flat_map(|idx| {
                idx.chunks(per_batch)
                    .map(<[usize]>::to_vec)
                    .collect::<Vec<_>>()
            })
            .collect();
        stream::iter(chunks)
            .map(|chunk| async move {
                let mut batch = Batch::new(BatchType::Unlogged);
                batch.set_consistency(self.config.write_consistency);
                batch.set_request_timeout(Some(self.config.write_timeout));
                let mut values = Vec::with_capacity(chunk.len());
                for &i in &chunk {
                    batch.append_statement(st.write_static.clone());
                    let row = &write.rows[i];
                    values.push((
                        write.view,
                        row.entity_key.as_str(),
                        write.batch_id,
                        micros,
                        row.blob.as_slice(),
                        ttl,
                    ));
                }
                // Static rows are idempotent (same key, same values), so a
                // write that timed out or found the node busy is retried a
                // few times with backoff instead of failing the whole batch.
                let mut attempt = 0u32;
                loop {
                    let result = deadline(self.config.write_timeout, async {
                        self.session
                            .batch(&batch, &values)
                            .await
                            .map(drop)
                            .map_err(map_err)
                    })
                    .await;
                    match result {
                        Err(e) if e.is_transient() && attempt < WRITE_RETRIES => {
                            attempt += 1;
                            tracing::debug!(error = %e, attempt, "retrying a refresh write");
                            tokio::time::sleep(Duration::from_millis(100 << (2 * attempt))).await;
                        }
                        other => break other,
                    }
                }
            })
            .buffer_unordered(self.config.write_parallelism.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn read_dynamic(
        &self,
        view: &str,
        entity_key: &str,
    ) -> Result<Option<StoredRow>, StoreError> {
        deadline(self.config.read_timeout, async {
            let st = self.statements().await?;
            let result = self
                .session
                .execute_unpaged(&st.read_dynamic, (view, entity_key))
                .await
                .map_err(map_err)?;
            let rows = result.into_rows_result().map_err(rows_err)?;
            let mut values = BTreeMap::new();
            for row in rows.rows::<(String, Vec<u8>, i64)>().map_err(rows_err)? {
                let (feature, blob, micros) = row.map_err(rows_err)?;
                let value = codec::decode_value(&blob).map_err(|source| StoreError::Corrupt {
                    view: view.to_owned(),
                    entity: entity_key.to_owned(),
                    source,
                })?;
                let written_at = from_micros(micros);
                values.insert(feature, StoredValue { value, written_at });
            }
            Ok(StoredRow::dynamic(values))
        })
        .await
    }

    async fn write_dynamic(&self, write: DynamicWrite<'_>) -> Result<(), StoreError> {
        deadline(self.config.write_timeout, async {
            let st = self.statements().await?;
            let left = write
                .expires_at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            // An event already past its TTL is not written: it would read as
            // missing anyway, and TTL 0 means "never expires" in CQL.
            if left.as_secs() == 0 || write.values.is_empty() {
                return Ok(());
            }
            let ttl = i32::try_from(left.as_secs()).unwrap_or(i32::MAX);
            let stamp = to_micros(write.event_time);
            let mut batch = Batch::new(BatchType::Unlogged);
            batch.set_consistency(self.config.write_consistency);
            batch.set_request_timeout(Some(self.config.write_timeout));
            let mut values = Vec::with_capacity(write.values.len());
            for (name, value) in write.values {
                batch.append_statement(st.write_dynamic.clone());
                values.push((
                    write.view,
                    write.entity_key,
                    name.as_str(),
                    codec::encode_value(value),
                    stamp,
                    ttl,
                ));
            }
            self.session
                .batch(&batch, values)
                .await
                .map(drop)
                .map_err(map_err)
        })
        .await
    }

    async fn write_event(&self, write: EventWrite<'_>) -> Result<(), StoreError> {
        deadline(self.config.write_timeout, async {
            let st = self.statements().await?;
            let left = write
                .expires_at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            // Past its TTL: not written (TTL 0 would mean "never expires").
            if left.as_secs() == 0 {
                return Ok(());
            }
            let ttl = i32::try_from(left.as_secs()).unwrap_or(i32::MAX);
            let event = write.event;
            let blob = codec::encode(event.fields.iter().map(|(n, v)| (n.as_str(), v)));
            self.session
                .execute_unpaged(
                    &st.write_event,
                    (
                        write.view,
                        write.entity_key,
                        to_micros(event.event_time),
                        event.event_id.as_str(),
                        blob,
                        ttl,
                    ),
                )
                .await
                .map(drop)
                .map_err(map_err)
        })
        .await
    }

    async fn read_events(
        &self,
        view: &str,
        entity_key: &str,
        from: SystemTime,
        to: SystemTime,
        limit: usize,
    ) -> Result<EventRange, StoreError> {
        deadline(self.config.read_timeout, async {
            let st = self.statements().await?;
            // One row more than asked says whether the cap was hit.
            let asked = i32::try_from(limit.saturating_add(1)).unwrap_or(i32::MAX);
            let result = self
                .session
                .execute_unpaged(
                    &st.read_events,
                    (view, entity_key, to_micros(from), to_micros(to), asked),
                )
                .await
                .map_err(map_err)?;
            let rows = result.into_rows_result().map_err(rows_err)?;
            let mut out = EventRange::default();
            for row in rows.rows::<(i64, String, Vec<u8>)>().map_err(rows_err)? {
                let (micros, event_id, blob) = row.map_err(rows_err)?;
                if out.events.len() == limit {
                    out.truncated = true;
                    break;
                }
                let fields = codec::decode(&blob).map_err(|source| StoreError::Corrupt {
                    view: view.to_owned(),
                    entity: entity_key.to_owned(),
                    source,
                })?;
                out.events.push(Event {
                    event_id,
                    event_time: from_micros(micros),
                    fields,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn put_batch(&self, record: &BatchRecord) -> Result<(), StoreError> {
        deadline(self.config.write_timeout, async {
            let st = self.statements().await?;
            let rejections = serde_json::to_string(&record.rejections)
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            let values = (
                record.view.as_str(),
                record.batch_id.as_str(),
                record.job.as_str(),
                to_micros(record.ingested_at),
                record.started_at.map(to_micros),
                record.finished_at.map(to_micros),
                record.source.as_str(),
                record.fingerprint.as_str(),
                record.script_version.as_str(),
                record.status.as_str(),
                i64::try_from(record.rows_written).unwrap_or(i64::MAX),
                i64::try_from(record.rows_rejected).unwrap_or(i64::MAX),
                rejections,
                record.error.as_deref(),
            );
            self.session
                .execute_unpaged(&st.put_batch, values)
                .await
                .map(drop)
                .map_err(map_err)
        })
        .await
    }

    async fn list_batches(&self, view: &str, limit: usize) -> Result<Vec<BatchRecord>, StoreError> {
        deadline(
            self.config.read_timeout.max(Duration::from_secs(2)),
            async {
                let st = self.statements().await?;
                let limit = i32::try_from(limit).unwrap_or(i32::MAX);
                let result = self
                    .session
                    .execute_unpaged(&st.list_batches, (view, limit))
                    .await
                    .map_err(map_err)?;
                let rows = result.into_rows_result().map_err(rows_err)?;
                let mut out = Vec::new();
                for row in rows.rows::<BatchRow>().map_err(rows_err)? {
                    let (
                        view,
                        batch_id,
                        job,
                        ingested_at,
                        started_at,
                        finished_at,
                        source,
                        fingerprint,
                        script_version,
                        status,
                        rows_written,
                        rows_rejected,
                        rejections,
                        error,
                    ) = row.map_err(rows_err)?;
                    let rejections: Vec<RejectedRow> = match rejections {
                        Some(text) => serde_json::from_str(&text).map_err(|e| {
                            StoreError::Backend(format!("damaged batch record: {e}"))
                        })?,
                        None => Vec::new(),
                    };
                    out.push(BatchRecord {
                        batch_id,
                        job,
                        view,
                        ingested_at: from_micros(ingested_at),
                        started_at: started_at.map(from_micros),
                        finished_at: finished_at.map(from_micros),
                        source,
                        fingerprint,
                        script_version,
                        status: BatchStatus::parse(&status).ok_or_else(|| {
                            StoreError::Backend(format!("unknown batch status {status:?}"))
                        })?,
                        rows_written: u64::try_from(rows_written).unwrap_or(0),
                        rows_rejected: u64::try_from(rows_rejected).unwrap_or(0),
                        rejections,
                        error,
                    });
                }
                Ok(out)
            },
        )
        .await
    }

    async fn set_current(&self, record: &BatchRecord) -> Result<(), StoreError> {
        deadline(self.config.write_timeout, async {
            let st = self.statements().await?;
            self.session
                .execute_unpaged(
                    &st.set_current,
                    (
                        record.view.as_str(),
                        record.batch_id.as_str(),
                        to_micros(record.ingested_at),
                        record.fingerprint.as_str(),
                    ),
                )
                .await
                .map(drop)
                .map_err(map_err)
        })
        .await
    }

    async fn current_batches(&self) -> Result<BTreeMap<String, CurrentBatch>, StoreError> {
        deadline(
            self.config.read_timeout.max(Duration::from_secs(2)),
            async {
                let st = self.statements().await?;
                let result = self
                    .session
                    .execute_unpaged(&st.current_batches, ())
                    .await
                    .map_err(map_err)?;
                let rows = result.into_rows_result().map_err(rows_err)?;
                let mut out = BTreeMap::new();
                for row in rows
                    .rows::<(String, String, i64, String)>()
                    .map_err(rows_err)?
                {
                    let (view, batch_id, written_at, fingerprint) = row.map_err(rows_err)?;
                    out.insert(
                        view,
                        CurrentBatch {
                            batch_id,
                            written_at: from_micros(written_at),
                            fingerprint,
                        },
                    );
                }
                Ok(out)
            },
        )
        .await
    }

    async fn discard_batch(&self, _view: &str, _batch_id: &str) -> Result<(), StoreError> {
        // The rows' TTL collects them; deleting would need a scan.
        Ok(())
    }

    async fn write_predictions(
        &self,
        records: &[PredictionRecord],
        retention: Duration,
    ) -> Result<(), StoreError> {
        let st = deadline(self.config.write_timeout, self.statements()).await?;
        let ttl = ttl_seconds(retention);
        let mut rows = Vec::with_capacity(records.len());
        for r in records {
            let key = PredictionKey::parse(&r.prediction_id)
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            rows.push((key, r.prediction_id.clone(), r.to_bytes()));
        }
        stream::iter(rows)
            .map(|(key, id, blob)| async move {
                deadline(self.config.write_timeout, async {
                    self.session
                        .execute_unpaged(
                            &st.write_prediction,
                            (key.hour(), i32::from(key.shard), id.as_str(), blob, ttl),
                        )
                        .await
                        .map(drop)
                        .map_err(map_err)
                })
                .await
            })
            .buffer_unordered(LOG_WRITE_PARALLELISM)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn read_prediction(
        &self,
        prediction_id: &str,
    ) -> Result<Option<PredictionRecord>, StoreError> {
        let key =
            PredictionKey::parse(prediction_id).map_err(|e| StoreError::Backend(e.to_string()))?;
        deadline(self.config.read_timeout, async {
            let st = self.statements().await?;
            let result = self
                .session
                .execute_unpaged(
                    &st.read_prediction,
                    (key.hour(), i32::from(key.shard), prediction_id),
                )
                .await
                .map_err(map_err)?;
            let rows = result.into_rows_result().map_err(rows_err)?;
            let row: Option<(Vec<u8>,)> = rows.maybe_first_row().map_err(rows_err)?;
            row.map(|(blob,)| decode_prediction(prediction_id, &blob))
                .transpose()
        })
        .await
    }

    async fn write_feedback(
        &self,
        record: &FeedbackRecord,
        retention: Duration,
    ) -> Result<(), StoreError> {
        let key = PredictionKey::parse(&record.prediction_id)
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let blob = serde_json::to_vec(record).map_err(|e| StoreError::Backend(e.to_string()))?;
        deadline(self.config.write_timeout, async {
            let st = self.statements().await?;
            self.session
                .execute_unpaged(
                    &st.write_feedback,
                    (
                        key.hour(),
                        i32::from(key.shard),
                        record.prediction_id.as_str(),
                        blob,
                        ttl_seconds(retention),
                    ),
                )
                .await
                .map(drop)
                .map_err(map_err)
        })
        .await
    }

    async fn read_log(
        &self,
        from: SystemTime,
        to: SystemTime,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let st = deadline(self.config.read_timeout, self.statements()).await?;
        let (lo, hi) = (id_lower_bound(unix_ms(from)), id_lower_bound(unix_ms(to)));
        let partitions: Vec<(i64, i32)> = hours(from, to)
            .flat_map(|h| (0..LOG_SHARDS).map(move |s| (h, i32::from(s))))
            .collect();
        let scan_limit = self.config.read_timeout.max(Duration::from_secs(5));
        let (lo, hi) = (lo.as_str(), hi.as_str());
        let mut predictions: Vec<(String, Vec<u8>)> = stream::iter(partitions.clone())
            .map(|p| self.scan_log(&st.scan_predictions, p, lo, hi, scan_limit))
            .buffer_unordered(LOG_WRITE_PARALLELISM)
            .try_collect::<Vec<_>>()
            .await?
            .into_iter()
            .flatten()
            .collect();
        predictions.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        predictions.truncate(limit);
        let feedback: HashMap<String, Vec<u8>> = stream::iter(partitions)
            .map(|p| self.scan_log(&st.scan_feedback, p, lo, hi, scan_limit))
            .buffer_unordered(LOG_WRITE_PARALLELISM)
            .try_collect::<Vec<_>>()
            .await?
            .into_iter()
            .flatten()
            .collect();
        predictions
            .into_iter()
            .map(|(id, blob)| {
                Ok(LogEntry {
                    prediction: decode_prediction(&id, &blob)?,
                    feedback: feedback
                        .get(&id)
                        .map(|f| decode_log_record(&id, f))
                        .transpose()?,
                })
            })
            .collect()
    }

    async fn get_tuner_state(&self, job: &str) -> Result<Option<JobState>, StoreError> {
        deadline(
            self.config.read_timeout.max(Duration::from_secs(2)),
            async {
                let st = self.statements().await?;
                // The tuner's read must see its own last write (QUORUM-written).
                let mut statement = st.get_tuner.clone();
                statement.set_consistency(self.config.write_consistency);
                let result = self
                    .session
                    .execute_unpaged(&statement, (job,))
                    .await
                    .map_err(map_err)?;
                let rows = result.into_rows_result().map_err(rows_err)?;
                let row: Option<(String,)> = rows.maybe_first_row().map_err(rows_err)?;
                row.map(|(text,)| decode_log_record(job, text.as_bytes()))
                    .transpose()
            },
        )
        .await
    }

    async fn put_tuner_state(&self, state: &JobState) -> Result<(), StoreError> {
        let text = serde_json::to_string(state).map_err(|e| StoreError::Backend(e.to_string()))?;
        deadline(self.config.write_timeout, async {
            let st = self.statements().await?;
            self.session
                .execute_unpaged(&st.put_tuner, (state.job.as_str(), text))
                .await
                .map(drop)
                .map_err(map_err)
        })
        .await
    }

    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: SystemTime,
        until: SystemTime,
    ) -> Result<LeaseOutcome, StoreError> {
        deadline(self.config.write_timeout, async {
            let st = self.statements().await?;
            let until_us = to_micros(until);
            // A few rounds at most: each lost race means another scheduler
            // changed the lease in between, which the next read shows.
            for _ in 0..4 {
                let result = self
                    .session
                    .execute_unpaged(&st.read_lease, (name,))
                    .await
                    .map_err(map_err)?;
                let rows = result.into_rows_result().map_err(rows_err)?;
                let current: Option<(Option<String>, Option<i64>)> =
                    rows.maybe_first_row().map_err(rows_err)?;
                let won = match current {
                    None => applied(
                        self.session
                            .execute_unpaged(&st.insert_lease, (name, holder, until_us))
                            .await
                            .map_err(map_err)?,
                    )?,
                    Some((h, exp)) => {
                        let (h, exp) = (h.unwrap_or_default(), exp.unwrap_or(0));
                        if h != holder && exp > to_micros(now) {
                            return Ok(LeaseOutcome::Held(Lease {
                                name: name.to_owned(),
                                holder: h,
                                expires_at: from_micros(exp),
                            }));
                        }
                        applied(
                            self.session
                                .execute_unpaged(
                                    &st.update_lease,
                                    (holder, until_us, name, h.as_str(), exp),
                                )
                                .await
                                .map_err(map_err)?,
                        )?
                    }
                };
                if won {
                    return Ok(LeaseOutcome::Acquired);
                }
            }
            Err(StoreError::Unavailable(format!(
                "lease {name}: lost four races in a row to other schedulers; retry"
            )))
        })
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, StoreError> {
        deadline(self.config.write_timeout, async {
            let st = self.statements().await?;
            applied(
                self.session
                    .execute_unpaged(&st.delete_lease, (name, holder))
                    .await
                    .map_err(map_err)?,
            )
        })
        .await
    }

    async fn get_schedule(&self, job: &str) -> Result<Option<ScheduleState>, StoreError> {
        let st = self.statements().await?;
        self.get_doc(&st.get_schedule, job).await
    }

    async fn put_schedule(&self, state: &ScheduleState) -> Result<(), StoreError> {
        let st = self.statements().await?;
        self.put_doc(&st.put_schedule, &state.job, state).await
    }

    async fn put_run_request(&self, request: &RunRequest) -> Result<(), StoreError> {
        let st = self.statements().await?;
        self.put_doc(&st.put_request, &request.job, request).await
    }

    async fn get_run_request(&self, job: &str) -> Result<Option<RunRequest>, StoreError> {
        let st = self.statements().await?;
        self.get_doc(&st.get_request, job).await
    }

    async fn get_routing(&self, model: &str) -> Result<Option<RoutingRecord>, StoreError> {
        deadline(
            self.config.read_timeout.max(Duration::from_secs(2)),
            async {
                let st = self.statements().await?;
                // Read at the write consistency: a replica polling after a
                // change on another one must see it.
                let mut statement = st.get_routing.clone();
                statement.set_consistency(self.config.write_consistency);
                let result = self
                    .session
                    .execute_unpaged(&statement, (model,))
                    .await
                    .map_err(map_err)?;
                let rows = result.into_rows_result().map_err(rows_err)?;
                let row: Option<(i64, String)> = rows.maybe_first_row().map_err(rows_err)?;
                Ok(row.map(|(revision, document)| RoutingRecord { revision, document }))
            },
        )
        .await
    }

    async fn put_routing(
        &self,
        model: &str,
        expected: Option<i64>,
        document: &str,
    ) -> Result<bool, StoreError> {
        // A lightweight transaction takes several round trips (Paxos).
        deadline(self.config.write_timeout.max(Duration::from_secs(5)), async {
            let st = self.statements().await?;
            let result = match expected {
                None => {
                    self.session
                        .execute_unpaged(&st.insert_routing, (model, document))
                        .await
                }
                Some(rev) => {
                    self.session
                        .execute_unpaged(&st.update_routing, (rev + 1, document, model, rev))
                        .await
                }
            }
            .map_err(map_err)?;
            // The first column is `[applied]`; the others (the current
            // values, when not applied) vary, so read the row untyped.
            let rows = result.into_rows_result().map_err(rows_err)?;
            let row: Option<scylla::value::Row> = rows.maybe_first_row().map_err(rows_err)?;
            match row.as_ref().and_then(|r| r.columns.first()) {
                Some(Some(scylla::value::CqlValue::Boolean(applied))) => Ok(*applied),
                other => Err(StoreError::Backend(format!(
                    "a conditional write of the routing of {model} answered {other:?}, not [applied]"
                ))),
            }
        })
        .await
    }
}
