//! The model-server's Prometheus page (`GET /metrics` on the REST port):
//! request latency per model and front, queue wait, batch sizes, inference
//! time, queue-full refusals and requests in flight, in a `prometheus-client`
//! registry; and per version, its load state and load failures. Request
//! label sets are the served models (fixed at start) × the two fronts, so
//! cardinality is bounded and every handle is resolved once at start: a
//! request touches atomics only. The version-state series come and go with
//! the repository's versions (set by loads, not by requests).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use telemetry::prom::{Histogram, LATENCY_BUCKETS, Registry, SIZE_BUCKETS};

/// The fronts, in label order.
pub const FRONTS: [&str; 2] = ["grpc", "rest"];

/// Labels of the per-model, per-front families.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelFront {
    model: String,
    front: &'static str,
}

/// Labels of the per-model families.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

/// Labels of the per-version state gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionStateLabel {
    model: String,
    version: String,
    state: &'static str,
}

/// The states a version can be in, as the gauge and the repository index
/// name them.
pub const VERSION_STATES: [&str; 3] = ["LOADING", "READY", "FAILED"];

/// The counters of one served model.
#[derive(Debug)]
pub struct ModelMetrics {
    /// Inference requests by front (index in [`FRONTS`]), whole handler time.
    latency: [Histogram; 2],
    /// Failed inference requests by front.
    errors: [Counter; 2],
    /// Time from queueing to being taken into a batch.
    pub(crate) queue_wait: Histogram,
    /// Rows per run.
    pub(crate) batch_rows: Histogram,
    /// Time of one run (the whole batch).
    pub(crate) inference: Histogram,
    /// Requests refused because the queue was full.
    pub(crate) queue_full: Counter,
    /// Requests run on the thread that decoded them (idle version, short run).
    pub(crate) inline_runs: Counter,
    /// Versions that failed to load or warm up.
    pub(crate) load_failures: Counter,
}

/// Every model's counters and the in-flight gauge; shared by both fronts.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    models: BTreeMap<String, Arc<ModelMetrics>>,
    in_flight: Gauge,
    /// Inference requests naming a model that is not served, by front.
    unknown_model: [Counter; 2],
    /// One series per version and state: 1 for the state it is in.
    version_state: Family<VersionStateLabel, Gauge>,
}

/// Decrements the in-flight gauge when the request ends (even on cancel).
pub struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

fn latency_family() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn size_family() -> Histogram {
    Histogram::new(SIZE_BUCKETS)
}

impl Metrics {
    /// Counters for the served `models`, registered under today's names
    /// (the registry appends `_total` to counters and a period to help).
    pub fn new<'a>(models: impl IntoIterator<Item = &'a str>) -> Self {
        let latency = Family::<ModelFront, Histogram>::new_with_constructor(latency_family);
        let errors = Family::<ModelFront, Counter>::default();
        let queue_wait = Family::<ModelLabel, Histogram>::new_with_constructor(latency_family);
        let batch_rows = Family::<ModelLabel, Histogram>::new_with_constructor(size_family);
        let inference = Family::<ModelLabel, Histogram>::new_with_constructor(latency_family);
        let queue_full = Family::<ModelLabel, Counter>::default();
        let inline_runs = Family::<ModelLabel, Counter>::default();
        let load_failures = Family::<ModelLabel, Counter>::default();
        let version_state = Family::<VersionStateLabel, Gauge>::default();
        let in_flight = Gauge::default();

        let by_front = |model: &str, i: usize| ModelFront {
            model: model.to_owned(),
            front: FRONTS[i],
        };
        let models: BTreeMap<String, Arc<ModelMetrics>> = models
            .into_iter()
            .map(|name| {
                let model = ModelLabel {
                    model: name.to_owned(),
                };
                let m = ModelMetrics {
                    latency: [0, 1].map(|i| latency.get_or_create_owned(&by_front(name, i))),
                    errors: [0, 1].map(|i| errors.get_or_create_owned(&by_front(name, i))),
                    queue_wait: queue_wait.get_or_create_owned(&model),
                    batch_rows: batch_rows.get_or_create_owned(&model),
                    inference: inference.get_or_create_owned(&model),
                    queue_full: queue_full.get_or_create_owned(&model),
                    inline_runs: inline_runs.get_or_create_owned(&model),
                    load_failures: load_failures.get_or_create_owned(&model),
                };
                (name.to_owned(), Arc::new(m))
            })
            .collect();
        let unknown_model = [0, 1].map(|i| errors.get_or_create_owned(&by_front("", i)));

        let mut registry = Registry::default();
        registry.register(
            "mlgw_model_server_request_seconds",
            "Inference requests by model and front, decode to encode (failed ones included)",
            latency,
        );
        registry.register(
            "mlgw_model_server_request_errors",
            "Inference requests that failed, by model and front (model=\"\": a model not served)",
            errors,
        );
        registry.register(
            "mlgw_model_server_queue_wait_seconds",
            "Time a request waited in its model's queue before its batch ran",
            queue_wait,
        );
        registry.register(
            "mlgw_model_server_batch_rows",
            "Rows per inference run (dynamic batching joins requests)",
            batch_rows,
        );
        registry.register(
            "mlgw_model_server_inference_seconds",
            "Time of one inference run (a whole batch)",
            inference,
        );
        registry.register(
            "mlgw_model_server_queue_full",
            "Requests refused at once (429 / RESOURCE_EXHAUSTED) because the model's queue was full",
            queue_full,
        );
        registry.register(
            "mlgw_model_server_inline_runs",
            "Requests run at once on the thread that decoded them (the version idle, the run expected under inline_max_us) instead of on an inference thread",
            inline_runs,
        );
        registry.register(
            "mlgw_model_server_version_load_failures",
            "Model versions that failed to load or warm up (each attempt counts; a failed version is retried only when its model.onnx changes)",
            load_failures,
        );
        registry.register(
            "mlgw_model_server_version_state",
            "State of each model version in the repository: 1 for the state it is in (LOADING, READY, FAILED), 0 for the others; gone once the version is removed",
            version_state.clone(),
        );
        registry.register(
            "mlgw_model_server_requests_in_flight",
            "Inference requests being served now",
            in_flight.clone(),
        );
        registry.register_collector(telemetry::stages::collector(
            "mlgw_model_server_stage_seconds",
            "Wall time of each inference stage (the span of that name).",
        ));
        Metrics {
            registry,
            models,
            in_flight,
            unknown_model,
            version_state,
        }
    }

    /// Records that `version` of `model` is now in `state` (one of
    /// [`VERSION_STATES`]), or gone from the repository (None).
    pub fn set_version_state(&self, model: &str, version: &str, state: Option<&'static str>) {
        for s in VERSION_STATES {
            let labels = VersionStateLabel {
                model: model.to_owned(),
                version: version.to_owned(),
                state: s,
            };
            match state {
                Some(now) => {
                    self.version_state
                        .get_or_create(&labels)
                        .set(i64::from(now == s));
                }
                None => {
                    self.version_state.remove(&labels);
                }
            }
        }
    }

    /// The counters of `model`, if it is served.
    pub fn model(&self, model: &str) -> Option<&Arc<ModelMetrics>> {
        self.models.get(model)
    }

    /// Counts a request in flight until the guard drops.
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(self)
    }

    /// Records one finished inference request on `front` (0 gRPC, 1 REST).
    pub fn finished(&self, front: usize, model: &str, elapsed: Duration, ok: bool) {
        let front = front.min(1);
        match self.models.get(model) {
            Some(m) => {
                m.latency[front].observe_duration(elapsed);
                if !ok {
                    m.errors[front].inc();
                }
            }
            None => {
                self.unknown_model[front].inc();
            }
        }
    }

    /// The Prometheus text exposition (format 0.0.4,
    /// [`telemetry::prom::CONTENT_TYPE`]).
    ///
    /// # Errors
    /// When a metric fails to encode itself (none of the registered ones
    /// does; the error is the formatter's).
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        telemetry::prom::encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_served_models_get_labels() -> Result<(), std::fmt::Error> {
        let m = Metrics::new(["fraud"]);
        m.finished(0, "fraud", Duration::from_millis(2), true);
        m.finished(1, "nope", Duration::from_millis(2), false);
        {
            let _g = m.start();
            assert!(
                m.render()?
                    .contains("mlgw_model_server_requests_in_flight 1\n")
            );
        }
        let text = m.render()?;
        assert!(text.contains(
            "mlgw_model_server_request_seconds_count{model=\"fraud\",front=\"grpc\"} 1\n"
        ));
        assert!(
            text.contains("mlgw_model_server_request_errors_total{model=\"\",front=\"rest\"} 1\n")
        );
        assert!(!text.contains("nope"));
        assert!(text.contains("mlgw_model_server_requests_in_flight 0\n"));
        Ok(())
    }

    #[test]
    fn version_states_follow_the_version() -> Result<(), std::fmt::Error> {
        let m = Metrics::new(["fraud"]);
        m.set_version_state("fraud", "3", Some("LOADING"));
        m.set_version_state("fraud", "3", Some("READY"));
        let text = m.render()?;
        assert!(text.contains(
            "mlgw_model_server_version_state{model=\"fraud\",version=\"3\",state=\"READY\"} 1\n"
        ));
        assert!(text.contains(
            "mlgw_model_server_version_state{model=\"fraud\",version=\"3\",state=\"LOADING\"} 0\n"
        ));
        m.set_version_state("fraud", "3", None);
        assert!(!m.render()?.contains("version=\"3\""));
        Ok(())
    }

    #[test]
    fn names_help_and_types_are_unchanged() -> Result<(), std::fmt::Error> {
        let m = Metrics::new(["fraud"]);
        // A family without series is not written at all.
        m.set_version_state("fraud", "1", Some("READY"));
        let text = m.render()?;
        for (name, kind) in [
            ("mlgw_model_server_request_seconds", "histogram"),
            ("mlgw_model_server_request_errors_total", "counter"),
            ("mlgw_model_server_queue_wait_seconds", "histogram"),
            ("mlgw_model_server_batch_rows", "histogram"),
            ("mlgw_model_server_inference_seconds", "histogram"),
            ("mlgw_model_server_queue_full_total", "counter"),
            ("mlgw_model_server_inline_runs_total", "counter"),
            ("mlgw_model_server_requests_in_flight", "gauge"),
            ("mlgw_model_server_version_load_failures_total", "counter"),
            ("mlgw_model_server_version_state", "gauge"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name}: {text}"
            );
        }
        assert!(text.contains("# HELP mlgw_model_server_queue_wait_seconds Time a request waited in its model's queue before its batch ran.\n"), "{text}");
        assert!(!text.contains(".."), "{text}");
        assert!(
            text.contains("mlgw_model_server_batch_rows_bucket{model=\"fraud\",le=\"256\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("mlgw_model_server_request_seconds_bucket{model=\"fraud\",front=\"rest\",le=\"0.00025\"} 0\n"), "{text}");
        assert!(
            text.contains("mlgw_model_server_queue_full_total{model=\"fraud\"} 0\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        Ok(())
    }
}
