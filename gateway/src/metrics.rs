//! The gateway's own counters and their Prometheus text: requests by front,
//! route and code with their latency by front, API and model (recorded once
//! per request by the fronts' tower stack), prediction latencies, batch
//! sizes, auth refusals, config reloads; and the text of the feature store's
//! stats the gateway reads (cache, store errors, event reads, refresh jobs).
//! Other components render their own stats; the `/metrics` route gathers them.

use std::cell::Cell;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use feature_store::reader::{CacheStats, EventStats, StoreErrorKind, StoreErrorStats, StoreOp};
use feature_store::schedule::jobs::JobOverview;
use telemetry::prom::{Histogram, LATENCY_BUCKETS, SIZE_BUCKETS, header, label};

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
    /// Dynamic feature values or events.
    Push,
    /// Ground truth for a prediction.
    Feedback,
    /// The routing and tuner admin APIs.
    Admin,
    /// Anything else (unknown paths).
    Other,
}

impl Route {
    const ALL: [Route; 6] = [
        Route::Predict,
        Route::PredictBatch,
        Route::Push,
        Route::Feedback,
        Route::Admin,
        Route::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Predict => "predict",
            Route::PredictBatch => "predict_batch",
            Route::Push => "push",
            Route::Feedback => "feedback",
            Route::Admin => "admin",
            Route::Other => "other",
        }
    }
}

/// Every result code a request can end with: `ok` and the error table's
/// codes, so each counter is an atomic found by index.
pub const CODES: [&str; 19] = [
    "ok",
    "invalid_argument",
    "unknown_model",
    "unknown_view",
    "unknown_job",
    "unknown_version",
    "prediction_not_found",
    "feature_store_unavailable",
    "feature_store_error",
    "model_unavailable",
    "model_failed",
    "deadline_exceeded",
    "overloaded",
    "auth_unavailable",
    "invalid_token",
    "permission_denied",
    "routing_refused",
    "routing_conflict",
    "routing_damaged",
];

/// Which model a request was about, as an index into the models the
/// [`Metrics`] were built for (0: none, `-`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelSlot(u16);

impl ModelSlot {
    /// No model (`-`).
    pub const NONE: ModelSlot = ModelSlot(0);

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
    auth_failures: Mutex<Vec<((&'static str, &'static str), u64)>>,
    /// (front, api) → authenticated callers denied by the policy.
    auth_denied: Mutex<Vec<((&'static str, &'static str), u64)>>,
    /// ("config", result) → config file reloads.
    config_reloads: Mutex<Vec<((&'static str, &'static str), u64)>>,
    predict_latency: Histogram,
    model_latency: Histogram,
    /// Total − model-server time of a prediction.
    overhead: Histogram,
    /// Entities per predict-batch call.
    batch_entities: Histogram,
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
        Metrics {
            requests: (0..series * CODES.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            request_latency: (0..series * models.len())
                .map(|_| Histogram::new(LATENCY_BUCKETS))
                .collect(),
            models,
            auth_failures: Mutex::default(),
            auth_denied: Mutex::default(),
            config_reloads: Mutex::default(),
            predict_latency: Histogram::new(LATENCY_BUCKETS),
            model_latency: Histogram::new(LATENCY_BUCKETS),
            overhead: Histogram::new(LATENCY_BUCKETS),
            batch_entities: Histogram::new(SIZE_BUCKETS),
        }
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
        bump(&self.auth_failures, (front.as_str(), reason));
    }

    /// Counts a caller the policy denied, by front and API.
    pub fn auth_denied(&self, front: Front, api: &'static str) {
        bump(&self.auth_denied, (front.as_str(), api));
    }

    /// Counts a config file reload by result (`applied`, `invalid`, `failed`).
    pub fn config_reload(&self, result: &'static str) {
        bump(&self.config_reloads, ("config", result));
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

    /// Appends the auth refusals and the config reloads.
    fn render_auth_and_reloads(&self, out: &mut String) {
        let families = [
            (
                "mlgw_auth_failures_total",
                "Requests refused for a missing or invalid token, by front and reason.",
                &self.auth_failures,
                ["front", "reason"],
            ),
            (
                "mlgw_auth_denied_total",
                "Authenticated callers refused by the access policy, by front and API.",
                &self.auth_denied,
                ["front", "api"],
            ),
        ];
        for (name, help, counters, [l1, l2]) in families {
            header(out, name, "counter", help);
            if let Ok(r) = counters.lock() {
                for ((a, b), n) in r.iter() {
                    let _ = writeln!(out, "{name}{{{l1}=\"{a}\",{l2}=\"{b}\"}} {n}");
                }
            }
        }
        header(
            out,
            "mlgw_config_reloads_total",
            "counter",
            "Config file edits seen while running, by result.",
        );
        if let Ok(r) = self.config_reloads.lock() {
            for ((_, result), n) in r.iter() {
                let _ = writeln!(out, "mlgw_config_reloads_total{{result=\"{result}\"}} {n}");
            }
        }
    }

    /// Writes the counters of the raw-event reads behind windowed aggregates.
    pub fn render_event_reads(&self, out: &mut String, stats: &EventStats) {
        for (name, help, v) in [
            (
                "mlgw_feature_event_reads_total",
                "Range reads of an entity's raw events for windowed aggregates.",
                stats.reads,
            ),
            (
                "mlgw_feature_events_read_total",
                "Raw events returned by those reads.",
                stats.events,
            ),
            (
                "mlgw_feature_event_reads_capped_total",
                "Event reads that hit max_events_per_read (the oldest events in the window were left out).",
                stats.capped_reads,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
    }

    /// Writes the feature store's failed calls by op and kind.
    pub fn render_store_errors(&self, out: &mut String, stats: &StoreErrorStats) {
        let _ = writeln!(
            out,
            "# HELP mlgw_feature_store_errors_total Failed feature store calls by op (read, write, batch_watch) and kind (timeout, unavailable, error).\n# TYPE mlgw_feature_store_errors_total counter"
        );
        for op in StoreOp::ALL {
            for kind in StoreErrorKind::ALL {
                let _ = writeln!(
                    out,
                    "mlgw_feature_store_errors_total{{op=\"{}\",kind=\"{}\"}} {}",
                    op.as_str(),
                    kind.as_str(),
                    stats.get(op, kind)
                );
            }
        }
    }

    /// Writes each refresh job's interval in force and its state, read from
    /// the store for this scrape (`None`: the read failed or timed out).
    pub fn render_refresh_jobs(&self, out: &mut String, jobs: Option<&[JobOverview]>) {
        let _ = writeln!(
            out,
            "# HELP mlgw_refresh_jobs_read Whether this scrape could read the refresh jobs' state from the store (1) or not (0: the job series are missing).\n# TYPE mlgw_refresh_jobs_read gauge\nmlgw_refresh_jobs_read {}",
            u8::from(jobs.is_some())
        );
        let Some(jobs) = jobs else {
            return;
        };
        let families: [(&str, &str, &str); 6] = [
            (
                "mlgw_refresh_interval_seconds",
                "gauge",
                "Interval in force for each refresh job (pinned, tuned or declared).",
            ),
            (
                "mlgw_refresh_last_good_interval_seconds",
                "gauge",
                "Longest interval the tuner has proven good (tuned jobs).",
            ),
            (
                "mlgw_refresh_pinned",
                "gauge",
                "1 while a person's pin holds the job's interval.",
            ),
            (
                "mlgw_refresh_last_batch_finished_timestamp_seconds",
                "gauge",
                "When the view's newest batch finished, done or failed (Unix time).",
            ),
            (
                "mlgw_refresh_last_batch_failed",
                "gauge",
                "1 if the view's newest batch failed (the previous done batch is still served).",
            ),
            (
                "mlgw_refresh_next_run_timestamp_seconds",
                "gauge",
                "When the job's next run is due (Unix time).",
            ),
        ];
        let unix = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0)
        };
        for (i, (name, kind, help)) in families.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for j in jobs {
                let value = match i {
                    0 => Some(j.interval.as_secs_f64()),
                    1 => j.last_good.map(|d| d.as_secs_f64()),
                    2 => Some(f64::from(u8::from(j.pin.is_some()))),
                    3 => j.last_batch.as_ref().and_then(|b| b.finished_at).map(unix),
                    4 => j.last_batch.as_ref().map(|b| {
                        f64::from(u8::from(
                            b.status == feature_store::store::BatchStatus::Failed,
                        ))
                    }),
                    _ => j.next_run.map(unix),
                };
                if let Some(v) = value {
                    let _ = writeln!(
                        out,
                        "{name}{{job=\"{}\",view=\"{}\"}} {v}",
                        label(&j.job),
                        label(&j.view)
                    );
                }
            }
        }
    }

    /// Appends the gateway's own counters, the admission gauges
    /// (`in_flight` of `limit`) and the feature cache's `cache` stats.
    pub fn render(&self, out: &mut String, cache: &CacheStats, in_flight: usize, limit: usize) {
        header(
            out,
            "mlgw_requests_total",
            "counter",
            "Finished requests by front, route and result code.",
        );
        for front in Front::ALL {
            for route in Route::ALL {
                let series = Self::series(front, route);
                for (c, code) in CODES.iter().enumerate() {
                    let n = self.requests[series * CODES.len() + c].load(Ordering::Relaxed);
                    if n > 0 {
                        let _ = writeln!(
                            out,
                            "mlgw_requests_total{{front=\"{}\",route=\"{}\",code=\"{code}\"}} {n}",
                            front.as_str(),
                            route.as_str()
                        );
                    }
                }
            }
        }
        for (name, help, h) in [
            (
                "mlgw_predict_seconds",
                "Time to answer a successful prediction, end to end.",
                &self.predict_latency,
            ),
            (
                "mlgw_model_call_seconds",
                "Time spent in the model-server call of a successful prediction.",
                &self.model_latency,
            ),
            (
                "mlgw_gateway_overhead_seconds",
                "The gateway's own time in a successful prediction: total minus the model-server call.",
                &self.overhead,
            ),
        ] {
            header(out, name, "histogram", help);
            h.render(out, name, "");
        }
        header(
            out,
            "mlgw_request_seconds",
            "histogram",
            "Time to answer a request by front, API and model (- for APIs not about one model), whatever the result.",
        );
        for front in Front::ALL {
            for route in Route::ALL {
                let series = Self::series(front, route);
                for (m, model) in self.models.iter().enumerate() {
                    let h = &self.request_latency[series * self.models.len() + m];
                    if h.count() > 0 {
                        h.render(
                            out,
                            "mlgw_request_seconds",
                            &format!(
                                "front=\"{}\",api=\"{}\",model=\"{}\"",
                                front.as_str(),
                                route.as_str(),
                                label(model)
                            ),
                        );
                    }
                }
            }
        }
        header(
            out,
            "mlgw_predict_batch_entities",
            "histogram",
            "Entities per predict-batch call.",
        );
        self.batch_entities
            .render(out, "mlgw_predict_batch_entities", "");
        let gauges = [
            (
                "mlgw_requests_in_flight",
                "Requests being served now.",
                in_flight as u64,
            ),
            (
                "mlgw_requests_limit",
                "Requests served at once before shedding.",
                limit as u64,
            ),
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
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let counters = [
            (
                "mlgw_feature_cache_hits_total",
                "Feature reads answered from the cache.",
                cache.hits,
            ),
            (
                "mlgw_feature_cache_misses_total",
                "Feature reads that missed the cache.",
                cache.misses,
            ),
            (
                "mlgw_feature_cache_loads_total",
                "Store reads made to fill the cache.",
                cache.loads,
            ),
            (
                "mlgw_feature_cache_load_errors_total",
                "Cache loads that failed.",
                cache.load_errors,
            ),
            (
                "mlgw_feature_cache_evictions_total",
                "Rows evicted to respect the byte bound.",
                cache.evicted_size,
            ),
            (
                "mlgw_feature_cache_expirations_total",
                "Rows dropped at the end of their TTL.",
                cache.expired,
            ),
            (
                "mlgw_feature_cache_invalidations_total",
                "Refresh batch switches that invalidated a view.",
                cache.invalidations,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        // hits / (hits + misses) since start.
        let looked = cache.hits + cache.misses;
        let ratio = if looked == 0 {
            0.0
        } else {
            cache.hits as f64 / looked as f64
        };
        let _ = writeln!(
            out,
            "# HELP mlgw_feature_cache_hit_ratio Share of cached feature reads answered from the cache since start.\n# TYPE mlgw_feature_cache_hit_ratio gauge\nmlgw_feature_cache_hit_ratio {ratio}"
        );
        let secs = cache.load_nanos as f64 / 1e9;
        let _ = writeln!(
            out,
            "# HELP mlgw_feature_cache_load_seconds_total Time spent in cache loads.\n# TYPE mlgw_feature_cache_load_seconds_total counter\nmlgw_feature_cache_load_seconds_total {secs}"
        );
        self.render_auth_and_reloads(out);
    }
}

fn bump(
    counters: &Mutex<Vec<((&'static str, &'static str), u64)>>,
    key: (&'static str, &'static str),
) {
    if let Ok(mut r) = counters.lock() {
        match r.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => r.push((key, 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_requests_latency_and_cache() {
        let m = Metrics::new(&["a".to_owned()]);
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
        let mut text = String::new();
        m.render(
            &mut text,
            &CacheStats {
                hits: 7,
                ..CacheStats::default()
            },
            1,
            256,
        );
        assert!(
            text.contains("mlgw_requests_total{front=\"rest\",route=\"predict\",code=\"ok\"} 2")
        );
        assert!(text.contains("mlgw_predict_seconds_bucket{le=\"0.002\"} 1"));
        assert!(text.contains("mlgw_predict_seconds_bucket{le=\"0.001\"} 0"));
        assert!(text.contains("mlgw_model_call_seconds_count 1"));
        assert!(text.contains("mlgw_feature_cache_hits_total 7"));
        assert!(text.contains("mlgw_requests_limit 256"));
    }

    #[test]
    fn labelled_latency_sizes_and_store_errors() {
        let m = Metrics::new(&["a".to_owned()]);
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
        let mut text = String::new();
        m.render(&mut text, &CacheStats::default(), 0, 8);
        assert!(
            text.contains(
                "mlgw_request_seconds_bucket{front=\"grpc\",api=\"predict\",model=\"a\",le=\"0.001\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "mlgw_request_seconds_count{front=\"grpc\",api=\"predict\",model=\"a\"} 2"
            )
        );
        assert!(text.contains(
            "mlgw_request_seconds_sum{front=\"rest\",api=\"feedback\",model=\"-\"} 0.0001"
        ));
        assert!(text.contains("mlgw_predict_batch_entities_bucket{le=\"2\"} 0"));
        assert!(text.contains("mlgw_predict_batch_entities_bucket{le=\"4\"} 1"));
        assert!(text.contains("mlgw_predict_batch_entities_sum 3"));
        m.render_store_errors(&mut text, &StoreErrorStats::default());
        assert!(text.contains(
            "mlgw_feature_store_errors_total{op=\"batch_watch\",kind=\"unavailable\"} 0"
        ));
        m.render_refresh_jobs(&mut text, None);
        assert!(text.contains("mlgw_refresh_jobs_read 0"));
        // Every family is declared once.
        let mut types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let n = types.len();
        types.sort_unstable();
        types.dedup();
        assert_eq!(types.len(), n, "a family declared twice: {text}");
    }
}
