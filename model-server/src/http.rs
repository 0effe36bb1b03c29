//! The REST front: the V2 HTTP/JSON API under `/v2/…` (axum). JSON is decoded
//! here into the wire-neutral request; errors are `{"error": …, "code": …}`
//! with the status from the shared error table.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::datatype::{DataType, TensorData};
use crate::engine::Engine;
use crate::error::InferError;
use crate::grpc::SERVER_NAME;
use crate::request::{InferRequest, InputTensor, RequestedOutput, checked_shape, element_count};

#[derive(Clone)]
struct AppState {
    engine: Arc<Engine>,
    timeout: Duration,
}

/// The V2 REST routes over `engine`; inference waits at most `timeout`.
pub fn router(engine: Arc<Engine>, timeout: Duration) -> Router {
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
        .route("/v2/models/{model}/infer", post(infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer_version),
        )
        .fallback(not_found)
        .with_state(AppState { engine, timeout })
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
        "error": "no such endpoint; see /v2/health/live, /v2/models/{model}[/versions/{v}][/ready|/infer]",
        "code": "not_found",
    });
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
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
        "extensions": [],
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
    Ok(axum::Json(serde_json::json!({
        "name": meta.name,
        "versions": meta.versions,
        "platform": meta.platform,
        "inputs": tensors(&meta.spec.inputs),
        "outputs": tensors(&meta.spec.outputs),
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

async fn infer(
    State(s): State<AppState>,
    Path(model): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    run_infer(&s, model, None, &body).await
}

async fn infer_version(
    State(s): State<AppState>,
    Path((model, version)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    run_infer(&s, model, Some(version), &body).await
}

/// V2 JSON inference request body.
#[derive(Deserialize)]
struct JsonRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    #[expect(
        dead_code,
        reason = "accepted per the V2 spec; no request parameter changes behaviour yet"
    )]
    parameters: Option<HashMap<String, Value>>,
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
    #[expect(
        dead_code,
        reason = "accepted per the V2 spec; no tensor parameter changes behaviour yet"
    )]
    parameters: Option<HashMap<String, Value>>,
    data: Value,
}

#[derive(Deserialize)]
struct JsonOutput {
    name: String,
    #[serde(default)]
    parameters: HashMap<String, Value>,
}

async fn run_infer(
    s: &AppState,
    model: String,
    version: Option<String>,
    body: &[u8],
) -> Result<Response, ApiError> {
    let parsed: JsonRequest = serde_json::from_slice(body).map_err(|e| {
        InferError::InvalidInput(format!(
            "request body is not a valid V2 inference request: {e}; expected {{\"inputs\": [{{\"name\", \"shape\", \"datatype\", \"data\"}}]}}"
        ))
    })?;
    let mut inputs = Vec::with_capacity(parsed.inputs.len());
    for t in parsed.inputs {
        let datatype: DataType =
            t.datatype
                .parse()
                .map_err(|e: crate::datatype::UnknownDataType| {
                    InferError::InvalidInput(format!("input \"{}\": {e}", t.name))
                })?;
        let shape = checked_shape(&t.name, &t.shape)?;
        let count = element_count(&t.name, &shape)?;
        let data = json_tensor(&t.name, datatype, &t.data, count)?;
        inputs.push(InputTensor {
            name: t.name,
            datatype,
            shape,
            data,
        });
    }
    let outputs = parsed
        .outputs
        .into_iter()
        .map(|o| {
            let binary = o.parameters.get("binary_data").and_then(Value::as_bool);
            if binary == Some(true) {
                return Err(InferError::InvalidInput(format!(
                    "output \"{}\": binary_data over REST (the binary tensor extension) is not supported; use gRPC raw_output_contents or JSON",
                    o.name
                )));
            }
            Ok(RequestedOutput { name: o.name, binary })
        })
        .collect::<Result<_, _>>()?;
    let request = InferRequest {
        model,
        version,
        id: parsed.id.unwrap_or_default(),
        inputs,
        outputs,
    };
    let response = s.engine.infer(request, Some(s.timeout)).await?;
    let outputs: Vec<Value> = response
        .outputs
        .into_iter()
        .map(|o| {
            serde_json::json!({
                "name": o.name,
                "datatype": o.tensor.data.datatype().as_str(),
                "shape": o.tensor.shape,
                "data": tensor_json(&o.tensor.data),
            })
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
    Ok(axum::Json(body).into_response())
}

/// Flattens (possibly nested) JSON `data` row-major into typed elements.
fn json_tensor(
    name: &str,
    datatype: DataType,
    data: &Value,
    count: usize,
) -> Result<TensorData, InferError> {
    let mut flat = Vec::with_capacity(count);
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
        DataType::F16 | DataType::Bytes => {
            return Err(InferError::InvalidInput(format!(
                "input \"{name}\": datatype {datatype} is not supported by this server"
            )));
        }
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
