//! Conversions both fronts share between their wire forms (JSON, protobuf)
//! and the prediction path's types: feature values, event times and the
//! answer of a prediction.

use serde_json::{Value, json};

use proto::gateway::v1 as pb;

use crate::enrich::WireValue;
use crate::error::GatewayError;
use crate::serve::Prediction;

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
    use pb::feature_value::Kind;
    Some(match v.kind.as_ref()? {
        Kind::DoubleValue(d) => WireValue::Double(*d),
        Kind::Int64Value(i) => WireValue::Int(*i),
        Kind::BoolValue(b) => WireValue::Bool(*b),
        Kind::StringValue(s) => WireValue::Text(s.clone()),
    })
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

/// The JSON form of a prediction.
pub fn prediction_json(p: &Prediction) -> Value {
    let ages: serde_json::Map<String, Value> = p
        .view_ages
        .iter()
        .map(|(view, age)| (view.clone(), json!(age_ms(*age))))
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

/// The protobuf form of a prediction.
pub fn prediction_proto(p: Prediction) -> pb::PredictResponse {
    pb::PredictResponse {
        prediction_id: p.prediction_id,
        model: p.model,
        model_version: p.model_version,
        route: p.route.as_str().to_owned(),
        outputs: p
            .outputs
            .into_iter()
            .map(|o| pb::Output {
                name: o.name,
                label: o.label,
                score: o.score,
                top_k: o
                    .top_k
                    .into_iter()
                    .map(|(label, score)| pb::LabelScore { label, score })
                    .collect(),
                values: o.values,
            })
            .collect(),
        freshness: Some(pb::Freshness {
            view_age_ms: p
                .view_ages
                .into_iter()
                .map(|(v, age)| (v, age_ms(age)))
                .collect(),
            defaulted_features: p.defaulted,
        }),
    }
}
