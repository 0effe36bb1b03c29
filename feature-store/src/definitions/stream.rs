//! Where a dynamic view's events come from when they are streamed: a Kafka
//! topic (`source = { kafka = { … } }` on a `[[dynamic_view]]`), with the
//! event fields that carry the entity key, the event time and the event ID,
//! and how records are encoded.
//!
//! ```toml
//! [[dynamic_view]]
//! name = "customer_activity"
//! # …
//! source = { kafka = { topic = "customer-activity", encoding = "json" } }
//! ```
//!
//! `key_fields` defaults to the entity's keys, `time_field` to
//! `"event_time"`, `id_field` to `"event_id"` (JSON only: a protobuf
//! `gateway.v1.StreamedFeatureEvent` carries them in fixed fields).

use serde::Deserialize;

use super::error::DefinitionProblem;
use super::view::{Entity, FeatureView};

/// How a topic's records are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventEncoding {
    /// One flat JSON object per record: the key fields, the time field, the
    /// optional ID field, and every other member an event field.
    Json,
    /// One `gateway.v1.StreamedFeatureEvent` protobuf message per record.
    Protobuf,
}

impl EventEncoding {
    /// The name used in definition files.
    pub fn as_str(self) -> &'static str {
        match self {
            EventEncoding::Json => "json",
            EventEncoding::Protobuf => "protobuf",
        }
    }
}

/// A dynamic view's Kafka topic, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSource {
    /// The dynamic view the events feed.
    pub view: String,
    /// The topic.
    pub topic: String,
    /// The record fields holding the entity's keys, in the entity's key order.
    pub key_fields: Vec<String>,
    /// The record field holding the event time (JSON).
    pub time_field: String,
    /// The record field holding the event ID (JSON); without one the ID is
    /// derived from entity, time and fields, so a redelivery is one event.
    pub id_field: String,
    /// How records are encoded.
    pub encoding: EventEncoding,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub kafka: RawKafkaSource,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKafkaSource {
    pub topic: String,
    pub key_fields: Option<Vec<String>>,
    pub time_field: Option<String>,
    pub id_field: Option<String>,
    pub encoding: EventEncoding,
}

/// Validates the source of `view`; `(key relative to source.kafka, problem)`.
pub(super) fn validate_source(
    raw: &RawSource,
    view: &FeatureView,
    entity: &Entity,
) -> Result<KafkaSource, (&'static str, DefinitionProblem)> {
    let k = &raw.kafka;
    let bad = |key, text: String| (key, DefinitionProblem::EventSource(text));
    if let Some(problem) = topic_name_problem(&k.topic) {
        return Err(bad("topic", problem));
    }
    if view.widest_window().is_none() {
        return Err(bad(
            "topic",
            "the view declares no windowed aggregate, so its events would feed nothing; declare an `aggregate` on one of its features".to_owned(),
        ));
    }
    let key_fields = k.key_fields.clone().unwrap_or_else(|| entity.keys.clone());
    if key_fields.len() != entity.keys.len() || key_fields.iter().any(String::is_empty) {
        return Err(bad(
            "key_fields",
            format!(
                "entity {:?} is keyed by {} key(s) ({}); name one record field for each, in that order",
                entity.name,
                entity.keys.len(),
                entity.keys.join(", ")
            ),
        ));
    }
    if k.encoding == EventEncoding::Protobuf
        && let Some(key) = [("time_field", &k.time_field), ("id_field", &k.id_field)]
            .into_iter()
            .find_map(|(key, v)| v.is_some().then_some(key))
    {
        return Err(bad(
            key,
            "a protobuf gateway.v1.StreamedFeatureEvent carries its time and ID in fixed fields; remove this key".to_owned(),
        ));
    }
    let time_field = k
        .time_field
        .clone()
        .unwrap_or_else(|| "event_time".to_owned());
    let id_field = k.id_field.clone().unwrap_or_else(|| "event_id".to_owned());
    let mut reserved: Vec<(&str, &str)> = key_fields
        .iter()
        .map(|f| ("key_fields", f.as_str()))
        .collect();
    reserved.push(("time_field", &time_field));
    reserved.push(("id_field", &id_field));
    for (i, (key, name)) in reserved.iter().enumerate() {
        if name.is_empty() {
            return Err(bad(key, "must not be empty".to_owned()));
        }
        if reserved[..i].iter().any(|(_, other)| other == name) {
            return Err(bad(
                key,
                format!("{name:?} is named twice among key_fields, time_field and id_field"),
            ));
        }
        if view.event_field(name).is_some() {
            return Err(bad(
                key,
                format!(
                    "{name:?} is also an event field an aggregate reads; a record field has one role"
                ),
            ));
        }
    }
    Ok(KafkaSource {
        view: view.name.clone(),
        topic: k.topic.clone(),
        key_fields,
        time_field,
        id_field,
        encoding: k.encoding,
    })
}

/// What is wrong with `topic` as a Kafka topic name (1 to 249 letters,
/// digits, `.`, `_`, `-`), if anything.
pub fn topic_name_problem(topic: &str) -> Option<String> {
    let fits = !topic.is_empty()
        && topic.len() <= 249
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    (!fits).then(|| {
        format!("{topic:?} is not a Kafka topic name (1 to 249 letters, digits, '.', '_', '-')")
    })
}

/// What is wrong with `brokers` as a Kafka bootstrap list, if anything.
pub fn brokers_problem(brokers: &str) -> Option<String> {
    brokers
        .trim()
        .is_empty()
        .then(|| "name the Kafka bootstrap servers, e.g. \"kafka-0:9092,kafka-1:9092\"".to_owned())
}
