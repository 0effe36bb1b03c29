//! The keyspace's tables (see the module docs of the backend) and their
//! creation: every statement is idempotent, so applying the schema again or
//! over an older version only adds what is missing.

use super::errors::NoSchemaAgreement;
use super::{SCHEMA_VERSION, ScyllaStore, deadline};
use crate::store::{SchemaReport, StoreError};

impl ScyllaStore {
    /// Creates the keyspace and the tables it lacks and records this
    /// build's schema version.
    pub(super) async fn create_tables(&self) -> Result<SchemaReport, StoreError> {
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
                "table scores".to_owned(),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.scores (model text, key text, batch_id text, \
                     entry text, PRIMARY KEY ((model, key), batch_id))"
                ),
            ),
            (
                "table scoring_runs".to_owned(),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.scoring_runs (job text, batch_id text, \
                     record text, PRIMARY KEY (job, batch_id)) WITH CLUSTERING ORDER BY (batch_id DESC)"
                ),
            ),
            (
                "table async_requests".to_owned(),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.async_requests (id text PRIMARY KEY, record blob)"
                ),
            ),
            (
                "table async_idempotency".to_owned(),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.async_idempotency (key text PRIMARY KEY, id text)"
                ),
            ),
            (
                "table artifacts".to_owned(),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.artifacts (name text PRIMARY KEY, length bigint, \
                     chunks int, sha256 text)"
                ),
            ),
            (
                // One partition per chunk: an index of hundreds of MiB never
                // becomes one oversized partition.
                "table artifact_chunks".to_owned(),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.artifact_chunks (name text, chunk int, data blob, \
                     PRIMARY KEY ((name, chunk)))"
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
                Ok(self.session.query_unpaged(statement, ()).await?)
            })
            .await?;
            applied.push(what);
        }
        self.session
            .await_schema_agreement()
            .await
            .map_err(|e| StoreError::Failed(Box::new(NoSchemaAgreement(e))))?;
        Ok(SchemaReport {
            from_version: from,
            to_version: SCHEMA_VERSION,
            applied,
        })
    }
}
