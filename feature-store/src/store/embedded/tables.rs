//! The file's tables (the on-disk layout) and their creation, version by
//! version.

use redb::{Database, ReadableTable, TableDefinition};

use super::{CallError, CallResult, SCHEMA_VERSION};
use crate::store::SchemaReport;

/// name → value: the schema version.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// (view, batch, entity) → data time (i64 µs) + encoded values.
pub(super) const STATIC: TableDefinition<&[u8], &[u8]> = TableDefinition::new("static_rows");
/// (view, entity, feature) → event time (i64 µs) + expiry (i64 µs) + value.
pub(super) const DYNAMIC: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dynamic_values");
/// (view, entity) + event time (8 bytes, ordered) + event ID → expiry (i64
/// µs) + encoded fields: the raw events behind windowed aggregates.
pub(super) const EVENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dynamic_events");
/// expiry (8 bytes, ordered) + the event's key → nothing: which events to
/// prune first, so pruning never scans unexpired rows.
pub(super) const EVENT_EXPIRY: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("dynamic_event_expiry");
/// Expired events removed by one event write, at most (bounds the write's
/// work; every write prunes, so expired rows never pile up).
pub(super) const EVENT_PRUNE_PER_WRITE: usize = 256;
/// (view, batch) → JSON batch record.
pub(super) const BATCHES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("refresh_batches");
/// view → JSON current batch.
pub(super) const CURRENT: TableDefinition<&str, &[u8]> = TableDefinition::new("current_batch");
/// prediction ID (UUIDv7 text, sorts by time) → prediction record
/// (`PredictionRecord::to_bytes`; JSON when written before that layout).
pub(super) const PREDICTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("prediction_log");
/// prediction ID → JSON feedback record.
pub(super) const FEEDBACK: TableDefinition<&str, &[u8]> = TableDefinition::new("feedback");
/// refresh job → JSON tuner state.
pub(super) const TUNER: TableDefinition<&str, &[u8]> = TableDefinition::new("tuner_state");
/// model → revision (i64 LE) + the gateway's routing document.
pub(super) const ROUTING: TableDefinition<&str, &[u8]> = TableDefinition::new("model_routing");
/// lease name → JSON holder and expiry.
pub(super) const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");
/// refresh job → JSON schedule state.
pub(super) const SCHEDULE: TableDefinition<&str, &[u8]> = TableDefinition::new("job_schedule");
/// refresh job → JSON run request.
pub(super) const RUN_REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("run_requests");
/// (model, batch, key) → JSON precomputed prediction.
pub(super) const SCORES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("scores");
/// (job, batch) → scoring run record (JSON).
pub(super) const SCORING_RUNS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("scoring_runs");

/// request ID → asynchronous request record (`RequestRecord::to_bytes`).
pub(super) const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("async_requests");
/// scoped idempotency key → expiry (i64 µs LE) + request ID.
pub(super) const IDEMPOTENCY: TableDefinition<&str, &[u8]> =
    TableDefinition::new("async_idempotency");
/// expiry (8 bytes, ordered) + table tag (`r` requests, `i` idempotency) +
/// key → nothing: which requests and keys to remove first.
pub(super) const REQUEST_EXPIRY: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("async_expiry");

/// artifact name → its length in bytes (u64).
pub(super) const ARTIFACTS: TableDefinition<&str, u64> = TableDefinition::new("artifacts");
/// artifact name + 0 + chunk number (u32 BE) → that chunk's bytes.
pub(super) const ARTIFACT_CHUNKS: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("artifact_chunks");

/// Creates the tables a file lacks and records this build's schema version.
pub(super) fn apply(db: &Database) -> CallResult<SchemaReport> {
    let tx = db.begin_write()?;
    let from;
    let mut applied = Vec::new();
    {
        let mut meta = tx.open_table(META)?;
        from = meta.get("schema_version")?.map_or(0, |v| v.value());
        if from > u64::from(SCHEMA_VERSION) {
            return Err(CallError::File(
                    format!(
                        "the file has schema version {from}, newer than this build's {SCHEMA_VERSION}; use a newer mlgw-features"
                    )
                    .into(),
                ));
        }
        for (name, open) in [
            ("static_rows", tx.open_table(STATIC).map(drop)),
            ("dynamic_values", tx.open_table(DYNAMIC).map(drop)),
            ("refresh_batches", tx.open_table(BATCHES).map(drop)),
        ] {
            open?;
            if from == 0 {
                applied.push(format!("created table {name}"));
            }
        }
        tx.open_table(CURRENT).map(drop)?;
        if from == 0 {
            applied.push("created table current_batch".to_owned());
        }
        // Version 2: the prediction log and feedback.
        for (name, open) in [
            ("prediction_log", tx.open_table(PREDICTIONS).map(drop)),
            ("feedback", tx.open_table(FEEDBACK).map(drop)),
        ] {
            open?;
            if from < 2 {
                applied.push(format!("created table {name}"));
            }
        }
        // Version 3: the refresh tuner's state.
        tx.open_table(TUNER).map(drop)?;
        if from < 3 {
            applied.push("created table tuner_state".to_owned());
        }
        // Version 4: the gateway's model routing.
        tx.open_table(ROUTING).map(drop)?;
        if from < 4 {
            applied.push("created table model_routing".to_owned());
        }
        // Version 4: the scheduler's leases, schedules and run requests.
        for (name, open) in [
            ("leases", tx.open_table(LEASES).map(drop)),
            ("job_schedule", tx.open_table(SCHEDULE).map(drop)),
            ("run_requests", tx.open_table(RUN_REQUESTS).map(drop)),
        ] {
            open?;
            if from < 4 {
                applied.push(format!("created table {name}"));
            }
        }
        // Version 5: raw events of dynamic views and their expiry index.
        for (name, open) in [
            ("dynamic_events", tx.open_table(EVENTS).map(drop)),
            (
                "dynamic_event_expiry",
                tx.open_table(EVENT_EXPIRY).map(drop),
            ),
        ] {
            open?;
            if from < 5 {
                applied.push(format!("created table {name}"));
            }
        }
        // Version 6: precomputed predictions.
        tx.open_table(SCORES).map(drop)?;
        if from < 6 {
            applied.push("created table scores".to_owned());
        }
        // Version 7: scoring run records.
        tx.open_table(SCORING_RUNS).map(drop)?;
        if from < 7 {
            applied.push("created table scoring_runs".to_owned());
        }
        // Version 8: asynchronous requests and idempotency keys.
        for (name, open) in [
            ("async_requests", tx.open_table(REQUESTS).map(drop)),
            ("async_idempotency", tx.open_table(IDEMPOTENCY).map(drop)),
            ("async_expiry", tx.open_table(REQUEST_EXPIRY).map(drop)),
        ] {
            open?;
            if from < 8 {
                applied.push(format!("created table {name}"));
            }
        }
        // Version 9: built artifacts (similarity indexes).
        for (name, open) in [
            ("artifacts", tx.open_table(ARTIFACTS).map(drop)),
            ("artifact_chunks", tx.open_table(ARTIFACT_CHUNKS).map(drop)),
        ] {
            open?;
            if from < 9 {
                applied.push(format!("created table {name}"));
            }
        }
        meta.insert("schema_version", u64::from(SCHEMA_VERSION))?;
    }
    tx.commit()?;
    Ok(SchemaReport {
        from_version: u32::try_from(from).unwrap_or(u32::MAX),
        to_version: SCHEMA_VERSION,
        applied,
    })
}
