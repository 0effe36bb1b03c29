//! The model-server's Prometheus page (`GET /metrics` on the REST port):
//! request latency per model and front, queue wait, batch sizes, inference
//! time, queue-full refusals and requests in flight. Label sets are the
//! served models (fixed at start) × the two fronts, so cardinality is bounded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use telemetry::prom::{self, Histogram, LATENCY_BUCKETS, SIZE_BUCKETS};

/// A histogram family of every model: name, help, which histogram.
type Family = (&'static str, &'static str, fn(&ModelMetrics) -> &Histogram);

/// A counter of every model: name, help, which counter.
type Counter = (&'static str, &'static str, fn(&ModelMetrics) -> &AtomicU64);

/// The fronts, in label order.
pub const FRONTS: [&str; 2] = ["grpc", "rest"];

/// The counters of one served model.
#[derive(Debug)]
pub struct ModelMetrics {
    /// Inference requests by front (index in [`FRONTS`]), whole handler time.
    latency: [Histogram; 2],
    /// Failed inference requests by front.
    errors: [AtomicU64; 2],
    /// Time from queueing to being taken into a batch.
    pub(crate) queue_wait: Histogram,
    /// Rows per run.
    pub(crate) batch_rows: Histogram,
    /// Time of one run (the whole batch).
    pub(crate) inference: Histogram,
    /// Requests refused because the queue was full.
    pub(crate) queue_full: AtomicU64,
    /// Requests run on the thread that decoded them (idle version, short run).
    pub(crate) inline_runs: AtomicU64,
}

impl ModelMetrics {
    fn new() -> Self {
        ModelMetrics {
            latency: [
                Histogram::new(LATENCY_BUCKETS),
                Histogram::new(LATENCY_BUCKETS),
            ],
            errors: [AtomicU64::new(0), AtomicU64::new(0)],
            queue_wait: Histogram::new(LATENCY_BUCKETS),
            batch_rows: Histogram::new(SIZE_BUCKETS),
            inference: Histogram::new(LATENCY_BUCKETS),
            queue_full: AtomicU64::new(0),
            inline_runs: AtomicU64::new(0),
        }
    }
}

/// Every model's counters and the in-flight gauge; shared by both fronts.
#[derive(Debug)]
pub struct Metrics {
    models: BTreeMap<String, Arc<ModelMetrics>>,
    in_flight: AtomicI64,
    /// Inference requests naming a model that is not served, by front.
    unknown_model: [AtomicU64; 2],
}

/// Decrements the in-flight gauge when the request ends (even on cancel).
pub struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Counters for the served `models`.
    pub fn new<'a>(models: impl IntoIterator<Item = &'a str>) -> Self {
        Metrics {
            models: models
                .into_iter()
                .map(|m| (m.to_owned(), Arc::new(ModelMetrics::new())))
                .collect(),
            in_flight: AtomicI64::new(0),
            unknown_model: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// The counters of `model`, if it is served.
    pub fn model(&self, model: &str) -> Option<&Arc<ModelMetrics>> {
        self.models.get(model)
    }

    /// Counts a request in flight until the guard drops.
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Records one finished inference request on `front` (0 gRPC, 1 REST).
    pub fn finished(&self, front: usize, model: &str, elapsed: Duration, ok: bool) {
        let front = front.min(1);
        match self.models.get(model) {
            Some(m) => {
                m.latency[front].observe_duration(elapsed);
                if !ok {
                    m.errors[front].fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                self.unknown_model[front].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        let models: Vec<(String, &ModelMetrics)> = self
            .models
            .iter()
            .map(|(name, m)| (prom::label(name), m.as_ref()))
            .collect();
        prom::header(
            &mut out,
            "mlgw_model_server_request_seconds",
            "histogram",
            "Inference requests by model and front, decode to encode (failed ones included).",
        );
        for (name, m) in &models {
            for (i, front) in FRONTS.iter().enumerate() {
                m.latency[i].render(
                    &mut out,
                    "mlgw_model_server_request_seconds",
                    &format!("model=\"{name}\",front=\"{front}\""),
                );
            }
        }
        prom::header(
            &mut out,
            "mlgw_model_server_request_errors_total",
            "counter",
            "Inference requests that failed, by model and front (model=\"\": a model not served).",
        );
        for (name, m) in &models {
            for (i, front) in FRONTS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "mlgw_model_server_request_errors_total{{model=\"{name}\",front=\"{front}\"}} {}",
                    m.errors[i].load(Ordering::Relaxed)
                );
            }
        }
        for (i, front) in FRONTS.iter().enumerate() {
            let _ = writeln!(
                out,
                "mlgw_model_server_request_errors_total{{model=\"\",front=\"{front}\"}} {}",
                self.unknown_model[i].load(Ordering::Relaxed)
            );
        }
        let families: [Family; 3] = [
            (
                "mlgw_model_server_queue_wait_seconds",
                "Time a request waited in its model's queue before its batch ran.",
                |m| &m.queue_wait,
            ),
            (
                "mlgw_model_server_batch_rows",
                "Rows per inference run (dynamic batching joins requests).",
                |m| &m.batch_rows,
            ),
            (
                "mlgw_model_server_inference_seconds",
                "Time of one inference run (a whole batch).",
                |m| &m.inference,
            ),
        ];
        for (family, help, get) in families {
            prom::header(&mut out, family, "histogram", help);
            for (name, m) in &models {
                get(m).render(&mut out, family, &format!("model=\"{name}\""));
            }
        }
        let counters: [Counter; 2] = [
            (
                "mlgw_model_server_queue_full_total",
                "Requests refused at once (429 / RESOURCE_EXHAUSTED) because the model's queue was full.",
                |m| &m.queue_full,
            ),
            (
                "mlgw_model_server_inline_runs_total",
                "Requests run at once on the thread that decoded them (the version idle, the run expected under inline_max_us) instead of on an inference thread.",
                |m| &m.inline_runs,
            ),
        ];
        for (family, help, get) in counters {
            prom::header(&mut out, family, "counter", help);
            for (name, m) in &models {
                let _ = writeln!(
                    out,
                    "{family}{{model=\"{name}\"}} {}",
                    get(m).load(Ordering::Relaxed)
                );
            }
        }
        prom::header(
            &mut out,
            "mlgw_model_server_requests_in_flight",
            "gauge",
            "Inference requests being served now.",
        );
        let _ = writeln!(
            out,
            "mlgw_model_server_requests_in_flight {}",
            self.in_flight.load(Ordering::Relaxed).max(0)
        );
        if let Some(stages) = telemetry::stages::global() {
            stages.render(
                &mut out,
                "mlgw_model_server_stage_seconds",
                "Wall time of each inference stage (the span of that name).",
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_served_models_get_labels() {
        let m = Metrics::new(["fraud"]);
        m.finished(0, "fraud", Duration::from_millis(2), true);
        m.finished(1, "nope", Duration::from_millis(2), false);
        {
            let _g = m.start();
            assert!(
                m.render()
                    .contains("mlgw_model_server_requests_in_flight 1\n")
            );
        }
        let text = m.render();
        assert!(text.contains(
            "mlgw_model_server_request_seconds_count{model=\"fraud\",front=\"grpc\"} 1\n"
        ));
        assert!(
            text.contains("mlgw_model_server_request_errors_total{model=\"\",front=\"rest\"} 1\n")
        );
        assert!(!text.contains("nope"));
        assert!(text.contains("mlgw_model_server_requests_in_flight 0\n"));
    }
}
