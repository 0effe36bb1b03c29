//! Reading features for serving: the moka row cache in front of static reads,
//! the current-batch watch, and the dynamic-feature write path.
//!
//! A static read asks the backend for the row of the view's *current* batch.
//! The reader learns current batches from the store (polled every
//! `batch_poll_interval`, and at once after an in-process refresh); when a
//! view's batch changes, that view's cached rows are invalidated, and a cached
//! row of another batch is never served. The cache is bounded by an estimate
//! of the bytes it holds, entries live at most `min(view max_age,
//! static_ttl)`, a missing entity is cached for `negative_ttl`, and concurrent
//! misses for one key wait for a single backend read.
//!
//! Dynamic views bypass the cache unless `dynamic_ttl` is set. A dynamic view
//! that declares windowed aggregates is read with two concurrent store calls:
//! its plain values and one range read of the entity's raw events over the
//! widest window (at most `max_events_per_read`, newest first), from which
//! [`crate::aggregate::compute`] makes the aggregate features. A read that
//! hits the cap is counted ([`EventStats::capped_reads`]) and logged.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher as _, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use moka::Expiry;
use moka::future::Cache;
use moka::notification::RemovalCause;
use tracing::Instrument as _;

use crate::aggregate::{self, Event, EventFieldProblem, EventRange, MAX_EVENT_ID_BYTES};
use crate::definitions::{FeatureDefinitions, FeatureValue, FeatureView, ViewKind};
use crate::freshness::{ResolvedView, StoredRow, resolve_view};
use crate::store::{
    BatchStore, CurrentBatch, DynamicWrite, EventQuery, EventWrite, RowStore, StaticKey, StoreError,
};

/// Cache and watch settings.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    /// Upper bound of the cache's estimated size in bytes.
    pub cache_max_bytes: u64,
    /// Longest time a static row stays cached (also capped by the view's
    /// max_age).
    pub static_ttl: Duration,
    /// How long "this entity has no row" is remembered.
    pub negative_ttl: Duration,
    /// Cache dynamic rows this long; None: always read the store.
    pub dynamic_ttl: Option<Duration>,
    /// How often the current batches are re-read from the store.
    pub batch_poll_interval: Duration,
    /// The most raw events read per (view, entity) to compute its windowed
    /// aggregates; more in the window are left out (the oldest), counted and
    /// logged. At least 1.
    pub max_events_per_read: usize,
}

/// The default of [`ReaderConfig::max_events_per_read`].
pub const DEFAULT_MAX_EVENTS_PER_READ: usize = 10_000;

impl Default for ReaderConfig {
    fn default() -> Self {
        ReaderConfig {
            cache_max_bytes: 256 << 20,
            static_ttl: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(5),
            dynamic_ttl: None,
            batch_poll_interval: Duration::from_secs(2),
            max_events_per_read: DEFAULT_MAX_EVENTS_PER_READ,
        }
    }
}

/// Why features could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// No view of that name is defined.
    #[error("unknown feature view {0:?}")]
    UnknownView(String),
    /// The view is not of the kind the call needs.
    #[error("feature view {view:?} is {kind}; {what}")]
    WrongKind {
        /// The view.
        view: String,
        /// "static" or "dynamic".
        kind: &'static str,
        /// What the caller tried.
        what: &'static str,
    },
    /// A pushed feature is not declared by the view.
    #[error("feature view {view:?} has no feature {feature:?}")]
    UnknownFeature {
        /// The view.
        view: String,
        /// The feature.
        feature: String,
    },
    /// A pushed value has another type than declared.
    #[error("feature {view}.{feature} is {expected}, got a {found} value")]
    WrongType {
        /// The view.
        view: String,
        /// The feature.
        feature: String,
        /// Declared type.
        expected: crate::definitions::FeatureType,
        /// Pushed type.
        found: crate::definitions::FeatureType,
    },
    /// A pushed float is NaN or infinite.
    #[error("feature {view}.{feature}: {value} is not a finite number")]
    NotFinite {
        /// The view.
        view: String,
        /// The feature.
        feature: String,
        /// The value.
        value: String,
    },
    /// A pushed value names a feature the store computes from events.
    #[error(
        "feature {view}.{feature} is computed by the feature store ({function} of {of} over {window}); push events carrying {of:?} instead of its value"
    )]
    ComputedFeature {
        /// The view.
        view: String,
        /// The feature.
        feature: String,
        /// The aggregate function.
        function: crate::definitions::AggregateFunction,
        /// The event field it reads.
        of: String,
        /// Its window, as people write it.
        window: String,
    },
    /// Events were pushed to a view that declares no windowed aggregate.
    #[error(
        "feature view {view:?} declares no windowed aggregate; push its values instead of events"
    )]
    NoAggregates {
        /// The view.
        view: String,
    },
    /// A pushed event carries no field.
    #[error("an event of feature view {view:?} carries no field; its aggregates read {known}")]
    NoEventFields {
        /// The view.
        view: String,
        /// The fields its aggregates read.
        known: String,
    },
    /// A pushed event's ID is too long.
    #[error("event ID of {len} bytes is longer than {MAX_EVENT_ID_BYTES}")]
    EventIdTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// One field of a pushed event does not fit the view's aggregates.
    #[error("feature view {view:?}, event field {field:?}: {problem}")]
    EventField {
        /// The view.
        view: String,
        /// The field.
        field: String,
        /// What is wrong.
        problem: EventFieldProblem,
    },
    /// The backend failed (shared by every caller that waited on the same load).
    #[error(transparent)]
    Store(Arc<StoreError>),
}

impl From<StoreError> for ReadError {
    fn from(e: StoreError) -> Self {
        ReadError::Store(Arc::new(e))
    }
}

impl ReadError {
    /// The backend error, if that is what this is.
    pub fn store_error(&self) -> Option<&StoreError> {
        match self {
            ReadError::Store(e) => Some(e),
            _ => None,
        }
    }
}

fn arc_values(map: BTreeMap<String, CurrentBatch>) -> BTreeMap<String, Arc<CurrentBatch>> {
    map.into_iter().map(|(k, v)| (k, Arc::new(v))).collect()
}

/// Counters for metrics (monotonic since start).
#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    loads: AtomicU64,
    load_errors: AtomicU64,
    load_nanos: AtomicU64,
    evicted_size: AtomicU64,
    expired: AtomicU64,
    invalidations: AtomicU64,
    event_reads: AtomicU64,
    events_read: AtomicU64,
    capped_reads: AtomicU64,
    /// When the last cap warning was logged (ms since the reader started, +1;
    /// 0: never), so a hot entity does not flood the log.
    cap_warned_at_ms: AtomicU64,
    /// [op][kind] failed store calls, indexed by [`StoreOp`] and [`StoreErrorKind`].
    store_errors: [[AtomicU64; StoreErrorKind::ALL.len()]; StoreOp::ALL.len()],
}

impl Counters {
    fn store_error<T>(&self, op: StoreOp, result: &Result<T, StoreError>) {
        if let Err(e) = result {
            self.store_errors[op as usize][StoreErrorKind::of(e) as usize]
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the reader asked the store for, as counted in [`StoreErrorStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    /// A row read (static through the cache, or dynamic).
    Read,
    /// A dynamic value written by the push path.
    Write,
    /// The poll of the views' current batches.
    BatchWatch,
}

impl StoreOp {
    /// Every op, in index order.
    pub const ALL: [StoreOp; 3] = [StoreOp::Read, StoreOp::Write, StoreOp::BatchWatch];

    /// The `op` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreOp::Read => "read",
            StoreOp::Write => "write",
            StoreOp::BatchWatch => "batch_watch",
        }
    }
}

/// How a store call failed, as counted in [`StoreErrorStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// It did not finish within its deadline.
    Timeout,
    /// The backend could not be reached.
    Unavailable,
    /// Anything else: the backend answered an error, a damaged row, a schema
    /// mismatch.
    Error,
}

impl StoreErrorKind {
    /// Every kind, in index order.
    pub const ALL: [StoreErrorKind; 3] = [
        StoreErrorKind::Timeout,
        StoreErrorKind::Unavailable,
        StoreErrorKind::Error,
    ];

    fn of(e: &StoreError) -> Self {
        match e {
            StoreError::Timeout(_) => StoreErrorKind::Timeout,
            StoreError::Unavailable(_) => StoreErrorKind::Unavailable,
            _ => StoreErrorKind::Error,
        }
    }

    /// The `kind` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreErrorKind::Timeout => "timeout",
            StoreErrorKind::Unavailable => "unavailable",
            StoreErrorKind::Error => "error",
        }
    }
}

/// Failed store calls since start, by op and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreErrorStats {
    counts: [[u64; StoreErrorKind::ALL.len()]; StoreOp::ALL.len()],
}

impl StoreErrorStats {
    /// Failed calls of `op` that failed as `kind`.
    pub fn get(&self, op: StoreOp, kind: StoreErrorKind) -> u64 {
        self.counts[op as usize][kind as usize]
    }
}

/// Counters of the raw-event reads behind windowed aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct EventStats {
    /// Range reads of an entity's events.
    pub reads: u64,
    /// Events those reads returned.
    pub events: u64,
    /// Reads that hit `max_events_per_read` (the oldest events in the window
    /// were left out, so wide aggregates are undercounted).
    pub capped_reads: u64,
}

/// A snapshot of the cache counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct CacheStats {
    /// Reads answered from the cache.
    pub hits: u64,
    /// Reads that found no valid entry (several may share one load).
    pub misses: u64,
    /// Backend reads made to fill the cache.
    pub loads: u64,
    /// Loads that failed.
    pub load_errors: u64,
    /// Total time spent in loads, in nanoseconds.
    pub load_nanos: u64,
    /// Entries evicted to respect the byte bound.
    pub evicted_size: u64,
    /// Entries dropped at the end of their TTL.
    pub expired: u64,
    /// Batch switches that invalidated a view's entries.
    pub invalidations: u64,
    /// Entries now cached.
    pub entries: u64,
    /// Estimated bytes now cached.
    pub bytes: u64,
}

#[derive(Debug, Clone)]
struct CachedRow {
    /// The entity the row belongs to: the key holds only its hash, so a hit
    /// is served only when this matches the entity asked for.
    entity: Arc<str>,
    /// The batch the row was read from (static views).
    batch_id: Option<Arc<str>>,
    row: Option<Arc<StoredRow>>,
}

/// (view index, keyed 64-bit hash of the entity key). A fixed-size key keeps
/// the cache's probes to integer compares (no string to fetch and compare per
/// probe, no allocation per lookup); the hash is keyed per reader (SipHash
/// with random keys), and the entity stored in the entry is checked on every
/// hit, so two entities sharing a hash are each read from the store instead
/// of ever serving one the other's row.
type Key = (u32, u64);

struct RowExpiry {
    ttls: Vec<Duration>,
    negative: Duration,
}

impl Expiry<Key, CachedRow> for RowExpiry {
    fn expire_after_create(&self, key: &Key, value: &CachedRow, _: Instant) -> Option<Duration> {
        let ttl = self
            .ttls
            .get(key.0 as usize)
            .copied()
            .unwrap_or(Duration::ZERO);
        Some(if value.row.is_none() {
            self.negative.min(ttl)
        } else {
            ttl
        })
    }
}

fn weigh(_key: &Key, value: &CachedRow) -> u32 {
    let row = value.row.as_ref().map_or(0, |r| {
        r.values
            .iter()
            .map(|(k, v)| {
                let payload = match &v.value {
                    FeatureValue::String(s) => s.len(),
                    _ => 8,
                };
                // BTreeMap slot, String header and heap, value and time.
                k.len() + payload + 72
            })
            .sum::<usize>()
            + 96
    });
    // The key is a fixed 16 bytes; the entity's bytes are in the value.
    u32::try_from(value.entity.len() + 80 + row).unwrap_or(u32::MAX)
}

/// One raw event for [`FeatureReader::push_events`]: the view, the entity
/// and the event.
#[derive(Debug, Clone, Copy)]
pub struct PushedEvent<'a> {
    /// The dynamic view.
    pub view: &'a str,
    /// The entity key (key columns joined as the push API joins them).
    pub entity_key: &'a str,
    /// The event.
    pub event: &'a Event,
}

/// Reads features of one definitions file through the cache.
pub struct FeatureReader<S> {
    store: Arc<S>,
    definitions: Arc<FeatureDefinitions>,
    index: HashMap<String, u32>,
    current: RwLock<BTreeMap<String, Arc<CurrentBatch>>>,
    cache: Cache<Key, CachedRow>,
    counters: Arc<Counters>,
    config: ReaderConfig,
    started: Instant,
    hasher: RandomState,
}

impl<S: RowStore + BatchStore> FeatureReader<S> {
    /// Builds a reader and loads the current batches once.
    ///
    /// # Errors
    /// The store's error if the current batches cannot be read.
    pub async fn new(
        store: Arc<S>,
        definitions: Arc<FeatureDefinitions>,
        config: ReaderConfig,
    ) -> Result<Self, StoreError> {
        let mut index = HashMap::new();
        let mut ttls = Vec::new();
        for (i, view) in definitions.views().iter().enumerate() {
            index.insert(view.name.clone(), u32::try_from(i).unwrap_or(u32::MAX));
            ttls.push(match view.kind {
                ViewKind::Static { .. } => view.max_age.min(config.static_ttl),
                ViewKind::Dynamic { .. } => config.dynamic_ttl.unwrap_or(Duration::ZERO),
            });
        }
        let counters = Arc::new(Counters::default());
        let listener_counters = Arc::clone(&counters);
        let cache = Cache::builder()
            .max_capacity(config.cache_max_bytes)
            .weigher(weigh)
            .expire_after(RowExpiry {
                ttls,
                negative: config.negative_ttl,
            })
            .support_invalidation_closures()
            .eviction_listener(move |_k, _v, cause| match cause {
                RemovalCause::Size => {
                    listener_counters
                        .evicted_size
                        .fetch_add(1, Ordering::Relaxed);
                }
                RemovalCause::Expired => {
                    listener_counters.expired.fetch_add(1, Ordering::Relaxed);
                }
                RemovalCause::Explicit | RemovalCause::Replaced => {}
            })
            .build();
        let current = arc_values(store.current_batches().await?);
        Ok(FeatureReader {
            store,
            definitions,
            index,
            current: RwLock::new(current),
            cache,
            counters,
            config,
            started: Instant::now(),
            hasher: RandomState::new(),
        })
    }

    /// The definitions served.
    pub fn definitions(&self) -> &FeatureDefinitions {
        &self.definitions
    }

    /// The backend.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The batch `view` serves now, as this reader knows it.
    pub fn current_batch(&self, view: &str) -> Option<Arc<CurrentBatch>> {
        self.current
            .read()
            .map_or(None, |c| c.get(view).map(Arc::clone))
    }

    /// Re-reads the current batches and invalidates the cached rows of every
    /// view whose batch changed. Returns the views that changed.
    ///
    /// # Errors
    /// The store's error; the known batches are kept.
    pub async fn refresh_current(&self) -> Result<Vec<String>, StoreError> {
        let fresh = self.store.current_batches().await;
        self.counters.store_error(StoreOp::BatchWatch, &fresh);
        let fresh = arc_values(fresh?);
        let changed: Vec<String> = {
            let Ok(mut current) = self.current.write() else {
                return Ok(Vec::new());
            };
            let changed = fresh
                .iter()
                .filter(|(view, b)| current.get(*view).map(|c| &c.batch_id) != Some(&b.batch_id))
                .map(|(view, _)| view.clone())
                .collect();
            *current = fresh;
            changed
        };
        for view in &changed {
            if let Some(&idx) = self.index.get(view) {
                self.counters.invalidations.fetch_add(1, Ordering::Relaxed);
                // Only fails if closures were not enabled at build time.
                let _ = self.cache.invalidate_entries_if(move |k, _| k.0 == idx);
            }
        }
        Ok(changed)
    }

    /// Spawns the task that calls [`Self::refresh_current`] every
    /// `batch_poll_interval`; it ends when the reader is dropped.
    pub fn watch_batches(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        let every = self.config.batch_poll_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            // During an outage: one warning at once, then one every 30 s
            // with the count, and a note when it ends.
            let mut failing: Option<(Instant, u64)> = None;
            loop {
                tick.tick().await;
                let Some(reader) = weak.upgrade() else { return };
                match reader.refresh_current().await {
                    Ok(_) => {
                        if let Some((since, n)) = failing.take() {
                            tracing::info!(
                                failed_polls = n,
                                "current refresh batches readable again after {:.1?}",
                                since.elapsed()
                            );
                        }
                    }
                    Err(e) => {
                        let (since, n) = failing.get_or_insert((Instant::now(), 0));
                        *n += 1;
                        if *n == 1
                            || n.is_multiple_of(
                                u64::try_from(30_000 / every.as_millis().max(1))
                                    .unwrap_or(1)
                                    .max(1),
                            )
                        {
                            tracing::warn!(
                                error = %e,
                                failed_polls = *n,
                                "cannot re-read current refresh batches for {:.1?}; serving the known ones",
                                since.elapsed()
                            );
                        }
                    }
                }
            }
        })
    }

    fn view(&self, name: &str) -> Result<(u32, &FeatureView), ReadError> {
        let idx = *self
            .index
            .get(name)
            .ok_or_else(|| ReadError::UnknownView(name.to_owned()))?;
        let view = self
            .definitions
            .views()
            .get(idx as usize)
            .ok_or_else(|| ReadError::UnknownView(name.to_owned()))?;
        Ok((idx, view))
    }

    /// Reads `view` (static or dynamic) for `entity_key` and resolves it at
    /// `now`: every declared feature, defaults where missing or stale.
    ///
    /// # Errors
    /// [`ReadError::UnknownView`], or the store's error on a cache miss.
    pub async fn read(
        &self,
        view_name: &str,
        entity_key: &str,
        now: SystemTime,
    ) -> Result<ResolvedView<'_>, ReadError> {
        let (idx, view) = self.view(view_name)?;
        // One span per view read; `cache` says hit, miss (a store read) or
        // bypass (dynamic views without a cache TTL).
        let span = tracing::info_span!(
            "feature_read",
            view = view_name,
            cache = tracing::field::Empty
        );
        let row = match view.kind {
            ViewKind::Static { .. } => {
                self.static_row(idx, view, entity_key)
                    .instrument(span)
                    .await?
            }
            ViewKind::Dynamic { .. } => {
                self.dynamic_row(idx, view, entity_key, now)
                    .instrument(span)
                    .await?
            }
        };
        Ok(resolve_view(view, row.as_deref(), now))
    }

    /// Reads several views for one entity concurrently, in the given order.
    ///
    /// # Errors
    /// The first error among the reads.
    pub async fn read_many(
        &self,
        views: &[&str],
        entity_key: &str,
        now: SystemTime,
    ) -> Result<Vec<ResolvedView<'_>>, ReadError> {
        futures_util::future::try_join_all(views.iter().map(|v| self.read(v, entity_key, now)))
            .await
    }

    async fn static_row(
        &self,
        idx: u32,
        view: &FeatureView,
        entity_key: &str,
    ) -> Result<Option<Arc<StoredRow>>, ReadError> {
        let Some(batch) = self.current_batch(&view.name) else {
            // Never refreshed: every value is missing.
            return Ok(None);
        };
        let key = self.key(idx, entity_key);
        let at = StaticKey {
            view: &view.name,
            batch_id: &batch.batch_id,
            entity_key,
        };
        let read = || self.load(|s| s.read_static(at));
        if let Some(hit) = self.cache.get(&key).await {
            if &*hit.entity != entity_key {
                // Another entity with the same key hash holds the slot.
                return Self::past_cache(read().await);
            }
            if hit.batch_id.as_deref() == Some(batch.batch_id.as_str()) {
                tracing::Span::current().record("cache", "hit");
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(hit.row);
            }
            self.cache.invalidate(&key).await;
        }
        tracing::Span::current().record("cache", "miss");
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        let loaded = self
            .cache
            .try_get_with(key, async {
                let row = read().await?;
                Ok::<_, StoreError>(CachedRow {
                    entity: Arc::from(entity_key),
                    batch_id: Some(Arc::from(batch.batch_id.as_str())),
                    row: row.map(Arc::new),
                })
            })
            .await
            .map_err(ReadError::Store)?;
        if &*loaded.entity != entity_key {
            // Coalesced onto the load of another entity with the same hash.
            return Self::past_cache(read().await);
        }
        Ok(loaded.row)
    }

    fn key(&self, idx: u32, entity_key: &str) -> Key {
        (idx, self.hasher.hash_one(entity_key))
    }

    /// A row read straight from the store, bypassing the cache (the rare
    /// entity whose key hash another cached entity holds).
    fn past_cache(
        row: Result<Option<StoredRow>, StoreError>,
    ) -> Result<Option<Arc<StoredRow>>, ReadError> {
        tracing::Span::current().record("cache", "bypass");
        Ok(row
            .map_err(|e| ReadError::Store(Arc::new(e)))?
            .map(Arc::new))
    }

    async fn dynamic_row(
        &self,
        idx: u32,
        view: &FeatureView,
        entity_key: &str,
        now: SystemTime,
    ) -> Result<Option<Arc<StoredRow>>, ReadError> {
        if self.config.dynamic_ttl.is_none() {
            tracing::Span::current().record("cache", "bypass");
            let row = self.read_dynamic_now(view, entity_key, now).await;
            self.counters.store_error(StoreOp::Read, &row);
            return Ok(row?.map(Arc::new));
        }
        let key = self.key(idx, entity_key);
        let read = || self.load(|_| self.read_dynamic_now(view, entity_key, now));
        if let Some(hit) = self.cache.get(&key).await {
            if &*hit.entity != entity_key {
                return Self::past_cache(read().await);
            }
            tracing::Span::current().record("cache", "hit");
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit.row);
        }
        tracing::Span::current().record("cache", "miss");
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        let loaded = self
            .cache
            .try_get_with(key, async {
                // The aggregates are computed for this load's `now` and
                // served as such for `dynamic_ttl`.
                let row = read().await?;
                Ok::<_, StoreError>(CachedRow {
                    entity: Arc::from(entity_key),
                    batch_id: None,
                    row: row.map(Arc::new),
                })
            })
            .await
            .map_err(ReadError::Store)?;
        if &*loaded.entity != entity_key {
            return Self::past_cache(read().await);
        }
        Ok(loaded.row)
    }

    /// A dynamic view's row at `now`: its plain values, and for a view with
    /// aggregates, those computed from the events in the widest window — two
    /// store reads made concurrently. Stored plain values of aggregate
    /// features are ignored: only events feed them.
    async fn read_dynamic_now(
        &self,
        view: &FeatureView,
        entity_key: &str,
        now: SystemTime,
    ) -> Result<Option<StoredRow>, StoreError> {
        let Some(widest) = view.widest_window() else {
            return self.store.read_dynamic(&view.name, entity_key).await;
        };
        let from = now.checked_sub(widest).unwrap_or(SystemTime::UNIX_EPOCH);
        let limit = self.config.max_events_per_read.max(1);
        // Boxed: the backend's future (by default two reads side by side) is
        // large (tens of KB in debug builds), and a caller polling on a small
        // stack must not carry it inline. One allocation beside the events'.
        let (row, events) = Box::pin(self.store.read_dynamic_window(EventQuery {
            view: &view.name,
            entity_key,
            from,
            to: now,
            limit,
        }))
        .await?;
        self.count_events(view, entity_key, &events, limit);
        let mut values = row.map(|r| r.values).unwrap_or_default();
        values.retain(|name, _| view.feature(name).is_none_or(|f| f.aggregate.is_none()));
        values.extend(aggregate::compute(view, &events.events, now));
        Ok(StoredRow::dynamic(values))
    }

    fn count_events(
        &self,
        view: &FeatureView,
        entity_key: &str,
        events: &EventRange,
        limit: usize,
    ) {
        let c = &self.counters;
        c.event_reads.fetch_add(1, Ordering::Relaxed);
        c.events_read
            .fetch_add(events.events.len() as u64, Ordering::Relaxed);
        if !events.truncated {
            return;
        }
        let capped = c.capped_reads.fetch_add(1, Ordering::Relaxed) + 1;
        // One warning per 10 s at most, with the running count.
        let now_ms = u64::try_from(self.started.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = c.cap_warned_at_ms.load(Ordering::Relaxed);
        if (last == 0 || now_ms.saturating_sub(last) >= 10_000)
            && c.cap_warned_at_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                view = %view.name,
                entity = entity_key,
                limit,
                capped_reads = capped,
                "more events in the aggregate window than max_events_per_read; the oldest were left out, so wide aggregates are undercounted"
            );
        }
    }

    async fn load<'a, F, Fut>(&'a self, f: F) -> Result<Option<StoredRow>, StoreError>
    where
        F: FnOnce(&'a S) -> Fut,
        Fut: std::future::Future<Output = Result<Option<StoredRow>, StoreError>>,
    {
        let started = Instant::now();
        self.counters.loads.fetch_add(1, Ordering::Relaxed);
        let result = f(&self.store).await;
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.counters.load_nanos.fetch_add(nanos, Ordering::Relaxed);
        if result.is_err() {
            self.counters.load_errors.fetch_add(1, Ordering::Relaxed);
        }
        self.counters.store_error(StoreOp::Read, &result);
        result
    }

    /// Writes fresh values of a dynamic view for one entity. Values are
    /// checked against the view's declared features and types; an event
    /// older than the stored one does not overwrite it; an event already past
    /// the view's TTL is accepted and ignored (it would read as missing).
    ///
    /// # Errors
    /// [`ReadError`] naming the view and feature for bad input; the store's
    /// error if the write fails.
    pub async fn push(
        &self,
        view_name: &str,
        entity_key: &str,
        values: &[(String, FeatureValue)],
        event_time: SystemTime,
    ) -> Result<(), ReadError> {
        let (idx, view) = self.view(view_name)?;
        let ViewKind::Dynamic { ttl } = view.kind else {
            return Err(ReadError::WrongKind {
                view: view.name.clone(),
                kind: "static",
                what: "static views are loaded by refresh jobs, not pushed",
            });
        };
        for (name, value) in values {
            let spec = view
                .feature(name)
                .ok_or_else(|| ReadError::UnknownFeature {
                    view: view.name.clone(),
                    feature: name.clone(),
                })?;
            if let Some(a) = &spec.aggregate {
                return Err(ReadError::ComputedFeature {
                    view: view.name.clone(),
                    feature: name.clone(),
                    function: a.function,
                    of: a.of.clone(),
                    window: crate::tuner::controller::human(a.window),
                });
            }
            if value.feature_type() != spec.feature_type {
                return Err(ReadError::WrongType {
                    view: view.name.clone(),
                    feature: name.clone(),
                    expected: spec.feature_type,
                    found: value.feature_type(),
                });
            }
            let finite = match value {
                FeatureValue::Float32(v) => v.is_finite(),
                FeatureValue::Float64(v) => v.is_finite(),
                _ => true,
            };
            if !finite {
                return Err(ReadError::NotFinite {
                    view: view.name.clone(),
                    feature: name.clone(),
                    value: value.to_string(),
                });
            }
        }
        let written = self
            .store
            .write_dynamic(DynamicWrite {
                view: &view.name,
                entity_key,
                values,
                event_time,
                expires_at: event_time + ttl,
            })
            .await;
        self.counters.store_error(StoreOp::Write, &written);
        written?;
        if self.config.dynamic_ttl.is_some() {
            self.cache.invalidate(&self.key(idx, entity_key)).await;
        }
        Ok(())
    }

    /// Stores one raw event of a dynamic view with windowed aggregates for
    /// one entity. Its fields are checked against the view's aggregates (each
    /// field must be read by one; a field summed, averaged or compared must be
    /// a finite number); an event already past the view's TTL is accepted and
    /// ignored; the same (event time, event ID) again is the same event.
    ///
    /// # Errors
    /// [`ReadError`] naming the view and field for bad input; the store's
    /// error if the write fails.
    pub async fn push_event(
        &self,
        view_name: &str,
        entity_key: &str,
        event: &Event,
    ) -> Result<(), ReadError> {
        let (idx, view, ttl) = self.check_event(view_name, event)?;
        let written = self
            .store
            .write_event(EventWrite {
                view: &view.name,
                entity_key,
                event,
                expires_at: event.event_time + ttl,
            })
            .await;
        self.counters.store_error(StoreOp::Write, &written);
        written?;
        if self.config.dynamic_ttl.is_some() {
            self.cache.invalidate(&self.key(idx, entity_key)).await;
        }
        Ok(())
    }

    /// Stores many raw events, of any dynamic views with aggregates, each
    /// checked as [`push_event`](Self::push_event) checks it; the valid ones
    /// are written together in one batched store call. Returns one outcome
    /// per event, in order: `None` when it was written, else why it was
    /// refused (nothing is written for it).
    ///
    /// # Errors
    /// The store's error if the batched write fails: then none of the
    /// events count as written (some may be stored; writing them again is
    /// harmless).
    pub async fn push_events(
        &self,
        events: &[PushedEvent<'_>],
    ) -> Result<Vec<Option<ReadError>>, ReadError> {
        let mut outcomes = Vec::with_capacity(events.len());
        let mut writes = Vec::with_capacity(events.len());
        let mut written_keys = Vec::new();
        for pushed in events {
            match self.check_event(pushed.view, pushed.event) {
                Ok((idx, view, ttl)) => {
                    writes.push(EventWrite {
                        view: &view.name,
                        entity_key: pushed.entity_key,
                        event: pushed.event,
                        expires_at: pushed.event.event_time + ttl,
                    });
                    if self.config.dynamic_ttl.is_some() {
                        written_keys.push(self.key(idx, pushed.entity_key));
                    }
                    outcomes.push(None);
                }
                Err(e) => outcomes.push(Some(e)),
            }
        }
        if !writes.is_empty() {
            let written = self.store.write_events(&writes).await;
            self.counters.store_error(StoreOp::Write, &written);
            written?;
        }
        for key in &written_keys {
            self.cache.invalidate(key).await;
        }
        Ok(outcomes)
    }

    /// The view, its index and TTL if `event` may be stored in
    /// `view_name`: the checks of [`push_event`](Self::push_event).
    fn check_event(
        &self,
        view_name: &str,
        event: &Event,
    ) -> Result<(u32, &FeatureView, Duration), ReadError> {
        let (idx, view) = self.view(view_name)?;
        let ViewKind::Dynamic { ttl } = view.kind else {
            return Err(ReadError::WrongKind {
                view: view.name.clone(),
                kind: "static",
                what: "static views are loaded by refresh jobs, not pushed",
            });
        };
        if view.widest_window().is_none() {
            return Err(ReadError::NoAggregates {
                view: view.name.clone(),
            });
        }
        if event.fields.is_empty() {
            return Err(ReadError::NoEventFields {
                view: view.name.clone(),
                known: view.event_fields().join(", "),
            });
        }
        if event.event_id.len() > MAX_EVENT_ID_BYTES {
            return Err(ReadError::EventIdTooLong {
                len: event.event_id.len(),
            });
        }
        for (name, value) in &event.fields {
            aggregate::check_field(view, name, value).map_err(|problem| ReadError::EventField {
                view: view.name.clone(),
                field: name.clone(),
                problem,
            })?;
        }
        Ok((idx, view, ttl))
    }

    /// The raw-event read counters since start.
    pub fn event_stats(&self) -> EventStats {
        let c = &self.counters;
        EventStats {
            reads: c.event_reads.load(Ordering::Relaxed),
            events: c.events_read.load(Ordering::Relaxed),
            capped_reads: c.capped_reads.load(Ordering::Relaxed),
        }
    }

    /// Failed store calls since start, by op and kind.
    pub fn store_error_stats(&self) -> StoreErrorStats {
        let mut stats = StoreErrorStats::default();
        for (op, row) in self.counters.store_errors.iter().enumerate() {
            for (kind, n) in row.iter().enumerate() {
                stats.counts[op][kind] = n.load(Ordering::Relaxed);
            }
        }
        stats
    }

    /// The cache counters now.
    pub fn cache_stats(&self) -> CacheStats {
        let c = &self.counters;
        CacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            loads: c.loads.load(Ordering::Relaxed),
            load_errors: c.load_errors.load(Ordering::Relaxed),
            load_nanos: c.load_nanos.load(Ordering::Relaxed),
            evicted_size: c.evicted_size.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
            entries: self.cache.entry_count(),
            bytes: self.cache.weighted_size(),
        }
    }

    /// Applies pending cache maintenance (evictions, invalidations) now;
    /// moka otherwise does it lazily. For tests and metrics scrapes.
    pub async fn sync_cache(&self) {
        self.cache.run_pending_tasks().await;
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::store::embedded::EmbeddedStore;

    #[tokio::test]
    async fn a_cached_row_of_another_entity_with_the_same_key_is_never_served() {
        let dir = std::env::temp_dir().join(format!("mlgw-reader-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Arc::new(EmbeddedStore::open(&dir.join("f.redb")).unwrap());
        store.apply_schema().await.unwrap();
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("definitions/fraud.toml");
        let defs = Arc::new(FeatureDefinitions::load(&path).unwrap());
        let config = ReaderConfig {
            dynamic_ttl: Some(Duration::from_secs(60)),
            ..ReaderConfig::default()
        };
        let reader = FeatureReader::new(store, defs, config).await.unwrap();
        let now = SystemTime::now();
        let minutes = "minutes_since_last_txn".to_owned();
        reader
            .push(
                "customer_activity",
                "c-a",
                &[(minutes.clone(), FeatureValue::Float32(3.0))],
                now,
            )
            .await
            .unwrap();
        let (idx, _) = reader.view("customer_activity").unwrap();
        let value_of = |v: &ResolvedView<'_>| {
            v.features
                .iter()
                .find(|f| f.name == minutes)
                .map(|f| f.value.clone())
        };
        // Another entity's row planted under c-a's key, as a hash collision
        // would leave it.
        let mut foreign = BTreeMap::new();
        foreign.insert(
            minutes.clone(),
            crate::freshness::StoredValue {
                value: FeatureValue::Float32(99.0),
                written_at: now,
            },
        );
        let planted = CachedRow {
            entity: Arc::from("c-b"),
            batch_id: None,
            row: Some(Arc::new(StoredRow::dynamic(foreign.clone()).unwrap())),
        };
        reader.cache.insert(reader.key(idx, "c-a"), planted).await;
        let read = reader.read("customer_activity", "c-a", now).await.unwrap();
        assert_eq!(value_of(&read), Some(FeatureValue::Float32(3.0)));
        // The same entry planted for c-a itself is served from the cache.
        let own = CachedRow {
            entity: Arc::from("c-a"),
            batch_id: None,
            row: Some(Arc::new(StoredRow::dynamic(foreign).unwrap())),
        };
        reader.cache.insert(reader.key(idx, "c-a"), own).await;
        let read = reader.read("customer_activity", "c-a", now).await.unwrap();
        assert_eq!(value_of(&read), Some(FeatureValue::Float32(99.0)));
        drop(reader);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
