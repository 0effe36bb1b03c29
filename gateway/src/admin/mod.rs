//! The admin APIs (admin scope only), beside the fronts: [`routing`]
//! (models' routing, changes, shadow reports) and [`tuner`] (refresh jobs:
//! pins, runs). Each has its REST handlers, its gRPC service and one core
//! both call; [`rest_routes`] lists the REST routes the REST front mounts
//! behind its authentication.

pub mod routing;
pub mod tuner;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use feature_store::store::FullStore;

use crate::state::AppState;

/// The admin APIs' REST routes.
pub fn rest_routes<S: FullStore>() -> Router<Arc<AppState<S>>> {
    Router::new()
        .route("/v1/admin/models", get(routing::rest_list::<S>))
        .route(
            "/v1/admin/models/{model}/routing",
            get(routing::rest_get::<S>).post(routing::rest_change::<S>),
        )
        .route(
            "/v1/admin/models/{model}/shadow-report",
            get(routing::rest_shadow_report::<S>),
        )
        .merge(tuner::routes::<S>())
}
