//! The gRPC front: `inference.GRPCInferenceService` over tonic. Decodes V2
//! messages into the wire-neutral request, calls the engine, encodes the answer.

use std::sync::Arc;
use std::time::Duration;

use proto::inference as pb;
use proto::inference::grpc_inference_service_server::GrpcInferenceService;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::datatype::{DataType, TensorData};
use crate::engine::{Engine, ModelMetadata};
use crate::error::InferError;
use crate::request::{
    InferRequest, InferResponse, InputTensor, RequestedOutput, decode_raw, input_header,
    unsupported,
};

/// Server name reported by ServerMetadata.
pub const SERVER_NAME: &str = "mlgw-model-server";

/// V2 protocol extensions this server implements, as Triton names them.
pub const EXTENSIONS: &[&str] = &["binary_tensor_data", "model_repository"];

/// Response header of ModelMetadata naming the version unversioned calls get
/// (the V2 message has no field for it).
pub const DEFAULT_VERSION_HEADER: &str = "mlgw-default-version";

/// The V2 gRPC service over an [`Engine`].
#[derive(Clone)]
pub struct InferenceService {
    engine: Arc<Engine>,
    max_timeout: Duration,
}

impl InferenceService {
    /// A service answering from `engine`; calls wait at most `max_timeout`
    /// (less when the caller's `grpc-timeout` is shorter).
    pub fn new(engine: Arc<Engine>, max_timeout: Duration) -> Self {
        InferenceService {
            engine,
            max_timeout,
        }
    }
}

fn version_arg(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.engine.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let ready = self.engine.model_ready(&r.name, version_arg(&r.version))?;
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: EXTENSIONS.iter().map(|e| (*e).to_owned()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let meta = self.engine.metadata(&r.name, version_arg(&r.version))?;
        let default = meta
            .default_version
            .as_deref()
            .and_then(|v| tonic::metadata::MetadataValue::try_from(v).ok());
        let mut response = Response::new(metadata_to_pb(meta));
        if let Some(v) = default {
            response.metadata_mut().insert(DEFAULT_VERSION_HEADER, v);
        }
        Ok(response)
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let deadline = grpc_timeout(request.metadata())
            .map_or(self.max_timeout, |d| answer_before(d).min(self.max_timeout));
        let metrics = self.engine.metrics();
        let _in_flight = metrics.start();
        let started = std::time::Instant::now();
        let span =
            tracing::info_span!("model_infer", front = "grpc", model = tracing::field::Empty);
        telemetry::continue_trace(&span, request.metadata().as_ref());
        let mut name = String::new();
        let result = async {
            let (request, raw_default) =
                tracing::info_span!("decode").in_scope(|| decode_infer(request.into_inner()))?;
            tracing::Span::current().record("model", request.model.as_str());
            name.clone_from(&request.model);
            let binary = binary_outputs(&request, raw_default);
            let response = self.engine.infer(request, Some(deadline)).await?;
            Ok(Response::new(
                tracing::info_span!("encode").in_scope(|| encode_infer(response, binary)),
            ))
        }
        .instrument(span)
        .await;
        metrics.finished(0, &name, started.elapsed(), result.is_ok());
        result
    }
}

fn metadata_to_pb(meta: ModelMetadata) -> pb::ModelMetadataResponse {
    let tensor = |t: &crate::config::TensorSpec| pb::model_metadata_response::TensorMetadata {
        name: t.name.clone(),
        datatype: t.datatype.as_str().into(),
        shape: t.shape.clone(),
    };
    pb::ModelMetadataResponse {
        name: meta.name,
        versions: meta.versions,
        platform: meta.platform,
        inputs: meta.spec.inputs.iter().map(tensor).collect(),
        outputs: meta.spec.outputs.iter().map(tensor).collect(),
    }
}

/// How long the server may work on a call whose caller waits `deadline`: a
/// little less, so the caller receives our DEADLINE_EXCEEDED (with a message)
/// rather than its own transport timeout racing it.
pub fn answer_before(deadline: Duration) -> Duration {
    deadline.saturating_sub((deadline / 10).min(Duration::from_millis(10)))
}

/// The caller's deadline from the `grpc-timeout` header (gRPC over HTTP/2 spec:
/// up to 8 digits and a unit H, M, S, m, u or n).
pub fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    proto::grpc_timeout(metadata)
}

fn bool_param(
    params: &std::collections::HashMap<String, pb::InferParameter>,
    key: &str,
) -> Option<bool> {
    match params.get(key)?.parameter_choice {
        Some(pb::infer_parameter::ParameterChoice::BoolParam(b)) => Some(b),
        _ => None,
    }
}

/// Whether outputs go back as raw bytes: asked per output with `binary_data`,
/// else raw when the inputs came raw (what Triton's clients expect).
fn binary_outputs(request: &InferRequest, raw_default: bool) -> bool {
    let asked: Vec<bool> = request.outputs.iter().filter_map(|o| o.binary).collect();
    if asked.is_empty() {
        raw_default
    } else {
        asked.iter().any(|b| *b)
    }
}

/// Decodes a V2 request; the flag says whether its inputs came as raw bytes.
///
/// # Errors
/// `InvalidInput` naming the tensor for malformed data.
pub fn decode_infer(r: pb::ModelInferRequest) -> Result<(InferRequest, bool), InferError> {
    let raw = !r.raw_input_contents.is_empty();
    if raw && r.raw_input_contents.len() != r.inputs.len() {
        return Err(InferError::InvalidInput(format!(
            "raw_input_contents has {} entries but there are {} inputs; send one per input, in order",
            r.raw_input_contents.len(),
            r.inputs.len()
        )));
    }
    let mut inputs = Vec::with_capacity(r.inputs.len());
    for (i, t) in r.inputs.into_iter().enumerate() {
        let header = input_header(&t.name, &t.datatype, &t.shape)?;
        let data = if raw {
            if t.contents.is_some() {
                return Err(InferError::InvalidInput(format!(
                    "input \"{}\": has contents although raw_input_contents is used; use one form for all inputs",
                    t.name
                )));
            }
            let bytes = r
                .raw_input_contents
                .get(i)
                .map(|b| b.as_ref())
                .unwrap_or_default();
            decode_raw(&t.name, &header, bytes, &format!("raw_input_contents[{i}]"))?
        } else {
            from_contents(&t.name, header.datatype, t.contents.unwrap_or_default())?
        };
        inputs.push(InputTensor {
            name: t.name,
            datatype: header.datatype,
            shape: header.shape,
            data,
        });
    }
    let outputs = r
        .outputs
        .into_iter()
        .map(|o| RequestedOutput {
            binary: bool_param(&o.parameters, "binary_data"),
            name: o.name,
        })
        .collect();
    Ok((
        InferRequest {
            model: r.model_name,
            version: version_arg(&r.model_version).map(str::to_owned),
            id: r.id,
            inputs,
            outputs,
        },
        raw,
    ))
}

/// Takes the typed contents field that matches `datatype`, refusing data put in
/// another field and values out of the type's range.
fn from_contents(
    name: &str,
    datatype: DataType,
    c: pb::InferTensorContents,
) -> Result<TensorData, InferError> {
    let fields = [
        ("bool_contents", c.bool_contents.len()),
        ("int_contents", c.int_contents.len()),
        ("int64_contents", c.int64_contents.len()),
        ("uint_contents", c.uint_contents.len()),
        ("uint64_contents", c.uint64_contents.len()),
        ("fp32_contents", c.fp32_contents.len()),
        ("fp64_contents", c.fp64_contents.len()),
        ("bytes_contents", c.bytes_contents.len()),
    ];
    let expected = match datatype {
        DataType::Bool => "bool_contents",
        DataType::I8 | DataType::I16 | DataType::I32 => "int_contents",
        DataType::I64 => "int64_contents",
        DataType::U8 | DataType::U16 | DataType::U32 => "uint_contents",
        DataType::U64 => "uint64_contents",
        DataType::F32 => "fp32_contents",
        DataType::F64 => "fp64_contents",
        DataType::F16 | DataType::Bytes => return Err(unsupported(name, datatype)),
    };
    if let Some((other, _)) = fields.iter().find(|(f, n)| *n > 0 && *f != expected) {
        return Err(InferError::InvalidInput(format!(
            "input \"{name}\": {datatype} data belongs in contents.{expected}, but contents.{other} is set"
        )));
    }
    let range = |kind: &str| {
        InferError::InvalidInput(format!(
            "input \"{name}\": a value is out of range for {kind}"
        ))
    };
    macro_rules! narrow {
        ($v:expr, $t:ty, $var:ident) => {
            TensorData::$var(
                $v.into_iter()
                    .map(<$t>::try_from)
                    .collect::<Result<Vec<$t>, _>>()
                    .map_err(|_| range(datatype.as_str()))?,
            )
        };
    }
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(c.bool_contents),
        DataType::I8 => narrow!(c.int_contents, i8, I8),
        DataType::I16 => narrow!(c.int_contents, i16, I16),
        DataType::I32 => TensorData::I32(c.int_contents),
        DataType::I64 => TensorData::I64(c.int64_contents),
        DataType::U8 => narrow!(c.uint_contents, u8, U8),
        DataType::U16 => narrow!(c.uint_contents, u16, U16),
        DataType::U32 => TensorData::U32(c.uint_contents),
        DataType::U64 => TensorData::U64(c.uint64_contents),
        DataType::F32 => TensorData::F32(c.fp32_contents),
        DataType::F64 => TensorData::F64(c.fp64_contents),
        DataType::F16 | DataType::Bytes => return Err(unsupported(name, datatype)),
    })
}

fn to_contents(data: TensorData) -> pb::InferTensorContents {
    let mut c = pb::InferTensorContents::default();
    match data {
        TensorData::Bool(v) => c.bool_contents = v,
        TensorData::I8(v) => c.int_contents = v.into_iter().map(i32::from).collect(),
        TensorData::I16(v) => c.int_contents = v.into_iter().map(i32::from).collect(),
        TensorData::I32(v) => c.int_contents = v,
        TensorData::I64(v) => c.int64_contents = v,
        TensorData::U8(v) => c.uint_contents = v.into_iter().map(u32::from).collect(),
        TensorData::U16(v) => c.uint_contents = v.into_iter().map(u32::from).collect(),
        TensorData::U32(v) => c.uint_contents = v,
        TensorData::U64(v) => c.uint64_contents = v,
        TensorData::F32(v) => c.fp32_contents = v,
        TensorData::F64(v) => c.fp64_contents = v,
    }
    c
}

/// Encodes a response, outputs as raw bytes or as typed contents.
pub fn encode_infer(r: InferResponse, binary: bool) -> pb::ModelInferResponse {
    let mut raw = Vec::new();
    let outputs = r
        .outputs
        .into_iter()
        .map(|o| {
            let datatype = o.tensor.data.datatype().as_str().to_owned();
            let shape = o.tensor.shape.iter().map(|d| *d as i64).collect();
            let contents = if binary {
                raw.push(o.tensor.data.to_le_bytes().into());
                None
            } else {
                Some(to_contents(o.tensor.data))
            };
            pb::model_infer_response::InferOutputTensor {
                name: o.name,
                datatype,
                shape,
                parameters: Default::default(),
                contents,
            }
        })
        .collect();
    pb::ModelInferResponse {
        model_name: r.model,
        model_version: r.version,
        id: r.id,
        parameters: Default::default(),
        outputs,
        raw_output_contents: raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let mut m = tonic::metadata::MetadataMap::new();
        for (v, want) in [
            ("100m", Some(Duration::from_millis(100))),
            ("2S", Some(Duration::from_secs(2))),
            ("5u", Some(Duration::from_micros(5))),
            ("123456789m", None),
            ("10x", None),
        ] {
            m.insert("grpc-timeout", v.parse().unwrap());
            assert_eq!(grpc_timeout(&m), want, "{v}");
        }
    }

    #[test]
    fn contents_in_the_wrong_field_are_named() {
        let c = pb::InferTensorContents {
            fp64_contents: vec![1.0],
            ..Default::default()
        };
        let err = from_contents("features", DataType::F32, c)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("fp32_contents") && err.contains("fp64_contents"),
            "{err}"
        );
    }

    #[test]
    fn int8_values_out_of_range_are_refused() {
        let c = pb::InferTensorContents {
            int_contents: vec![1, 300],
            ..Default::default()
        };
        assert!(from_contents("x", DataType::I8, c).is_err());
    }
}
