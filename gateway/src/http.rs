//! The REST front (axum): JSON in and out, mirroring the gRPC API. Handlers
//! only convert between JSON and the core's types.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use feature_store::log::Outcome;
use feature_store::store::FullStore;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Access, Caller};
use crate::core::{FeedbackInput, PredictInput, Prediction, PushEvent, PushRow};
use crate::enrich::WireValue;
use crate::error::GatewayError;
use crate::server::Shared;

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

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let code = self.code();
        let status = StatusCode::from_u16(code.http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (
            status,
            Json(json!({"code": code.code, "message": self.to_string()})),
        )
            .into_response();
        if let Some(value) = self
            .challenge()
            .and_then(|c| axum::http::HeaderValue::from_str(&c).ok())
        {
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

fn wire_value(name: &str, v: &Value) -> Result<WireValue, GatewayError> {
    Ok(match v {
        Value::Bool(b) => WireValue::Bool(*b),
        Value::String(s) => WireValue::Text(s.clone()),
        Value::Number(n) => match n.as_i64() {
            Some(i) => WireValue::Int(i),
            None => WireValue::Double(n.as_f64().ok_or_else(|| {
                GatewayError::InvalidArgument(format!(
                    "request_features.{name}: {n} is not a finite number"
                ))
            })?),
        },
        other => {
            return Err(GatewayError::InvalidArgument(format!(
                "request_features.{name}: expected a number, boolean or string, got {other}"
            )));
        }
    })
}

/// A raw event field's JSON value (the view's aggregates decide later which
/// types fit).
fn event_field(v: &Value) -> Result<WireValue, String> {
    Ok(match v {
        Value::Bool(b) => WireValue::Bool(*b),
        Value::String(s) => WireValue::Text(s.clone()),
        Value::Number(n) => match n.as_i64() {
            Some(i) => WireValue::Int(i),
            None => WireValue::Double(
                n.as_f64()
                    .ok_or_else(|| format!("{n} is not a finite number"))?,
            ),
        },
        other => return Err(format!("expected a number, boolean or string, got {other}")),
    })
}

/// The JSON form of a prediction (also used by tests and the demo).
pub fn prediction_json(p: &Prediction) -> Value {
    let ages: serde_json::Map<String, Value> = p
        .view_ages
        .iter()
        .map(|(view, age)| {
            let ms = age.map_or(-1, |a| i64::try_from(a.as_millis()).unwrap_or(i64::MAX));
            (view.clone(), json!(ms))
        })
        .collect();
    json!({
        "prediction_id": p.prediction_id,
        "model": p.model,
        "model_version": p.model_version,
        "route": p.route.as_str(),
        "outputs": p.outputs.iter().map(|o| json!({
            "name": o.name,
            "label": o.label,
            "score": o.score,
            "top_k": o.top_k.iter().map(|(l, s)| json!({"label": l, "score": s})).collect::<Vec<_>>(),
            "values": o.values,
        })).collect::<Vec<_>>(),
        "freshness": {"view_age_ms": ages, "defaulted_features": p.defaulted},
    })
}

async fn predict<S: FullStore>(
    State(shared): State<Arc<Shared<S>>>,
    Extension(caller): Extension<Caller>,
    Path(model): Path<String>,
    body: Result<Json<PredictBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, GatewayError> {
    let started = std::time::Instant::now();
    let result = predict_one(&shared, &caller, model.clone(), body).await;
    shared.record_timed("rest", "predict", &model, started, &result);
    let p = result?;
    shared.metrics.prediction(started.elapsed(), p.model_time);
    Ok(Json(prediction_json(&p)))
}

async fn predict_one<S: FullStore>(
    shared: &Shared<S>,
    caller: &Caller,
    model: String,
    body: Result<Json<PredictBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Prediction, GatewayError> {
    let Json(body) = body
        .map_err(|e| GatewayError::InvalidArgument(format!("request body: {}", e.body_text())))?;
    let input = predict_input(model, body, "", caller)?;
    authorize_predict(shared, "rest", caller, &input)?;
    shared.gateway.predict(&input, None).await
}

/// The policy check of one prediction; an unknown model is left to the core
/// (404).
pub(crate) fn authorize_predict<S: FullStore>(
    shared: &Shared<S>,
    front: &'static str,
    caller: &Caller,
    input: &PredictInput,
) -> Result<(), GatewayError> {
    if !shared.gateway.serves(&input.model) {
        return Ok(());
    }
    shared.authorize(
        front,
        Some(caller),
        Access::Predict {
            model: &input.model,
        },
    )?;
    // A pilot version asked for by a caller outside its groups is a policy
    // denial too (counted with the others).
    shared
        .gateway
        .check_explicit_version(input)
        .inspect_err(|e| {
            if matches!(e, GatewayError::PermissionDenied(_)) {
                shared.metrics.auth_denied(front, "predict");
            }
        })
}

fn predict_input(
    model: String,
    body: PredictBody,
    at: &str,
    caller: &Caller,
) -> Result<PredictInput, GatewayError> {
    let mut request_features = HashMap::with_capacity(body.request_features.len());
    for (k, v) in &body.request_features {
        let w = wire_value(k, v).map_err(|e| GatewayError::InvalidArgument(format!("{at}{e}")))?;
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

/// The JSON body of `POST /v1/models/{model}/predict-batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictBatchBody {
    /// One request per entity.
    pub requests: Vec<PredictBody>,
}

async fn predict_batch<S: FullStore>(
    State(shared): State<Arc<Shared<S>>>,
    Extension(caller): Extension<Caller>,
    Path(model): Path<String>,
    body: Result<Json<PredictBatchBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, GatewayError> {
    let started = std::time::Instant::now();
    let result = async {
        let Json(body) = body.map_err(|e| {
            GatewayError::InvalidArgument(format!("request body: {}", e.body_text()))
        })?;
        if body.requests.len() > shared.max_batch_entities {
            return Err(GatewayError::InvalidArgument(format!(
                "requests: {} entities, at most {} per call",
                body.requests.len(),
                shared.max_batch_entities
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
        for input in &inputs {
            authorize_predict(&shared, "rest", &caller, input)?;
        }
        shared.metrics.batch_entities(inputs.len());
        let answers =
            futures_util::future::join_all(inputs.iter().map(|i| shared.gateway.predict(i, None)))
                .await;
        let mut out = Vec::with_capacity(answers.len());
        for a in answers {
            out.push(prediction_json(&a?));
        }
        Ok(out)
    }
    .await;
    shared.record_timed("rest", "predict_batch", &model, started, &result);
    Ok(Json(json!({"responses": result?})))
}

async fn metrics<S: FullStore>(State(shared): State<Arc<Shared<S>>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        shared.render_metrics_with_jobs().await,
    )
        .into_response()
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

async fn push<S: FullStore>(
    State(shared): State<Arc<Shared<S>>>,
    Extension(caller): Extension<Caller>,
    Path(view): Path<String>,
    body: Result<Json<PushBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, GatewayError> {
    if let Err(e) = shared.authorize("rest", Some(&caller), Access::Push) {
        shared.metrics.request("rest", "push", e.code().code);
        return Err(e);
    }
    let Json(body) = body
        .map_err(|e| GatewayError::InvalidArgument(format!("request body: {}", e.body_text())))?;
    let mut rows = Vec::with_capacity(body.rows.len());
    for (i, r) in body.rows.into_iter().enumerate() {
        let mut values = HashMap::with_capacity(r.values.len());
        for (k, v) in &r.values {
            let w = wire_value(k, v)
                .map_err(|e| GatewayError::InvalidArgument(format!("rows[{i}].values.{k}: {e}")))?;
            values.insert(k.clone(), w);
        }
        rows.push(PushRow {
            keys: r.entity,
            values,
            event_time: crate::grpc::event_time(r.event_time_ms),
        });
    }
    let mut events = Vec::with_capacity(body.events.len());
    for (i, e) in body.events.into_iter().enumerate() {
        let mut fields = HashMap::with_capacity(e.fields.len());
        for (k, v) in &e.fields {
            let w = event_field(v).map_err(|m| {
                GatewayError::InvalidArgument(format!("events[{i}].fields.{k}: {m}"))
            })?;
            fields.insert(k.clone(), w);
        }
        events.push(PushEvent {
            keys: e.entity,
            event_id: e.event_id,
            fields,
            event_time: crate::grpc::event_time(e.event_time_ms),
        });
    }
    let started = std::time::Instant::now();
    let result = shared.gateway.push(&view, &rows, &events).await;
    shared.record_timed("rest", "push", "-", started, &result);
    let written = result?;
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
    State(shared): State<Arc<Shared<S>>>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<FeedbackBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, GatewayError> {
    if let Err(e) = shared.authorize("rest", Some(&caller), Access::Feedback) {
        shared.metrics.request("rest", "feedback", e.code().code);
        return Err(e);
    }
    let started = std::time::Instant::now();
    let result = async {
        let Json(body) = body.map_err(|e| {
            GatewayError::InvalidArgument(format!("request body: {}", e.body_text()))
        })?;
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
        shared
            .gateway
            .feedback(FeedbackInput {
                prediction_id: body.prediction_id,
                outcome,
                observed_at: crate::grpc::event_time(body.observed_at_ms),
                subject: caller.subject,
            })
            .await
    }
    .await;
    shared.record_timed("rest", "feedback", "-", started, &result);
    result?;
    Ok(Json(json!({})))
}

/// The OpenAPI document of these routes (`gateway/openapi.json`).
pub const OPENAPI: &str = include_str!("../openapi.json");

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

async fn readyz<S: FullStore>(State(shared): State<Arc<Shared<S>>>) -> Response {
    if !shared.auth.verifier.keys().loaded() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reason": "the SSO issuer's signing keys are not loaded yet"})),
        )
            .into_response();
    }
    if shared
        .gateway
        .models_ready(Duration::from_millis(500))
        .await
    {
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

async fn dev_discovery<S: FullStore>(State(shared): State<Arc<Shared<S>>>) -> Response {
    match &shared.dev_issuer {
        Some(dev) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            crate::auth::dev_issuer::DevIssuer::discovery(&dev.url),
        )
            .into_response(),
        None => not_found().await,
    }
}

async fn dev_jwks<S: FullStore>(State(shared): State<Arc<Shared<S>>>) -> Response {
    match &shared.dev_issuer {
        Some(dev) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            dev.issuer.jwks().to_owned(),
        )
            .into_response(),
        None => not_found().await,
    }
}

/// The REST routes: the `/v1` API behind the auth middleware; health,
/// readiness, metrics, the OpenAPI document and (in dev mode) the dev
/// issuer's discovery and JWKS open.
pub fn router<S: FullStore>(shared: Arc<Shared<S>>) -> Router {
    let api = Router::new()
        .route("/v1/models/{model}/predict", post(predict::<S>))
        .route("/v1/models/{model}/predict-batch", post(predict_batch::<S>))
        .route("/v1/features/{view}/push", post(push::<S>))
        .route("/v1/feedback", post(feedback::<S>))
        .route(
            "/v1/admin/models",
            get(crate::routing_admin::rest_list::<S>),
        )
        .route(
            "/v1/admin/models/{model}/routing",
            get(crate::routing_admin::rest_get::<S>).post(crate::routing_admin::rest_change::<S>),
        )
        .route(
            "/v1/admin/models/{model}/shadow-report",
            get(crate::routing_admin::rest_shadow_report::<S>),
        )
        // --- refresh tuner admin API (crate::tuner_admin) ---
        .merge(crate::tuner_admin::routes::<S>())
        // --- end refresh tuner admin API ---
        .route_layer(axum::middleware::from_fn_with_state(
            shared.auth.clone(),
            crate::auth::layer::rest,
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
        .with_state(shared)
}
