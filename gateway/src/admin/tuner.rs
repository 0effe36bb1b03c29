//! The refresh tuner's admin API: REST routes under `/v1/admin/tuner/jobs`
//! and gRPC `gateway.v1.TunerAdminService` (reads for viewers, changes for
//! admins), both thin over [`feature_store::schedule::jobs`]; the gateway's own scheduler, when
//! enabled, starts the runs asked for here.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use feature_store::definitions::{FeatureDefinitions, parse_duration};
use feature_store::schedule::jobs::{self, JobDetail, JobOverview};
use feature_store::schedule::{RunRecord, RunRequest};
use feature_store::store::FullStore;
use feature_store::tuner::controller::{Decision, Pin};
use proto::gateway::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tonic::{Request, Response, Status};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;

use crate::apidoc::AdminErrors;
use crate::auth::Caller;
use crate::error::GatewayError;
use crate::metrics::Front;
use crate::state::AppState;

/// The admin operations both fronts call, over the gateway's store and
/// definitions.
struct Admin<'a, S> {
    state: &'a AppState<S>,
}

impl<'a, S: FullStore> Admin<'a, S> {
    fn new(state: &'a AppState<S>) -> Self {
        Admin { state }
    }

    fn store(&self) -> &S {
        self.state.core.enricher().reader().store()
    }

    fn defs(&self) -> &FeatureDefinitions {
        self.state.core.enricher().reader().definitions()
    }

    async fn list(&self) -> Result<Vec<JobOverview>, GatewayError> {
        Ok(jobs::list(self.store(), self.defs()).await?)
    }

    async fn detail(&self, job: &str) -> Result<JobDetail, GatewayError> {
        Ok(jobs::detail(self.store(), self.defs(), job).await?)
    }

    async fn pin(
        &self,
        caller: &Caller,
        job: &str,
        interval: Duration,
        reason: Option<String>,
    ) -> Result<JobOverview, GatewayError> {
        jobs::pin(
            self.store(),
            self.defs(),
            job,
            interval,
            &caller.subject,
            reason,
        )
        .await?;
        Ok(self.detail(job).await?.overview)
    }

    async fn unpin(&self, caller: &Caller, job: &str) -> Result<JobOverview, GatewayError> {
        jobs::unpin(self.store(), self.defs(), job, &caller.subject).await?;
        Ok(self.detail(job).await?.overview)
    }

    /// Queues a run; with the time a running scheduler starts it by.
    async fn run(
        &self,
        caller: &Caller,
        job: &str,
        reason: Option<String>,
    ) -> Result<(RunRequest, Option<SystemTime>), GatewayError> {
        let request =
            jobs::request_run(self.store(), self.defs(), job, &caller.subject, reason).await?;
        let expected = self.state.scheduler_poll.map(|poll| request.at + poll);
        Ok((request, expected))
    }
}

fn nonempty(text: String) -> Option<String> {
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

// REST

/// The JSON body of `POST /v1/admin/tuner/jobs/{job}/pin`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = PinRequest, example = json!({"interval": "4h", "reason": "month-end load"}))]
#[serde(deny_unknown_fields)]
pub struct PinBody {
    /// The interval, e.g. "4h".
    pub interval: String,
    /// Why (kept in the history).
    #[serde(default)]
    pub reason: Option<String>,
}

/// The JSON body of `POST /v1/admin/tuner/jobs/{job}/run` (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[schema(as = RunRequest, example = json!({"reason": "fresh data landed"}))]
#[serde(deny_unknown_fields)]
pub struct RunBody {
    /// Why (kept in the run's record).
    #[serde(default)]
    pub reason: Option<String>,
}

fn body<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, GatewayError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| GatewayError::InvalidArgument(format!("request body: {e}")))
}

/// Runs `f` if the policy lets `caller` change (`change`) or read through
/// the admin API.
async fn checked<S: FullStore, T>(
    state: &AppState<S>,
    caller: &Caller,
    change: bool,
    f: impl std::future::Future<Output = Result<T, GatewayError>>,
) -> Result<T, GatewayError> {
    if change {
        state.authz.admin(Front::Rest, caller)?;
    } else {
        state.authz.view(Front::Rest, caller)?;
    }
    f.await
}

/// `GET /v1/admin/tuner/jobs`.
#[utoipa::path(
    get,
    path = "/v1/admin/tuner/jobs",
    operation_id = "list_tuner_jobs",
    summary = "Every refresh job with its interval, pin and last run",
    responses((status = 200, description = "`{\"jobs\": [...]}`, one entry per declared refresh job", body = Object), AdminErrors),
)]
async fn rest_list<S: FullStore>(
    State(state): State<Arc<AppState<S>>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, GatewayError> {
    let a = Admin::new(&state);
    let list = checked(&state, &caller, false, a.list()).await?;
    Ok(Json(
        json!({"jobs": list.iter().map(jobs::overview_json).collect::<Vec<_>>()}),
    ))
}

/// `GET /v1/admin/tuner/jobs/{job}`.
#[utoipa::path(
    get,
    path = "/v1/admin/tuner/jobs/{job}",
    operation_id = "get_tuner_job",
    summary = "One refresh job with its recent decisions and runs",
    params(("job" = String, Path, description = "A declared refresh job", example = "customer_profile_daily")),
    responses((status = 200, description = "The job, its last 100 decisions and runs, and its view's newest 50 refresh batches (`current` marks the served one)", body = Object), AdminErrors),
)]
async fn rest_detail<S: FullStore>(
    State(state): State<Arc<AppState<S>>>,
    Extension(caller): Extension<Caller>,
    Path(job): Path<String>,
) -> Result<Json<Value>, GatewayError> {
    let a = Admin::new(&state);
    let d = checked(&state, &caller, false, a.detail(&job)).await?;
    Ok(Json(jobs::detail_json(&d, 100)))
}

/// `POST /v1/admin/tuner/jobs/{job}/pin`.
#[utoipa::path(
    post,
    path = "/v1/admin/tuner/jobs/{job}/pin",
    operation_id = "pin_tuner_job",
    summary = "Pin a job's interval (the tuner stops changing it)",
    params(("job" = String, Path, description = "A declared refresh job", example = "customer_profile_daily")),
    request_body = PinBody,
    responses((status = 200, description = "The job after the change", body = Object), AdminErrors),
)]
async fn rest_pin<S: FullStore>(
    State(state): State<Arc<AppState<S>>>,
    Extension(caller): Extension<Caller>,
    Path(job): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Json<Value>, GatewayError> {
    let a = Admin::new(&state);
    let o = checked(&state, &caller, true, async {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(GatewayError::InvalidArgument(
                "request body: send {\"interval\": \"4h\", \"reason\": \"...\"}".to_owned(),
            ));
        }
        let b: PinBody = serde_json::from_slice(&bytes)
            .map_err(|e| GatewayError::InvalidArgument(format!("request body: {e}")))?;
        let interval = parse_duration(&b.interval)
            .map_err(|e| GatewayError::InvalidArgument(format!("interval: {e}")))?;
        a.pin(&caller, &job, interval, b.reason.and_then(nonempty))
            .await
    })
    .await?;
    Ok(Json(jobs::overview_json(&o)))
}

/// `POST /v1/admin/tuner/jobs/{job}/unpin`.
#[utoipa::path(
    post,
    path = "/v1/admin/tuner/jobs/{job}/unpin",
    operation_id = "unpin_tuner_job",
    summary = "Remove a job's pin (the tuner decides again)",
    params(("job" = String, Path, description = "A declared refresh job", example = "customer_profile_daily")),
    responses((status = 200, description = "The job after the change", body = Object), AdminErrors),
)]
async fn rest_unpin<S: FullStore>(
    State(state): State<Arc<AppState<S>>>,
    Extension(caller): Extension<Caller>,
    Path(job): Path<String>,
) -> Result<Json<Value>, GatewayError> {
    let a = Admin::new(&state);
    let o = checked(&state, &caller, true, a.unpin(&caller, &job)).await?;
    Ok(Json(jobs::overview_json(&o)))
}

/// The JSON answer of a queued run.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "expected_by": null, "job": "customer_profile_daily",
    "message": "queued; this gateway runs no scheduler: ...",
    "requested_at": "2026-12-06T12:00:00Z", "requested_by": "mlgw-admin"
}))]
pub struct RunQueued {
    /// When this gateway's scheduler starts it at the latest (none: no
    /// scheduler here).
    pub expected_by: Option<String>,
    /// The job.
    pub job: String,
    /// What happens next, for a person.
    pub message: String,
    /// When asked, UTC.
    pub requested_at: String,
    /// Who asked.
    pub requested_by: String,
}

/// `POST /v1/admin/tuner/jobs/{job}/run`.
#[utoipa::path(
    post,
    path = "/v1/admin/tuner/jobs/{job}/run",
    operation_id = "run_tuner_job",
    summary = "Queue a run of a job now",
    params(("job" = String, Path, description = "A declared refresh job", example = "customer_profile_daily")),
    request_body(content = Option<RunBody>, description = "Optional"),
    responses((status = 202, description = "Queued", body = RunQueued), AdminErrors),
)]
async fn rest_run<S: FullStore>(
    State(state): State<Arc<AppState<S>>>,
    Extension(caller): Extension<Caller>,
    Path(job): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<(StatusCode, Json<RunQueued>), GatewayError> {
    let a = Admin::new(&state);
    let (request, expected) = checked(&state, &caller, true, async {
        let b: RunBody = body(&bytes)?;
        a.run(&caller, &job, b.reason.and_then(nonempty)).await
    })
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(RunQueued {
            expected_by: expected.map(jobs::utc),
            job: request.job,
            message: run_message(expected),
            requested_at: jobs::utc(request.at),
            requested_by: request.by,
        }),
    ))
}

fn run_message(expected: Option<SystemTime>) -> String {
    match expected {
        Some(t) => format!(
            "queued; this gateway's scheduler starts it by {}",
            jobs::utc(t)
        ),
        None => "queued; this gateway runs no scheduler: a running `mlgw-features scheduler run` (or a gateway with [scheduler] enabled) starts it at its next poll".to_owned(),
    }
}

/// The REST routes of the tuner admin API (merged behind the auth
/// middleware by the REST front's router).
pub fn routes<S: FullStore>() -> OpenApiRouter<Arc<AppState<S>>> {
    use crate::typed_routes;
    OpenApiRouter::new()
        .routes(typed_routes!(S; rest_list))
        .routes(typed_routes!(S; rest_detail))
        .routes(typed_routes!(S; rest_pin))
        .routes(typed_routes!(S; rest_unpin))
        .routes(typed_routes!(S; rest_run))
}

// gRPC

/// `gateway.v1.TunerAdminService` over the store's jobs.
pub struct TunerAdminGrpc<S> {
    state: Arc<AppState<S>>,
}

impl<S> TunerAdminGrpc<S> {
    /// Serves `state`.
    pub fn new(state: Arc<AppState<S>>) -> Self {
        TunerAdminGrpc { state }
    }
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn decision_pb(d: &Decision) -> pb::TunerDecision {
    let name = |v: serde_json::Result<serde_json::Value>| {
        v.ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    pb::TunerDecision {
        at_ms: ms(d.at),
        action: name(serde_json::to_value(d.action)),
        from_s: d.from.as_secs(),
        to_s: d.to.as_secs(),
        has_metric: d.metric.is_some(),
        metric: d.metric.unwrap_or_default(),
        samples: d.samples as u64,
        reason: d.reason.clone(),
        basis: name(serde_json::to_value(d.basis)),
        has_predicted: d.predicted.is_some(),
        predicted: d.predicted.unwrap_or_default(),
        stale: d.stale as u64,
        judged_at_ms: ms(d.judged()),
    }
}

fn pin_pb(p: &Pin) -> pb::TunerPin {
    pb::TunerPin {
        interval_s: p.interval.as_secs(),
        by: p.by.clone(),
        at_ms: ms(p.at),
        reason: p.reason.clone().unwrap_or_default(),
    }
}

fn run_pb(r: &RunRecord) -> pb::RefreshRun {
    let trigger = serde_json::to_value(&r.trigger)
        .ok()
        .and_then(|v| v["kind"].as_str().map(str::to_owned))
        .unwrap_or_default();
    pb::RefreshRun {
        started_at_ms: ms(r.started_at),
        finished_at_ms: ms(r.finished_at),
        trigger,
        outcome: r.outcome.as_str().to_owned(),
        batch_id: r.batch_id.clone().unwrap_or_default(),
        has_exit_code: r.exit_code.is_some(),
        exit_code: r.exit_code.unwrap_or_default(),
        output: r.output.clone(),
        message: r.message.clone(),
        holder: r.holder.clone(),
    }
}

fn batch_pb(b: &feature_store::store::BatchRecord, current: bool) -> pb::RefreshBatchInfo {
    pb::RefreshBatchInfo {
        batch_id: b.batch_id.clone(),
        status: b.status.as_str().to_owned(),
        ingested_at_ms: ms(b.ingested_at),
        rows_written: b.rows_written,
        rows_rejected: b.rows_rejected,
        error: b.error.clone().unwrap_or_default(),
        current,
        started_at_ms: b.started_at.map_or(0, ms),
        finished_at_ms: b.finished_at.map_or(0, ms),
        source: b.source.clone(),
        script_version: b.script_version.clone(),
    }
}

fn summary_pb(o: &JobOverview) -> pb::RefreshJobSummary {
    pb::RefreshJobSummary {
        job: o.job.clone(),
        view: o.view.clone(),
        interval_s: o.interval.as_secs(),
        last_good_s: o.last_good.map_or(0, |g| g.as_secs()),
        metric: o.metric.map(|(n, _)| n.to_owned()).unwrap_or_default(),
        threshold: o.metric.map_or(0.0, |(_, t)| t),
        last_window: o.last_window.as_ref().map(decision_pb),
        pin: o.pin.as_ref().map(pin_pb),
        last_batch: o.last_batch.as_ref().map(|b| batch_pb(b, false)),
        last_run: o.last_run.as_ref().map(run_pb),
        next_run_ms: o.next_run.map_or(0, ms),
        run_requested: o.pending_request.is_some(),
    }
}

impl<S: FullStore> TunerAdminGrpc<S> {
    /// Runs `f` for the request's caller if the policy lets it read
    /// (`change` false) or change (`change` true) through the admin API.
    async fn call<T, R>(
        &self,
        request: Request<T>,
        change: bool,
        f: impl AsyncFnOnce(&Admin<'_, S>, &Caller, T) -> Result<R, GatewayError>,
    ) -> Result<Response<R>, Status> {
        let (_, extensions, message) = request.into_parts();
        let result = async {
            let caller = Caller::of(&extensions)?;
            if change {
                self.state.authz.admin(Front::Grpc, caller)?;
            } else {
                self.state.authz.view(Front::Grpc, caller)?;
            }
            f(&Admin::new(&self.state), caller, message).await
        }
        .await;
        result.map(Response::new).map_err(GatewayError::into_status)
    }
}

#[tonic::async_trait]
impl<S: FullStore> pb::tuner_admin_service_server::TunerAdminService for TunerAdminGrpc<S> {
    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        self.call(request, false, async |a, _, _| {
            Ok(pb::ListJobsResponse {
                jobs: a.list().await?.iter().map(summary_pb).collect(),
            })
        })
        .await
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::RefreshJobDetail>, Status> {
        self.call(request, false, async |a, _, r| {
            let d = a.detail(&r.job).await?;
            let limit = if r.limit == 0 { 100 } else { r.limit as usize };
            let tail = |n: usize| n.saturating_sub(limit);
            Ok(pb::RefreshJobDetail {
                job: Some(summary_pb(&d.overview)),
                decisions: d.decisions[tail(d.decisions.len())..]
                    .iter()
                    .map(decision_pb)
                    .collect(),
                runs: d.runs[tail(d.runs.len())..].iter().map(run_pb).collect(),
                batches: d
                    .batches
                    .iter()
                    .map(|b| batch_pb(b, d.current_batch.as_deref() == Some(b.batch_id.as_str())))
                    .collect(),
            })
        })
        .await
    }

    async fn pin_job(
        &self,
        request: Request<pb::PinJobRequest>,
    ) -> Result<Response<pb::RefreshJobSummary>, Status> {
        self.call(request, true, async |a, caller, r| {
            if r.interval_s == 0 {
                return Err(GatewayError::InvalidArgument(
                    "interval_s: give the pinned interval in seconds".to_owned(),
                ));
            }
            let o = a
                .pin(
                    caller,
                    &r.job,
                    Duration::from_secs(r.interval_s),
                    nonempty(r.reason),
                )
                .await?;
            Ok(summary_pb(&o))
        })
        .await
    }

    async fn unpin_job(
        &self,
        request: Request<pb::UnpinJobRequest>,
    ) -> Result<Response<pb::RefreshJobSummary>, Status> {
        self.call(request, true, async |a, caller, r| {
            Ok(summary_pb(&a.unpin(caller, &r.job).await?))
        })
        .await
    }

    async fn run_job(
        &self,
        request: Request<pb::RunJobRequest>,
    ) -> Result<Response<pb::RunJobResponse>, Status> {
        self.call(request, true, async |a, caller, r| {
            let (request, expected) = a.run(caller, &r.job, nonempty(r.reason)).await?;
            Ok(pb::RunJobResponse {
                job: request.job,
                requested_by: request.by,
                requested_at_ms: ms(request.at),
                expected_by_ms: expected.map_or(0, ms),
                message: run_message(expected),
            })
        })
        .await
    }
}
