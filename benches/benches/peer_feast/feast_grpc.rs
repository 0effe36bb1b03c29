//! A client of Feast's gRPC feature server (`feast listen`): its
//! `GrpcFeatureServer/GetOnlineFeatures` with the few messages it needs,
//! declared with prost's derive from the field numbers of Feast's protos
//! (feast/serving/ServingService.proto, feast/types/Value.proto; the service
//! has no package). Fields the bench does not read are left out: protobuf
//! skips them on the wire.

use std::collections::HashMap;

use http::uri::PathAndQuery;
use tonic::transport::Channel;

use super::{FeastError, STORE_FEATURES, customer_id};

/// `feast.serving.FeatureList`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FeatureList {
    #[prost(string, repeated, tag = "1")]
    pub val: Vec<String>,
}

/// `feast.types.Value`: the scalar cases.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    #[prost(oneof = "Scalar", tags = "2, 3, 4, 5, 6, 7")]
    pub val: Option<Scalar>,
}

/// The scalar cases of `feast.types.Value.val`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Scalar {
    #[prost(string, tag = "2")]
    String(String),
    #[prost(int32, tag = "3")]
    Int32(i32),
    #[prost(int64, tag = "4")]
    Int64(i64),
    #[prost(double, tag = "5")]
    Double(f64),
    #[prost(float, tag = "6")]
    Float(f32),
    #[prost(bool, tag = "7")]
    Bool(bool),
}

/// `feast.types.RepeatedValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RepeatedValue {
    #[prost(message, repeated, tag = "1")]
    pub val: Vec<Value>,
}

/// `feast.serving.GetOnlineFeaturesRequest` with its `features` case of
/// the `kind` oneof (tag 2).
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetOnlineFeaturesRequest {
    #[prost(message, optional, tag = "2")]
    pub features: Option<FeatureList>,
    #[prost(map = "string, message", tag = "3")]
    pub entities: HashMap<String, RepeatedValue>,
    #[prost(bool, tag = "4")]
    pub full_feature_names: bool,
}

/// `feast.serving.GetOnlineFeaturesResponseMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metadata {
    #[prost(message, optional, tag = "1")]
    pub feature_names: Option<FeatureList>,
}

/// `feast.serving.GetOnlineFeaturesResponse.FeatureVector`: one column.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FeatureVector {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<Value>,
    /// `feast.serving.FieldStatus` values.
    #[prost(int32, repeated, tag = "2")]
    pub statuses: Vec<i32>,
}

/// `feast.serving.GetOnlineFeaturesResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetOnlineFeaturesResponse {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<Metadata>,
    #[prost(message, repeated, tag = "2")]
    pub results: Vec<FeatureVector>,
}

/// `feast.serving.FieldStatus.PRESENT`.
const PRESENT: i32 = 1;

/// The request for one customer's ten features.
fn request(customer: u64) -> GetOnlineFeaturesRequest {
    GetOnlineFeaturesRequest {
        features: Some(FeatureList {
            val: STORE_FEATURES
                .iter()
                .map(|(v, f)| format!("{v}:{f}"))
                .collect(),
        }),
        entities: HashMap::from([(
            "customer_id".to_owned(),
            RepeatedValue {
                val: vec![Value {
                    val: Some(Scalar::String(customer_id(customer))),
                }],
            },
        )]),
        full_feature_names: false,
    }
}

/// The ten values of Feast's answer in the model's order, by the column
/// names of its metadata.
fn row(resp: &GetOnlineFeaturesResponse) -> Result<[f32; 10], FeastError> {
    let names = resp
        .metadata
        .as_ref()
        .and_then(|m| m.feature_names.as_ref())
        .ok_or_else(|| FeastError::Body("no metadata.feature_names".into()))?;
    let mut out = [0f32; 10];
    for (slot, (_, feature)) in out.iter_mut().zip(STORE_FEATURES) {
        let col = names
            .val
            .iter()
            .position(|n| n == feature)
            .and_then(|i| resp.results.get(i))
            .ok_or_else(|| FeastError::Body(format!("no column {feature}")))?;
        if col.statuses.first() != Some(&PRESENT) {
            return Err(FeastError::Missing(format!(
                "{feature}: status {:?}",
                col.statuses.first()
            )));
        }
        *slot = match col.values.first().and_then(|v| v.val.as_ref()) {
            Some(Scalar::Int32(v)) => *v as f32,
            Some(Scalar::Int64(v)) => *v as f32,
            Some(Scalar::Double(v)) => *v as f32,
            Some(Scalar::Float(v)) => *v,
            Some(Scalar::Bool(v)) => f32::from(u8::from(*v)),
            Some(Scalar::String(_)) | None => {
                return Err(FeastError::Body(format!("{feature} is not a number")));
            }
        };
    }
    Ok(out)
}

/// One customer's ten features from `feast listen` on `channel`.
pub async fn features(channel: &Channel, customer: u64) -> Result<[f32; 10], FeastError> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.map_err(|_| FeastError::Transport)?;
    let codec =
        tonic_prost::ProstCodec::<GetOnlineFeaturesRequest, GetOnlineFeaturesResponse>::default();
    let path = PathAndQuery::from_static("/GrpcFeatureServer/GetOnlineFeatures");
    let resp = grpc
        .unary(tonic::Request::new(request(customer)), path, codec)
        .await
        .map_err(|s| FeastError::Grpc(s.code()))?;
    row(resp.get_ref())
}
