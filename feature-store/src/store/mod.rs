//! The `FeatureStore` read/write interface and its two backends.
//!
//! Storage model (the same on both backends):
//! - **static rows**: one row per (view, entity, refresh batch). A read names
//!   the batch that is current for the view, so readers keep seeing the last
//!   complete batch while a new one is written, and a failed batch is never
//!   read. Old batches are collected by the backend (ScyllaDB: the rows' TTL;
//!   embedded: deleted when a newer batch becomes current).
//! - **dynamic values**: one value per (view, entity, feature) with its event
//!   time and expiry; a write with an older event time than the stored one
//!   loses (ScyllaDB: the event time is the cell's write timestamp).
//! - **dynamic events**: the raw events behind a dynamic view's windowed
//!   aggregates ([`crate::aggregate`]), one row per (view, entity, event
//!   time, event ID), kept until event time + the view's ttl and read back
//!   newest first over a time range with a limit.
//! - **prediction log and feedback** ([`crate::log`]): one record per
//!   prediction and per feedback, keyed by the prediction ID (UUIDv7), read
//!   back by ID or joined over a time window.
//! - **tuner state**: per refresh job, the controller's state and decision
//!   history as one JSON document.
//! - **scheduler**: per refresh job its schedule (runs with their outcome,
//!   last evaluation) and the latest run request of a person, each one JSON
//!   document, and named **leases** (holder + expiry) taken atomically — a
//!   lightweight transaction on ScyllaDB, a write transaction on redb — so
//!   only one scheduler process runs a job at a time.
//! - **refresh batches**: [`BatchRecord`] per run, and per static view the
//!   current batch ([`CurrentBatch`]), switched in one write when a batch is done.
//!
//! [`scylla::ScyllaStore`] is the production backend; [`embedded::EmbeddedStore`]
//! (redb) runs the product on a laptop. [`AnyStore`] picks one from config.

pub mod embedded;
pub mod scylla;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::aggregate::{Event, EventRange};
use crate::codec::CodecError;
use crate::definitions::FeatureValue;
use crate::freshness::StoredRow;
use crate::log::{FeedbackRecord, LogEntry, PredictionRecord};
use crate::schedule::{RunRequest, ScheduleState};
use crate::source::RejectedRow;
use crate::tuner::controller::JobState;

/// A lease on a named resource (a refresh job): who holds it, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The resource.
    pub name: String,
    /// Who holds it.
    pub holder: String,
    /// When it lapses unless renewed.
    pub expires_at: SystemTime,
}

/// The answer to [`FeatureStore::try_lease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// The caller holds the lease until the asked time.
    Acquired,
    /// Someone else holds an unexpired lease.
    Held(Lease),
}

/// One entity's static row, encoded for writing (see [`crate::codec`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRow {
    /// The entity key.
    pub entity_key: String,
    /// The encoded values.
    pub blob: Vec<u8>,
}

/// A batch of static rows for one view and refresh batch.
#[derive(Debug, Clone, Copy)]
pub struct StaticWrite<'a> {
    /// The view.
    pub view: &'a str,
    /// The refresh batch writing the rows.
    pub batch_id: &'a str,
    /// The data time the rows carry (what their age is measured from).
    pub written_at: SystemTime,
    /// How long a backend that collects old batches by TTL keeps the rows.
    pub retention: Duration,
    /// The rows.
    pub rows: &'a [EncodedRow],
}

/// Fresh values for one entity of a dynamic view.
#[derive(Debug, Clone)]
pub struct DynamicWrite<'a> {
    /// The view.
    pub view: &'a str,
    /// The entity key.
    pub entity_key: &'a str,
    /// Feature name and value.
    pub values: &'a [(String, FeatureValue)],
    /// When the values were observed.
    pub event_time: SystemTime,
    /// When they expire (event time + the view's TTL); after this they read as
    /// missing.
    pub expires_at: SystemTime,
}

/// One raw event of a dynamic view for one entity, to store.
#[derive(Debug, Clone, Copy)]
pub struct EventWrite<'a> {
    /// The view.
    pub view: &'a str,
    /// The entity key.
    pub entity_key: &'a str,
    /// The event; its (event time, event ID) is its identity.
    pub event: &'a Event,
    /// When it expires (event time + the view's TTL); after this it is never
    /// read.
    pub expires_at: SystemTime,
}

/// Where a refresh batch is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    /// Recorded; the file is being read.
    Ingested,
    /// Rows are being written.
    Processing,
    /// Complete and current (or superseded by a later one).
    Done,
    /// Stopped by an error; never served.
    Failed,
}

impl BatchStatus {
    /// The lowercase name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Ingested => "ingested",
            BatchStatus::Processing => "processing",
            BatchStatus::Done => "done",
            BatchStatus::Failed => "failed",
        }
    }

    /// Parses [`BatchStatus::as_str`]'s output.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "ingested" => BatchStatus::Ingested,
            "processing" => BatchStatus::Processing,
            "done" => BatchStatus::Done,
            "failed" => BatchStatus::Failed,
            _ => return None,
        })
    }
}

impl std::fmt::Display for BatchStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// The record of one refresh run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    /// Time-ordered ID (UUIDv7): later batches sort after earlier ones.
    pub batch_id: String,
    /// The refresh job.
    pub job: String,
    /// The static view loaded.
    pub view: String,
    /// When the run started reading its source; the rows' data time.
    #[serde(with = "unix_micros")]
    pub ingested_at: SystemTime,
    /// When writing started.
    #[serde(with = "opt_unix_micros")]
    pub started_at: Option<SystemTime>,
    /// When the run ended (done or failed).
    #[serde(with = "opt_unix_micros")]
    pub finished_at: Option<SystemTime>,
    /// The source file.
    pub source: String,
    /// SHA-256 of the source bytes, view, job and script version: equal
    /// fingerprints mean an identical load.
    pub fingerprint: String,
    /// The version of the script or pipeline that produced the file.
    pub script_version: String,
    /// Where the run is.
    pub status: BatchStatus,
    /// Rows written.
    pub rows_written: u64,
    /// Rows rejected.
    pub rows_rejected: u64,
    /// The first rejected rows with their line and reason.
    pub rejections: Vec<RejectedRow>,
    /// Why the run failed.
    pub error: Option<String>,
}

/// The batch a static view serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentBatch {
    /// The batch.
    pub batch_id: String,
    /// Its data time.
    pub written_at: SystemTime,
    /// Its fingerprint.
    pub fingerprint: String,
}

/// What `apply_schema` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SchemaReport {
    /// The schema version before.
    pub from_version: u32,
    /// The schema version now.
    pub to_version: u32,
    /// One line per statement or table applied.
    pub applied: Vec<String>,
}

/// A backend call that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The call did not finish within its deadline.
    #[error("feature store call timed out after {0:?}")]
    Timeout(Duration),
    /// The backend cannot be reached (all nodes down, connection refused).
    #[error("feature store unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with an error.
    #[error("feature store error: {0}")]
    Backend(String),
    /// The schema is missing or older than this build expects.
    #[error(
        "feature store schema is at version {found}, this build needs {needed}; run `mlgw-features schema apply`"
    )]
    SchemaVersion {
        /// Version found.
        found: u32,
        /// Version needed.
        needed: u32,
    },
    /// A stored row cannot be decoded.
    #[error("feature store holds a damaged row for view {view:?}, entity {entity:?}")]
    Corrupt {
        /// The view.
        view: String,
        /// The entity.
        entity: String,
        /// The decoding error.
        #[source]
        source: CodecError,
    },
    /// The embedded database file cannot be opened or used.
    #[error("embedded feature store {path}: {message}")]
    Embedded {
        /// The database file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

impl StoreError {
    /// Whether a later call may succeed (outage, timeout) rather than a
    /// problem a person must fix.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Timeout(_) | StoreError::Unavailable(_))
    }
}

/// The read/write interface both backends implement. All calls are
/// cancel-safe and carry the backend's per-call deadline.
pub trait FeatureStore: Send + Sync + 'static {
    /// Creates or upgrades the tables. Idempotent.
    fn apply_schema(&self) -> impl Future<Output = Result<SchemaReport, StoreError>> + Send;

    /// The static row of `entity_key` in `view` as written by `batch_id`.
    fn read_static(
        &self,
        view: &str,
        batch_id: &str,
        entity_key: &str,
    ) -> impl Future<Output = Result<Option<StoredRow>, StoreError>> + Send;

    /// Writes static rows of one batch. Rewriting a row is harmless.
    fn write_static(
        &self,
        write: StaticWrite<'_>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The unexpired dynamic values of `entity_key` in `view` (None: no value).
    fn read_dynamic(
        &self,
        view: &str,
        entity_key: &str,
    ) -> impl Future<Output = Result<Option<StoredRow>, StoreError>> + Send;

    /// Writes dynamic values; a value older than the stored one is ignored.
    fn write_dynamic(
        &self,
        write: DynamicWrite<'_>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Stores one raw event; writing the same (event time, event ID) again
    /// replaces it, so a replay is one event. An event already expired is
    /// accepted and not stored.
    fn write_event(
        &self,
        write: EventWrite<'_>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The unexpired events of `entity_key` in `view` with event times in
    /// `[from, to]`, newest first, at most `limit`; `truncated` says that more
    /// were in the range (the oldest were left out).
    fn read_events(
        &self,
        view: &str,
        entity_key: &str,
        from: SystemTime,
        to: SystemTime,
        limit: usize,
    ) -> impl Future<Output = Result<EventRange, StoreError>> + Send;

    /// [`read_dynamic`](Self::read_dynamic) and
    /// [`read_events`](Self::read_events) of one entity together, as a view
    /// with aggregates needs them. By default the two run concurrently; a
    /// backend that can serve both from one snapshot for less overrides it.
    fn read_dynamic_window(
        &self,
        view: &str,
        entity_key: &str,
        from: SystemTime,
        to: SystemTime,
        limit: usize,
    ) -> impl Future<Output = Result<(Option<StoredRow>, EventRange), StoreError>> + Send {
        futures_util::future::try_join(
            self.read_dynamic(view, entity_key),
            self.read_events(view, entity_key, from, to, limit),
        )
    }

    /// Inserts or replaces a batch record.
    fn put_batch(
        &self,
        record: &BatchRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The records of `view`'s batches, newest first, at most `limit`.
    fn list_batches(
        &self,
        view: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<BatchRecord>, StoreError>> + Send;

    /// Makes `record` (a done batch) the batch its view serves.
    fn set_current(
        &self,
        record: &BatchRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every static view's current batch.
    fn current_batches(
        &self,
    ) -> impl Future<Output = Result<BTreeMap<String, CurrentBatch>, StoreError>> + Send;

    /// Removes what a failed batch wrote, where the backend can do so cheaply
    /// (embedded); others let the rows' TTL collect them.
    fn discard_batch(
        &self,
        view: &str,
        batch_id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Appends predictions to the log, kept for `retention` where the backend
    /// expires rows (ScyllaDB). Rewriting a record is harmless.
    fn write_predictions(
        &self,
        records: &[PredictionRecord],
        retention: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The logged prediction with this ID (a valid UUIDv7, see
    /// [`crate::log::PredictionKey`]), if any.
    fn read_prediction(
        &self,
        prediction_id: &str,
    ) -> impl Future<Output = Result<Option<PredictionRecord>, StoreError>> + Send;

    /// Stores ground truth for a prediction, replacing earlier feedback for it.
    fn write_feedback(
        &self,
        record: &FeedbackRecord,
        retention: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Predictions made in `[from, to)`, oldest first, each with its feedback
    /// if any, at most `limit`.
    fn read_log(
        &self,
        from: SystemTime,
        to: SystemTime,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<LogEntry>, StoreError>> + Send;

    /// The refresh tuner's state of `job`, if it was ever saved.
    fn get_tuner_state(
        &self,
        job: &str,
    ) -> impl Future<Output = Result<Option<JobState>, StoreError>> + Send;

    /// Saves the refresh tuner's state of one job (replacing the previous).
    fn put_tuner_state(
        &self,
        state: &JobState,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Takes (or renews) the lease `name` for `holder` until `until`,
    /// atomically: it succeeds when nobody holds it, `holder` holds it, or the
    /// holder's lease expired before `now`.
    fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: SystemTime,
        until: SystemTime,
    ) -> impl Future<Output = Result<LeaseOutcome, StoreError>> + Send;

    /// Gives the lease up if `holder` still holds it; true if it did.
    fn release_lease(
        &self,
        name: &str,
        holder: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The scheduler's record of `job`, if it ever ran it.
    fn get_schedule(
        &self,
        job: &str,
    ) -> impl Future<Output = Result<Option<ScheduleState>, StoreError>> + Send;

    /// Saves the scheduler's record of one job (written by the lease holder).
    fn put_schedule(
        &self,
        state: &ScheduleState,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Saves a person's request to run a job now (replacing an earlier one).
    fn put_run_request(
        &self,
        request: &RunRequest,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The latest run request of `job`, if any.
    fn get_run_request(
        &self,
        job: &str,
    ) -> impl Future<Output = Result<Option<RunRequest>, StoreError>> + Send;
    /// The gateway's routing document of `model` with its revision, if one
    /// was ever saved.
    fn get_routing(
        &self,
        model: &str,
    ) -> impl Future<Output = Result<Option<RoutingRecord>, StoreError>> + Send;

    /// Saves `document` as the routing of `model` if the stored revision is
    /// still `expected` (`None`: nothing stored yet); the new revision is
    /// `expected + 1` (or 1). Returns `false`, writing nothing, when another
    /// writer changed it first (compare-and-set: two admins on two gateway
    /// replicas never overwrite each other's change unseen).
    fn put_routing(
        &self,
        model: &str,
        expected: Option<i64>,
        document: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// A model's routing as the gateway stores it: an opaque (JSON) document and
/// a revision that grows by one with every change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingRecord {
    /// 1 for the first document, then +1 per change.
    pub revision: i64,
    /// The gateway's document.
    pub document: String,
}

/// The backend chosen by configuration.
#[derive(Clone)]
pub enum AnyStore {
    /// ScyllaDB / Cassandra.
    Scylla(std::sync::Arc<scylla::ScyllaStore>),
    /// The embedded redb file.
    Embedded(std::sync::Arc<embedded::EmbeddedStore>),
}

/// Calls the backend's method. ScyllaDB's futures are boxed: they are large
/// (a driver round trip's state), and inline they would size every
/// `AnyStore` future, and so every reader future up to the gateway's handler,
/// for that backend, making the embedded store's small synchronous reads pay
/// for copying them (memcpy was ~3% of the gateway's CPU on cache hits).
/// A network call affords the allocation.
macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Scylla($s) => Box::pin($e).await,
            AnyStore::Embedded($s) => $e.await,
        }
    };
}

impl FeatureStore for AnyStore {
    async fn apply_schema(&self) -> Result<SchemaReport, StoreError> {
        dispatch!(self, s => s.apply_schema())
    }
    async fn read_static(
        &self,
        view: &str,
        batch_id: &str,
        entity_key: &str,
    ) -> Result<Option<StoredRow>, StoreError> {
        dispatch!(self, s => s.read_static(view, batch_id, entity_key))
    }
    async fn write_static(&self, write: StaticWrite<'_>) -> Result<(), StoreError> {
        dispatch!(self, s => s.write_static(write))
    }
    async fn read_dynamic(
        &self,
        view: &str,
        entity_key: &str,
    ) -> Result<Option<StoredRow>, StoreError> {
        dispatch!(self, s => s.read_dynamic(view, entity_key))
    }
    async fn write_dynamic(&self, write: DynamicWrite<'_>) -> Result<(), StoreError> {
        dispatch!(self, s => s.write_dynamic(write))
    }
    async fn write_event(&self, write: EventWrite<'_>) -> Result<(), StoreError> {
        dispatch!(self, s => s.write_event(write))
    }
    async fn read_events(
        &self,
        view: &str,
        entity_key: &str,
        from: SystemTime,
        to: SystemTime,
        limit: usize,
    ) -> Result<EventRange, StoreError> {
        dispatch!(self, s => s.read_events(view, entity_key, from, to, limit))
    }
    async fn read_dynamic_window(
        &self,
        view: &str,
        entity_key: &str,
        from: SystemTime,
        to: SystemTime,
        limit: usize,
    ) -> Result<(Option<StoredRow>, EventRange), StoreError> {
        dispatch!(self, s => s.read_dynamic_window(view, entity_key, from, to, limit))
    }
    async fn put_batch(&self, record: &BatchRecord) -> Result<(), StoreError> {
        dispatch!(self, s => s.put_batch(record))
    }
    async fn list_batches(&self, view: &str, limit: usize) -> Result<Vec<BatchRecord>, StoreError> {
        dispatch!(self, s => s.list_batches(view, limit))
    }
    async fn set_current(&self, record: &BatchRecord) -> Result<(), StoreError> {
        dispatch!(self, s => s.set_current(record))
    }
    async fn current_batches(&self) -> Result<BTreeMap<String, CurrentBatch>, StoreError> {
        dispatch!(self, s => s.current_batches())
    }
    async fn discard_batch(&self, view: &str, batch_id: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.discard_batch(view, batch_id))
    }
    async fn write_predictions(
        &self,
        records: &[PredictionRecord],
        retention: Duration,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.write_predictions(records, retention))
    }
    async fn read_prediction(
        &self,
        prediction_id: &str,
    ) -> Result<Option<PredictionRecord>, StoreError> {
        dispatch!(self, s => s.read_prediction(prediction_id))
    }
    async fn write_feedback(
        &self,
        record: &FeedbackRecord,
        retention: Duration,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.write_feedback(record, retention))
    }
    async fn read_log(
        &self,
        from: SystemTime,
        to: SystemTime,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        dispatch!(self, s => s.read_log(from, to, limit))
    }
    async fn get_tuner_state(&self, job: &str) -> Result<Option<JobState>, StoreError> {
        dispatch!(self, s => s.get_tuner_state(job))
    }
    async fn put_tuner_state(&self, state: &JobState) -> Result<(), StoreError> {
        dispatch!(self, s => s.put_tuner_state(state))
    }
    async fn get_routing(&self, model: &str) -> Result<Option<RoutingRecord>, StoreError> {
        dispatch!(self, s => s.get_routing(model))
    }
    async fn put_routing(
        &self,
        model: &str,
        expected: Option<i64>,
        document: &str,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.put_routing(model, expected, document))
    }
    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: SystemTime,
        until: SystemTime,
    ) -> Result<LeaseOutcome, StoreError> {
        dispatch!(self, s => s.try_lease(name, holder, now, until))
    }
    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, StoreError> {
        dispatch!(self, s => s.release_lease(name, holder))
    }
    async fn get_schedule(&self, job: &str) -> Result<Option<ScheduleState>, StoreError> {
        dispatch!(self, s => s.get_schedule(job))
    }
    async fn put_schedule(&self, state: &ScheduleState) -> Result<(), StoreError> {
        dispatch!(self, s => s.put_schedule(state))
    }
    async fn put_run_request(&self, request: &RunRequest) -> Result<(), StoreError> {
        dispatch!(self, s => s.put_run_request(request))
    }
    async fn get_run_request(&self, job: &str) -> Result<Option<RunRequest>, StoreError> {
        dispatch!(self, s => s.get_run_request(job))
    }
}

/// Microseconds since the Unix epoch (negative before it), the unit both
/// backends store times in.
pub fn to_micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// The current time, truncated to the microseconds every backend stores, so a
/// record read back equals the one written.
pub fn now_micros() -> SystemTime {
    from_micros(to_micros(SystemTime::now()))
}

/// Inverse of [`to_micros`].
pub fn from_micros(micros: i64) -> SystemTime {
    if micros >= 0 {
        UNIX_EPOCH + Duration::from_micros(micros.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_micros(micros.unsigned_abs())
    }
}

pub(crate) mod unix_micros {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(super::to_micros(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        Ok(super::from_micros(i64::deserialize(d)?))
    }
}

pub(crate) mod opt_unix_micros {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    #[expect(clippy::ref_option, reason = "serde's `with` passes &Option")]
    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&super::to_micros(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        Ok(Option::<i64>::deserialize(d)?.map(super::from_micros))
    }
}
