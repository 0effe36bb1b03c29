//! Conversions both fronts share between their wire forms (JSON, protobuf)
//! and the prediction path's types: feature values, event times and the
//! answer of a prediction.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use proto::gateway::v1 as pb;

use crate::enrich::WireValue;
use crate::error::GatewayError;
use crate::serve::Prediction;
use feature_store::log::PredictionSource;

/// Unix milliseconds to a time; 0 (or negative) means now.
pub fn event_time(ms: i64) -> Option<std::time::SystemTime> {
    u64::try_from(ms)
        .ok()
        .filter(|ms| *ms > 0)
        .map(|ms| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

/// A request feature's JSON value.
///
/// # Errors
/// [`GatewayError::InvalidArgument`] naming `request_features.{name}`.
pub fn json_feature(name: &str, v: &Value) -> Result<WireValue, GatewayError> {
    json_value(v).map_err(|problem| {
        GatewayError::InvalidArgument(format!("request_features.{name}: {problem}"))
    })
}

/// A JSON value as a feature value, or what is wrong with it.
pub(crate) fn json_value(v: &Value) -> Result<WireValue, String> {
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

/// A protobuf feature value; None when no value is set.
pub fn proto_value(v: &pb::FeatureValue) -> Option<WireValue> {
    WireValue::from_proto(v)
}

/// A request feature's protobuf value.
///
/// # Errors
/// [`GatewayError::InvalidArgument`] naming `request_features.{name}` when
/// no value is set.
pub fn proto_feature(name: &str, v: &pb::FeatureValue) -> Result<WireValue, GatewayError> {
    proto_value(v).ok_or_else(|| {
        GatewayError::InvalidArgument(format!("request_features.{name}: no value set"))
    })
}

fn age_ms(age: Option<std::time::Duration>) -> i64 {
    age.map_or(-1, |a| i64::try_from(a.as_millis()).unwrap_or(i64::MAX))
}

/// A feature value in JSON: a number, a boolean or a string.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[schema(as = FeatureValue, example = 980.0)]
pub enum FeatureValueSchema {
    /// A number (integer or float).
    Number(f64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Text(String),
}

/// The JSON answer of a prediction. Fields are in alphabetical order:
/// the answer was first written as a `serde_json::Value`, whose keys sort.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "freshness": {"defaulted_features": [], "view_age_ms": {"customer_profile": 1200}},
    "model": "fraud", "model_version": "1",
    "outputs": [{"label": "legit", "name": "probabilities", "score": 0.93,
                 "top_k": [{"label": "legit", "score": 0.93}], "values": [0.93, 0.07]}],
    "prediction_id": "0190f5b2-8c1e-7c3a-9d7e-2f1a3b4c5d6e", "route": "stable", "source": "live"
}))]
pub struct PredictResponse {
    /// How fresh the features were.
    pub freshness: Freshness,
    /// The model.
    pub model: String,
    /// The version that answered.
    pub model_version: String,
    /// Post-processed outputs.
    pub outputs: Vec<OutputJson>,
    /// Which scoring batch a precomputed answer came from (absent for a
    /// live one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precomputed: Option<PrecomputedJson>,
    /// Time-ordered (UUIDv7) ID to send feedback for.
    pub prediction_id: String,
    /// How the version was chosen.
    #[schema(value_type = String, example = "stable")]
    pub route: String,
    /// Where the answer came from: `live` (the model ran for this call) or
    /// `precomputed` (a batch-scoring run's entry).
    #[schema(value_type = String, example = "live")]
    pub source: String,
}

/// The scoring batch of a precomputed answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct PrecomputedJson {
    /// Time since the entry was scored, in milliseconds.
    pub age_ms: i64,
    /// The scoring batch.
    pub batch_id: String,
}

fn precomputed_of(p: &Prediction) -> Option<(String, i64)> {
    match &p.source {
        PredictionSource::Live => None,
        PredictionSource::Precomputed { batch_id } => {
            Some((batch_id.clone(), age_ms(p.precomputed_age)))
        }
    }
}

/// One post-processed output.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Output)]
pub struct OutputJson {
    /// The decided label (empty for outputs without labels).
    pub label: String,
    /// Output name.
    pub name: String,
    /// The decided label's score.
    pub score: f64,
    /// Best labels first.
    pub top_k: Vec<LabelScore>,
    /// The raw values of this row.
    pub values: Vec<f64>,
}

/// A label with its score.
#[derive(Debug, Serialize, ToSchema)]
pub struct LabelScore {
    /// The label.
    pub label: String,
    /// Its score.
    pub score: f64,
}

/// Feature freshness of a prediction.
#[derive(Debug, Serialize, ToSchema)]
pub struct Freshness {
    /// Columns that got their default.
    pub defaulted_features: Vec<String>,
    /// Age of each view's values in milliseconds (-1: no row).
    pub view_age_ms: BTreeMap<String, i64>,
}

/// The JSON form of a prediction.
pub fn prediction_json(p: &Prediction) -> PredictResponse {
    PredictResponse {
        freshness: Freshness {
            defaulted_features: p.defaulted.clone(),
            view_age_ms: p
                .view_ages
                .iter()
                .map(|(view, age)| (view.clone(), age_ms(*age)))
                .collect(),
        },
        model: p.model.clone(),
        model_version: p.model_version.clone(),
        outputs: p
            .outputs
            .iter()
            .map(|o| OutputJson {
                label: o.label.clone(),
                name: o.name.clone(),
                score: o.score,
                top_k: o
                    .top_k
                    .iter()
                    .map(|(label, score)| LabelScore {
                        label: label.clone(),
                        score: *score,
                    })
                    .collect(),
                values: o.values.clone(),
            })
            .collect(),
        precomputed: precomputed_of(p)
            .map(|(batch_id, age_ms)| PrecomputedJson { age_ms, batch_id }),
        prediction_id: p.prediction_id.clone(),
        route: p.route.as_str().to_owned(),
        source: p.source.as_str().to_owned(),
    }
}

/// The JSON form of a prediction's protobuf form (as an asynchronous
/// prediction is stored).
pub fn prediction_json_of_proto(p: pb::PredictResponse) -> PredictResponse {
    let freshness = p.freshness.unwrap_or_default();
    PredictResponse {
        freshness: Freshness {
            defaulted_features: freshness.defaulted_features,
            view_age_ms: freshness.view_age_ms.into_iter().collect(),
        },
        model: p.model,
        model_version: p.model_version,
        outputs: p
            .outputs
            .into_iter()
            .map(|o| OutputJson {
                label: o.label,
                name: o.name,
                score: o.score,
                top_k: o
                    .top_k
                    .into_iter()
                    .map(|l| LabelScore {
                        label: l.label,
                        score: l.score,
                    })
                    .collect(),
                values: o.values,
            })
            .collect(),
        precomputed: p.precomputed.map(|a| PrecomputedJson {
            age_ms: a.age_ms,
            batch_id: a.batch_id,
        }),
        prediction_id: p.prediction_id,
        route: p.route,
        source: p.source,
    }
}
