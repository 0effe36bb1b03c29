//! The gateway's metrics on a `prometheus-client` [`Registry`]: requests by
//! front, route and code with their latency by front, API and model
//! (recorded once per request by the fronts' tower stack), prediction
//! latencies, batch sizes, auth refusals and config reloads ([`Metrics`]);
//! the admission gauges ([`Admission`]); the feature store's stats the
//! gateway reads ([`StoreFamilies`]: cache, store errors, event reads,
//! refresh jobs). Other components register their own collectors; the
//! server builds the one registry at start and `/metrics` encodes it.
//!
//! The request counters and latencies are pre-resolved arrays of atomics
//! indexed by (front, route, code or model), so a request does no label
//! lookup and no allocation; a series appears once it has counted something.
//! State owned elsewhere and read asynchronously (the refresh jobs) is handed
//! over before each scrape through a [`Sampled`] slot.

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use feature_store::reader::{FeatureReader, StoreErrorKind, StoreOp};
use feature_store::schedule::jobs::JobOverview;
use feature_store::store::{BatchStatus, FullStore};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use telemetry::prom::{Histogram, LATENCY_BUCKETS, Registry, SIZE_BUCKETS};
use tokio::sync::Semaphore;

/// The front a request came in through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// The REST (JSON) front.
    Rest,
    /// The gRPC front.
    Grpc,
}

impl Front {
    const ALL: [Front; 2] = [Front::Rest, Front::Grpc];

    /// The `front` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Front::Rest => "rest",
            Front::Grpc => "grpc",
        }
    }
}

/// The API a request calls: the `route` label of `mlgw_requests_total` and
/// the `api` label of `mlgw_request_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// One prediction.
    Predict,
    /// Several entities' predictions.
    PredictBatch,
    /// An asynchronous prediction submitted.
    PredictAsync,
    /// An asynchronous prediction polled.
    Poll,
    /// Dynamic feature values or events.
    Push,
    /// Ground truth for a prediction.
    Feedback,
    /// The routing and tuner admin APIs.
    Admin,
    /// Similarity lookups.
    Similar,
    /// Anything else (unknown paths).
    Other,
}

impl Route {
    const ALL: [Route; 9] = [
        Route::Predict,
        Route::PredictBatch,
        Route::PredictAsync,
        Route::Poll,
        Route::Push,
        Route::Feedback,
        Route::Admin,
        Route::Similar,
        Route::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Predict => "predict",
            Route::PredictBatch => "predict_batch",
            Route::PredictAsync => "predict_async",
            Route::Poll => "poll",
            Route::Push => "push",
            Route::Feedback => "feedback",
            Route::Admin => "admin",
            Route::Similar => "similar",
            Route::Other => "other",
        }
    }
}

/// What the prediction store did for one prediction of a model answered
/// from it first: the `outcome` label of `mlgw_precomputed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Answered from the store.
    Hit,
    /// No entry for the key.
    Miss,
    /// The entry is older than the job's max age.
    Stale,
    /// The entry was scored by another version than routing chose.
    Version,
    /// The call sent request features an entity entry was not scored with.
    RequestFeatures,
    /// The model serves no scoring batch yet.
    NoBatch,
    /// The store could not be read in time.
    StoreError,
}

impl Lookup {
    const ALL: [Lookup; 7] = [
        Lookup::Hit,
        Lookup::Miss,
        Lookup::Stale,
        Lookup::Version,
        Lookup::RequestFeatures,
        Lookup::NoBatch,
        Lookup::StoreError,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Miss => "miss",
            Lookup::Stale => "stale",
            Lookup::Version => "version",
            Lookup::RequestFeatures => "request_features",
            Lookup::NoBatch => "no_batch",
            Lookup::StoreError => "store_error",
        }
    }
}

/// Every result code a request can end with: `ok` and the error table's
/// codes, so each counter is an atomic found by index.
pub const CODES: [&str; 28] = [
    "ok",
    "invalid_argument",
    "unknown_model",
    "unknown_view",
    "unknown_index",
    "unknown_entity",
    "index_not_ready",
    "unknown_job",
    "unknown_version",
    "prediction_not_found",
    "not_precomputed",
    "request_not_found",
    "async_disabled",
    "queue_unavailable",
    "feature_store_unavailable",
    "feature_store_error",
    "model_unavailable",
    "model_failed",
    "deadline_exceeded",
    "overloaded",
    "auth_unavailable",
    "invalid_token",
    "permission_denied",
    "csrf_rejected",
    "routing_refused",
    "routing_conflict",
    "job_running",
    "routing_damaged",
];

/// Which model a request was about, as an index into the models the
/// [`Metrics`] were built for (0: none, `-`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelSlot(u16);

impl ModelSlot {
    /// No model (`-`).
    pub const NONE: ModelSlot = ModelSlot(0);

    /// The slot's number (0: none).
    pub fn number(self) -> u32 {
        u32::from(self.0)
    }

    /// The slot of the `i`-th model of the list given to [`Metrics::new`].
    pub fn of_index(i: usize) -> ModelSlot {
        u16::try_from(i + 1).map_or(ModelSlot::NONE, ModelSlot)
    }
}

tokio::task_local! {
    /// The model the current request is about, noted by the prediction path.
    static MODEL: Cell<ModelSlot>;
}

/// Notes the model the current request is about, for its latency series
/// (a no-op outside a request observed by [`observe`]).
pub fn note_model(slot: ModelSlot) {
    let _ = MODEL.try_with(|m| m.set(slot));
}

/// Runs `request` and returns its output with the model it noted.
pub async fn observe<F: Future>(request: F) -> (F::Output, ModelSlot) {
    MODEL
        .scope(Cell::new(ModelSlot::NONE), async move {
            let out = request.await;
            let slot = MODEL.try_with(Cell::get).unwrap_or_default();
            (out, slot)
        })
        .await
}

/// The gateway's counters, shared by both fronts.
#[derive(Debug)]
pub struct Metrics {
    /// Model label values, `-` first (see [`ModelSlot`]).
    models: Vec<String>,
    /// [front][route][code] → finished requests.
    requests: Vec<AtomicU64>,
    /// [front][route][model slot] → time to answer.
    request_latency: Vec<Histogram>,
    /// (front, reason) → refused authentications.
    auth_failures: Family<FrontReason, Counter>,
    /// (front, api) → authenticated callers denied by the policy.
    auth_denied: Family<FrontApi, Counter>,
    /// result → config file reloads.
    config_reloads: Family<ReloadResult, Counter>,
    predict_latency: Histogram,
    model_latency: Histogram,
    /// Total − model-server time of a prediction.
    overhead: Histogram,
    /// Entities per predict-batch call.
    batch_entities: Histogram,
    /// [model slot][lookup outcome] → predictions of models answered from
    /// the prediction store first.
    precomputed: Vec<AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(&[])
    }
}

impl Metrics {
    /// Counters for a gateway serving `models` (the latency series of each
    /// are made up front: none is created while serving).
    pub fn new(models: &[String]) -> Self {
        let models: Vec<String> = std::iter::once("-".to_owned())
            .chain(models.iter().cloned())
            .collect();
        let series = Front::ALL.len() * Route::ALL.len();
        let slots = models.len();
        Metrics {
            requests: (0..series * CODES.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            request_latency: (0..series * models.len())
                .map(|_| Histogram::new(LATENCY_BUCKETS))
                .collect(),
            models,
            auth_failures: Family::default(),
            auth_denied: Family::default(),
            config_reloads: Family::default(),
            predict_latency: Histogram::new(LATENCY_BUCKETS),
            model_latency: Histogram::new(LATENCY_BUCKETS),
            overhead: Histogram::new(LATENCY_BUCKETS),
            batch_entities: Histogram::new(SIZE_BUCKETS),
            precomputed: (0..slots * Lookup::ALL.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    /// Counts what the prediction store did for one prediction of `model`.
    pub fn precomputed(&self, model: ModelSlot, outcome: Lookup) {
        let m = usize::from(model.0);
        let m = if m < self.models.len() { m } else { 0 };
        let o = Lookup::ALL.iter().position(|l| *l == outcome).unwrap_or(0);
        self.precomputed[m * Lookup::ALL.len() + o].fetch_add(1, Ordering::Relaxed);
    }

    fn series(front: Front, route: Route) -> usize {
        front as usize * Route::ALL.len() + route as usize
    }

    /// Counts one finished request by its result code (one of [`CODES`])
    /// and times it under its model (if it noted one).
    pub fn request(
        &self,
        front: Front,
        route: Route,
        code: &'static str,
        model: ModelSlot,
        elapsed: Duration,
    ) {
        let series = Self::series(front, route);
        if let Some(c) = CODES.iter().position(|known| *known == code) {
            self.requests[series * CODES.len() + c].fetch_add(1, Ordering::Relaxed);
        } else {
            debug_assert!(false, "code {code:?} is missing from metrics::CODES");
        }
        let m = usize::from(model.0);
        let m = if m < self.models.len() { m } else { 0 };
        self.request_latency[series * self.models.len() + m].observe_duration(elapsed);
    }

    /// Counts a refused authentication by front and reason.
    pub fn auth_failure(&self, front: Front, reason: &'static str) {
        self.auth_failures
            .get_or_create(&FrontReason {
                front: front.as_str(),
                reason,
            })
            .inc();
    }

    /// Counts a caller the policy denied, by front and API.
    pub fn auth_denied(&self, front: Front, api: &'static str) {
        self.auth_denied
            .get_or_create(&FrontApi {
                front: front.as_str(),
                api,
            })
            .inc();
    }

    /// Counts a config file reload by result (`applied`, `invalid`, `failed`).
    pub fn config_reload(&self, result: &'static str) {
        self.config_reloads
            .get_or_create(&ReloadResult { result })
            .inc();
    }

    /// Counts the entities of one predict-batch call.
    pub fn batch_entities(&self, n: usize) {
        self.batch_entities.observe(n as f64);
    }

    /// Records a successful prediction's total and model-server time.
    pub fn prediction(&self, total: Duration, model: Duration) {
        self.predict_latency.observe_duration(total);
        self.model_latency.observe_duration(model);
        self.overhead.observe_duration(total.saturating_sub(model));
    }

    /// Registers these metrics in `registry` under their names (the
    /// registry appends `_total` to counters and a period to help texts).
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        registry.register_collector(Box::new(RequestFamilies(Arc::clone(self))));
        for (name, help, h) in [
            (
                "mlgw_predict_seconds",
                "Time to answer a successful prediction, end to end",
                &self.predict_latency,
            ),
            (
                "mlgw_model_call_seconds",
                "Time spent in the model-server call of a successful prediction",
                &self.model_latency,
            ),
            (
                "mlgw_gateway_overhead_seconds",
                "The gateway's own time in a successful prediction: total minus the model-server call",
                &self.overhead,
            ),
            (
                "mlgw_predict_batch_entities",
                "Entities per predict-batch call",
                &self.batch_entities,
            ),
        ] {
            registry.register(name, help, h.clone());
        }
        registry.register(
            "mlgw_auth_failures",
            "Requests refused for a missing or invalid token, by front and reason",
            self.auth_failures.clone(),
        );
        registry.register(
            "mlgw_auth_denied",
            "Authenticated callers refused by the access policy, by front and API",
            self.auth_denied.clone(),
        );
        registry.register(
            "mlgw_config_reloads",
            "Config file edits seen while running, by result",
            self.config_reloads.clone(),
        );
    }
}

/// Labels of `mlgw_auth_failures_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FrontReason {
    front: &'static str,
    reason: &'static str,
}

/// Labels of `mlgw_auth_denied_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FrontApi {
    front: &'static str,
    api: &'static str,
}

/// Labels of `mlgw_config_reloads_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadResult {
    result: &'static str,
}

/// `mlgw_requests_total` and `mlgw_request_seconds`, read from the
/// pre-resolved arrays: only series that counted something are written.
#[derive(Debug)]
struct RequestFamilies(Arc<Metrics>);

impl Collector for RequestFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let m = &self.0;
        let mut family = encoder.encode_descriptor(
            "mlgw_requests",
            "Finished requests by front, route and result code.",
            None,
            MetricType::Counter,
        )?;
        for front in Front::ALL {
            for route in Route::ALL {
                let series = Metrics::series(front, route);
                for (c, code) in CODES.iter().enumerate() {
                    let n = m.requests[series * CODES.len() + c].load(Ordering::Relaxed);
                    if n > 0 {
                        let labels = [
                            ("front", front.as_str()),
                            ("route", route.as_str()),
                            ("code", *code),
                        ];
                        ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                    }
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "mlgw_precomputed",
            "Predictions of models answered from the prediction store first, by model and outcome (hit, or why the model answered live).",
            None,
            MetricType::Counter,
        )?;
        for (slot, model) in m.models.iter().enumerate() {
            for (o, outcome) in Lookup::ALL.iter().enumerate() {
                let n = m.precomputed[slot * Lookup::ALL.len() + o].load(Ordering::Relaxed);
                if n > 0 {
                    let labels = [("model", model.as_str()), ("outcome", outcome.as_str())];
                    ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "mlgw_request_seconds",
            "Time to answer a request by front, API and model (- for APIs not about one model), whatever the result.",
            None,
            MetricType::Histogram,
        )?;
        for front in Front::ALL {
            for route in Route::ALL {
                let series = Metrics::series(front, route);
                for (i, model) in m.models.iter().enumerate() {
                    let h = &m.request_latency[series * m.models.len() + i];
                    if h.count() > 0 {
                        let labels = [
                            ("front", front.as_str()),
                            ("api", route.as_str()),
                            ("model", model.as_str()),
                        ];
                        h.encode(family.encode_family(&labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A value handed over before each scrape by the code that owns it (read
/// asynchronously or from state the registry cannot hold); encodes nothing
/// until the first hand-over. Clones share the slot.
pub struct Sampled<T>(Arc<ArcSwapOption<T>>);

impl<T> Sampled<T> {
    /// An empty slot.
    pub fn new() -> Self {
        Sampled(Arc::new(ArcSwapOption::empty()))
    }

    /// Hands over this scrape's value.
    pub fn set(&self, value: T) {
        self.0.store(Some(Arc::new(value)));
    }
}

impl<T> Default for Sampled<T> {
    fn default() -> Self {
        Sampled::new()
    }
}

impl<T> Clone for Sampled<T> {
    fn clone(&self) -> Self {
        Sampled(Arc::clone(&self.0))
    }
}

impl<T> std::fmt::Debug for Sampled<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sampled")
    }
}

impl<T: Collector> Collector for Sampled<T> {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        match self.0.load_full() {
            Some(value) => value.encode(encoder),
            None => Ok(()),
        }
    }
}

/// The admission gauges: requests in flight of the limit.
#[derive(Debug)]
pub struct Admission {
    /// The admission semaphore.
    pub limit: Arc<Semaphore>,
    /// Its size.
    pub total: usize,
}

impl Collector for Admission {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let in_flight = self.total.saturating_sub(self.limit.available_permits());
        for (name, help, v) in [
            (
                "mlgw_requests_in_flight",
                "Requests being served now.",
                in_flight,
            ),
            (
                "mlgw_requests_limit",
                "Requests served at once before shedding.",
                self.total,
            ),
        ] {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(family)?;
        }
        Ok(())
    }
}

/// The refresh jobs' state read from the store for one scrape (`None`: the
/// read failed or timed out).
#[derive(Debug)]
pub struct RefreshJobs(pub Option<Vec<JobOverview>>);

/// The feature store's stats: the feature cache, failed store calls, raw
/// event reads (read from the reader at each scrape) and the refresh jobs
/// (handed over before each scrape).
pub struct StoreFamilies<S> {
    reader: Arc<FeatureReader<S>>,
    jobs: Sampled<RefreshJobs>,
}

impl<S> StoreFamilies<S> {
    /// The families of `reader`'s stats and of the jobs handed to `jobs`.
    pub fn new(reader: Arc<FeatureReader<S>>, jobs: Sampled<RefreshJobs>) -> Self {
        StoreFamilies { reader, jobs }
    }
}

impl<S> std::fmt::Debug for StoreFamilies<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreFamilies")
    }
}

fn scalar<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric_type: MetricType,
    metric: M,
) -> std::fmt::Result {
    metric.encode(encoder.encode_descriptor(name, help, None, metric_type)?)
}

/// Unlabelled counters, each (name, help, value).
fn counters<const N: usize>(
    encoder: &mut DescriptorEncoder<'_>,
    series: [(&str, &str, u64); N],
) -> std::fmt::Result {
    for (name, help, v) in series {
        scalar(
            encoder,
            name,
            help,
            MetricType::Counter,
            ConstCounter::new(v),
        )?;
    }
    Ok(())
}

impl<S: FullStore + 'static> Collector for StoreFamilies<S> {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let cache = self.reader.cache_stats();
        for (name, help, v) in [
            (
                "mlgw_feature_cache_entries",
                "Rows in the feature cache.",
                cache.entries,
            ),
            (
                "mlgw_feature_cache_bytes",
                "Estimated bytes in the feature cache.",
                cache.bytes,
            ),
        ] {
            let v = i64::try_from(v).unwrap_or(i64::MAX);
            scalar(
                &mut encoder,
                name,
                help,
                MetricType::Gauge,
                ConstGauge::new(v),
            )?;
        }
        counters(
            &mut encoder,
            [
                (
                    "mlgw_feature_cache_hits",
                    "Feature reads answered from the cache.",
                    cache.hits,
                ),
                (
                    "mlgw_feature_cache_misses",
                    "Feature reads that missed the cache.",
                    cache.misses,
                ),
                (
                    "mlgw_feature_cache_loads",
                    "Store reads made to fill the cache.",
                    cache.loads,
                ),
                (
                    "mlgw_feature_cache_load_errors",
                    "Cache loads that failed.",
                    cache.load_errors,
                ),
                (
                    "mlgw_feature_cache_evictions",
                    "Rows evicted to respect the byte bound.",
                    cache.evicted_size,
                ),
                (
                    "mlgw_feature_cache_expirations",
                    "Rows dropped at the end of their TTL.",
                    cache.expired,
                ),
                (
                    "mlgw_feature_cache_invalidations",
                    "Refresh batch switches that invalidated a view.",
                    cache.invalidations,
                ),
            ],
        )?;
        // hits / (hits + misses) since start.
        let looked = cache.hits + cache.misses;
        let ratio = if looked == 0 {
            0.0
        } else {
            cache.hits as f64 / looked as f64
        };
        scalar(
            &mut encoder,
            "mlgw_feature_cache_hit_ratio",
            "Share of cached feature reads answered from the cache since start.",
            MetricType::Gauge,
            ConstGauge::new(ratio),
        )?;
        scalar(
            &mut encoder,
            "mlgw_feature_cache_load_seconds",
            "Time spent in cache loads.",
            MetricType::Counter,
            ConstCounter::new(cache.load_nanos as f64 / 1e9),
        )?;

        let errors = self.reader.store_error_stats();
        let mut family = encoder.encode_descriptor(
            "mlgw_feature_store_errors",
            "Failed feature store calls by op (read, write, batch_watch) and kind (timeout, unavailable, error).",
            None,
            MetricType::Counter,
        )?;
        for op in StoreOp::ALL {
            for kind in StoreErrorKind::ALL {
                let labels = [("op", op.as_str()), ("kind", kind.as_str())];
                ConstCounter::new(errors.get(op, kind)).encode(family.encode_family(&labels)?)?;
            }
        }

        let events = self.reader.event_stats();
        counters(
            &mut encoder,
            [
                (
                    "mlgw_feature_event_reads",
                    "Range reads of an entity's raw events for windowed aggregates.",
                    events.reads,
                ),
                (
                    "mlgw_feature_events_read",
                    "Raw events returned by those reads.",
                    events.events,
                ),
                (
                    "mlgw_feature_event_reads_capped",
                    "Event reads that hit max_events_per_read (the oldest events in the window were left out).",
                    events.capped_reads,
                ),
            ],
        )?;
        match self.jobs.0.load_full() {
            Some(jobs) => encode_jobs(&mut encoder, jobs.0.as_deref()),
            None => Ok(()),
        }
    }
}

/// Each refresh job's interval in force and its state, and whether they
/// could be read (`None`: the job series are left out).
fn encode_jobs(
    encoder: &mut DescriptorEncoder<'_>,
    jobs: Option<&[JobOverview]>,
) -> std::fmt::Result {
    scalar(
        encoder,
        "mlgw_refresh_jobs_read",
        "Whether this scrape could read the refresh jobs' state from the store (1) or not (0: the job series are missing).",
        MetricType::Gauge,
        ConstGauge::new(i64::from(jobs.is_some())),
    )?;
    let Some(jobs) = jobs else {
        return Ok(());
    };
    let unix = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    };
    type Value = fn(&JobOverview, &dyn Fn(SystemTime) -> f64) -> Option<f64>;
    let families: [(&str, &str, Value); 7] = [
        (
            "mlgw_refresh_interval_seconds",
            "Interval in force for each refresh job (pinned, tuned or declared).",
            |j, _| Some(j.interval.as_secs_f64()),
        ),
        (
            "mlgw_refresh_last_good_interval_seconds",
            "Longest interval the tuner has proven good (tuned jobs).",
            |j, _| j.last_good.map(|d| d.as_secs_f64()),
        ),
        (
            "mlgw_refresh_tuner_windows_without_labels",
            "Judged windows in a row with too few labelled predictions for a decision (tuned jobs); a rising value means labels stopped arriving.",
            |j, _| j.windows_without_labels.map(f64::from),
        ),
        (
            "mlgw_refresh_pinned",
            "1 while a person's pin holds the job's interval.",
            |j, _| Some(f64::from(u8::from(j.pin.is_some()))),
        ),
        (
            "mlgw_refresh_last_batch_finished_timestamp_seconds",
            "When the view's newest batch finished, done or failed (Unix time).",
            |j, unix| j.last_batch.as_ref().and_then(|b| b.finished_at).map(unix),
        ),
        (
            "mlgw_refresh_last_batch_failed",
            "1 if the view's newest batch failed (the previous done batch is still served).",
            |j, _| {
                j.last_batch
                    .as_ref()
                    .map(|b| f64::from(u8::from(b.status == BatchStatus::Failed)))
            },
        ),
        (
            "mlgw_refresh_next_run_timestamp_seconds",
            "When the job's next run is due (Unix time).",
            |j, unix| j.next_run.map(unix),
        ),
    ];
    for (name, help, value) in families {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for j in jobs {
            if let Some(v) = value(j, &unix) {
                let labels = [("job", j.job.as_str()), ("view", j.view.as_str())];
                ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(m: &Arc<Metrics>) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::default();
        m.register(&mut registry);
        registry.register_collector(Box::new(Admission {
            limit: Arc::new(Semaphore::new(256)),
            total: 256,
        }));
        telemetry::prom::encode(&registry)
    }

    #[test]
    fn exposition_has_requests_and_latency() -> Result<(), std::fmt::Error> {
        let m = Arc::new(Metrics::new(&["a".to_owned()]));
        let t = Duration::from_micros(100);
        m.request(Front::Rest, Route::Predict, "ok", ModelSlot::NONE, t);
        m.request(Front::Rest, Route::Predict, "ok", ModelSlot::NONE, t);
        m.request(
            Front::Grpc,
            Route::Predict,
            "invalid_argument",
            ModelSlot::NONE,
            t,
        );
        m.prediction(Duration::from_micros(1500), Duration::from_micros(400));
        m.auth_failure(Front::Grpc, "expired");
        m.config_reload("applied");
        let text = page(&m)?;
        assert!(
            text.contains("mlgw_requests_total{front=\"rest\",route=\"predict\",code=\"ok\"} 2\n"),
            "{text}"
        );
        // Series that counted nothing are left out.
        assert!(!text.contains("code=\"overloaded\""), "{text}");
        assert!(text.contains("mlgw_predict_seconds_bucket{le=\"0.002\"} 1\n"));
        assert!(text.contains("mlgw_predict_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("mlgw_model_call_seconds_count 1\n"));
        assert!(text.contains("mlgw_requests_limit 256\n"));
        assert!(text.contains("mlgw_requests_in_flight 0\n"));
        assert!(
            text.contains("mlgw_auth_failures_total{front=\"grpc\",reason=\"expired\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("mlgw_config_reloads_total{result=\"applied\"} 1\n"));
        Ok(())
    }

    #[test]
    fn labelled_latency_and_sizes() -> Result<(), std::fmt::Error> {
        let m = Arc::new(Metrics::new(&["a".to_owned()]));
        let a = ModelSlot::of_index(0);
        m.request(
            Front::Grpc,
            Route::Predict,
            "ok",
            a,
            Duration::from_micros(800),
        );
        m.request(
            Front::Grpc,
            Route::Predict,
            "ok",
            a,
            Duration::from_millis(30),
        );
        m.request(
            Front::Rest,
            Route::Feedback,
            "ok",
            ModelSlot::NONE,
            Duration::from_micros(100),
        );
        m.batch_entities(3);
        let text = page(&m)?;
        assert!(
            text.contains(
                "mlgw_request_seconds_bucket{front=\"grpc\",api=\"predict\",model=\"a\",le=\"0.001\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains(
            "mlgw_request_seconds_count{front=\"grpc\",api=\"predict\",model=\"a\"} 2\n"
        ));
        assert!(text.contains(
            "mlgw_request_seconds_sum{front=\"rest\",api=\"feedback\",model=\"-\"} 0.0001"
        ));
        assert!(!text.contains("api=\"push\""), "{text}");
        assert!(text.contains("mlgw_predict_batch_entities_bucket{le=\"2\"} 0\n"));
        assert!(text.contains("mlgw_predict_batch_entities_bucket{le=\"4\"} 1\n"));
        assert!(text.contains("mlgw_predict_batch_entities_sum 3"));
        Ok(())
    }

    #[test]
    fn refresh_jobs_read_or_not() -> Result<(), std::fmt::Error> {
        let mut registry = Registry::default();
        let jobs = Sampled::<RefreshJobs>::new();
        registry.register_collector(Box::new(JobsOnly(jobs.clone())));
        assert_eq!(telemetry::prom::encode(&registry)?, "");
        jobs.set(RefreshJobs(None));
        let text = telemetry::prom::encode(&registry)?;
        assert!(text.contains("mlgw_refresh_jobs_read 0\n"), "{text}");
        assert!(!text.contains("mlgw_refresh_interval_seconds"), "{text}");
        Ok(())
    }

    #[derive(Debug)]
    struct JobsOnly(Sampled<RefreshJobs>);

    impl Collector for JobsOnly {
        fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
            match self.0.0.load_full() {
                Some(jobs) => encode_jobs(&mut encoder, jobs.0.as_deref()),
                None => Ok(()),
            }
        }
    }
}
