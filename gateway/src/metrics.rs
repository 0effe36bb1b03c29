//! Request metrics and the Prometheus text exposition served at `/metrics`:
//! requests by front, route and code, latency (prediction total and
//! model-server time, every request by front, API and model), batch sizes,
//! the feature cache's counters, store errors, the model clients' circuit
//! breakers and call counts, and the refresh jobs intervals.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::core::ClientStatus;
use feature_store::reader::{CacheStats, EventStats, StoreErrorKind, StoreErrorStats, StoreOp};
use feature_store::schedule::jobs::JobOverview;
use telemetry::prom::{Histogram, LATENCY_BUCKETS, SIZE_BUCKETS, header, label};

/// (front, api, model): one request latency series.
type LatencyKey = (&'static str, &'static str, String);

/// (front, route, result code).
type RequestKey = (&'static str, &'static str, &'static str);

/// The gateway's counters, shared by both fronts.
#[derive(Debug)]
pub struct Metrics {
    /// (front, route, code) → count. Few distinct keys; a lock is fine off
    /// the per-request hot path's critical section (one increment).
    requests: Mutex<Vec<(RequestKey, u64)>>,
    /// (front, reason) → refused authentications.
    auth_failures: Mutex<Vec<((&'static str, &'static str), u64)>>,
    /// (front, api) → authenticated callers denied by the policy.
    auth_denied: Mutex<Vec<((&'static str, &'static str), u64)>>,
    /// ("config", result) → config file reloads.
    config_reloads: Mutex<Vec<((&'static str, &'static str), u64)>>,
    predict_latency: Histogram,
    model_latency: Histogram,
    /// telemetry (issue 9): total − model-server time of a prediction.
    overhead: Histogram,
    /// (front, api, model) → time to answer, whatever the result. Few keys;
    /// the lock is held only to find the series.
    request_latency: Mutex<Vec<(LatencyKey, Arc<Histogram>)>>,
    /// Entities per predict-batch call.
    batch_entities: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::default(),
            auth_failures: Mutex::default(),
            auth_denied: Mutex::default(),
            config_reloads: Mutex::default(),
            predict_latency: Histogram::new(LATENCY_BUCKETS),
            model_latency: Histogram::new(LATENCY_BUCKETS),
            overhead: Histogram::new(LATENCY_BUCKETS),
            request_latency: Mutex::default(),
            batch_entities: Histogram::new(SIZE_BUCKETS),
        }
    }
}

impl Metrics {
    /// Counts one finished request.
    pub fn request(&self, front: &'static str, route: &'static str, code: &'static str) {
        if let Ok(mut r) = self.requests.lock() {
            let key = (front, route, code);
            match r.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => r.push((key, 1)),
            }
        }
    }

    /// Counts a refused authentication by front and reason.
    pub fn auth_failure(&self, front: &'static str, reason: &'static str) {
        bump(&self.auth_failures, (front, reason));
    }

    /// Counts a caller the policy denied, by front and API.
    pub fn auth_denied(&self, front: &'static str, api: &'static str) {
        bump(&self.auth_denied, (front, api));
    }

    /// Counts a config file reload by result (`applied`, `invalid`, `failed`).
    pub fn config_reload(&self, result: &'static str) {
        bump(&self.config_reloads, ("config", result));
    }

    /// Appends the routing per model, the shadow pool's counts and the
    /// config reloads.
    pub fn render_rollout<S: feature_store::store::FullStore>(
        &self,
        out: &mut String,
        routing: &crate::rollout::live::LiveRouting<S>,
        shadows: &crate::rollout::shadow::ShadowPool,
    ) {
        let _ = writeln!(
            out,
            "# HELP mlgw_routing_revision Revision of the routing each model serves.\n# TYPE mlgw_routing_revision gauge"
        );
        let mut models: Vec<&str> = routing.models().collect();
        models.sort_unstable();
        let mut shares = String::new();
        for m in models {
            if let Some(served) = routing.current(m) {
                let _ = writeln!(
                    out,
                    "mlgw_routing_revision{{model=\"{m}\"}} {}",
                    served.revision
                );
                for (version, role) in served.table.roles() {
                    let share = match role {
                        "stable" => {
                            let canary = served.table.canary.as_ref().map_or(0, |c| c.basis_points);
                            f64::from(crate::rollout::BUCKETS - canary) / 100.0
                        }
                        "canary" => served
                            .table
                            .canary
                            .as_ref()
                            .map_or(0.0, |c| f64::from(c.basis_points) / 100.0),
                        _ => 0.0,
                    };
                    let _ = writeln!(
                        shares,
                        "mlgw_routing_share_percent{{model=\"{m}\",version=\"{version}\",role=\"{role}\"}} {share}"
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP mlgw_routing_share_percent Share of callers each version gets by the sticky split (pilots and shadows: 0).\n# TYPE mlgw_routing_share_percent gauge"
        );
        out.push_str(&shares);
        let _ = writeln!(
            out,
            "# HELP mlgw_shadow_calls_total Shadow copies by model, version and result (dropped: the shadow pool was full).\n# TYPE mlgw_shadow_calls_total counter"
        );
        for ((m, v), c) in shadows.counts() {
            for (result, n) in [("ok", c.ok), ("failed", c.failed), ("dropped", c.dropped)] {
                let _ = writeln!(
                    out,
                    "mlgw_shadow_calls_total{{model=\"{m}\",version=\"{v}\",result=\"{result}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP mlgw_shadow_in_flight Shadow calls running now.\n# TYPE mlgw_shadow_in_flight gauge\nmlgw_shadow_in_flight {}",
            shadows.in_flight()
        );
        let _ = writeln!(
            out,
            "# HELP mlgw_config_reloads_total Config file edits seen while running, by result.\n# TYPE mlgw_config_reloads_total counter"
        );
        if let Ok(r) = self.config_reloads.lock() {
            for ((_, result), n) in r.iter() {
                let _ = writeln!(out, "mlgw_config_reloads_total{{result=\"{result}\"}} {n}");
            }
        }
    }

    /// Appends the auth counters and the signing-key state.
    pub fn render_auth(&self, out: &mut String, keys: &crate::auth::keys::KeyStats) {
        let _ = writeln!(
            out,
            "# HELP mlgw_auth_failures_total Requests refused for a missing or invalid token, by front and reason.\n# TYPE mlgw_auth_failures_total counter"
        );
        if let Ok(r) = self.auth_failures.lock() {
            for ((front, reason), n) in r.iter() {
                let _ = writeln!(
                    out,
                    "mlgw_auth_failures_total{{front=\"{front}\",reason=\"{reason}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP mlgw_auth_denied_total Authenticated callers refused by the access policy, by front and API.\n# TYPE mlgw_auth_denied_total counter"
        );
        if let Ok(r) = self.auth_denied.lock() {
            for ((front, api), n) in r.iter() {
                let _ = writeln!(
                    out,
                    "mlgw_auth_denied_total{{front=\"{front}\",api=\"{api}\"}} {n}"
                );
            }
        }
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP mlgw_auth_signing_keys Signing keys of the issuer in use.\n# TYPE mlgw_auth_signing_keys gauge\nmlgw_auth_signing_keys {}",
            load(&keys.keys)
        );
        let _ = writeln!(
            out,
            "# HELP mlgw_auth_key_fetches_total Discovery + JWKS fetches by result.\n# TYPE mlgw_auth_key_fetches_total counter\nmlgw_auth_key_fetches_total{{result=\"ok\"}} {}\nmlgw_auth_key_fetches_total{{result=\"error\"}} {}",
            load(&keys.fetches_ok),
            load(&keys.fetches_failed)
        );
        let _ = writeln!(
            out,
            "# HELP mlgw_auth_keys_fetched_timestamp_seconds When the signing keys were last fetched (0: never).\n# TYPE mlgw_auth_keys_fetched_timestamp_seconds gauge\nmlgw_auth_keys_fetched_timestamp_seconds {}",
            load(&keys.last_ok_unix)
        );
    }

    /// Times one finished request of `api` for `model` (`-` when the API is
    /// not about one model), successful or not.
    pub fn request_latency(
        &self,
        front: &'static str,
        api: &'static str,
        model: &str,
        elapsed: Duration,
    ) {
        let series = {
            let Ok(mut all) = self.request_latency.lock() else {
                return;
            };
            match all
                .iter()
                .find(|((f, a, m), _)| *f == front && *a == api && m == model)
            {
                Some((_, h)) => Arc::clone(h),
                None => {
                    // Bounded by the configured models: unknown ones are
                    // refused before a prediction is timed under their name.
                    let h = Arc::new(Histogram::new(LATENCY_BUCKETS));
                    all.push(((front, api, model.to_owned()), Arc::clone(&h)));
                    h
                }
            }
        };
        series.observe_duration(elapsed);
    }

    /// Counts the entities of one predict-batch call.
    pub fn batch_entities(&self, n: usize) {
        self.batch_entities.observe(n as f64);
    }

    /// Writes each model-server client's circuit breaker and call counts, as
    /// [`crate::core::Gateway::model_clients`] lists them.
    pub fn render_model_clients(&self, out: &mut String, clients: &[ClientStatus<'_>]) {
        type Value = fn(&ClientStatus<'_>) -> u64;
        let families: [(&str, &str, &str, Value); 5] = [
            (
                "mlgw_model_circuit_state",
                "gauge",
                "Circuit breaker of each model-server client: 0 closed, 1 open (calls fail at once), 2 half-open (one probe out).",
                |c| u64::from(c.state.gauge()),
            ),
            (
                "mlgw_model_circuit_opens_total",
                "counter",
                "Times each circuit breaker opened after consecutive failures.",
                |c| c.opens,
            ),
            (
                "mlgw_model_calls_total",
                "counter",
                "ModelInfer calls sent by each model-server client.",
                |c| c.calls,
            ),
            (
                "mlgw_model_call_rows_total",
                "counter",
                "Rows those calls carried; more than calls when predictions were sent together ([model.coalesce]).",
                |c| c.rows,
            ),
            (
                "mlgw_model_coalesced_calls_refused_total",
                "counter",
                "Calls of several predictions the model-server refused (INVALID_ARGUMENT, most likely [model.coalesce] max_rows above the model's max batch size); their rows were sent again alone and the row limit halved.",
                |c| c.refused_batches,
            ),
        ];
        for (name, kind, help, value) in families {
            header(out, name, kind, help);
            for c in clients {
                let _ = writeln!(
                    out,
                    "{name}{{pool=\"{}\",endpoint=\"{}\"}} {}",
                    c.pool,
                    label(c.endpoint),
                    value(c)
                );
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

    /// Records a successful prediction's total and model-server time.
    pub fn prediction(&self, total: Duration, model: Duration) {
        self.predict_latency.observe_duration(total);
        self.model_latency.observe_duration(model);
        self.overhead.observe_duration(total.saturating_sub(model));
    }

    /// The Prometheus text exposition.
    pub fn render(&self, cache: &CacheStats, in_flight: usize, limit: usize) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP mlgw_requests_total Finished requests by front, route and result code.\n# TYPE mlgw_requests_total counter"
        );
        if let Ok(r) = self.requests.lock() {
            for ((front, route, code), n) in r.iter() {
                let _ = writeln!(
                    out,
                    "mlgw_requests_total{{front=\"{front}\",route=\"{route}\",code=\"{code}\"}} {n}"
                );
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
            header(&mut out, name, "histogram", help);
            h.render(&mut out, name, "");
        }
        header(
            &mut out,
            "mlgw_request_seconds",
            "histogram",
            "Time to answer a request by front, API and model (- for APIs not about one model), whatever the result.",
        );
        if let Ok(all) = self.request_latency.lock() {
            for ((front, api, model), h) in all.iter() {
                h.render(
                    &mut out,
                    "mlgw_request_seconds",
                    &format!("front=\"{front}\",api=\"{api}\",model=\"{}\"", label(model)),
                );
            }
        }
        header(
            &mut out,
            "mlgw_predict_batch_entities",
            "histogram",
            "Entities per predict-batch call.",
        );
        self.batch_entities
            .render(&mut out, "mlgw_predict_batch_entities", "");
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
        // telemetry (issue 9): hits / (hits + misses) since start.
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
        out
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
    use crate::infer::CircuitState;

    #[test]
    fn exposition_has_requests_latency_and_cache() {
        let m = Metrics::default();
        m.request("rest", "predict", "ok");
        m.request("rest", "predict", "ok");
        m.request("grpc", "predict", "invalid_argument");
        m.prediction(Duration::from_micros(1500), Duration::from_micros(400));
        let text = m.render(
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
    fn labelled_latency_sizes_circuits_and_store_errors() {
        let m = Metrics::default();
        m.request_latency("grpc", "predict", "a", Duration::from_micros(800));
        m.request_latency("grpc", "predict", "a", Duration::from_millis(30));
        m.request_latency("rest", "feedback", "-", Duration::from_micros(100));
        m.batch_entities(3);
        let mut text = m.render(&CacheStats::default(), 0, 8);
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
        let client = |pool, state, opens, calls, rows| ClientStatus {
            pool,
            endpoint: "http://m:1",
            state,
            opens,
            calls,
            rows,
            refused_batches: 3,
        };
        m.render_model_clients(
            &mut text,
            &[
                client("callers", CircuitState::Open, 2, 40, 100),
                client("shadow", CircuitState::Closed, 0, 7, 7),
            ],
        );
        assert!(
            text.contains("mlgw_model_circuit_state{pool=\"callers\",endpoint=\"http://m:1\"} 1")
        );
        assert!(text.contains(
            "mlgw_model_circuit_opens_total{pool=\"callers\",endpoint=\"http://m:1\"} 2"
        ));
        assert!(
            text.contains("mlgw_model_calls_total{pool=\"callers\",endpoint=\"http://m:1\"} 40")
        );
        assert!(
            text.contains(
                "mlgw_model_call_rows_total{pool=\"callers\",endpoint=\"http://m:1\"} 100"
            )
        );
        assert!(text.contains(
            "mlgw_model_coalesced_calls_refused_total{pool=\"shadow\",endpoint=\"http://m:1\"} 3"
        ));
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
