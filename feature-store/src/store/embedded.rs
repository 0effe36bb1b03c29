//! The embedded backend: one redb file, so the product runs on a laptop with no
//! ScyllaDB, with the same semantics as the ScyllaDB backend.
//!
//! The file is opened in redb's multi-writer mode, so the gateway and the data
//! engineers' CLI can use it at the same time. redb calls block, so each call
//! runs on tokio's blocking pool. Keys are byte strings with length-prefixed
//! parts, so no entity key (which may contain any character) can collide with
//! another.
//!
//! Point reads of one entity (static rows, dynamic rows, a window of events)
//! run inline and share one read snapshot among the reads that begin within
//! [`SNAPSHOT_TTL`] of it: starting a read transaction in the multi-writer
//! mode registers it, takes a shared lock on the file header and reads the
//! header (sharing the transaction cut the gateway's CPU per call by ~7% at
//! 5,000 req/s). Any call of this process that may have written drops the
//! snapshot, so this process reads its own writes at once; another process's
//! commits are seen at most `SNAPSHOT_TTL` late, and a snapshot outlives its
//! last read by at most one such call (the reader's batch poll is one, every
//! 2 s by default), so it does not pin old pages for long.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use redb::{
    ConcurrencyMode, Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    TableHandle,
};

use super::{
    BatchRecord, CurrentBatch, DynamicWrite, EventWrite, FeatureStore, Lease, LeaseOutcome,
    RoutingRecord, SchemaReport, StaticWrite, StoreError, from_micros, to_micros,
};
use crate::aggregate::{Event, EventRange};
use crate::codec;
use crate::freshness::{StoredRow, StoredValue};
use crate::log::{
    FeedbackRecord, LogEntry, PredictionKey, PredictionRecord, id_lower_bound, unix_ms,
};
use crate::schedule::{RunRequest, ScheduleState};
use crate::tuner::controller::JobState;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 5;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// (view, batch, entity) → data time (i64 µs) + encoded values.
const STATIC: TableDefinition<&[u8], &[u8]> = TableDefinition::new("static_rows");
/// (view, entity, feature) → event time (i64 µs) + expiry (i64 µs) + value.
const DYNAMIC: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dynamic_values");
/// (view, entity) + event time (8 bytes, ordered) + event ID → expiry (i64
/// µs) + encoded fields: the raw events behind windowed aggregates.
const EVENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dynamic_events");
/// expiry (8 bytes, ordered) + the event's key → nothing: which events to
/// prune first, so pruning never scans unexpired rows.
const EVENT_EXPIRY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dynamic_event_expiry");
/// Expired events removed by one event write, at most (bounds the write's
/// work; every write prunes, so expired rows never pile up).
const EVENT_PRUNE_PER_WRITE: usize = 256;
/// (view, batch) → JSON batch record.
const BATCHES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("refresh_batches");
/// view → JSON current batch.
const CURRENT: TableDefinition<&str, &[u8]> = TableDefinition::new("current_batch");
/// prediction ID (UUIDv7 text, sorts by time) → prediction record
/// (`PredictionRecord::to_bytes`; JSON when written before that layout).
const PREDICTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("prediction_log");
/// prediction ID → JSON feedback record.
const FEEDBACK: TableDefinition<&str, &[u8]> = TableDefinition::new("feedback");
/// refresh job → JSON tuner state.
const TUNER: TableDefinition<&str, &[u8]> = TableDefinition::new("tuner_state");
/// model → revision (i64 LE) + the gateway's routing document.
const ROUTING: TableDefinition<&str, &[u8]> = TableDefinition::new("model_routing");
/// lease name → JSON holder and expiry.
const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");
/// refresh job → JSON schedule state.
const SCHEDULE: TableDefinition<&str, &[u8]> = TableDefinition::new("job_schedule");
/// refresh job → JSON run request.
const RUN_REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("run_requests");

#[derive(serde::Serialize, serde::Deserialize)]
struct LeaseJson {
    holder: String,
    expires_at: i64,
}

/// How long a read snapshot is shared by the point reads that begin after it
/// (see the module docs).
pub const SNAPSHOT_TTL: Duration = Duration::from_millis(1);

/// A read transaction shared by point reads, and the write generation it was
/// taken in.
struct Snapshot {
    tx: ReadTransaction,
    taken: Instant,
    generation: u64,
}

/// The shared snapshot and the count of this process's calls that may have
/// written.
#[derive(Default)]
struct Snapshots {
    generation: AtomicU64,
    shared: Mutex<Option<Arc<Snapshot>>>,
}

impl Snapshots {
    /// Called after every call that may have written: later reads begin a
    /// new transaction.
    fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut slot) = self.shared.lock() {
            *slot = None;
        }
    }

    /// The shared snapshot if it is young and no write came since; else a
    /// new one, which becomes the shared one.
    fn get(&self, db: &Database) -> Result<Arc<Snapshot>, redb::Error> {
        // Loaded before the transaction begins: a write committed meanwhile
        // has bumped it, so a snapshot that may miss the write is never
        // handed out after the write's caller has returned.
        let generation = self.generation.load(Ordering::Acquire);
        if let Ok(slot) = self.shared.lock()
            && let Some(s) = slot.as_ref()
            && s.generation == generation
            && s.taken.elapsed() < SNAPSHOT_TTL
        {
            return Ok(Arc::clone(s));
        }
        let snapshot = Arc::new(Snapshot {
            tx: db.begin_read()?,
            taken: Instant::now(),
            generation,
        });
        if let Ok(mut slot) = self.shared.lock()
            && self.generation.load(Ordering::Acquire) == generation
        {
            *slot = Some(Arc::clone(&snapshot));
        }
        Ok(snapshot)
    }
}

/// The redb-backed store.
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
    snapshots: Arc<Snapshots>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CurrentJson {
    batch_id: String,
    written_at: i64,
    fingerprint: String,
}

fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 4).sum());
    for p in parts {
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// The exclusive upper bound of all keys starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

/// `micros` as 8 bytes that sort like the number (sign bit flipped, big-endian).
fn ordered_micros(micros: i64) -> [u8; 8] {
    ((micros as u64) ^ (1 << 63)).to_be_bytes()
}

/// Inverse of [`ordered_micros`].
fn from_ordered_micros(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

fn split_i64(bytes: &[u8]) -> Option<(i64, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<8>()?;
    Some((i64::from_le_bytes(*head), rest))
}

/// Memory for the file's pages kept in the process (read and written), by
/// default. redb's own default is 1 GiB, and a gateway writing its prediction
/// log fills it with pages it will not read again: it grew by ~2.4 KB per
/// prediction, each new 2-MiB huge page faulted in and zeroed on the hot
/// path. Beyond this the kernel's page cache still holds the file.
pub const DEFAULT_CACHE_BYTES: usize = 128 << 20;

impl EmbeddedStore {
    /// Opens (creating if needed) the database file at `path`, with
    /// [`DEFAULT_CACHE_BYTES`] of page cache. The schema is created by
    /// [`FeatureStore::apply_schema`].
    ///
    /// # Errors
    /// [`StoreError::Embedded`] if the file cannot be created or opened (bad
    /// directory, not a redb file, a newer format).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// [`EmbeddedStore::open`] with `cache_bytes` of page cache (0: none,
    /// every read goes to the file through the kernel's page cache).
    ///
    /// # Errors
    /// As [`EmbeddedStore::open`].
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Embedded {
                path: path.display().to_string(),
                message: format!("cannot create directory {}: {e}", dir.display()),
            })?;
        }
        let db = Database::builder()
            .set_concurrency_mode(ConcurrencyMode::MultiWriter)
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| StoreError::Embedded {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        Ok(EmbeddedStore {
            db: Arc::new(db),
            path: path.to_owned(),
            snapshots: Arc::default(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Embedded {
            path: self.path.display().to_string(),
            message: e.into().to_string(),
        }
    }

    /// Runs `f` on the blocking pool with the database. `f` may write, so
    /// the shared read snapshot is dropped once it has run.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database, &dyn Fn(redb::Error) -> StoreError) -> Result<T, StoreError>
        + Send
        + 'static,
    ) -> Result<T, StoreError> {
        let db = Arc::clone(&self.db);
        let snapshots = Arc::clone(&self.snapshots);
        let path = self.path.display().to_string();
        tokio::task::spawn_blocking(move || {
            let err = move |e: redb::Error| StoreError::Embedded {
                path: path.clone(),
                message: e.to_string(),
            };
            let out = f(&db, &err);
            snapshots.invalidate();
            out
        })
        .await
        .map_err(|e| self.err(redb::Error::Io(std::io::Error::other(e.to_string()))))?
    }

    /// Runs a point read `f` right here, on the caller's thread, in the
    /// shared read snapshot (see the module docs). A read on one key of a
    /// page-cached file takes microseconds, less than handing it to a
    /// blocking thread and waking the caller again costs (that hand-off was
    /// ~5% of the gateway's CPU per call); writes, scans and schema work stay
    /// on the blocking pool.
    fn inline<T>(
        &self,
        f: impl FnOnce(&ReadTransaction, &dyn Fn(redb::Error) -> StoreError) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let err = |e: redb::Error| StoreError::Embedded {
            path: self.path.display().to_string(),
            message: e.to_string(),
        };
        let snapshot = self.snapshots.get(&self.db).map_err(err)?;
        f(&snapshot.tx, &err)
    }

    fn check_schema(
        db: &Database,
        err: &dyn Fn(redb::Error) -> StoreError,
    ) -> Result<(), StoreError> {
        let tx = db.begin_read().map_err(|e| err(e.into()))?;
        let found = match tx.open_table(META) {
            Ok(t) => t
                .get("schema_version")
                .map_err(|e| err(e.into()))?
                .map_or(0, |v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(err(e.into())),
        };
        if found == u64::from(SCHEMA_VERSION) {
            Ok(())
        } else {
            Err(StoreError::SchemaVersion {
                found: u32::try_from(found).unwrap_or(u32::MAX),
                needed: SCHEMA_VERSION,
            })
        }
    }
}

impl EmbeddedStore {
    /// The JSON document under `key` in `table`.
    async fn get_json<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |db, err| {
            Self::check_schema(db, err)?;
            let tx = db.begin_read().map_err(|e| err(e.into()))?;
            let t = tx.open_table(table).map_err(|e| err(e.into()))?;
            let Some(v) = t.get(key.as_str()).map_err(|e| err(e.into()))? else {
                return Ok(None);
            };
            serde_json::from_slice(v.value()).map(Some).map_err(|e| {
                StoreError::Backend(format!("damaged {} record of {key}: {e}", table.name()))
            })
        })
        .await
    }

    /// Replaces the JSON document under `key` in `table`.
    async fn put_json<T: serde::Serialize>(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let k = key.to_owned();
        let v = serde_json::to_vec(value).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.blocking(move |db, err| {
            Self::check_schema(db, err)?;
            let tx = db.begin_write().map_err(|e| err(e.into()))?;
            {
                let mut t = tx.open_table(table).map_err(|e| err(e.into()))?;
                t.insert(k.as_str(), v.as_slice())
                    .map_err(|e| err(e.into()))?;
            }
            tx.commit().map_err(|e| err(e.into()))
        })
        .await
    }
}

/// Opens `table` for reading; a file without it predates the schema
/// (run `schema apply`).
fn read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &redb::ReadTransaction,
    table: TableDefinition<'_, K, V>,
    err: &dyn Fn(redb::Error) -> StoreError,
) -> Result<redb::ReadOnlyTable<K, V>, StoreError> {
    match tx.open_table(table) {
        Ok(t) => Ok(t),
        Err(redb::TableError::TableDoesNotExist(_)) => Err(StoreError::SchemaVersion {
            found: 0,
            needed: SCHEMA_VERSION,
        }),
        Err(e) => Err(err(e.into())),
    }
}

/// The unexpired dynamic values of `entity_key` in `view` at `now` (µs).
fn dynamic_in(
    tx: &redb::ReadTransaction,
    err: &dyn Fn(redb::Error) -> StoreError,
    view: &str,
    entity_key: &str,
    now: i64,
) -> Result<Option<StoredRow>, StoreError> {
    let table = read_table(tx, DYNAMIC, err)?;
    let prefix = key(&[view.as_bytes(), entity_key.as_bytes()]);
    let end = prefix_end(&prefix);
    let mut values = BTreeMap::new();
    for item in table
        .range(prefix.as_slice()..end.as_slice())
        .map_err(|e| err(e.into()))?
    {
        let (k, v) = item.map_err(|e| err(e.into()))?;
        let corrupt = |what| StoreError::Corrupt {
            view: view.to_owned(),
            entity: entity_key.to_owned(),
            source: codec::CodecError { offset: 0, what },
        };
        let feature = k
            .value()
            .get(prefix.len() + 4..)
            .and_then(|f| std::str::from_utf8(f).ok())
            .ok_or_else(|| corrupt("bad feature key"))?
            .to_owned();
        let (event, rest) = split_i64(v.value()).ok_or_else(|| corrupt("truncated"))?;
        let (expires, blob) = split_i64(rest).ok_or_else(|| corrupt("truncated"))?;
        if expires <= now {
            continue;
        }
        let value = codec::decode_value(blob).map_err(|source| StoreError::Corrupt {
            view: view.to_owned(),
            entity: entity_key.to_owned(),
            source,
        })?;
        let written_at = from_micros(event);
        values.insert(feature, StoredValue { value, written_at });
    }
    Ok(StoredRow::dynamic(values))
}

/// The unexpired events of `entity_key` in `view` with event times in
/// `[from, to]`, newest first, at most `limit`, at `now` (µs).
fn events_in(
    tx: &redb::ReadTransaction,
    err: &dyn Fn(redb::Error) -> StoreError,
    view: &str,
    entity_key: &str,
    (from, to): (SystemTime, SystemTime),
    limit: usize,
    now: i64,
) -> Result<EventRange, StoreError> {
    let prefix = key(&[view.as_bytes(), entity_key.as_bytes()]);
    let mut lo = prefix.clone();
    lo.extend_from_slice(&ordered_micros(to_micros(from)));
    let mut hi = prefix.clone();
    hi.extend_from_slice(&ordered_micros(to_micros(to).saturating_add(1)));
    let table = read_table(tx, EVENTS, err)?;
    let corrupt = |what| StoreError::Corrupt {
        view: view.to_owned(),
        entity: entity_key.to_owned(),
        source: codec::CodecError { offset: 0, what },
    };
    let mut out = EventRange::default();
    // Newest first; expired rows (the oldest) are skipped until pruned.
    for item in table
        .range(lo.as_slice()..hi.as_slice())
        .map_err(|e| err(e.into()))?
        .rev()
    {
        let (k, v) = item.map_err(|e| err(e.into()))?;
        let (expires, blob) = split_i64(v.value()).ok_or_else(|| corrupt("truncated"))?;
        if expires <= now {
            continue;
        }
        if out.events.len() == limit {
            out.truncated = true;
            break;
        }
        let rest = k
            .value()
            .get(prefix.len()..)
            .ok_or_else(|| corrupt("bad event key"))?;
        let (time, id) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| corrupt("bad event key"))?;
        let event_id = std::str::from_utf8(id)
            .map_err(|_| corrupt("event ID is not UTF-8"))?
            .to_owned();
        let fields = codec::decode(blob).map_err(|source| StoreError::Corrupt {
            view: view.to_owned(),
            entity: entity_key.to_owned(),
            source,
        })?;
        out.events.push(Event {
            event_id,
            event_time: from_micros(from_ordered_micros(*time)),
            fields,
        });
    }
    Ok(out)
}

fn read_static_sync(
    tx: &ReadTransaction,
    err: &dyn Fn(redb::Error) -> StoreError,
    view: &str,
    batch_id: &str,
    entity_key: &str,
) -> Result<Option<StoredRow>, StoreError> {
    let table = read_table(tx, STATIC, err)?;
    let k = key(&[view.as_bytes(), batch_id.as_bytes(), entity_key.as_bytes()]);
    let Some(guard) = table.get(k.as_slice()).map_err(|e| err(e.into()))? else {
        return Ok(None);
    };
    let bytes = guard.value();
    let corrupt = |what| StoreError::Corrupt {
        view: view.to_owned(),
        entity: entity_key.to_owned(),
        source: codec::CodecError { offset: 0, what },
    };
    let (micros, blob) = split_i64(bytes).ok_or_else(|| corrupt("truncated time"))?;
    let written_at = from_micros(micros);
    let values = codec::decode(blob).map_err(|source| StoreError::Corrupt {
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
}

impl FeatureStore for EmbeddedStore {
    async fn apply_schema(&self) -> Result<SchemaReport, StoreError> {
        self.blocking(|db, err| {
            let tx = db.begin_write().map_err(|e| err(e.into()))?;
            let from;
            let mut applied = Vec::new();
            {
                let mut meta = tx.open_table(META).map_err(|e| err(e.into()))?;
                from = meta
                    .get("schema_version")
                    .map_err(|e| err(e.into()))?
                    .map_or(0, |v| v.value());
                if from > u64::from(SCHEMA_VERSION) {
                    return Err(StoreError::Embedded {
                        path: String::new(),
                        message: format!(
                            "the file has schema version {from}, newer than this build's {SCHEMA_VERSION}; use a newer mlgw-features"
                        ),
                    });
                }
                for (name, open) in [
                    ("static_rows", tx.open_table(STATIC).map(drop)),
                    ("dynamic_values", tx.open_table(DYNAMIC).map(drop)),
                    ("refresh_batches", tx.open_table(BATCHES).map(drop)),
                ] {
                    open.map_err(|e| err(e.into()))?;
                    if from == 0 {
                        applied.push(format!("created table {name}"));
                    }
                }
                tx.open_table(CURRENT).map(drop).map_err(|e| err(e.into()))?;
                if from == 0 {
                    applied.push("created table current_batch".to_owned());
                }
                // Version 2: the prediction log and feedback.
                for (name, open) in [
                    ("prediction_log", tx.open_table(PREDICTIONS).map(drop)),
                    ("feedback", tx.open_table(FEEDBACK).map(drop)),
                ] {
                    open.map_err(|e| err(e.into()))?;
                    if from < 2 {
                        applied.push(format!("created table {name}"));
                    }
                }
                // Version 3: the refresh tuner's state.
                tx.open_table(TUNER).map(drop).map_err(|e| err(e.into()))?;
                if from < 3 {
                    applied.push("created table tuner_state".to_owned());
                }
                // Version 4: the gateway's model routing.
                tx.open_table(ROUTING).map(drop).map_err(|e| err(e.into()))?;
                if from < 4 {
                    applied.push("created table model_routing".to_owned());
                }
                // Version 4: the scheduler's leases, schedules and run requests.
                for (name, open) in [
                    ("leases", tx.open_table(LEASES).map(drop)),
                    ("job_schedule", tx.open_table(SCHEDULE).map(drop)),
                    ("run_requests", tx.open_table(RUN_REQUESTS).map(drop)),
                ] {
                    open.map_err(|e| err(e.into()))?;
                    if from < 4 {
                        applied.push(format!("created table {name}"));
                    }
                }
                // Version 5: raw events of dynamic views and their expiry index.
                for (name, open) in [
                    ("dynamic_events", tx.open_table(EVENTS).map(drop)),
                    ("dynamic_event_expiry", tx.open_table(EVENT_EXPIRY).map(drop)),
                ] {
                    open.map_err(|e| err(e.into()))?;
                    if from < 5 {
                        applied.push(format!("created table {name}"));
                    }
                }
                meta.insert("schema_version", u64::from(SCHEMA_VERSION))
                    .map_err(|e| err(e.into()))?;
            }
            tx.commit().map_err(|e| err(e.into()))?;
            Ok(SchemaReport {
                from_version: u32::try_from(from).unwrap_or(u32::MAX),
                to_version: SCHEMA_VERSION,
                applied,
            })
        })
        .await
    }

    async fn read_static(
        &self,
        view: &str,
        batch_id: &str,
        entity_key: &str,
    ) -> Result<Option<StoredRow>, StoreError> {
        self.inline(|tx, err| read_static_sync(tx, err, view, batch_id, entity_key))
    }

    async fn write_static(&self, write: StaticWrite<'_>) -> Result<(), StoreError> {
        let micros = to_micros(write.written_at).to_le_bytes();
        let entries: Vec<(Vec<u8>, Vec<u8>)> = write
            .rows
            .iter()
            .map(|r| {
                let k = key(&[
                    write.view.as_bytes(),
                    write.batch_id.as_bytes(),
                    r.entity_key.as_bytes(),
                ]);
                let mut v = Vec::with_capacity(8 + r.blob.len());
                v.extend_from_slice(&micros);
                v.extend_from_slice(&r.blob);
                (k, v)
            })
            .collect();
        self.blocking(move |db, err| {
            Self::check_schema(db, err)?;
            let tx = db.begin_write().map_err(|e| err(e.into()))?;
            {
                let mut table = tx.open_table(STATIC).map_err(|e| err(e.into()))?;
                for (k, v) in &entries {
                    table
                        .insert(k.as_slice(), v.as_slice())
                        .map_err(|e| err(e.into()))?;
                }
            }
            tx.commit().map_err(|e| err(e.into()))
        })
        .await
    }

    async fn read_dynamic(
        &self,
        view: &str,
        entity_key: &str,
    ) -> Result<Option<StoredRow>, StoreError> {
        self.inline(|tx, err| dynamic_in(tx, err, view, entity_key, to_micros(SystemTime::now())))
    }

    async fn write_dynamic(&self, write: DynamicWrite<'_>) -> Result<(), StoreError> {
        let event = to_micros(write.event_time);
        let expires = to_micros(write.expires_at);
        let entries: Vec<(Vec<u8>, Vec<u8>)> = write
            .values
            .iter()
            .map(|(name, value)| {
                let k = key(&[
                    write.view.as_bytes(),
                    write.entity_key.as_bytes(),
                    name.as_bytes(),
                ]);
                let mut v = Vec::with_capacity(24);
                v.extend_from_slice(&event.to_le_bytes());
                v.extend_from_slice(&expires.to_le_bytes());
                v.extend_from_slice(&codec::encode_value(value));
                (k, v)
            })
            .collect();
        self.blocking(move |db, err| {
            Self::check_schema(db, err)?;
            let tx = db.begin_write().map_err(|e| err(e.into()))?;
            {
                let mut table = tx.open_table(DYNAMIC).map_err(|e| err(e.into()))?;
                for (k, v) in &entries {
                    // Last write wins by event time, as ScyllaDB's cell
                    // timestamps do: an older event never replaces a newer one.
                    let stored = table
                        .get(k.as_slice())
                        .map_err(|e| err(e.into()))?
                        .and_then(|g| split_i64(g.value()).map(|(t, _)| t));
                    if stored.is_some_and(|t| t > event) {
                        continue;
                    }
                    table
                        .insert(k.as_slice(), v.as_slice())
                        .map_err(|e| err(e.into()))?;
                }
            }
            tx.commit().map_err(|e| err(e.into()))
        })
        .await
    }

    async fn write_event(&self, write: EventWrite<'_>) -> Result<(), StoreError> {
        let expires = to_micros(write.expires_at);
        let mut k = key(&[write.view.as_bytes(), write.entity_key.as_bytes()]);
        k.extend_from_slice(&ordered_micros(to_micros(write.event.event_time)));
        k.extend_from_slice(write.event.event_id.as_bytes());
        let blob = codec::encode(write.event.fields.iter().map(|(n, v)| (n.as_str(), v)));
        let mut v = Vec::with_capacity(8 + blob.len());
        v.extend_from_slice(&expires.to_le_bytes());
        v.extend_from_slice(&blob);
        let mut expiry_key = ordered_micros(expires).to_vec();
        expiry_key.extend_from_slice(&k);
        self.blocking(move |db, err| {
            Self::check_schema(db, err)?;
            let now = to_micros(SystemTime::now());
            let tx = db.begin_write().map_err(|e| err(e.into()))?;
            {
                let mut events = tx.open_table(EVENTS).map_err(|e| err(e.into()))?;
                let mut expiry = tx.open_table(EVENT_EXPIRY).map_err(|e| err(e.into()))?;
                // As on ScyllaDB, an event past its TTL is not written.
                if expires > now {
                    events
                        .insert(k.as_slice(), v.as_slice())
                        .map_err(|e| err(e.into()))?;
                    expiry
                        .insert(expiry_key.as_slice(), [].as_slice())
                        .map_err(|e| err(e.into()))?;
                }
                // Prune the events that expired first, a bounded number per
                // write. An index entry whose event was rewritten with a
                // later expiry only drops itself.
                let due: Vec<Vec<u8>> = expiry
                    .range(..ordered_micros(now.saturating_add(1)).as_slice())
                    .map_err(|e| err(e.into()))?
                    .take(EVENT_PRUNE_PER_WRITE)
                    .map(|item| item.map(|(k, _)| k.value().to_vec()))
                    .collect::<Result<_, _>>()
                    .map_err(|e| err(e.into()))?;
                for index_key in due {
                    expiry
                        .remove(index_key.as_slice())
                        .map_err(|e| err(e.into()))?;
                    let Some(event_key) = index_key.get(8..) else {
                        continue;
                    };
                    let stored = events
                        .get(event_key)
                        .map_err(|e| err(e.into()))?
                        .and_then(|g| split_i64(g.value()).map(|(t, _)| t));
                    if stored.is_some_and(|t| t <= now) {
                        events.remove(event_key).map_err(|e| err(e.into()))?;
                    }
                }
            }
            tx.commit().map_err(|e| err(e.into()))
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
        // Inline like the other reads of one entity: a window's events are
        // a short range of one key prefix (at most `limit`).
        self.inline(|tx, err| {
            let now = to_micros(SystemTime::now());
            events_in(tx, err, view, entity_key, (from, to), limit, now)
        })
    }

    /// Both reads in one read transaction, so they see one state of the
    /// store.
    async fn read_dynamic_window(
        &self,
        view: &str,
        entity_key: &str,
        from: SystemTime,
        to: SystemTime,
        limit: usize,
    ) -> Result<(Option<StoredRow>, EventRange), StoreError> {
        self.inline(|tx, err| {
            let now = to_micros(SystemTime::now());
            let row = dynamic_in(tx, err, view, entity_key, now)?;
            let events = events_in(tx, err, view, entity_key, (from, to), limit, now)?;
            Ok((row, events))
        })
    }

    async fn put_batch(&self, record: &BatchRecord) -> Result<(), StoreError> {
        let k = key(&[record.view.as_bytes(), record.batch_id.as_bytes()]);
        let v = serde_json::to_vec(record).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.blocking(move |db, err| {
            Self::check_schema(db, err)?;
            let tx = db.begin_write().map_err(|e| err(e.into()))?;
            {
                let mut table = tx.open_table(BATCHES).map_err(|e| err(e.into()))?;
                table
                    .insert(k.as_slice(), v.as_slice())
                    .map_err(|e| err(e.into()))?;
            }
            tx.commit().map_err(|e| err(e.into()))
        })
        .await
    }

    async fn list_batches(&self, view: &str, limit: usize) -> Result<Vec<BatchRecord>, StoreError> {
        let prefix = key(&[view.as_bytes()]);
        self.blocking(move |db, err| {
            Self::check_schema(db, err)?;
            let tx = db.begin_read().map_err(|e| err(e.into()))?;
            let table = tx.open_table(BATCHES).map_err(|e| err(e.into()))?;
            let end = prefix_end(&prefix);
            let mut out = Vec::new();
            for item in table
                .range(prefix.as_slice()..end.as_slice())
                .map_err(|e| err(e.into()))?
                .rev()
                .take(limit)
            {
                let (_, v) = item.map_err(|e| err(e.into()))?;
                let record: BatchRecord = serde_json::from_slice(v.value())
                    .map_err(|e| StoreError::Backend(format!("damaged batch record: {e}")))?;
                out.push(record);
            }
            Ok(out)
        })
        .await
    }

    async fn set_current(&self, record: &BatchRecord) -> Result<(), StoreError> {
        let view = record.view.clone();
        let batch_id = record.batch_id.clone();
        let json = serde_json::to_vec(&CurrentJson {
            batch_id: record.batch_id.clone(),
            written_at: to_micros(record.ingested_at),
            fingerprint: record.fingerprint.clone(),
        })
        .map_err(|e| StoreError::Backend(e.to_string()))?;
        self.blocking(move |db, err| {
            Self::check_schema(db, err)?;
            let tx = db.begin_write().map_err(|e| err(e.into()))?;
            {
                let mut current = tx.open_table(CURRENT).map_err(|e| err(e.into()))?;
                let previous: Option<String> = current
                    .get(view.as_str())
                    .map_err(|e| err(e.into()))?
                    .and_then(|g| serde_json::from_slice::<CurrentJson>(g.value()).ok())
                    .map(|c| c.batch_id);
                current
                    .insert(view.as_str(), json.as_slice())
                    .map_err(|e| err(e.into()))?;
                // Keep the new batch and the one it replaces (for a reader that
                // has not switched yet); drop every older batch of the view.
                let mut rows = tx.open_table(STATIC).map_err(|e| err(e.into()))?;
                let view_prefix = key(&[view.as_bytes()]);
                let keep_prefixes: Vec<Vec<u8>> = [Some(batch_id.as_str()), previous.as_deref()]
                    .into_iter()
                    .flatten()
                    .map(|b| key(&[view.as_bytes(), b.as_bytes()]))
                    .collect();
                let end = prefix_end(&view_prefix);
                rows.retain_in(view_prefix.as_slice()..end.as_slice(), |k, _| {
                    keep_prefixes.iter().any(|p| k.starts_with(p))
                })
                .map_err(|e| err(e.into()))?;
            }
            tx.commit().map_err(|e| err(e.into()))
        })
        .await
    }

    async fn current_batches(&self) -> Result<BTreeMap<String, CurrentBatch>, StoreError> {
        self.blocking(|db, err| {
            Self::check_schema(db, err)?;
            let tx = db.begin_read().map_err(|e| err(e.into()))?;
            let table = tx.open_table(CURRENT).map_err(|e| err(e.into()))?;
            let mut out = BTreeMap::new();
            for item in table.iter().map_err(|e| err(e.into()))? {
                let (k, v) = item.map_err(|e| err(e.into()))?;
                let c: CurrentJson = serde_json::from_slice(v.value())
                    .map_err(|e| StoreError::Backend(format!("damaged current batch: {e}")))?;
                out.insert(
                    k.value().to_owned(),
                    CurrentBatch {
                        batch_id: c.batch_id,
                        written_at: from_micros(c.written_at),
                        fingerprint: c.fingerprint,
                    },
                );
            }
            Ok(out)
        })
        .await
    }

    async fn discard_batch(&self, view: &str, batch_id: &str) -> Result<(), StoreError> {
        let prefix = key(&[view.as_bytes(), batch_id.as_bytes()]);
        self.blocking(move |db, err| {
            let tx = db.begin_write().map_err(|e| err(e.into()))?;
            {
                let mut rows = tx.open_table(STATIC).map_err(|e| err(e.into()))?;
                let end = prefix_end(&prefix);
                rows.retain_in(prefix.as_slice()..end.as_slice(), |_, _| false)
                    .map_err(|e| err(e.into()))?;
            }
            tx.commit().map_err(|e| err(e.into()))
        })
        .await
    }

    async fn write_predictions(
        &self,
        records: &[PredictionRecord],
        _retention: Duration,
    ) -> Result<(), StoreError> {
        // The embedded file keeps the log until it is deleted; ScyllaDB
        // expires it by TTL.
        let mut encoded = Vec::with_capacity(records.len());
        for r in records {
            PredictionKey::parse(&r.prediction_id)
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            encoded.push((r.prediction_id.clone(), r.to_bytes()));
        }
        self.blocking(move |db, err| {
            Self::check_schema(db, err)?;
            let tx = db.begin_write().map_err(|e| err(e.into()))?;
            {
                let mut table = tx.open_table(PREDICTIONS).map_err(|e| err(e.into()))?;
                for (k, v) in &encoded {
                    table
                        .insert(k.as_str(), v.as_slice())
                        .map_err(|e| err(e.into()))?;
                }
            }
            tx.commit().map_err(|e| err(e.into()))
        })
        .await
    }

    async fn read_prediction(
        &self,
        prediction_id: &str,
    ) -> Result<Option<PredictionRecord>, StoreError> {
        let id = prediction_id.to_owned();
        self.blocking(move |db, err| {
            Self::check_schema(db, err)?;
            let tx = db.begin_read().map_err(|e| err(e.into()))?;
            let table = tx.open_table(PREDICTIONS).map_err(|e| err(e.into()))?;
            let Some(v) = table.get(id.as_str()).map_err(|e| err(e.into()))? else {
                return Ok(None);
            };
            PredictionRecord::from_bytes(v.value())
                .map(Some)
                .map_err(|e| StoreError::Backend(format!("damaged prediction record {id}: {e}")))
        })
        .await
    }

    async fn write_feedback(
        &self,
        record: &FeedbackRecord,
        _retention: Duration,
    ) -> Result<(), StoreError> {
        PredictionKey::parse(&record.prediction_id)
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let k = record.prediction_id.clone();
        let v = serde_json::to_vec(record).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.blocking(move |db, err| {
            Self::check_schema(db, err)?;
            let tx = db.begin_write().map_err(|e| err(e.into()))?;
            {
                let mut table = tx.open_table(FEEDBACK).map_err(|e| err(e.into()))?;
                table
                    .insert(k.as_str(), v.as_slice())
                    .map_err(|e| err(e.into()))?;
            }
            tx.commit().map_err(|e| err(e.into()))
        })
        .await
    }

    async fn read_log(
        &self,
        from: SystemTime,
        to: SystemTime,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let (lo, hi) = (id_lower_bound(unix_ms(from)), id_lower_bound(unix_ms(to)));
        self.blocking(move |db, err| {
            Self::check_schema(db, err)?;
            let tx = db.begin_read().map_err(|e| err(e.into()))?;
            let predictions = tx.open_table(PREDICTIONS).map_err(|e| err(e.into()))?;
            let feedback = tx.open_table(FEEDBACK).map_err(|e| err(e.into()))?;
            let mut out = Vec::new();
            for item in predictions
                .range(lo.as_str()..hi.as_str())
                .map_err(|e| err(e.into()))?
                .take(limit)
            {
                let (k, v) = item.map_err(|e| err(e.into()))?;
                let id = k.value();
                let prediction = PredictionRecord::from_bytes(v.value()).map_err(|e| {
                    StoreError::Backend(format!("damaged prediction record {id}: {e}"))
                })?;
                let feedback = match feedback.get(id).map_err(|e| err(e.into()))? {
                    Some(f) => Some(serde_json::from_slice(f.value()).map_err(|e| {
                        StoreError::Backend(format!("damaged feedback record {id}: {e}"))
                    })?),
                    None => None,
                };
                out.push(LogEntry {
                    prediction,
                    feedback,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn get_tuner_state(&self, job: &str) -> Result<Option<JobState>, StoreError> {
        let job = job.to_owned();
        self.blocking(move |db, err| {
            Self::check_schema(db, err)?;
            let tx = db.begin_read().map_err(|e| err(e.into()))?;
            let table = tx.open_table(TUNER).map_err(|e| err(e.into()))?;
            let Some(v) = table.get(job.as_str()).map_err(|e| err(e.into()))? else {
                return Ok(None);
            };
            serde_json::from_slice(v.value())
                .map(Some)
                .map_err(|e| StoreError::Backend(format!("damaged tuner state of {job}: {e}")))
        })
        .await
    }

    async fn put_tuner_state(&self, state: &JobState) -> Result<(), StoreError> {
        let k = state.job.clone();
        let v = serde_json::to_vec(state).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.blocking(move |db, err| {
            Self::check_schema(db, err)?;
            let tx = db.begin_write().map_err(|e| err(e.into()))?;
            {
                let mut table = tx.open_table(TUNER).map_err(|e| err(e.into()))?;
                table
                    .insert(k.as_str(), v.as_slice())
                    .map_err(|e| err(e.into()))?;
            }
            tx.commit().map_err(|e| err(e.into()))
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
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.blocking(move |db, err| {
            Self::check_schema(db, err)?;
            // One write transaction: redb serialises writers (also across
            // processes sharing the file), so read-check-write is atomic.
            let tx = db.begin_write().map_err(|e| err(e.into()))?;
            let outcome = {
                let mut t = tx.open_table(LEASES).map_err(|e| err(e.into()))?;
                let current: Option<LeaseJson> =
                    match t.get(name.as_str()).map_err(|e| err(e.into()))? {
                        Some(v) => Some(serde_json::from_slice(v.value()).map_err(|e| {
                            StoreError::Backend(format!("damaged lease {name}: {e}"))
                        })?),
                        None => None,
                    };
                match current {
                    Some(c) if c.holder != holder && c.expires_at > to_micros(now) => {
                        LeaseOutcome::Held(Lease {
                            name: name.clone(),
                            holder: c.holder,
                            expires_at: from_micros(c.expires_at),
                        })
                    }
                    _ => {
                        let v = serde_json::to_vec(&LeaseJson {
                            holder: holder.clone(),
                            expires_at: to_micros(until),
                        })
                        .map_err(|e| StoreError::Backend(e.to_string()))?;
                        t.insert(name.as_str(), v.as_slice())
                            .map_err(|e| err(e.into()))?;
                        LeaseOutcome::Acquired
                    }
                }
            };
            tx.commit().map_err(|e| err(e.into()))?;
            Ok(outcome)
        })
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.blocking(move |db, err| {
            Self::check_schema(db, err)?;
            let tx = db.begin_write().map_err(|e| err(e.into()))?;
            let released = {
                let mut t = tx.open_table(LEASES).map_err(|e| err(e.into()))?;
                let mine = match t.get(name.as_str()).map_err(|e| err(e.into()))? {
                    Some(v) => serde_json::from_slice::<LeaseJson>(v.value())
                        .is_ok_and(|c| c.holder == holder),
                    None => false,
                };
                if mine {
                    t.remove(name.as_str()).map_err(|e| err(e.into()))?;
                }
                mine
            };
            tx.commit().map_err(|e| err(e.into()))?;
            Ok(released)
        })
        .await
    }

    async fn get_schedule(&self, job: &str) -> Result<Option<ScheduleState>, StoreError> {
        self.get_json(SCHEDULE, job).await
    }

    async fn put_schedule(&self, state: &ScheduleState) -> Result<(), StoreError> {
        self.put_json(SCHEDULE, &state.job, state).await
    }

    async fn put_run_request(&self, request: &RunRequest) -> Result<(), StoreError> {
        self.put_json(RUN_REQUESTS, &request.job, request).await
    }

    async fn get_run_request(&self, job: &str) -> Result<Option<RunRequest>, StoreError> {
        self.get_json(RUN_REQUESTS, job).await
    }
    async fn get_routing(&self, model: &str) -> Result<Option<RoutingRecord>, StoreError> {
        let model = model.to_owned();
        self.blocking(move |db, err| {
            Self::check_schema(db, err)?;
            let tx = db.begin_read().map_err(|e| err(e.into()))?;
            let table = tx.open_table(ROUTING).map_err(|e| err(e.into()))?;
            let Some(v) = table.get(model.as_str()).map_err(|e| err(e.into()))? else {
                return Ok(None);
            };
            decode_routing(&model, v.value()).map(Some)
        })
        .await
    }

    async fn put_routing(
        &self,
        model: &str,
        expected: Option<i64>,
        document: &str,
    ) -> Result<bool, StoreError> {
        let (model, document) = (model.to_owned(), document.to_owned());
        self.blocking(move |db, err| {
            Self::check_schema(db, err)?;
            // One write transaction: redb serialises writers, so the
            // revision check and the write are atomic across processes.
            let tx = db.begin_write().map_err(|e| err(e.into()))?;
            {
                let mut table = tx.open_table(ROUTING).map_err(|e| err(e.into()))?;
                let stored = table
                    .get(model.as_str())
                    .map_err(|e| err(e.into()))?
                    .map(|v| decode_routing(&model, v.value()).map(|r| r.revision))
                    .transpose()?;
                if stored != expected {
                    return Ok(false);
                }
                let revision = expected.map_or(1, |r| r + 1);
                let mut value = revision.to_le_bytes().to_vec();
                value.extend_from_slice(document.as_bytes());
                table
                    .insert(model.as_str(), value.as_slice())
                    .map_err(|e| err(e.into()))?;
            }
            tx.commit().map_err(|e| err(e.into()))?;
            Ok(true)
        })
        .await
    }
}

fn decode_routing(model: &str, value: &[u8]) -> Result<RoutingRecord, StoreError> {
    let damaged = |why: &str| StoreError::Backend(format!("damaged routing of {model}: {why}"));
    let (revision, document) = value
        .split_first_chunk::<8>()
        .ok_or_else(|| damaged("shorter than its revision"))?;
    Ok(RoutingRecord {
        revision: i64::from_le_bytes(*revision),
        document: String::from_utf8(document.to_vec()).map_err(|_| damaged("not UTF-8"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definitions::FeatureValue;
    use crate::store::EncodedRow;

    fn store() -> (EmbeddedStore, PathBuf) {
        let dir = std::env::temp_dir().join(format!("mlgw-embedded-{}", uuid::Uuid::now_v7()));
        let store = EmbeddedStore::open(&dir.join("features.redb")).unwrap();
        (store, dir)
    }

    async fn write(store: &EmbeddedStore, batch: &str, visits: i64) {
        let blob = codec::encode([("visits", &FeatureValue::Int64(visits))]);
        let rows = [EncodedRow {
            entity_key: "u-1".to_owned(),
            blob,
        }];
        store
            .write_static(StaticWrite {
                view: "profile",
                batch_id: batch,
                written_at: SystemTime::now(),
                retention: Duration::from_secs(3600),
                rows: &rows,
            })
            .await
            .unwrap();
    }

    async fn visits(store: &EmbeddedStore, batch: &str) -> Option<String> {
        store
            .read_static("profile", batch, "u-1")
            .await
            .unwrap()
            .map(|r| format!("{:?}", r.values["visits"]))
    }

    #[tokio::test]
    async fn reads_share_a_young_snapshot_and_see_this_process_writes_at_once() {
        let (store, dir) = store();
        store.apply_schema().await.unwrap();
        // Reads close together share one transaction...
        let a = store.snapshots.get(&store.db).unwrap();
        let b = store.snapshots.get(&store.db).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        // ...and an old one is not handed out again.
        tokio::time::sleep(SNAPSHOT_TTL * 2).await;
        let c = store.snapshots.get(&store.db).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        drop((a, b, c));

        // A read takes a snapshot; a write right after it (well within the
        // snapshot's life) is seen by the next read, each time.
        for i in 0..50 {
            let before = visits(&store, "b1").await;
            write(&store, "b1", i).await;
            let after = visits(&store, "b1").await.unwrap_or_default();
            assert!(
                after.contains(&format!("{i}")),
                "write {i}: read {after} after {before:?}"
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
