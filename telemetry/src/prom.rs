//! Prometheus metrics on the `prometheus-client` crate: a lock-free
//! [`Histogram`] that a [`Registry`] (or a labelled
//! [`Family`](prometheus_client::metrics::family::Family)) encodes, the
//! bucket sets the servers share, and [`encode`], which writes a registry in
//! the Prometheus text format (0.0.4, served as [`CONTENT_TYPE`]).
//!
//! Request paths hold pre-resolved handles (a counter, a histogram) and
//! touch only atomics; the registry's families are read when `/metrics` is
//! rendered. `prometheus-client`'s own histogram takes a mutex per
//! observation, hence this one (benches/results/metrics_cost.md).
//!
//! Naming: the registry appends `_total` to a counter's name and a period to
//! its help text, so counters are registered without `_total` and help texts
//! without a final period.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
pub use prometheus_client::registry::Registry;

/// Latency buckets in seconds: 100 µs to 2.5 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5,
];

/// Size buckets (rows per batch and the like).
pub const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A histogram over fixed bucket bounds; clones share the same counts.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<Counts>);

#[derive(Debug)]
struct Counts {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative: only the first bucket that
    /// holds a value counts it).
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    /// Sum in millionths of the unit (µs for seconds): an integer add keeps
    /// observing one atomic instruction.
    sum_micros: AtomicU64,
}

/// A histogram's state at one instant, as the encoder takes it.
struct Snapshot {
    sum: f64,
    count: u64,
    /// (upper bound, observations in that bucket only).
    buckets: Vec<(f64, u64)>,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending upper bounds).
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram(Arc::new(Counts {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }))
    }

    /// Adds one observation of `value` (seconds, rows, …).
    pub fn observe(&self, value: f64) {
        let c = &self.0;
        if let Some(i) = c.bounds.iter().position(|b| value <= *b) {
            c.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        c.count.fetch_add(1, Ordering::Relaxed);
        let micros = (value.max(0.0) * 1e6).round();
        c.sum_micros.fetch_add(
            if micros >= u64::MAX as f64 {
                u64::MAX
            } else {
                micros as u64
            },
            Ordering::Relaxed,
        );
    }

    /// Adds one duration, in seconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }

    fn snapshot(&self) -> Snapshot {
        let c = &self.0;
        let buckets: Vec<(f64, u64)> = c
            .bounds
            .iter()
            .zip(c.buckets.iter())
            .map(|(b, n)| (*b, n.load(Ordering::Relaxed)))
            .collect();
        // Read after the buckets and never below them: an observation in
        // progress may have counted its bucket but not yet the total.
        let in_buckets: u64 = buckets.iter().map(|(_, n)| n).sum();
        Snapshot {
            sum: c.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            count: c.count.load(Ordering::Relaxed).max(in_buckets),
            buckets,
        }
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(s.sum, s.count, &s.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// `registry` in the Prometheus text format (version 0.0.4).
///
/// # Errors
/// When a metric or collector in the registry fails to encode itself (the
/// crate's own metrics and [`Histogram`] never do).
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(8192);
    prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::family::Family;

    use super::*;

    #[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Model {
        model: String,
    }

    #[test]
    fn the_registry_writes_cumulative_buckets_with_go_style_bounds() -> Result<(), std::fmt::Error>
    {
        let family =
            Family::<Model, Histogram>::new_with_constructor(|| Histogram::new(SIZE_BUCKETS));
        let h = family.get_or_create_owned(&Model { model: "m".into() });
        h.observe(1.0);
        h.observe(3.0);
        h.observe(1000.0);
        let mut registry = Registry::default();
        registry.register("b", "Rows", family);
        let out = encode(&registry)?;
        assert!(
            out.contains("# HELP b Rows.\n# TYPE b histogram\n"),
            "{out}"
        );
        assert!(out.contains("b_bucket{model=\"m\",le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("b_bucket{model=\"m\",le=\"4\"} 2\n"), "{out}");
        assert!(
            out.contains("b_bucket{model=\"m\",le=\"256\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("b_bucket{model=\"m\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("b_count{model=\"m\"} 3\n"), "{out}");
        assert!(out.contains("b_sum{model=\"m\"} 1004"), "{out}");
        assert!(!out.contains("# EOF"), "{out}");
        Ok(())
    }

    #[test]
    fn latency_bounds_keep_their_le_labels() -> Result<(), std::fmt::Error> {
        let mut registry = Registry::default();
        registry.register("l", "Latency", Histogram::new(LATENCY_BUCKETS));
        let out = encode(&registry)?;
        for le in ["0.0001", "0.00025", "0.001", "1", "2.5", "+Inf"] {
            assert!(
                out.contains(&format!("l_bucket{{le=\"{le}\"}} 0\n")),
                "{le}: {out}"
            );
        }
        Ok(())
    }
}
