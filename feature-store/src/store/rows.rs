//! Feature rows and events: the schema, static rows per refresh batch,
//! dynamic values, and the raw events behind windowed aggregates. What a
//! feature read needs, and what a refresh or a push writes.

use std::future::Future;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::StoreError;
use crate::aggregate::{Event, EventRange};
use crate::definitions::FeatureValue;
use crate::freshness::StoredRow;

/// One entity's static row, encoded for writing (see [`crate::codec`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRow {
    /// The entity key.
    pub entity_key: String,
    /// The encoded values.
    pub blob: Vec<u8>,
}

/// Where a static row is: its view, the refresh batch that wrote it, its
/// entity.
#[derive(Debug, Clone, Copy)]
pub struct StaticKey<'a> {
    /// The view.
    pub view: &'a str,
    /// The refresh batch.
    pub batch_id: &'a str,
    /// The entity key.
    pub entity_key: &'a str,
}

/// One page of a scan over a static view's batch, limited to one part of
/// its entities so that several processes (or several tasks of one) scan a
/// batch together, each part once.
#[derive(Debug, Clone, Copy)]
pub struct StaticScan<'a> {
    /// The view.
    pub view: &'a str,
    /// The refresh batch.
    pub batch_id: &'a str,
    /// Which part of the entities: `index` of `count` (`0` of `1`: all).
    pub part: ScanPart,
    /// Where the previous page of this part ended (`None`: at its start).
    pub after: Option<&'a ScanCursor>,
    /// At most this many rows are examined for the page (a page may hold
    /// fewer rows of the batch, even none, and still not be the last).
    pub limit: usize,
}

/// A part of a scan: `index` of `count` equal parts (by token range on
/// ScyllaDB, by a stable hash of the entity key on the embedded store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanPart {
    /// This part, below `count`.
    pub index: u32,
    /// How many parts.
    pub count: u32,
}

impl ScanPart {
    /// The whole scan as one part.
    pub const ALL: ScanPart = ScanPart { index: 0, count: 1 };
}

/// Where a scan page ended, to resume from (opaque to callers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanCursor(pub(crate) Vec<u8>);

/// One page of a static scan.
#[derive(Debug, Clone, Default)]
pub struct ScanPage {
    /// The batch's rows found, with their entity keys.
    pub rows: Vec<(String, StoredRow)>,
    /// Where to resume; `None`: the part is done.
    pub next: Option<ScanCursor>,
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

/// A time range of one entity's events, newest first, at most `limit`.
#[derive(Debug, Clone, Copy)]
pub struct EventQuery<'a> {
    /// The view.
    pub view: &'a str,
    /// The entity key.
    pub entity_key: &'a str,
    /// The oldest event time read (inclusive).
    pub from: SystemTime,
    /// The newest event time read (inclusive).
    pub to: SystemTime,
    /// How many events at the most.
    pub limit: usize,
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

/// Feature rows and events, and the schema that holds every concern's
/// tables. All calls are cancel-safe and carry the backend's per-call
/// deadline.
pub trait RowStore: Send + Sync + 'static {
    /// Creates or upgrades the tables of every concern. Idempotent.
    fn apply_schema(&self) -> impl Future<Output = Result<SchemaReport, StoreError>> + Send;

    /// The static row at `key`.
    fn read_static(
        &self,
        key: StaticKey<'_>,
    ) -> impl Future<Output = Result<Option<StoredRow>, StoreError>> + Send;

    /// One page of the rows of a static view's batch, in one part of its
    /// entities (bulk reads for batch scoring; not for serving).
    fn scan_static(
        &self,
        scan: StaticScan<'_>,
    ) -> impl Future<Output = Result<ScanPage, StoreError>> + Send;

    /// How many parts a scan should be cut into for enough reads in flight
    /// (1 where one sequential pass is fastest).
    fn scan_fanout(&self) -> u32 {
        1
    }

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

    /// Stores many raw events (of any views and entities) with the same
    /// rules as [`write_event`](Self::write_event), in as few store calls
    /// as the backend allows: what stream ingest writes each batch with.
    /// On failure some of them may be stored; writing them all again is
    /// harmless.
    fn write_events(
        &self,
        writes: &[EventWrite<'_>],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The unexpired events the query names; `truncated` says that more
    /// were in the range (the oldest were left out).
    fn read_events(
        &self,
        query: EventQuery<'_>,
    ) -> impl Future<Output = Result<EventRange, StoreError>> + Send;

    /// [`read_dynamic`](Self::read_dynamic) and
    /// [`read_events`](Self::read_events) of one entity together, as a view
    /// with aggregates needs them. By default the two run concurrently; a
    /// backend that can serve both from one snapshot for less overrides it.
    fn read_dynamic_window(
        &self,
        query: EventQuery<'_>,
    ) -> impl Future<Output = Result<(Option<StoredRow>, EventRange), StoreError>> + Send {
        futures_util::future::try_join(
            self.read_dynamic(query.view, query.entity_key),
            self.read_events(query),
        )
    }
}
