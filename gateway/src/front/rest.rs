//! The REST front (axum): JSON in and out, mirroring the gRPC API. Each
//! handler extracts its inputs, runs the one auth check of its API kind and
//! calls one function of the prediction path; the router puts the `/v1`
//! API behind the authentication middleware and leaves health, readiness,
//! metrics, the OpenAPI document and the dev issuer open. The router and
//! the OpenAPI document are built from one route table ([`routes`]); the
//! routes left out of the document are listed in [`UNDOCUMENTED`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use feature_store::log::Outcome;
use feature_store::store::FullStore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;

use super::wire::{self, PredictResponse, event_time};
use crate::apidoc::{
    FeedbackErrors, PollErrors, PredictErrors, PushErrors, SimilarErrors, SubmitErrors,
};
use crate::auth::Caller;
use crate::auth::dev_issuer::{self, AuthorizeRequest, OAuthError, TokenRequest};
use crate::error::ErrorBody;
use crate::error::GatewayError;
use crate::metrics::Front;
use crate::serve::{FeedbackInput, PredictInput, PushEvent, PushRow};
use crate::similar::{QueryBy, SimilarQuery};
use crate::state::AppState;

/// The shared state as axum hands it to handlers.
pub type Shared<S> = State<Arc<AppState<S>>>;

/// The JSON body of `POST /v1/models/{model}/predict`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PredictRequest, example = json!({
    "entity": {"customer_id": "c-1"},
    "request_features": {"amount": 980.0, "is_card_present": false, "hour_of_day": 3}
}))]
pub struct PredictBody {
    /// Entity key columns to values, e.g. `{"customer_id": "c-1"}`; absent
    /// for a model that reads no entity's features.
    #[serde(default)]
    pub entity: HashMap<String, String>,
    /// Request features by name.
    #[serde(default)]
    #[schema(value_type = HashMap<String, wire::FeatureValueSchema>)]
    pub request_features: HashMap<String, Value>,
    /// A version asked for explicitly.
    #[serde(default)]
    pub model_version: String,
}

/// The body of a request, or why it is not valid JSON of its shape.
///
/// # Errors
/// [`GatewayError::InvalidArgument`] naming the request body.
pub fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, GatewayError> {
    body.map(|Json(b)| b)
        .map_err(|e| GatewayError::InvalidArgument(format!("request body: {}", e.body_text())))
}

fn predict_input(
    model: String,
    body: PredictBody,
    at: &str,
    caller: &Caller,
) -> Result<PredictInput, GatewayError> {
    let mut request_features = HashMap::with_capacity(body.request_features.len());
    for (k, v) in &body.request_features {
        let w = wire::json_feature(k, v)
            .map_err(|e| GatewayError::InvalidArgument(format!("{at}{e}")))?;
        request_features.insert(k.clone(), w);
    }
    Ok(PredictInput {
        model,
        model_version: body.model_version,
        keys: body.entity,
        request_features,
        subject: caller.subject.clone(),
        groups: caller.groups.clone(),
    })
}

/// `POST /v1/models/{model}/predict`.
#[utoipa::path(
    post,
    path = "/v1/models/{model}/predict",
    summary = "Predict for one entity",
    params(("model" = String, Path, description = "The model's name", example = "fraud")),
    request_body = PredictBody,
    responses((status = 200, description = "The prediction", body = PredictResponse), PredictErrors),
)]
async fn predict<S: FullStore>(
    State(state): Shared<S>,
    Extension(caller): Extension<Caller>,
    Path(model): Path<String>,
    body: Result<Json<PredictBody>, JsonRejection>,
) -> Result<Json<PredictResponse>, GatewayError> {
    let input = predict_input(model, json_body(body)?, "", &caller)?;
    let p = state
        .core
        .predict(Front::Rest, &caller, &input, None)
        .await?;
    Ok(Json(wire::prediction_json(&p)))
}

/// The JSON body of `POST /v1/models/{model}/predict-async`: a prediction
/// request and how long it may wait for a worker.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PredictAsyncRequest, example = json!({
    "entity": {"customer_id": "c-1"},
    "request_features": {"amount": 980.0, "is_card_present": false, "hour_of_day": 3},
    "deadline_ms": 30000
}))]
pub struct PredictAsyncBody {
    /// The prediction request, as for predict.
    #[serde(flatten)]
    pub request: PredictBody,
    /// How long the prediction may wait for a worker, in milliseconds
    /// (absent: the configured default); one not scored by then fails with
    /// `deadline_exceeded` instead of being scored late.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
}

/// The answer of `POST /v1/models/{model}/predict-async`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = PredictAsyncResponse, example = json!({
    "id": "0190f5b2-8c1e-7c3a-9d7e-2f1a3b4c5d6e", "duplicate": false,
    "poll": "/v1/predictions/0190f5b2-8c1e-7c3a-9d7e-2f1a3b4c5d6e"
}))]
pub struct PredictAsyncResponse {
    /// The request's ID.
    pub id: String,
    /// True when an earlier request with the same `Idempotency-Key` was
    /// found: `id` is that request's, and nothing new was queued.
    pub duplicate: bool,
    /// Where to poll it.
    pub poll: String,
}

/// `POST /v1/models/{model}/predict-async`.
#[utoipa::path(
    post,
    path = "/v1/models/{model}/predict-async",
    summary = "Queue a prediction, answered later (poll its ID)",
    description = "Checked at once like predict (token, policy, model, entity, request features), then queued on Kafka and answered 202 with an ID to poll at `/v1/predictions/{id}`. An `Idempotency-Key` header makes a retry safe: the same key from the same caller for the same model (within the results' retention) answers with the first request's ID and never predicts twice. 503 `queue_unavailable`: nothing was accepted.",
    params(
        ("model" = String, Path, description = "The model's name", example = "fraud"),
        ("Idempotency-Key" = Option<String>, Header, description = "A key (1 to 256 bytes) the caller chooses per logical request"),
    ),
    request_body = PredictAsyncBody,
    responses(
        (status = 202, description = "Accepted (or the earlier request of the same idempotency key)", body = PredictAsyncResponse),
        SubmitErrors,
    ),
)]
async fn predict_async<S: FullStore>(
    State(state): Shared<S>,
    Extension(caller): Extension<Caller>,
    Path(model): Path<String>,
    headers: axum::http::HeaderMap,
    body: Result<Json<PredictAsyncBody>, JsonRejection>,
) -> Result<(StatusCode, Json<PredictAsyncResponse>), GatewayError> {
    let queue = state.queue()?;
    let body = json_body(body)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            GatewayError::InvalidArgument("Idempotency-Key: must be visible ASCII".into())
        })?),
    };
    let input = predict_input(model, body.request, "", &caller)?;
    let accepted = queue
        .submit(
            &state.core,
            Front::Rest,
            &caller,
            input,
            key,
            body.deadline_ms.map(Duration::from_millis),
        )
        .await?;
    let poll = format!("/v1/predictions/{}", accepted.id);
    Ok((
        StatusCode::ACCEPTED,
        Json(PredictAsyncResponse {
            id: accepted.id,
            duplicate: accepted.duplicate,
            poll,
        }),
    ))
}

/// An asynchronous prediction as polled.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = AsyncPrediction, example = json!({
    "id": "0190f5b2-8c1e-7c3a-9d7e-2f1a3b4c5d6e", "model": "fraud", "state": "done",
    "submitted_at_unix_ms": 1765000000000_i64, "finished_at_unix_ms": 1765000000042_i64,
    "prediction": {"freshness": {"defaulted_features": [], "view_age_ms": {"customer_profile": 1200}},
        "model": "fraud", "model_version": "1",
        "outputs": [{"label": "legit", "name": "probabilities", "score": 0.93,
                     "top_k": [{"label": "legit", "score": 0.93}], "values": [0.93, 0.07]}],
        "prediction_id": "0190f5b2-8c1f-7c3a-9d7e-2f1a3b4c5d6e", "route": "stable", "source": "live"}
}))]
pub struct AsyncPredictionJson {
    /// The request's ID.
    pub id: String,
    /// The model.
    pub model: String,
    /// `pending`, `done` or `failed`.
    pub state: String,
    /// The prediction, when done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction: Option<PredictResponse>,
    /// Why it failed: the error body a synchronous call failing the same
    /// way would get.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<AsyncErrorJson>,
    /// When it was accepted (Unix ms).
    pub submitted_at_unix_ms: i64,
    /// When it was done or failed (Unix ms; absent while pending).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at_unix_ms: Option<i64>,
}

/// Why an asynchronous prediction failed.
#[derive(Debug, Serialize, ToSchema)]
pub struct AsyncErrorJson {
    /// The stable error code (`deadline_exceeded`, `invalid_argument`, …).
    pub code: String,
    /// What went wrong, for a person.
    pub message: String,
}

/// `GET /v1/predictions/{id}`.
#[utoipa::path(
    get,
    path = "/v1/predictions/{id}",
    summary = "Poll an asynchronous prediction",
    description = "Pending, done (with the prediction) or failed (with why). Only the caller that submitted it (same token subject) or an admin sees it; anyone else gets 404, as for an unknown or expired ID.",
    params(("id" = String, Path, description = "The ID predict-async answered")),
    responses((status = 200, description = "Where the prediction is", body = AsyncPredictionJson), PollErrors),
)]
async fn get_prediction<S: FullStore>(
    State(state): Shared<S>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<AsyncPredictionJson>, GatewayError> {
    let queue = state.queue()?;
    let p = queue
        .poll(&caller, || state.authz.is_admin(&caller), &id)
        .await?;
    Ok(Json(AsyncPredictionJson {
        id: p.id,
        model: p.model,
        state: p.state,
        prediction: p.prediction.map(wire::prediction_json_of_proto),
        error: p.error.map(|e| AsyncErrorJson {
            code: e.code,
            message: e.message,
        }),
        submitted_at_unix_ms: p.submitted_at_unix_ms,
        finished_at_unix_ms: (p.finished_at_unix_ms > 0).then_some(p.finished_at_unix_ms),
    }))
}

/// The JSON body of `POST /v1/models/{model}/predict-batch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PredictBatchRequest, example = json!({
    "requests": [{"entity": {"customer_id": "c-1"}}, {"entity": {"customer_id": "c-2"}}]
}))]
pub struct PredictBatchBody {
    /// One request per entity.
    pub requests: Vec<PredictBody>,
}

/// The JSON answer of `POST /v1/models/{model}/predict-batch`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PredictBatchResponse {
    /// One prediction per request, in order.
    pub responses: Vec<PredictResponse>,
}

/// `POST /v1/models/{model}/predict-batch`.
#[utoipa::path(
    post,
    path = "/v1/models/{model}/predict-batch",
    summary = "Predict for several entities in one call",
    params(("model" = String, Path, description = "The model's name", example = "fraud")),
    request_body = PredictBatchBody,
    responses(
        (status = 200, description = "One prediction per request, in order", body = PredictBatchResponse),
        PredictErrors,
    ),
)]
async fn predict_batch<S: FullStore>(
    State(state): Shared<S>,
    Extension(caller): Extension<Caller>,
    Path(model): Path<String>,
    body: Result<Json<PredictBatchBody>, JsonRejection>,
) -> Result<Json<PredictBatchResponse>, GatewayError> {
    let body = json_body(body)?;
    let limit = state.core.max_batch_entities();
    if body.requests.len() > limit {
        return Err(GatewayError::InvalidArgument(format!(
            "requests: {} entities, at most {limit} per call",
            body.requests.len(),
        )));
    }
    let mut inputs = Vec::with_capacity(body.requests.len());
    for (i, one) in body.requests.into_iter().enumerate() {
        inputs.push(predict_input(
            model.clone(),
            one,
            &format!("requests[{i}]."),
            &caller,
        )?);
    }
    let answers = state
        .core
        .predict_batch(Front::Rest, &caller, &inputs, None)
        .await?;
    Ok(Json(PredictBatchResponse {
        responses: answers.iter().map(wire::prediction_json).collect(),
    }))
}

/// The JSON body of `POST /v1/features/{view}/push`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PushRequest, example = json!({
    "rows": [{"entity": {"customer_id": "c-1"}, "values": {"txn_count_1h": 3}}]
}))]
pub struct PushBody {
    /// Fresh values, one entry per entity.
    #[serde(default)]
    pub rows: Vec<PushRowBody>,
    /// Raw events behind the view's windowed aggregates.
    #[serde(default)]
    pub events: Vec<PushEventBody>,
}

/// One raw event of a dynamic view with windowed aggregates.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PushEvent)]
pub struct PushEventBody {
    /// Entity key columns to values.
    pub entity: HashMap<String, String>,
    /// Idempotency key (absent or empty: derived from the entity, event time
    /// and fields).
    #[serde(default)]
    pub event_id: String,
    /// Field name to value (`amount`, `transaction_id`, …).
    #[schema(value_type = HashMap<String, wire::FeatureValueSchema>)]
    pub fields: HashMap<String, Value>,
    /// When it happened, Unix milliseconds (absent or 0: now).
    #[serde(default)]
    pub event_time_ms: i64,
}

/// One entity's fresh values.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PushRow)]
pub struct PushRowBody {
    /// Entity key columns to values.
    pub entity: HashMap<String, String>,
    /// Feature name to value.
    #[schema(value_type = HashMap<String, wire::FeatureValueSchema>)]
    pub values: HashMap<String, Value>,
    /// When observed, Unix milliseconds (absent or 0: now).
    #[serde(default)]
    pub event_time_ms: i64,
}

fn push_input(body: PushBody) -> Result<(Vec<PushRow>, Vec<PushEvent>), GatewayError> {
    let mut rows = Vec::with_capacity(body.rows.len());
    for (i, r) in body.rows.into_iter().enumerate() {
        let mut values = HashMap::with_capacity(r.values.len());
        for (k, v) in &r.values {
            let w = wire::json_feature(k, v)
                .map_err(|e| GatewayError::InvalidArgument(format!("rows[{i}].values.{k}: {e}")))?;
            values.insert(k.clone(), w);
        }
        rows.push(PushRow {
            keys: r.entity,
            values,
            event_time: event_time(r.event_time_ms),
        });
    }
    let mut events = Vec::with_capacity(body.events.len());
    for (i, e) in body.events.into_iter().enumerate() {
        let mut fields = HashMap::with_capacity(e.fields.len());
        for (k, v) in &e.fields {
            let w = wire::json_value(v).map_err(|m| {
                GatewayError::InvalidArgument(format!("events[{i}].fields.{k}: {m}"))
            })?;
            fields.insert(k.clone(), w);
        }
        events.push(PushEvent {
            keys: e.entity,
            event_id: e.event_id,
            fields,
            event_time: event_time(e.event_time_ms),
        });
    }
    Ok((rows, events))
}

/// The JSON answer of a push.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"events_written": 0, "rows_written": 1}))]
pub struct PushResponse {
    /// Events written (a replayed event is written again and counted).
    pub events_written: u64,
    /// Rows of values written.
    pub rows_written: u64,
}

/// `POST /v1/features/{view}/push`.
#[utoipa::path(
    post,
    path = "/v1/features/{view}/push",
    summary = "Push fresh values or raw events into a dynamic feature view",
    params(("view" = String, Path, description = "A dynamic feature view", example = "customer_realtime")),
    request_body = PushBody,
    responses((status = 200, description = "What was written", body = PushResponse), PushErrors),
)]
async fn push<S: FullStore>(
    State(state): Shared<S>,
    Extension(caller): Extension<Caller>,
    Path(view): Path<String>,
    body: Result<Json<PushBody>, JsonRejection>,
) -> Result<Json<PushResponse>, GatewayError> {
    state.authz.push(Front::Rest, &caller)?;
    let (rows, events) = push_input(json_body(body)?)?;
    let written = state.core.push(&view, &rows, &events).await?;
    Ok(Json(PushResponse {
        events_written: written.events,
        rows_written: written.rows,
    }))
}

/// The JSON body of `POST /v1/similar/{view}`: an entity or a vector.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SimilarRequest, example = json!({"entity": {"merchant_id": "m-00042"}, "k": 5}))]
pub struct SimilarBody {
    /// The query entity: key column → value (its own vector is searched).
    #[serde(default)]
    pub entity: Option<HashMap<String, String>>,
    /// Or a query vector of the index's dimension.
    #[serde(default)]
    pub vector: Option<Vec<f64>>,
    /// How many neighbours (1 to the view's `max_k`; default 10).
    #[serde(default = "default_k")]
    pub k: usize,
    /// Let the query entity appear in its own answer (default: left out).
    #[serde(default)]
    pub include_query: bool,
}

fn default_k() -> usize {
    10
}

/// One neighbour.
#[derive(Debug, Serialize, ToSchema)]
pub struct Neighbour {
    /// Its entity key (compound keys joined by `|`).
    pub entity: String,
    /// Its distance from the query (`distance` says how measured).
    pub distance: f32,
}

/// The JSON answer of a similarity lookup.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = SimilarResponse, example = json!({
    "view": "merchant_embedding", "batch_id": "0190f5b2-8c1e-7c3a-9d7e-2f1a3b4c5d6e",
    "index_id": "0190f5b3-0000-7000-8000-000000000000", "index_age_s": 3600.0,
    "distance": "cosine", "neighbours": [{"entity": "m-00917", "distance": 0.12}]
}))]
pub struct SimilarResponse {
    /// The view.
    pub view: String,
    /// The view batch the index was built from.
    pub batch_id: String,
    /// The index build that answered.
    pub index_id: String,
    /// Age of that batch's data, seconds.
    pub index_age_s: f64,
    /// How distances are measured: `cosine` (1 − cosine), `dot` (1 − inner
    /// product) or `l2` (Euclidean).
    pub distance: &'static str,
    /// The neighbours, nearest first.
    pub neighbours: Vec<Neighbour>,
}

/// `POST /v1/similar/{view}`.
#[utoipa::path(
    post,
    path = "/v1/similar/{view}",
    summary = "The nearest neighbours of an entity or a vector in a view's similarity index",
    params(("view" = String, Path, description = "A static view with a similarity index", example = "merchant_embedding")),
    request_body = SimilarBody,
    responses((status = 200, description = "The neighbours, nearest first", body = SimilarResponse), SimilarErrors),
)]
async fn similar<S: FullStore>(
    State(state): Shared<S>,
    Extension(caller): Extension<Caller>,
    Path(view): Path<String>,
    body: Result<Json<SimilarBody>, JsonRejection>,
) -> Result<Json<SimilarResponse>, GatewayError> {
    state.authz.similar(Front::Rest, &caller)?;
    let body = json_body(body)?;
    let by = match (body.entity, body.vector) {
        (Some(keys), None) => QueryBy::Entity(keys),
        // A number beyond f32's range becomes infinite here and is refused
        // with the vector's other checks.
        (None, Some(v)) => QueryBy::Vector(v.iter().map(|&x| x as f32).collect()),
        _ => {
            return Err(GatewayError::InvalidArgument(
                "give either `entity` (key column → value) or `vector`, not both or neither"
                    .to_owned(),
            ));
        }
    };
    let answer = state.similar.query(
        &view,
        &SimilarQuery {
            by,
            k: body.k,
            include_query: body.include_query,
        },
    )?;
    Ok(Json(SimilarResponse {
        view: answer.view,
        batch_id: answer.batch_id,
        index_id: answer.index_id,
        index_age_s: answer.age.as_secs_f64(),
        distance: answer.distance,
        neighbours: answer
            .neighbours
            .into_iter()
            .map(|n| Neighbour {
                entity: n.entity,
                distance: n.distance,
            })
            .collect(),
    }))
}

/// The JSON body of `POST /v1/feedback`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = FeedbackRequest, example = json!({
    "prediction_id": "0190f5b2-8c1e-7c3a-9d7e-2f1a3b4c5d6e", "label": "fraud"
}))]
pub struct FeedbackBody {
    /// The ID predict returned.
    pub prediction_id: String,
    /// The observed class (or send `value`).
    #[serde(default)]
    pub label: Option<String>,
    /// The observed number, for regression (or send `label`).
    #[serde(default)]
    pub value: Option<f64>,
    /// When observed, Unix milliseconds (absent or 0: now).
    #[serde(default)]
    pub observed_at_ms: i64,
}

/// The (empty) JSON answer of a feedback call.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({}))]
pub struct FeedbackResponse {}

/// `POST /v1/feedback`.
#[utoipa::path(
    post,
    path = "/v1/feedback",
    summary = "Record the observed outcome of a prediction",
    request_body = FeedbackBody,
    responses((status = 200, description = "Recorded", body = FeedbackResponse), FeedbackErrors),
)]
async fn feedback<S: FullStore>(
    State(state): Shared<S>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<FeedbackBody>, JsonRejection>,
) -> Result<Json<FeedbackResponse>, GatewayError> {
    state.authz.feedback(Front::Rest, &caller)?;
    let body = json_body(body)?;
    let outcome = match (body.label, body.value) {
        (Some(_), Some(_)) => {
            return Err(GatewayError::InvalidArgument(
                "send either `label` or `value`, not both".to_owned(),
            ));
        }
        (Some(l), None) => Some(Outcome::Label(l)),
        (None, Some(v)) => Some(Outcome::Value(v)),
        (None, None) => None,
    };
    state
        .core
        .feedback(FeedbackInput {
            prediction_id: body.prediction_id,
            outcome,
            observed_at: event_time(body.observed_at_ms),
            subject: caller.subject,
        })
        .await?;
    Ok(Json(FeedbackResponse {}))
}

/// `GET /metrics`.
#[utoipa::path(
    get,
    path = "/metrics",
    summary = "Prometheus metrics",
    responses((status = 200, description = "The Prometheus text format", content_type = "text/plain", body = String)),
)]
async fn metrics<S: FullStore>(State(state): Shared<S>) -> Response {
    match super::scrape::render(&state).await {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                telemetry::prom::CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode /metrics");
            axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// `GET /openapi.json`: the document, made once with the router.
#[utoipa::path(
    get,
    path = "/openapi.json",
    summary = "This OpenAPI document",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)),
)]
async fn openapi(Extension(doc): Extension<Arc<str>>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        doc.to_string(),
    )
        .into_response()
}

/// The JSON answer of the health and readiness checks.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = HealthStatus, example = json!({"status": "ready"}))]
pub struct Status {
    /// Why not ready (only when not ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// `ok` (health), `ready` or `not ready`.
    pub status: &'static str,
}

/// `GET /healthz`.
#[utoipa::path(
    get,
    path = "/healthz",
    summary = "Liveness",
    responses((status = 200, description = "The process runs", body = Status, example = json!({"status": "ok"}))),
)]
async fn healthz() -> Json<Status> {
    Json(Status {
        reason: None,
        status: "ok",
    })
}

/// `GET /readyz`.
#[utoipa::path(
    get,
    path = "/readyz",
    summary = "Readiness: the issuer's keys are loaded and every model-server is ready",
    responses(
        (status = 200, description = "Ready", body = Status, example = json!({"status": "ready"})),
        (status = 503, description = "Not ready, with the reason", body = Status,
         example = json!({"reason": "a model-server is down or its model is not ready", "status": "not ready"})),
    ),
)]
async fn readyz<S: FullStore>(State(state): Shared<S>) -> Response {
    let not_ready = |reason| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Status {
                reason: Some(reason),
                status: "not ready",
            }),
        )
            .into_response()
    };
    if !state.authn.verifier.keys().loaded() {
        return not_ready("the SSO issuer's signing keys are not loaded yet");
    }
    if state.core.models_ready(Duration::from_millis(500)).await {
        (
            StatusCode::OK,
            Json(Status {
                reason: None,
                status: "ready",
            }),
        )
            .into_response()
    } else {
        not_ready("a model-server is down or its model is not ready")
    }
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(ErrorBody {
            code: "not_found",
            message: "no such route; see the README for the REST API".to_owned(),
        }),
    )
        .into_response()
}

async fn dev_discovery<S: FullStore>(State(state): Shared<S>) -> Response {
    match &state.dev_issuer {
        Some(dev) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            crate::auth::dev_issuer::DevIssuer::discovery(&dev.url),
        )
            .into_response(),
        None => not_found().await,
    }
}

async fn dev_jwks<S: FullStore>(State(state): Shared<S>) -> Response {
    match &state.dev_issuer {
        Some(dev) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            dev.issuer.jwks().to_owned(),
        )
            .into_response(),
        None => not_found().await,
    }
}

/// The dev issuer's sign-in page for the console (`GET /dev-issuer/authorize`).
async fn dev_authorize_page<S: FullStore>(
    State(state): Shared<S>,
    query: Result<Query<AuthorizeRequest>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(dev) = &state.dev_issuer else {
        return not_found().await;
    };
    let r = match query {
        Ok(Query(r)) => r,
        Err(e) => return oauth_refusal(&OAuthError::invalid(e.body_text())),
    };
    match dev.issuer.check_authorize(&r) {
        Ok(()) => axum::response::Html(
            dev.issuer
                .sign_in_page(&format!("{}/authorize", dev_issuer::PATH), &r),
        )
        .into_response(),
        Err(e) => oauth_refusal(&e),
    }
}

/// The sign-in form's answer: back to the console with a code.
async fn dev_authorize<S: FullStore>(
    State(state): Shared<S>,
    form: Result<axum::Form<AuthorizeRequest>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Some(dev) = &state.dev_issuer else {
        return not_found().await;
    };
    let r = match form {
        Ok(axum::Form(r)) => r,
        Err(e) => return oauth_refusal(&OAuthError::invalid(e.body_text())),
    };
    match dev.issuer.decide(&r) {
        Ok(location) => axum::response::Redirect::to(&location).into_response(),
        Err(e) => oauth_refusal(&e),
    }
}

/// The dev issuer's token endpoint (`POST /dev-issuer/token`).
async fn dev_token<S: FullStore>(
    State(state): Shared<S>,
    form: Result<axum::Form<TokenRequest>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Some(dev) = &state.dev_issuer else {
        return not_found().await;
    };
    let r = match form {
        Ok(axum::Form(r)) => r,
        Err(e) => return oauth_refusal(&OAuthError::invalid(e.body_text())),
    };
    match dev.issuer.exchange(&dev.url, &dev.audience, &r) {
        Ok(answer) => (
            [(axum::http::header::CACHE_CONTROL, "no-store")],
            Json(answer),
        )
            .into_response(),
        Err(e) => oauth_refusal(&e),
    }
}

/// An OAuth error answer (RFC 6749 §5.2): 400 with `error` and
/// `error_description`.
fn oauth_refusal(e: &OAuthError) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({"error": e.error, "error_description": e.description})),
    )
        .into_response()
}

/// The routes the router serves but the OpenAPI document leaves out, with
/// why: (method, path, reason). The dev issuer exists only in dev mode and
/// is the token issuer's API (OIDC discovery, JWKS), not the gateway's.
pub const UNDOCUMENTED: &[(&str, &str, &str)] = &[
    (
        "GET",
        "/dev-issuer/.well-known/openid-configuration",
        "the dev issuer's OIDC discovery: dev mode only, the issuer's API",
    ),
    (
        "GET",
        "/dev-issuer/jwks",
        "the dev issuer's signing keys: dev mode only, the issuer's API",
    ),
    (
        "GET",
        "/dev-issuer/authorize",
        "the dev issuer's sign-in page: dev mode only, the issuer's API",
    ),
    (
        "POST",
        "/dev-issuer/authorize",
        "the dev issuer's sign-in form: dev mode only, the issuer's API",
    ),
    (
        "POST",
        "/dev-issuer/token",
        "the dev issuer's token endpoint: dev mode only, the issuer's API",
    ),
];

/// The `/v1` API's route table (with `admin`, the admin APIs' routes).
fn api_table<S: FullStore>(
    admin: OpenApiRouter<Arc<AppState<S>>>,
) -> OpenApiRouter<Arc<AppState<S>>> {
    use crate::typed_routes;
    OpenApiRouter::new()
        .routes(typed_routes!(S; predict))
        .routes(typed_routes!(S; predict_batch))
        .routes(typed_routes!(S; predict_async))
        .routes(typed_routes!(S; get_prediction))
        .routes(typed_routes!(S; push))
        .routes(typed_routes!(S; feedback))
        .routes(typed_routes!(S; similar))
        .merge(admin)
}

/// The open routes' table (no token needed).
fn open_table<S: FullStore>() -> OpenApiRouter<Arc<AppState<S>>> {
    use crate::typed_routes;
    OpenApiRouter::new()
        .routes(typed_routes!(S; metrics))
        .routes(utoipa_axum::routes!(openapi))
        .routes(utoipa_axum::routes!(healthz))
        .routes(typed_routes!(S; readyz))
}

/// The two tables joined into the router and its document, the `/v1` API
/// wrapped in `auth` (the authentication middleware, or nothing when only
/// the document is wanted).
fn assemble<S: FullStore>(
    admin: OpenApiRouter<Arc<AppState<S>>>,
    auth: impl FnOnce(OpenApiRouter<Arc<AppState<S>>>) -> OpenApiRouter<Arc<AppState<S>>>,
) -> (Router<Arc<AppState<S>>>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = OpenApiRouter::with_openapi(crate::apidoc::base())
        .merge(auth(api_table(admin)))
        .merge(open_table())
        .split_for_parts();
    crate::apidoc::secure_v1(&mut doc);
    (router, doc)
}

/// The OpenAPI document of the REST routes (with `admin`, the admin APIs'
/// routes), as [`router`] serves it.
pub fn document<S: FullStore>(admin: OpenApiRouter<Arc<AppState<S>>>) -> utoipa::openapi::OpenApi {
    assemble(admin, |api| api).1
}

/// The route table: the REST router (not yet given its state) and the
/// OpenAPI document of its routes, made together so they cannot differ.
/// `admin` holds the admin APIs' routes; it and the `/v1` API go behind
/// the authentication middleware. The dev issuer's routes
/// ([`UNDOCUMENTED`]) are added outside the table.
pub fn routes<S: FullStore>(
    state: &Arc<AppState<S>>,
    admin: OpenApiRouter<Arc<AppState<S>>>,
) -> (Router<Arc<AppState<S>>>, utoipa::openapi::OpenApi) {
    let authn = state.authn.clone();
    let (router, doc) = assemble(admin, |api| {
        api.route_layer(axum::middleware::from_fn_with_state(
            authn,
            super::authn::rest,
        ))
    });
    let dev = crate::auth::dev_issuer::PATH;
    let router = router
        .route(
            &format!("{dev}/.well-known/openid-configuration"),
            get(dev_discovery::<S>),
        )
        .route(&format!("{dev}/jwks"), get(dev_jwks::<S>))
        .route(
            &format!("{dev}/authorize"),
            get(dev_authorize_page::<S>).post(dev_authorize::<S>),
        )
        .route(&format!("{dev}/token"), post(dev_token::<S>));
    (router, doc)
}

/// The OpenAPI document as served and committed (`gateway/openapi.json`).
///
/// # Errors
/// The document cannot be encoded (not expected).
pub fn document_json(doc: &utoipa::openapi::OpenApi) -> Result<String, serde_json::Error> {
    doc.to_pretty_json().map(|mut s| {
        s.push('\n');
        s
    })
}

/// The REST router: [`routes`] with the state, the OpenAPI document
/// (encoded once, here) and the JSON fallback for unknown routes.
///
/// # Errors
/// The OpenAPI document cannot be encoded (not expected).
pub fn router<S: FullStore>(
    state: Arc<AppState<S>>,
    admin: OpenApiRouter<Arc<AppState<S>>>,
) -> Result<Router, serde_json::Error> {
    let (router, doc) = routes(&state, admin);
    let doc: Arc<str> = document_json(&doc)?.into();
    Ok(router
        .fallback(not_found)
        .layer(Extension(doc))
        .with_state(state))
}
