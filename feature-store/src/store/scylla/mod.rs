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
//! - `scores ((model, key), batch_id)`: precomputed predictions, one JSON
//!   entry each; a lookup is one single-partition read. Written `USING TTL
//!   retention`.
//! - `schema_meta`: the schema version.
//!
//! Times are stored as `bigint` microseconds, the driver's and ScyllaDB's
//! native write-timestamp unit, so both backends keep the same precision.
//!
//! One file per concern (`rows`, `batches`, `predictions`, `coordination`,
//! `routing`, `tuning`, `scores`); `tables` creates the tables, `statements` prepares
//! every query once, `errors` turns the driver's errors into
//! [`StoreError`]s.

mod artifacts;
mod batches;
mod coordination;
mod errors;
mod predictions;
mod requests;
mod routing;
mod rows;
mod scores;
mod statements;
mod tables;
mod tuning;

use std::future::Future;
use std::time::Duration;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use tokio::sync::OnceCell;

use super::{StoreError, decode};
use errors::{ConnectError, PrepareFailed};
use statements::Statements;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 9;

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

/// Store calls in flight at once for one `write_predictions` call.
const LOG_WRITE_PARALLELISM: usize = 16;

/// Largest unlogged batch of rows, in bytes of their values: Cassandra
/// refuses batches above `batch_size_fail_threshold` (50 KiB by default).
const MAX_BATCH_BYTES: usize = 40 * 1024;

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
    /// [`RowStore::apply_schema`](crate::store::RowStore::apply_schema); statements are prepared on first use.
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
                .map_err(|source| {
                    StoreError::Unavailable(Box::new(ConnectError {
                        nodes: config.nodes.join(", "),
                        source,
                    }))
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

    /// Prepares `cql` with the read or write consistency and deadline.
    async fn prepare(&self, cql: String, read: bool) -> Result<PreparedStatement, StoreError> {
        let mut p = self.session.prepare(cql).await.map_err(|e| {
            let message = e.to_string();
            if message.contains("unconfigured table") || message.contains("does not exist") {
                StoreError::SchemaVersion {
                    found: 0,
                    needed: SCHEMA_VERSION,
                }
            } else {
                StoreError::Failed(Box::new(PrepareFailed(e)))
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

    /// The keyspace's schema version (0: none yet).
    pub(super) async fn schema_version(&self) -> Result<u32, StoreError> {
        let ks = &self.config.keyspace;
        let cql = format!("SELECT version FROM {ks}.schema_meta WHERE name = 'features'");
        match self.session.query_unpaged(cql, ()).await {
            Ok(result) => {
                let rows = result.into_rows_result()?;
                let row: Option<(i32,)> = rows.maybe_first_row()?;
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
                    Err(e.into())
                }
            }
        }
    }

    /// Runs `prepared` for every row, the rows of one partition (`K`)
    /// together: one unlogged single-partition batch of up to
    /// `write_batch_rows` rows and [`MAX_BATCH_BYTES`] (each row says its
    /// size), so the store applies one mutation per partition instead of one
    /// request per row; a lone row is one statement. `in_flight` calls at a
    /// time, each within the write timeout; the first failure ends the call.
    async fn execute_grouped<K, V>(
        &self,
        prepared: &PreparedStatement,
        rows: Vec<(K, usize, V)>,
        in_flight: usize,
    ) -> Result<(), StoreError>
    where
        K: std::hash::Hash + Eq,
        V: scylla::serialize::row::SerializeRow + Send + Sync,
    {
        let max_rows = self.config.write_batch_rows.max(1);
        // Each partition's batch being filled: its index in `calls`.
        let mut filling: std::collections::HashMap<K, usize> = std::collections::HashMap::new();
        let mut calls: Vec<(usize, Vec<V>)> = Vec::new();
        for (key, bytes, values) in rows {
            let open = filling.get(&key).copied().filter(|&i| {
                let (b, v) = &calls[i];
                v.len() < max_rows && b + bytes <= MAX_BATCH_BYTES
            });
            match open {
                Some(i) => {
                    calls[i].0 += bytes;
                    calls[i].1.push(values);
                }
                None => {
                    filling.insert(key, calls.len());
                    calls.push((bytes, vec![values]));
                }
            }
        }
        stream::iter(calls)
            .map(|(_, values)| async move {
                deadline(self.config.write_timeout, async {
                    if values.len() == 1 {
                        return self
                            .session
                            .execute_unpaged(prepared, &values[0])
                            .await
                            .map(drop)
                            .map_err(StoreError::from);
                    }
                    let mut batch = Batch::new(BatchType::Unlogged);
                    batch.set_consistency(self.config.write_consistency);
                    batch.set_request_timeout(Some(self.config.write_timeout));
                    for _ in &values {
                        batch.append_statement(prepared.clone());
                    }
                    self.session
                        .batch(&batch, &values)
                        .await
                        .map(drop)
                        .map_err(StoreError::from)
                })
                .await
            })
            .buffer_unordered(in_flight)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Runs `prepared` once per row of values, [`LOG_WRITE_PARALLELISM`] at a
    /// time, each within the write timeout; the first failure ends the call.
    async fn execute_each<V>(
        &self,
        prepared: &PreparedStatement,
        rows: Vec<V>,
    ) -> Result<(), StoreError>
    where
        V: scylla::serialize::row::SerializeRow + Send + Sync,
    {
        stream::iter(rows)
            .map(|values| async move {
                deadline(self.config.write_timeout, async {
                    self.session
                        .execute_unpaged(prepared, values)
                        .await
                        .map(drop)
                        .map_err(StoreError::from)
                })
                .await
            })
            .buffer_unordered(LOG_WRITE_PARALLELISM)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// The (ID, record) rows of the log partitions with IDs in `[lo, hi)`,
    /// a few partitions at a time, each under `limit`.
    async fn scan_log(
        &self,
        prepared: &PreparedStatement,
        partitions: &[(i64, i32)],
        (lo, hi): (&str, &str),
        limit: Duration,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let scans = stream::iter(partitions.iter().copied())
            .map(|p| self.scan_partition(prepared, p, (lo, hi), limit))
            .buffer_unordered(LOG_WRITE_PARALLELISM)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(scans.into_iter().flatten().collect())
    }

    /// The (ID, record) rows of one log partition with IDs in `[lo, hi)`.
    async fn scan_partition(
        &self,
        prepared: &PreparedStatement,
        (hour, shard): (i64, i32),
        (lo, hi): (&str, &str),
        limit: Duration,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        deadline(limit, async {
            let mut pages = self
                .session
                .execute_iter(prepared.clone(), (hour, shard, lo, hi))
                .await
                .map_err(|e| StoreError::Failed(Box::new(e)))?
                .rows_stream::<(String, Vec<u8>)>()?;
            let mut out = Vec::new();
            while let Some(row) = pages.next().await {
                out.push(row?);
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

/// A TTL of `retention` in whole seconds (at least 1: 0 means "never expires").
fn ttl_seconds(retention: Duration) -> i32 {
    i32::try_from(retention.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// Whether a lightweight transaction applied (its first column, `[applied]`).
fn applied(result: scylla::response::query_result::QueryResult) -> Result<bool, StoreError> {
    let rows = result.into_rows_result()?;
    let row: scylla::value::Row = rows.first_row()?;
    row.columns
        .first()
        .and_then(|c| c.as_ref())
        .and_then(scylla::value::CqlValue::as_boolean)
        .ok_or_else(|| {
            StoreError::Backend("a lightweight transaction answered no [applied]".to_owned())
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
                let result = self.session.execute_unpaged(prepared, (key,)).await?;
                let rows = result.into_rows_result()?;
                let row: Option<(Option<String>,)> = rows.maybe_first_row()?;
                row.and_then(|(t,)| t)
                    .map(|text| decode::json(|| format!("log record {key}"), text.as_bytes()))
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
        let text = serde_json::to_string(value)?;
        deadline(self.config.write_timeout, async {
            self.session
                .execute_unpaged(prepared, (key, text))
                .await
                .map(drop)
                .map_err(StoreError::from)
        })
        .await
    }
}
