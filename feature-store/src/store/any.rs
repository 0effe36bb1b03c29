//! [`AnyStore`]: the backend chosen by configuration, implementing every
//! concern's trait by calling the backend's method.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::embedded::EmbeddedStore;
use super::scylla::ScyllaStore;
use super::{
    ArtifactStore, BatchRecord, BatchStore, CoordinationStore, CurrentBatch, DynamicWrite,
    EventQuery, EventWrite, IdempotencyClaim, Lease, LeaseOutcome, LogStore, LogWindow,
    RequestRecord, RequestStore, RoutingRecord, RoutingStore, RowStore, ScanPage, SchemaReport,
    ScoreEntry, ScoreKey, ScoreStore, ScoreWrite, ScoringRunRecord, StaticKey, StaticScan,
    StaticWrite, StoreError, TunerStore,
};
use crate::aggregate::EventRange;
use crate::freshness::StoredRow;
use crate::log::{FeedbackRecord, LogEntry, PredictionRecord};
use crate::runs::{RunRequest, ScheduleState};
use crate::tuner::controller::JobState;

/// The backend chosen by configuration.
#[derive(Clone)]
pub enum AnyStore {
    /// ScyllaDB / Cassandra.
    Scylla(Arc<ScyllaStore>),
    /// The embedded redb file.
    Embedded(Arc<EmbeddedStore>),
}

/// Calls the backend's method. ScyllaDB's futures are boxed: they are large
/// (a driver round trip's state), and inline they would size every
/// `AnyStore` future, and so every reader future up to the gateway's handler,
/// for that backend, making the embedded store's small synchronous reads pay
/// for copying them (memcpy was ~3% of the gateway's CPU on cache hits).
/// A network call affords the allocation; the embedded store's futures are
/// not boxed.
macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Scylla($s) => Box::pin($e).await,
            AnyStore::Embedded($s) => $e.await,
        }
    };
}

impl RowStore for AnyStore {
    async fn apply_schema(&self) -> Result<SchemaReport, StoreError> {
        dispatch!(self, s => s.apply_schema())
    }
    async fn read_static(&self, key: StaticKey<'_>) -> Result<Option<StoredRow>, StoreError> {
        dispatch!(self, s => s.read_static(key))
    }
    async fn scan_static(&self, scan: StaticScan<'_>) -> Result<ScanPage, StoreError> {
        dispatch!(self, s => s.scan_static(scan))
    }
    fn scan_fanout(&self) -> u32 {
        match self {
            AnyStore::Scylla(s) => s.scan_fanout(),
            AnyStore::Embedded(s) => s.scan_fanout(),
        }
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
    async fn write_events(&self, writes: &[EventWrite<'_>]) -> Result<(), StoreError> {
        dispatch!(self, s => s.write_events(writes))
    }
    async fn read_events(&self, query: EventQuery<'_>) -> Result<EventRange, StoreError> {
        dispatch!(self, s => s.read_events(query))
    }
    async fn read_dynamic_window(
        &self,
        query: EventQuery<'_>,
    ) -> Result<(Option<StoredRow>, EventRange), StoreError> {
        dispatch!(self, s => s.read_dynamic_window(query))
    }
}

impl BatchStore for AnyStore {
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
}

impl LogStore for AnyStore {
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
    async fn read_log(&self, window: LogWindow) -> Result<Vec<LogEntry>, StoreError> {
        dispatch!(self, s => s.read_log(window))
    }
}

impl ScoreStore for AnyStore {
    async fn write_scores(&self, write: ScoreWrite<'_>) -> Result<(), StoreError> {
        dispatch!(self, s => s.write_scores(write))
    }
    async fn discard_scores(&self, model: &str, batch_id: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.discard_scores(model, batch_id))
    }
    async fn put_scoring_run(&self, record: &ScoringRunRecord) -> Result<(), StoreError> {
        dispatch!(self, s => s.put_scoring_run(record))
    }
    async fn scoring_runs(
        &self,
        job: &str,
        limit: usize,
    ) -> Result<Vec<ScoringRunRecord>, StoreError> {
        dispatch!(self, s => s.scoring_runs(job, limit))
    }
    async fn read_score(&self, at: ScoreKey<'_>) -> Result<Option<ScoreEntry>, StoreError> {
        dispatch!(self, s => s.read_score(at))
    }
}

impl RequestStore for AnyStore {
    async fn put_requests(&self, records: &[RequestRecord]) -> Result<(), StoreError> {
        dispatch!(self, s => s.put_requests(records))
    }
    async fn get_request(&self, id: &str) -> Result<Option<RequestRecord>, StoreError> {
        dispatch!(self, s => s.get_request(id))
    }
    async fn claim_idempotency(
        &self,
        claim: IdempotencyClaim<'_>,
    ) -> Result<Option<String>, StoreError> {
        dispatch!(self, s => s.claim_idempotency(claim))
    }
}

impl TunerStore for AnyStore {
    async fn get_tuner_state(&self, job: &str) -> Result<Option<JobState>, StoreError> {
        dispatch!(self, s => s.get_tuner_state(job))
    }
    async fn put_tuner_state(&self, state: &JobState) -> Result<(), StoreError> {
        dispatch!(self, s => s.put_tuner_state(state))
    }
}

impl RoutingStore for AnyStore {
    async fn get_routing(&self, model: &str) -> Result<Option<RoutingRecord>, StoreError> {
        dispatch!(self, s => s.get_routing(model))
    }
    async fn put_routing(&self, model: &str, next: &RoutingRecord) -> Result<bool, StoreError> {
        dispatch!(self, s => s.put_routing(model, next))
    }
}

impl CoordinationStore for AnyStore {
    async fn try_lease(&self, lease: &Lease, now: SystemTime) -> Result<LeaseOutcome, StoreError> {
        dispatch!(self, s => s.try_lease(lease, now))
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

impl ArtifactStore for AnyStore {
    async fn put_artifact(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        dispatch!(self, s => s.put_artifact(name, bytes))
    }
    async fn get_artifact(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        dispatch!(self, s => s.get_artifact(name))
    }
    async fn delete_artifact(&self, name: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.delete_artifact(name))
    }
}
