//! What `/metrics` shows of the rollout: the routing revision and each
//! version's share per model, and the shadow pool's counts, taken before
//! each scrape into [`RolloutFamilies`], a `prometheus-client` collector.

use feature_store::store::FullStore;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::live::LiveRouting;
use super::shadow::{ShadowCounts, ShadowPool};

/// The rollout as one scrape saw it.
#[derive(Debug)]
pub struct RolloutFamilies {
    /// (model, revision), by model.
    revisions: Vec<(String, i64)>,
    /// (model, version, role, share in percent).
    shares: Vec<(String, String, &'static str, f64)>,
    /// Shadow copies per (model, version).
    shadows: Vec<((String, String), ShadowCounts)>,
    shadow_in_flight: usize,
}

impl RolloutFamilies {
    /// The routing per model and the shadow pool's counts now.
    pub fn take<S: FullStore>(routing: &LiveRouting<S>, shadows: &ShadowPool) -> Self {
        let mut models: Vec<&str> = routing.models().collect();
        models.sort_unstable();
        let mut revisions = Vec::new();
        let mut shares = Vec::new();
        for m in models {
            if let Some(served) = routing.current(m) {
                revisions.push((m.to_owned(), served.revision));
                for (version, role) in served.table.roles() {
                    let share = match role {
                        "stable" => {
                            let canary = served.table.canary.as_ref().map_or(0, |c| c.basis_points);
                            f64::from(super::BUCKETS - canary) / 100.0
                        }
                        "canary" => served
                            .table
                            .canary
                            .as_ref()
                            .map_or(0.0, |c| f64::from(c.basis_points) / 100.0),
                        _ => 0.0,
                    };
                    shares.push((m.to_owned(), version.to_owned(), role, share));
                }
            }
        }
        RolloutFamilies {
            revisions,
            shares,
            shadows: shadows.counts().into_iter().collect(),
            shadow_in_flight: shadows.in_flight(),
        }
    }
}

impl Collector for RolloutFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(
            "mlgw_routing_revision",
            "Revision of the routing each model serves.",
            None,
            MetricType::Gauge,
        )?;
        for (model, revision) in &self.revisions {
            let labels = [("model", model.as_str())];
            ConstGauge::new(*revision).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "mlgw_routing_share_percent",
            "Share of callers each version gets by the sticky split (pilots and shadows: 0).",
            None,
            MetricType::Gauge,
        )?;
        for (model, version, role, share) in &self.shares {
            let labels = [
                ("model", model.as_str()),
                ("version", version.as_str()),
                ("role", role),
            ];
            ConstGauge::new(*share).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "mlgw_shadow_calls",
            "Shadow copies by model, version and result (dropped: the shadow pool was full).",
            None,
            MetricType::Counter,
        )?;
        for ((model, version), c) in &self.shadows {
            for (result, n) in [("ok", c.ok), ("failed", c.failed), ("dropped", c.dropped)] {
                let labels = [
                    ("model", model.as_str()),
                    ("version", version.as_str()),
                    ("result", result),
                ];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        let family = encoder.encode_descriptor(
            "mlgw_shadow_in_flight",
            "Shadow calls running now.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::try_from(self.shadow_in_flight).unwrap_or(i64::MAX)).encode(family)
    }
}
