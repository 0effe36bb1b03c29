//! One Kafka record → the entity key and the event it carries, by the
//! view's source declaration; or why not (the dead-letter reason).
//!
//! JSON: one flat object per record. The `key_fields` hold the entity's
//! keys (strings, or integers written as their decimal text); `time_field`
//! holds the event time, either RFC 3339 text (`"2025-03-01T12:00:00.250Z"`,
//! UTC) or an integer of milliseconds since the Unix epoch; `id_field` the
//! optional event ID (text). Every other member is an event field: a
//! number (an integer stays `int64`, any other number is `float64`), text
//! or a bool; `null` counts as absent.
//!
//! Protobuf: one `gateway.v1.StreamedFeatureEvent` per record (see
//! `proto/proto/gateway/v1/events.proto`).

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use prost::Message as _;
use proto::gateway::v1 as pb;
use serde_json::Value;

use crate::aggregate::Event;
use crate::definitions::{EventEncoding, FeatureValue, KafkaSource};
use crate::source::KEY_SEPARATOR;

use super::Reason;

/// Why a record was not turned into an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The dead-letter reason (a stable code).
    pub reason: Reason,
    /// What is wrong, for a person.
    pub message: String,
}

impl Rejection {
    pub(super) fn new(reason: Reason, message: impl Into<String>) -> Self {
        Rejection {
            reason,
            message: message.into(),
        }
    }
}

/// The entity key and event of one record of `source`'s topic.
///
/// # Errors
/// [`Rejection`] saying why the record does not hold an event.
pub fn decode(source: &KafkaSource, payload: &[u8]) -> Result<(String, Event), Rejection> {
    match source.encoding {
        EventEncoding::Json => json(source, payload),
        EventEncoding::Protobuf => protobuf(source, payload),
    }
}

fn json(source: &KafkaSource, payload: &[u8]) -> Result<(String, Event), Rejection> {
    let mut object: serde_json::Map<String, Value> = serde_json::from_slice(payload)
        .map_err(|e| Rejection::new(Reason::Undecodable, format!("not a JSON object: {e}")))?;
    let mut parts = Vec::with_capacity(source.key_fields.len());
    for field in &source.key_fields {
        let part = match object.remove(field) {
            Some(Value::String(s)) if !s.is_empty() => s,
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
            Some(Value::Null) | None => {
                return Err(Rejection::new(
                    Reason::MissingKey,
                    format!("no entity key field {field:?}"),
                ));
            }
            Some(other) => {
                return Err(Rejection::new(
                    Reason::MissingKey,
                    format!("entity key field {field:?} is {}, not text", kind(&other)),
                ));
            }
        };
        parts.push(part);
    }
    let time_field = &source.time_field;
    let event_time = match object.remove(time_field) {
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
            .ok_or_else(|| {
                Rejection::new(
                    Reason::BadTime,
                    format!("{time_field:?}: {n} is not whole milliseconds since the Unix epoch"),
                )
            })?,
        Some(Value::String(s)) => humantime::parse_rfc3339_weak(&s).map_err(|e| {
            Rejection::new(
                Reason::BadTime,
                format!("{time_field:?}: {s:?} is not an RFC 3339 time in UTC: {e}"),
            )
        })?,
        Some(Value::Null) | None => {
            return Err(Rejection::new(
                Reason::BadTime,
                format!("no event time field {time_field:?}"),
            ));
        }
        Some(other) => {
            return Err(Rejection::new(
                Reason::BadTime,
                format!(
                    "{time_field:?} is {}; write RFC 3339 text or epoch milliseconds",
                    kind(&other)
                ),
            ));
        }
    };
    let id_field = &source.id_field;
    let event_id = match object.remove(id_field) {
        Some(Value::String(s)) => Some(s),
        Some(Value::Null) | None => None,
        Some(other) => {
            return Err(Rejection::new(
                Reason::BadId,
                format!("{id_field:?} is {}, not text", kind(&other)),
            ));
        }
    };
    let mut fields = BTreeMap::new();
    for (name, value) in object {
        let typed = match value {
            Value::Null => continue,
            Value::Bool(b) => FeatureValue::Bool(b),
            Value::String(s) => FeatureValue::String(s),
            Value::Number(n) => match n.as_i64() {
                Some(i) => FeatureValue::Int64(i),
                None => FeatureValue::Float64(n.as_f64().unwrap_or(f64::NAN)),
            },
            other => {
                return Err(Rejection::new(
                    Reason::BadField,
                    format!(
                        "field {name:?} is {}; write a number, text or a bool",
                        kind(&other)
                    ),
                ));
            }
        };
        fields.insert(name, typed);
    }
    let key = parts.join(&KEY_SEPARATOR.to_string());
    let event = Event::new(&key, event_id, event_time, fields);
    Ok((key, event))
}

fn protobuf(source: &KafkaSource, payload: &[u8]) -> Result<(String, Event), Rejection> {
    let mut message = pb::StreamedFeatureEvent::decode(payload).map_err(|e| {
        Rejection::new(
            Reason::Undecodable,
            format!("not a gateway.v1.StreamedFeatureEvent: {e}"),
        )
    })?;
    let mut parts = Vec::with_capacity(source.key_fields.len());
    for field in &source.key_fields {
        match message.keys.remove(field) {
            Some(v) if !v.is_empty() => parts.push(v),
            _ => {
                return Err(Rejection::new(
                    Reason::MissingKey,
                    format!("keys has no {field:?}"),
                ));
            }
        }
    }
    let micros = u64::try_from(message.event_time_unix_us)
        .ok()
        .filter(|&us| us > 0)
        .ok_or_else(|| {
            Rejection::new(
                Reason::BadTime,
                format!(
                    "event_time_unix_us is {}; set microseconds since the Unix epoch",
                    message.event_time_unix_us
                ),
            )
        })?;
    let event_time = UNIX_EPOCH + Duration::from_micros(micros);
    let mut fields = BTreeMap::new();
    for (name, value) in message.fields {
        use pb::feature_value::Kind;
        let typed = match value.kind {
            Some(Kind::DoubleValue(v)) => FeatureValue::Float64(v),
            Some(Kind::Int64Value(v)) => FeatureValue::Int64(v),
            Some(Kind::BoolValue(v)) => FeatureValue::Bool(v),
            Some(Kind::StringValue(v)) => FeatureValue::String(v),
            None => {
                return Err(Rejection::new(
                    Reason::BadField,
                    format!("field {name:?} has no value"),
                ));
            }
        };
        fields.insert(name, typed);
    }
    let key = parts.join(&KEY_SEPARATOR.to_string());
    let event = Event::new(&key, Some(message.event_id), event_time, fields);
    Ok((key, event))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(encoding: EventEncoding) -> KafkaSource {
        KafkaSource {
            view: "customer_activity".into(),
            topic: "t".into(),
            key_fields: vec!["customer_id".into()],
            time_field: "event_time".into(),
            id_field: "event_id".into(),
            encoding,
        }
    }

    #[test]
    fn a_json_record_becomes_a_keyed_event() {
        let (key, event) = decode(
            &source(EventEncoding::Json),
            br#"{"customer_id":"c-1","event_time":1700000000250,"event_id":"t-1","amount":12.5,"transaction_id":"t-1","n":3,"gone":null}"#,
        )
        .unwrap();
        assert_eq!(key, "c-1");
        assert_eq!(event.event_id, "t-1");
        assert_eq!(
            event.event_time,
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_250)
        );
        assert_eq!(event.fields["amount"], FeatureValue::Float64(12.5));
        assert_eq!(event.fields["n"], FeatureValue::Int64(3));
        assert_eq!(event.fields.len(), 3);
        let (_, rfc) = decode(
            &source(EventEncoding::Json),
            br#"{"customer_id":7,"event_time":"2023-11-14T22:13:20.250Z","amount":1}"#,
        )
        .unwrap();
        assert_eq!(rfc.event_time, event.event_time);
        assert!(
            rfc.event_id.starts_with("sha256:"),
            "derived: {}",
            rfc.event_id
        );
    }

    #[test]
    fn bad_json_records_say_why() {
        let s = source(EventEncoding::Json);
        for (payload, reason) in [
            (&b"nope"[..], Reason::Undecodable),
            (b"[1]", Reason::Undecodable),
            (br#"{"event_time":1,"amount":1}"#, Reason::MissingKey),
            (br#"{"customer_id":"c","amount":1}"#, Reason::BadTime),
            (
                br#"{"customer_id":"c","event_time":-5,"amount":1}"#,
                Reason::BadTime,
            ),
            (
                br#"{"customer_id":"c","event_time":"yesterday","amount":1}"#,
                Reason::BadTime,
            ),
            (
                br#"{"customer_id":"c","event_time":1,"event_id":5}"#,
                Reason::BadId,
            ),
            (
                br#"{"customer_id":"c","event_time":1,"amount":[1]}"#,
                Reason::BadField,
            ),
        ] {
            let got = decode(&s, payload).unwrap_err();
            assert_eq!(
                got.reason,
                reason,
                "{}: {}",
                String::from_utf8_lossy(payload),
                got.message
            );
        }
    }

    #[test]
    fn a_protobuf_record_becomes_a_keyed_event() {
        let s = source(EventEncoding::Protobuf);
        let message = pb::StreamedFeatureEvent {
            keys: [("customer_id".to_owned(), "c-2".to_owned())].into(),
            event_id: "e-9".into(),
            event_time_unix_us: 1_700_000_000_000_001,
            fields: [(
                "amount".to_owned(),
                pb::FeatureValue {
                    kind: Some(pb::feature_value::Kind::DoubleValue(2.5)),
                },
            )]
            .into(),
        };
        let (key, event) = decode(&s, &message.encode_to_vec()).unwrap();
        assert_eq!((key.as_str(), event.event_id.as_str()), ("c-2", "e-9"));
        assert_eq!(event.fields["amount"], FeatureValue::Float64(2.5));
        let unset = pb::StreamedFeatureEvent {
            event_time_unix_us: 0,
            ..message
        };
        assert_eq!(
            decode(&s, &unset.encode_to_vec()).unwrap_err().reason,
            Reason::BadTime
        );
        assert_eq!(
            decode(&s, b"\xff\xff").unwrap_err().reason,
            Reason::Undecodable
        );
    }
}
