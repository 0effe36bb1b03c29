//! What `/metrics` shows of the rollout: the routing revision and each
//! version's share per model, and the shadow pool's counts.

use std::fmt::Write as _;

use feature_store::store::FullStore;

use super::live::LiveRouting;
use super::shadow::ShadowPool;

/// Appends the routing per model and the shadow pool's counts.
pub fn render<S: FullStore>(out: &mut String, routing: &LiveRouting<S>, shadows: &ShadowPool) {
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
                        f64::from(super::BUCKETS - canary) / 100.0
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
}
