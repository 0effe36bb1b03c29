//! The `/metrics` page: hands the families read at scrape time (the
//! refresh and scoring jobs from the store, the model clients, the rollout)
//! to their slots, then encodes the registry built at start.

use std::time::Duration;

use feature_store::store::FullStore;

use crate::metrics::RefreshJobs;
use crate::model::stats::ClientFamilies;
use crate::rollout::stats::RolloutFamilies;
use crate::scoring::stats::ScoringFamilies;
use crate::state::AppState;

/// How long a scrape waits for the refresh jobs' state.
const STORE_DEADLINE: Duration = Duration::from_secs(1);

/// The `/metrics` text, with the refresh jobs' state read from the store
/// under a deadline (a scrape never waits on a slow store for long).
///
/// # Errors
/// When a collector fails to encode itself.
pub async fn render<S: FullStore>(state: &AppState<S>) -> Result<String, std::fmt::Error> {
    let core = &state.core;
    let reader = core.enricher().reader();
    let jobs = tokio::time::timeout(
        STORE_DEADLINE,
        feature_store::schedule::jobs::list(&**reader.store(), reader.definitions()),
    )
    .await
    .ok()
    .and_then(Result::ok);
    let scoring = tokio::time::timeout(
        STORE_DEADLINE,
        ScoringFamilies::take(state.scoring.scorer()),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or_else(ScoringFamilies::unread);
    let page = &state.page;
    page.jobs.set(RefreshJobs(jobs));
    page.scoring.set(scoring);
    page.clients
        .set(ClientFamilies::from(&core.model_clients()[..]));
    page.rollout
        .set(RolloutFamilies::take(core.routing(), core.shadows()));
    telemetry::prom::encode(&page.registry)
}
