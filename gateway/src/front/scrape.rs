//! The `/metrics` page: gathers the gateway's counters and each component's
//! own stats (feature store, model clients, prediction log, signing keys,
//! rollout, stage latencies) into one Prometheus text.

use std::time::Duration;

use feature_store::store::FullStore;

use crate::state::AppState;

/// How long a scrape waits for the refresh jobs' state.
const STORE_DEADLINE: Duration = Duration::from_secs(1);

/// The `/metrics` text, with the refresh jobs' state read from the store
/// under a deadline (a scrape never waits on a slow store for long).
pub async fn render<S: FullStore>(state: &AppState<S>) -> String {
    let core = &state.core;
    let reader = core.enricher().reader();
    let jobs = tokio::time::timeout(
        STORE_DEADLINE,
        feature_store::schedule::jobs::list(&**reader.store(), reader.definitions()),
    )
    .await
    .ok()
    .and_then(Result::ok);
    let mut out = String::with_capacity(8192);
    let metrics = &state.metrics;
    metrics.render(
        &mut out,
        &reader.cache_stats(),
        state.in_flight(),
        state.limit_total,
    );
    metrics.render_store_errors(&mut out, &reader.store_error_stats());
    metrics.render_event_reads(&mut out, &reader.event_stats());
    crate::model::stats::render(&mut out, &core.model_clients());
    if let Some(log) = core.prediction_log() {
        log.stats().render(&mut out);
    }
    state.authn.verifier.keys().stats.render(&mut out);
    crate::rollout::stats::render(&mut out, core.routing(), core.shadows());
    // Stage latencies timed from the request's spans.
    if let Some(stages) = telemetry::stages::global() {
        stages.render(
            &mut out,
            "mlgw_stage_seconds",
            "Wall time of each request stage (the span of that name).",
        );
    }
    metrics.render_refresh_jobs(&mut out, jobs.as_deref());
    out
}
