//! The admin APIs (admin scope only), beside the fronts: [`routing`]
//! (models' routing, changes, shadow reports), [`tuner`] (refresh jobs:
//! pins, runs) and [`scoring`] (batch-scoring runs and batches, REST only). Each has its REST handlers, its gRPC service and one core
//! both call; [`rest_routes`] lists the REST routes the REST front mounts
//! behind its authentication.

pub mod routing;
pub mod scoring;
pub mod tuner;

use std::sync::Arc;

use feature_store::store::FullStore;
use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

/// The admin APIs' REST routes, with their OpenAPI operations.
pub fn rest_routes<S: FullStore>() -> OpenApiRouter<Arc<AppState<S>>> {
    routing::routes::<S>()
        .merge(tuner::routes::<S>())
        .merge(scoring::routes::<S>())
}
