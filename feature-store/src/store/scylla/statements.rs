//! The prepared statements of every concern, prepared together on first use
//! once the keyspace's schema version is this build's.

use scylla::statement::Consistency;
use scylla::statement::prepared::PreparedStatement;

use super::{SCHEMA_VERSION, ScyllaStore};
use crate::store::StoreError;

/// One prepared statement per query.
pub(super) struct Statements {
    pub read_static: PreparedStatement,
    pub scan_static: PreparedStatement,
    pub write_static: PreparedStatement,
    pub read_dynamic: PreparedStatement,
    pub write_dynamic: PreparedStatement,
    pub write_event: PreparedStatement,
    pub read_events: PreparedStatement,
    pub put_batch: PreparedStatement,
    pub list_batches: PreparedStatement,
    pub set_current: PreparedStatement,
    pub current_batches: PreparedStatement,
    pub write_prediction: PreparedStatement,
    pub read_prediction: PreparedStatement,
    pub scan_predictions: PreparedStatement,
    pub write_feedback: PreparedStatement,
    pub scan_feedback: PreparedStatement,
    pub get_tuner: PreparedStatement,
    pub put_tuner: PreparedStatement,
    pub get_routing: PreparedStatement,
    pub insert_routing: PreparedStatement,
    pub update_routing: PreparedStatement,
    pub read_lease: PreparedStatement,
    pub insert_lease: PreparedStatement,
    pub update_lease: PreparedStatement,
    pub delete_lease: PreparedStatement,
    pub get_schedule: PreparedStatement,
    pub put_schedule: PreparedStatement,
    pub get_request: PreparedStatement,
    pub put_request: PreparedStatement,
    pub write_score: PreparedStatement,
    pub read_score: PreparedStatement,
    pub put_scoring_run: PreparedStatement,
    pub scoring_runs: PreparedStatement,
    pub put_async: PreparedStatement,
    pub get_async: PreparedStatement,
    pub claim_key: PreparedStatement,
    pub get_artifact: PreparedStatement,
    pub put_artifact: PreparedStatement,
    pub delete_artifact: PreparedStatement,
    pub get_chunk: PreparedStatement,
    pub put_chunk: PreparedStatement,
    pub delete_chunk: PreparedStatement,
}

impl ScyllaStore {
    /// The prepared statements, prepared on the first call.
    pub(super) async fn statements(&self) -> Result<&Statements, StoreError> {
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
                    scan_static: self
                        .prepare(
                            format!(
                                "SELECT view_name, entity, batch_id, written_at, features \
                                 FROM {ks}.static_rows \
                                 WHERE token(view_name, entity) >= ? AND token(view_name, entity) <= ?"
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
                    write_score: self
                        .prepare(
                            format!(
                                "INSERT INTO {ks}.scores (model, key, batch_id, entry) \
                                 VALUES (?, ?, ?, ?) USING TTL ?"
                            ),
                            false,
                        )
                        .await?,
                    read_score: self
                        .prepare(
                            format!(
                                "SELECT entry FROM {ks}.scores \
                                 WHERE model = ? AND key = ? AND batch_id = ?"
                            ),
                            true,
                        )
                        .await?,
                    put_scoring_run: self
                        .prepare(
                            format!(
                                "INSERT INTO {ks}.scoring_runs (job, batch_id, record) VALUES (?, ?, ?)"
                            ),
                            false,
                        )
                        .await?,
                    scoring_runs: self
                        .prepare(
                            format!(
                                "SELECT record FROM {ks}.scoring_runs WHERE job = ? LIMIT ?"
                            ),
                            true,
                        )
                        .await?,
                    put_async: self
                        .prepare(
                            format!(
                                "INSERT INTO {ks}.async_requests (id, record) VALUES (?, ?) USING TTL ?"
                            ),
                            false,
                        )
                        .await?,
                    get_async: self
                        .prepare(
                            format!("SELECT record FROM {ks}.async_requests WHERE id = ?"),
                            true,
                        )
                        .await?,
                    claim_key: self
                        .prepare(
                            format!(
                                "INSERT INTO {ks}.async_idempotency (key, id) VALUES (?, ?) \
                                 IF NOT EXISTS USING TTL ?"
                            ),
                            false,
                        )
                        .await?,
                    get_artifact: self
                        .prepare(
                            format!(
                                "SELECT length, chunks, sha256 FROM {ks}.artifacts WHERE name = ?"
                            ),
                            true,
                        )
                        .await?,
                    put_artifact: self
                        .prepare(
                            format!(
                                "INSERT INTO {ks}.artifacts (name, length, chunks, sha256) \
                                 VALUES (?, ?, ?, ?)"
                            ),
                            false,
                        )
                        .await?,
                    delete_artifact: self
                        .prepare(format!("DELETE FROM {ks}.artifacts WHERE name = ?"), false)
                        .await?,
                    get_chunk: self
                        .prepare(
                            format!(
                                "SELECT data FROM {ks}.artifact_chunks WHERE name = ? AND chunk = ?"
                            ),
                            true,
                        )
                        .await?,
                    put_chunk: self
                        .prepare(
                            format!(
                                "INSERT INTO {ks}.artifact_chunks (name, chunk, data) VALUES (?, ?, ?)"
                            ),
                            false,
                        )
                        .await?,
                    delete_chunk: self
                        .prepare(
                            format!(
                                "DELETE FROM {ks}.artifact_chunks WHERE name = ? AND chunk = ?"
                            ),
                            false,
                        )
                        .await?,
                })
            })
            .await
    }
}
