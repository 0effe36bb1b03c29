//! The REST front: the V2 HTTP/JSON API under `/v2/…` (axum), with the binary
//! tensor extension (`Inference-Header-Content-Length`, `binary_data_size`,
//! `binary_data`) that Triton's HTTP clients use. Bodies are decoded here into
//! the wire-neutral request; errors are `{"error": …, "code": …}` with the status
//! from the shared error table. Also the model repository extension
//! (`/v2/repository/…`: index, load, unload) over the live repository.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::Instrument as _;

use crate::datatype::{DataType, TensorData};
use crate::engine::Engine;
use crate::error::InferError;
use crate::grpc::{EXTENSIONS, SERVER_NAME};
use crate::live::LiveRepository;
use crate::request::{
    InferRequest, InputTensor, RequestedOutput, decode_raw, input_header, unsupported,
};

#[derive(Clone)]
struct AppState {
    engine: Arc<Engine>,
    repository: Arc<LiveRepository>,
    timeout: Duration,
}

/// The V2 REST routes over `repository`'s engine; inference waits at most
/// `timeout`.
pub fn router(repository: Arc<LiveRepository>, timeout: Duration) -> Router {
    let engine = repository.engine().clone();
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{model}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(model_version_metadata),
        )
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_version_ready),
        )
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository_unload),
        )
        .route("/metrics", get(metrics))
        .route("/v2/models/{model}/infer", post(infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer_version),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Same bound as the gRPC front: large batches fit, a runaway body does not.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(AppState {
            engine,
            repository,
            timeout,
        })
}

/// An error as the REST API answers it.
struct ApiError(InferError);

impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let wire = self.0.wire();
        let status = StatusCode::from_u16(wire.http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({ "error": self.0.to_string(), "code": wire.code });
        (status, axum::Json(body)).into_response()
    }
}

async fn not_found() -> Response {
    let body = serde_json::json!({
        "error": "no such endpoint; see /v2/health/live, /v2/models/{model}[/versions/{v}][/ready|/infer], /v2/repository/index, /v2/repository/models/{model}/load|unload",
        "code": "not_found",
    });
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

async fn method_not_allowed() -> Response {
    let body = serde_json::json!({
        "error": "method not allowed: health, readiness and metadata are GET; infer and repository calls are POST",
        "code": "method_not_allowed",
    });
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}

async fn live() -> Response {
    axum::Json(serde_json::json!({ "live": true })).into_response()
}

fn ready_response(ready: bool) -> Response {
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(serde_json::json!({ "ready": ready }))).into_response()
}

async fn ready(State(s): State<AppState>) -> Response {
    ready_response(s.engine.is_ready())
}

async fn server_metadata() -> Response {
    axum::Json(serde_json::json!({
        "name": SERVER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    }))
    .into_response()
}

#[derive(Serialize)]
struct TensorMetadata<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
}

fn metadata_response(
    s: &AppState,
    model: &str,
    version: Option<&str>,
) -> Result<Response, ApiError> {
    let meta = s.engine.metadata(model, version)?;
    let tensors = |ts: &'_ [crate::config::TensorSpec]| -> Vec<Value> {
        ts.iter()
            .map(|t| {
                serde_json::to_value(TensorMetadata {
                    name: &t.name,
                    datatype: t.datatype.as_str(),
                    shape: &t.shape,
                })
                .unwrap_or(Value::Null)
            })
            .collect()
    };
    // Beyond the V2 fields (which clients parse strictly by name, so extra
    // ones are safe): the version unversioned calls get, and each known
    // version's state, loading and failed ones included (`versions` lists
    // the served ones only).
    let states: Vec<Value> = meta
        .states
        .iter()
        .map(|st| {
            serde_json::json!({
                "version": st.version.to_string(),
                "state": st.state.as_str(),
                "reason": st.reason,
            })
        })
        .collect();
    Ok(axum::Json(serde_json::json!({
        "name": meta.name,
        "versions": meta.versions,
        "platform": meta.platform,
        "inputs": tensors(&meta.spec.inputs),
        "outputs": tensors(&meta.spec.outputs),
        "default_version": meta.default_version,
        "version_states": states,
    }))
    .into_response())
}

async fn model_metadata(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    metadata_response(&s, &model, None)
}

async fn model_version_metadata(
    State(s): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    metadata_response(&s, &model, Some(&version))
}

async fn model_ready(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    Ok(ready_response(s.engine.model_ready(&model, None)?))
}

async fn model_version_ready(
    State(s): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(ready_response(
        s.engine.model_ready(&model, Some(&version))?,
    ))
}

/// Body of an index call: `{}` or `{"ready": true}` (only ready versions).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct IndexRequest {
    #[serde(default)]
    ready: bool,
}

async fn repository_index(State(s): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let request: IndexRequest = if body.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            InferError::InvalidInput(format!(
                "repository index body must be {{}} or {{\"ready\": true|false}}: {e}"
            ))
        })?
    };
    Ok(axum::Json(s.repository.index(request.ready)).into_response())
}

/// Runs a repository call, which may load models (seconds), on a blocking
/// thread.
async fn blocking_repository_call(
    s: &AppState,
    model: String,
    call: fn(&LiveRepository, &str) -> Result<(), InferError>,
) -> Result<Response, ApiError> {
    let repository = s.repository.clone();
    let name = model.clone();
    tokio::task::spawn_blocking(move || call(&repository, &name))
        .await
        .map_err(|e| InferError::LoadFailed {
            model,
            detail: format!("the repository call stopped: {e}"),
        })??;
    Ok(StatusCode::OK.into_response())
}

async fn repository_load(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    blocking_repository_call(&s, model, LiveRepository::load).await
}

async fn repository_unload(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    blocking_repository_call(&s, model, LiveRepository::unload).await
}

async fn infer(
    State(s): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    traced_infer(&s, model, None, &headers, &body).await
}

async fn infer_version(
    State(s): State<AppState>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    traced_infer(&s, model, Some(version), &headers, &body).await
}

async fn metrics(State(s): State<AppState>) -> Response {
    match s.engine.metrics().render() {
        Ok(text) => (
            [(header::CONTENT_TYPE, telemetry::prom::CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode /metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// One REST inference in its `model_infer` span (continuing the caller's
/// trace), counted in `/metrics`.
async fn traced_infer(
    s: &AppState,
    model: String,
    version: Option<String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let metrics = s.engine.metrics();
    let _in_flight = metrics.start();
    let started = std::time::Instant::now();
    let span = tracing::info_span!("model_infer", front = "rest", model = %model);
    telemetry::continue_trace(&span, headers);
    let name = model.clone();
    let result = run_infer(s, model, version, headers, body)
        .instrument(span)
        .await;
    metrics.finished(1, &name, started.elapsed(), result.is_ok());
    result
}

/// Largest request body accepted, as on the gRPC front.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Header of the binary tensor extension: the JSON part's length in the body.
const HEADER_LENGTH: &str = "inference-header-content-length";

/// V2 JSON inference request body.
#[derive(Deserialize)]
struct JsonRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: HashMap<String, Value>,
    inputs: Vec<JsonInput>,
    #[serde(default)]
    outputs: Vec<JsonOutput>,
}

#[derive(Deserialize)]
struct JsonInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: HashMap<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct JsonOutput {
    name: String,
    #[serde(default)]
    parameters: HashMap<String, Value>,
}

fn bool_param(params: &HashMap<String, Value>, key: &str) -> Option<bool> {
    params.get(key).and_then(Value::as_bool)
}

/// Splits a body into its JSON part and the binary tensor data that follows it
/// (binary tensor extension: `Inference-Header-Content-Length` says where).
fn split_body<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), InferError> {
    let Some(value) = headers.get(HEADER_LENGTH) else {
        return Ok((body, &[]));
    };
    let length = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n <= body.len())
        .ok_or_else(|| {
            InferError::InvalidInput(format!(
                "{HEADER_LENGTH} must be the JSON part's length in bytes, at most the body's {} bytes",
                body.len()
            ))
        })?;
    Ok(body.split_at(length))
}

async fn run_infer(
    s: &AppState,
    model: String,
    version: Option<String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let (request, all_binary) =
        tracing::info_span!("decode").in_scope(|| decode_rest(model, version, headers, body))?;
    let binary_flags: Vec<Option<bool>> = request.outputs.iter().map(|o| o.binary).collect();
    let response = s.engine.infer(request, Some(s.timeout)).await?;
    tracing::info_span!("encode").in_scope(|| encode_rest(response, &binary_flags, all_binary))
}

/// The JSON (+ binary) body → the wire-neutral request, and whether every
/// output is asked for as binary.
fn decode_rest(
    model: String,
    version: Option<String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(InferRequest, bool), ApiError> {
    let (json, mut binary) = split_body(headers, body)?;
    let parsed: JsonRequest = serde_json::from_slice(json).map_err(|e| {
        InferError::InvalidInput(format!(
            "request body is not a valid V2 inference request: {e}; expected {{\"inputs\": [{{\"name\", \"shape\", \"datatype\", \"data\"}}]}}"
        ))
    })?;
    let mut inputs = Vec::with_capacity(parsed.inputs.len());
    for t in parsed.inputs {
        let header = input_header(&t.name, &t.datatype, &t.shape)?;
        let binary_size = t.parameters.get("binary_data_size").map(Value::as_u64);
        let data = match (binary_size, &t.data) {
            (Some(Some(size)), None) => {
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size > binary.len() {
                    return Err(InferError::InvalidInput(format!(
                        "input \"{}\": binary_data_size {size} exceeds the {} binary bytes left in the body",
                        t.name,
                        binary.len()
                    ))
                    .into());
                }
                let (mine, rest) = binary.split_at(size);
                binary = rest;
                decode_raw(&t.name, &header, mine, "binary data")?
            }
            (None, Some(data)) => json_tensor(&t.name, header.datatype, data, header.count)?,
            (Some(None), _) => {
                return Err(InferError::InvalidInput(format!(
                    "input \"{}\": binary_data_size must be a byte count",
                    t.name
                ))
                .into());
            }
            (Some(_), Some(_)) | (None, None) => {
                return Err(InferError::InvalidInput(format!(
                    "input \"{}\": give either \"data\" or parameters.binary_data_size, exactly one",
                    t.name
                ))
                .into());
            }
        };
        inputs.push(InputTensor {
            name: t.name,
            datatype: header.datatype,
            shape: header.shape,
            data,
        });
    }
    if !binary.is_empty() {
        return Err(InferError::InvalidInput(format!(
            "{} bytes of binary data follow the JSON header but no input claims them (binary_data_size)",
            binary.len()
        ))
        .into());
    }
    let all_binary = bool_param(&parsed.parameters, "binary_data_output").unwrap_or(false);
    let outputs = parsed
        .outputs
        .into_iter()
        .map(|o| RequestedOutput {
            binary: bool_param(&o.parameters, "binary_data"),
            name: o.name,
        })
        .collect();
    let request = InferRequest {
        model,
        version,
        id: parsed.id.unwrap_or_default(),
        inputs,
        outputs,
    };
    Ok((request, all_binary))
}

/// The response → JSON, or JSON + binary tensor data.
fn encode_rest(
    response: crate::request::InferResponse,
    binary_flags: &[Option<bool>],
    all_binary: bool,
) -> Result<Response, ApiError> {
    let mut blob: Vec<u8> = Vec::new();
    let outputs: Vec<Value> = response
        .outputs
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            let binary = binary_flags.get(i).copied().flatten().unwrap_or(all_binary);
            let mut out = serde_json::json!({
                "name": o.name,
                "datatype": o.tensor.data.datatype().as_str(),
                "shape": o.tensor.shape,
            });
            if binary {
                let bytes = o.tensor.data.to_le_bytes();
                out["parameters"] = serde_json::json!({ "binary_data_size": bytes.len() });
                blob.extend_from_slice(&bytes);
            } else {
                out["data"] = tensor_json(&o.tensor.data);
            }
            out
        })
        .collect();
    let mut body = serde_json::json!({
        "model_name": response.model,
        "model_version": response.version,
        "outputs": outputs,
    });
    if !response.id.is_empty() {
        body["id"] = Value::String(response.id);
    }
    if blob.is_empty() {
        return Ok(axum::Json(body).into_response());
    }
    let mut bytes = serde_json::to_vec(&body).map_err(|e| InferError::Inference {
        model: String::new(),
        version: String::new(),
        message: format!("cannot encode the response: {e}"),
    })?;
    let header_length = bytes.len();
    bytes.extend_from_slice(&blob);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::HeaderName::from_static(HEADER_LENGTH),
                header_length.to_string(),
            ),
        ],
        bytes,
    )
        .into_response())
}

/// Flattens (possibly nested) JSON `data` row-major into typed elements.
fn json_tensor(
    name: &str,
    datatype: DataType,
    data: &Value,
    count: usize,
) -> Result<TensorData, InferError> {
    // No preallocation from the declared shape: a lying shape must not allocate.
    let mut flat = Vec::new();
    flatten(data, &mut flat);
    if flat.len() != count {
        return Err(InferError::InvalidInput(format!(
            "input \"{name}\": the shape needs {count} values, \"data\" has {}",
            flat.len()
        )));
    }
    let bad = |i: usize, v: &Value, want: &str| {
        InferError::InvalidInput(format!(
            "input \"{name}\": data[{i}] = {v} is not {want} ({datatype})"
        ))
    };
    macro_rules! ints {
        ($t:ty, $var:ident, $get:ident) => {
            TensorData::$var(
                flat.iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.$get()
                            .and_then(|x| <$t>::try_from(x).ok())
                            .ok_or_else(|| {
                                bad(i, v, concat!("an integer in range of ", stringify!($t)))
                            })
                    })
                    .collect::<Result<_, _>>()?,
            )
        };
    }
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(
            flat.iter()
                .enumerate()
                .map(|(i, v)| v.as_bool().ok_or_else(|| bad(i, v, "true or false")))
                .collect::<Result<_, _>>()?,
        ),
        DataType::I8 => ints!(i8, I8, as_i64),
        DataType::I16 => ints!(i16, I16, as_i64),
        DataType::I32 => ints!(i32, I32, as_i64),
        DataType::I64 => ints!(i64, I64, as_i64),
        DataType::U8 => ints!(u8, U8, as_u64),
        DataType::U16 => ints!(u16, U16, as_u64),
        DataType::U32 => ints!(u32, U32, as_u64),
        DataType::U64 => ints!(u64, U64, as_u64),
        DataType::F32 => TensorData::F32(
            flat.iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_f64()
                        .map(|x| x as f32)
                        .ok_or_else(|| bad(i, v, "a number"))
                })
                .collect::<Result<_, _>>()?,
        ),
        DataType::F64 => TensorData::F64(
            flat.iter()
                .enumerate()
                .map(|(i, v)| v.as_f64().ok_or_else(|| bad(i, v, "a number")))
                .collect::<Result<_, _>>()?,
        ),
        DataType::F16 | DataType::Bytes => return Err(unsupported(name, datatype)),
    })
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|x| flatten(x, out)),
        other => out.push(other),
    }
}

fn tensor_json(data: &TensorData) -> Value {
    crate::datatype::each_variant!(data, v => serde_json::to_value(v).unwrap_or(Value::Null))
}
