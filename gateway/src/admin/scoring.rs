//! The batch-scoring admin API (runs for admins, listings for viewers):
//! REST routes under `/v1/admin/scoring/jobs` to list the declared
//! `[[scoring_job]]`s with their latest batch, start a run inside this
//! gateway, and list a job's scoring batches (status, rows, rejected rows,
//! cardinality alarms, which one is served).

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use feature_store::definitions::ScoringKey;
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

/// A declared scoring job and its latest batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScoringJobSummary {
    /// The job.
    pub job: String,
    /// The model it scores.
    pub model: String,
    /// What an entry is keyed by: `entity` or `combination`.
    pub key: &'static str,
    /// How often it runs, seconds.
    pub interval_s: u64,
    /// How old an entry may be and still answer, seconds.
    pub max_age_s: u64,
    /// Its newest batch, if it ever ran.
    pub latest: Option<BatchSummary>,
}

/// Every declared scoring job.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScoringJobList {
    /// In declaration order.
    pub jobs: Vec<ScoringJobSummary>,
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

/// `GET /v1/admin/scoring/jobs`.
#[utoipa::path(
    get,
    path = "/v1/admin/scoring/jobs",
    operation_id = "list_scoring_jobs",
    summary = "Every declared scoring job with its latest batch",
    responses((status = 200, description = "The jobs", body = ScoringJobList), AdminErrors),
)]
async fn rest_jobs<S: FullStore>(
    State(state): State<Arc<AppState<S>>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ScoringJobList>, GatewayError> {
    state.authz.view(Front::Rest, &caller)?;
    let scorer = state.scoring.scorer();
    let mut jobs = Vec::new();
    for spec in scorer.definitions().scoring_jobs() {
        let latest = scorer
            .batches(&spec.name, 1)
            .await
            .map_err(listing)?
            .into_iter()
            .next();
        jobs.push(ScoringJobSummary {
            job: spec.name.clone(),
            model: spec.model.clone(),
            key: match spec.key {
                ScoringKey::Entity => "entity",
                ScoringKey::Combination(_) => "combination",
            },
            interval_s: spec.interval.as_secs(),
            max_age_s: spec.max_age.as_secs(),
            latest,
        });
    }
    Ok(Json(ScoringJobList { jobs }))
}

/// The REST routes of the scoring admin API.
pub fn routes<S: FullStore>() -> OpenApiRouter<Arc<AppState<S>>> {
    use crate::typed_routes;
    OpenApiRouter::new()
        .routes(typed_routes!(S; rest_jobs))
        .routes(typed_routes!(S; rest_run))
        .routes(typed_routes!(S; rest_batches))
}
