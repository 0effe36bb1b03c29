//! The batch-scoring admin API (runs for admins, listings for viewers): REST routes under
//! `/v1/admin/scoring/jobs` to start a run of a `[[scoring_job]]` inside
//! this gateway and to list a job's scoring batches (status, rows, rejected
//! rows, cardinality alarms, which one is served).

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use feature_store::store::FullStore;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;

use crate::apidoc::AdminErrors;
use crate::auth::Caller;
use crate::error::GatewayError;
use crate::metrics::Front;
use crate::scoring::host::StartError;
use crate::scoring::{BatchSummary, ScoringError};
use crate::state::AppState;

/// The JSON answer of a started run.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"job": "customer_risk_daily", "message": "started in this gateway; GET /v1/admin/scoring/jobs/customer_risk_daily/batches shows its batch"}))]
pub struct RunStarted {
    /// The job.
    pub job: String,
    /// What happens next, for a person.
    pub message: String,
}

/// A job's recent scoring batches.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchList {
    /// Newest first.
    pub batches: Vec<BatchSummary>,
}

/// `?limit=` of the batch list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// How many batches (default 10, at most 100).
    pub limit: Option<usize>,
}

fn listing(e: ScoringError) -> GatewayError {
    match e {
        ScoringError::UnknownJob { job, known } => {
            GatewayError::Scoring(StartError::UnknownJob { job, known })
        }
        ScoringError::Store(s) => GatewayError::Scoring(StartError::Store(s)),
        other => GatewayError::InvalidArgument(other.to_string()),
    }
}

/// `POST /v1/admin/scoring/jobs/{job}/run`.
#[utoipa::path(
    post,
    path = "/v1/admin/scoring/jobs/{job}/run",
    operation_id = "run_scoring_job",
    summary = "Start a batch-scoring run of a job in this gateway",
    params(("job" = String, Path, description = "A declared scoring job", example = "customer_risk_daily")),
    responses((status = 202, description = "Started", body = RunStarted), AdminErrors),
)]
async fn rest_run<S: FullStore>(
    State(state): State<Arc<AppState<S>>>,
    Extension(caller): Extension<Caller>,
    Path(job): Path<String>,
) -> Result<(StatusCode, Json<RunStarted>), GatewayError> {
    state.authz.admin(Front::Rest, &caller)?;
    state.scoring.start(&job).await?;
    tracing::info!(job = %job, by = %caller.subject, "scoring run started by the admin API");
    Ok((
        StatusCode::ACCEPTED,
        Json(RunStarted {
            message: format!(
                "started in this gateway; GET /v1/admin/scoring/jobs/{job}/batches shows its batch"
            ),
            job,
        }),
    ))
}

/// `GET /v1/admin/scoring/jobs/{job}/batches`.
#[utoipa::path(
    get,
    path = "/v1/admin/scoring/jobs/{job}/batches",
    operation_id = "list_scoring_batches",
    summary = "A scoring job's recent batches, newest first",
    params(
        ("job" = String, Path, description = "A declared scoring job", example = "customer_risk_daily"),
        ListParams,
    ),
    responses((status = 200, description = "The batches", body = BatchList), AdminErrors),
)]
async fn rest_batches<S: FullStore>(
    State(state): State<Arc<AppState<S>>>,
    Extension(caller): Extension<Caller>,
    Path(job): Path<String>,
    Query(params): Query<ListParams>,
) -> Result<Json<BatchList>, GatewayError> {
    state.authz.view(Front::Rest, &caller)?;
    let limit = params.limit.unwrap_or(10).clamp(1, 100);
    let batches = state
        .scoring
        .scorer()
        .batches(&job, limit)
        .await
        .map_err(listing)?;
    Ok(Json(BatchList { batches }))
}

/// The REST routes of the scoring admin API.
pub fn routes<S: FullStore>() -> OpenApiRouter<Arc<AppState<S>>> {
    use crate::typed_routes;
    OpenApiRouter::new()
        .routes(typed_routes!(S; rest_run))
        .routes(typed_routes!(S; rest_batches))
}
