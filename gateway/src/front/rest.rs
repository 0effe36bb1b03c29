//! The REST front (axum): JSON in and out, mirroring the gRPC API. Each
//! handler extracts its inputs, runs the one auth check of its API kind and
//! calls one function of the prediction path; the router puts the `/v1`
//! API behind the authentication middleware and leaves health, readiness,
//! metrics, the OpenAPI document and the dev issuer open.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use feature_store::log::Outcome;
use feature_store::store::FullStore;
use serde::Deserialize;
use serde_json::{Value, json};

use super::wire::{self, event_time};
use crate::auth::Caller;
use crate::error::GatewayError;
use crate::metrics::Front;
use crate::serve::{FeedbackInput, PredictInput, PushEvent, PushRow};
use crate::state::AppState;

/// The shared state as axum hands it to handlers.
pub type Shared<S> = State<Arc<AppState<S>>>;

/// The JSON body of `POST /v1/models/{model}/predict`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictBody {
    /// Entity key columns to values, e.g. `{"customer_id": "c-1"}`.
    pub entity: HashMap<String, String>,
    /// Request features by name.
    #[serde(default)]
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

async fn predict<S: FullStore>(
    State(state): Shared<S>,
    Extension(caller): Extension<Caller>,
    Path(model): Path<String>,
    body: Result<Json<PredictBody>, JsonRejection>,
) -> Result<Json<Value>, GatewayError> {
    let input = predict_input(model, json_body(body)?, "", &caller)?;
    let p = state
        .core
        .predict(Front::Rest, &caller, &input, None)
        .await?;
    Ok(Json(wire::prediction_json(&p)))
}

/// The JSON body of `POST /v1/models/{model}/predict-batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictBatchBody {
    /// One request per entity.
    pub requests: Vec<PredictBody>,
}

async fn predict_batch<S: FullStore>(
    State(state): Shared<S>,
    Extension(caller): Extension<Caller>,
    Path(model): Path<String>,
    body: Result<Json<PredictBatchBody>, JsonRejection>,
) -> Result<Json<Value>, GatewayError> {
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
    let responses: Vec<Value> = answers.iter().map(wire::prediction_json).collect();
    Ok(Json(json!({ "responses": responses })))
}

/// The JSON body of `POST /v1/features/{view}/push`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushBody {
    /// Fresh values, one entry per entity.
    #[serde(default)]
    pub rows: Vec<PushRowBody>,
    /// Raw events behind the view's windowed aggregates.
    #[serde(default)]
    pub events: Vec<PushEventBody>,
}

/// One raw event of a dynamic view with windowed aggregates.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushEventBody {
    /// Entity key columns to values.
    pub entity: HashMap<String, String>,
    /// Idempotency key (absent or empty: derived from the entity, event time
    /// and fields).
    #[serde(default)]
    pub event_id: String,
    /// Field name to value (`amount`, `transaction_id`, …).
    pub fields: HashMap<String, Value>,
    /// When it happened, Unix milliseconds (absent or 0: now).
    #[serde(default)]
    pub event_time_ms: i64,
}

/// One entity's fresh values.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRowBody {
    /// Entity key columns to values.
    pub entity: HashMap<String, String>,
    /// Feature name to value.
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

async fn push<S: FullStore>(
    State(state): Shared<S>,
    Extension(caller): Extension<Caller>,
    Path(view): Path<String>,
    body: Result<Json<PushBody>, JsonRejection>,
) -> Result<Json<Value>, GatewayError> {
    state.authz.push(Front::Rest, &caller)?;
    let (rows, events) = push_input(json_body(body)?)?;
    let written = state.core.push(&view, &rows, &events).await?;
    Ok(Json(
        json!({"rows_written": written.rows, "events_written": written.events}),
    ))
}

/// The JSON body of `POST /v1/feedback`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
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

async fn feedback<S: FullStore>(
    State(state): Shared<S>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<FeedbackBody>, JsonRejection>,
) -> Result<Json<Value>, GatewayError> {
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
    Ok(Json(json!({})))
}

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

/// The OpenAPI document of these routes (`gateway/openapi.json`).
pub const OPENAPI: &str = include_str!("../../openapi.json");

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz<S: FullStore>(State(state): Shared<S>) -> Response {
    if !state.authn.verifier.keys().loaded() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reason": "the SSO issuer's signing keys are not loaded yet"})),
        )
            .into_response();
    }
    if state.core.models_ready(Duration::from_millis(500)).await {
        (StatusCode::OK, Json(json!({"status": "ready"}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reason": "a model-server is down or its model is not ready"})),
        )
            .into_response()
    }
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"code": "not_found", "message": "no such route; see the README for the REST API"})),
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

/// The REST routes: the `/v1` API (with `admin`, the admin APIs' routes)
/// behind the authentication middleware; health, readiness, metrics, the
/// OpenAPI document and (in dev mode) the dev issuer's discovery and JWKS
/// open.
pub fn router<S: FullStore>(state: Arc<AppState<S>>, admin: Router<Arc<AppState<S>>>) -> Router {
    let api = Router::new()
        .route("/v1/models/{model}/predict", post(predict::<S>))
        .route("/v1/models/{model}/predict-batch", post(predict_batch::<S>))
        .route("/v1/features/{view}/push", post(push::<S>))
        .route("/v1/feedback", post(feedback::<S>))
        .merge(admin)
        .route_layer(axum::middleware::from_fn_with_state(
            state.authn.clone(),
            super::authn::rest,
        ));
    let dev = crate::auth::dev_issuer::PATH;
    Router::new()
        .merge(api)
        .route(
            &format!("{dev}/.well-known/openid-configuration"),
            get(dev_discovery::<S>),
        )
        .route(&format!("{dev}/jwks"), get(dev_jwks::<S>))
        .route("/metrics", get(metrics::<S>))
        .route("/openapi.json", get(openapi))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<S>))
        .fallback(not_found)
        .with_state(state)
}
