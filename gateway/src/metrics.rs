//! Request metrics and the Prometheus text exposition served at `/metrics`:
//! requests by front, route and code, prediction latency (total and
//! model-server time), and the feature cache's counters.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use feature_store::reader::CacheStats;

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                self.counts[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// (front, route, result code).
type RequestKey = (&'static str, &'static str, &'static str);

/// The gateway's counters, shared by both fronts.
#[derive(Debug, Default)]
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
    pub fn render_rollout<S: feature_store::store::FeatureStore>(
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

    /// Records a successful prediction's total and model-server time.
    pub fn prediction(&self, total: Duration, model: Duration) {
        self.predict_latency.observe(total);
        self.model_latency.observe(model);
        self.overhead.observe(total.saturating_sub(model));
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
        self.predict_latency.render(
            &mut out,
            "mlgw_predict_seconds",
            "Time to answer a successful prediction, end to end.",
        );
        self.model_latency.render(
            &mut out,
            "mlgw_model_call_seconds",
            "Time spent in the model-server call of a successful prediction.",
        );
        self.overhead.render(
            &mut out,
            "mlgw_gateway_overhead_seconds",
            "The gateway's own time in a successful prediction: total minus the model-server call.",
        );
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
}
