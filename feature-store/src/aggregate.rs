//! Raw events of dynamic views and the windowed aggregates the store computes
//! from them.
//!
//! A dynamic view whose features declare `aggregate = { function, window, of }`
//! is fed *events*: one per observed fact (a transaction, a failed
//! authorisation), with its event time, its fields (`amount = 12.5`,
//! `transaction_id = "t-1"`) and an event ID. Each event is stored as its own
//! row (the store's `write_event`), so events arriving out of
//! order need nothing special, and rewriting an event (same time and ID) is
//! harmless. A read fetches the entity's events within the view's widest
//! window, newest first and capped, and [`compute`] turns them into one value
//! per aggregate feature, each over its own window `[now - window, now]`:
//!
//! - `count`: events carrying the `of` field (any type);
//! - `sum`, `mean`, `max`, `min`: of the numeric `of` field (events whose field
//!   is not a number do not contribute).
//!
//! A duplicate event ID is one event (the newest copy counts). No contributing
//! event means no value: the feature's declared default applies and is
//! reported, exactly as for a missing dynamic value. The value's time is the
//! newest contributing event's.
//!
//! Numbers are summed in `f64` (exact for integers up to 2^53); an `int64`
//! feature gets the result rounded to the nearest integer.

use std::collections::{BTreeMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::clock::to_micros;
use crate::codec;
use crate::definitions::{AggregateFunction, FeatureType, FeatureValue, FeatureView};
use crate::freshness::StoredValue;

/// The longest event ID accepted, in bytes.
pub const MAX_EVENT_ID_BYTES: usize = 128;

/// One raw event of a dynamic view's entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Identifies the event for idempotency: the same ID is one event.
    pub event_id: String,
    /// When it happened; what the windows are measured against.
    pub event_time: SystemTime,
    /// Field name to value (`amount`, `transaction_id`, …).
    pub fields: BTreeMap<String, FeatureValue>,
}

impl Event {
    /// An event with the caller's ID, or (None or empty) one derived from the
    /// entity, the event time and the fields with [`derive_event_id`], so a
    /// replay of the same event is the same event.
    pub fn new(
        entity_key: &str,
        event_id: Option<String>,
        event_time: SystemTime,
        fields: BTreeMap<String, FeatureValue>,
    ) -> Event {
        let event_id = event_id
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| derive_event_id(entity_key, event_time, &fields));
        Event {
            event_id,
            event_time,
            fields,
        }
    }
}

/// A deterministic event ID: `sha256:` and the first 16 bytes (hex) of the
/// SHA-256 of the entity key, the event time in microseconds and the encoded
/// fields. Equal inputs give equal IDs on every machine and release.
pub fn derive_event_id(
    entity_key: &str,
    event_time: SystemTime,
    fields: &BTreeMap<String, FeatureValue>,
) -> String {
    let mut hasher = Sha256::new();
    hasher.update((entity_key.len() as u64).to_le_bytes());
    hasher.update(entity_key.as_bytes());
    hasher.update(to_micros(event_time).to_le_bytes());
    hasher.update(codec::encode(fields.iter().map(|(k, v)| (k.as_str(), v))));
    let digest = hasher.finalize();
    let mut id = String::with_capacity(7 + 32);
    id.push_str("sha256:");
    for b in digest.iter().take(16) {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// A view's events for one entity as a backend returns them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventRange {
    /// Unexpired events in the asked time range, newest first.
    pub events: Vec<Event>,
    /// More events were in the range than the read's limit: the oldest ones
    /// were left out.
    pub truncated: bool,
}

/// What is wrong with one field of a pushed event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventFieldProblem {
    /// No aggregate of the view reads this field.
    #[error("no aggregate of the view reads this field; its aggregates read {known}")]
    Unknown {
        /// The fields the view's aggregates read.
        known: String,
    },
    /// A sum, mean, max or min reads this field, and the value is not a number.
    #[error("expected a number, got a {found} value")]
    NotANumber {
        /// The type sent.
        found: FeatureType,
    },
    /// The number is NaN or infinite.
    #[error("{0} is not a finite number")]
    NotFinite(String),
}

/// Checks one field of an event pushed to `view` against the view's
/// aggregates.
///
/// # Errors
/// [`EventFieldProblem`] saying what is wrong with the value.
pub fn check_field(
    view: &FeatureView,
    name: &str,
    value: &FeatureValue,
) -> Result<(), EventFieldProblem> {
    let Some(usage) = view.event_field(name) else {
        return Err(EventFieldProblem::Unknown {
            known: view.event_fields().join(", "),
        });
    };
    let finite = match value {
        FeatureValue::Float32(v) => v.is_finite(),
        FeatureValue::Float64(v) => v.is_finite(),
        _ => true,
    };
    if !finite {
        return Err(EventFieldProblem::NotFinite(value.to_string()));
    }
    if usage == crate::definitions::EventFieldUse::Numeric && number(value).is_none() {
        return Err(EventFieldProblem::NotANumber {
            found: value.feature_type(),
        });
    }
    Ok(())
}

fn number(value: &FeatureValue) -> Option<f64> {
    match value {
        FeatureValue::Float32(v) => Some(f64::from(*v)),
        FeatureValue::Float64(v) => Some(*v),
        FeatureValue::Int64(v) => Some(*v as f64),
        FeatureValue::Bool(_) | FeatureValue::String(_) | FeatureValue::Vector(_) => None,
    }
}

/// The value of a feature of type `ty` holding `x`; None when it does not fit
/// (a float32 overflow, or a non-numeric type, which validation rules out).
fn typed(x: f64, ty: FeatureType) -> Option<FeatureValue> {
    if !x.is_finite() {
        return None;
    }
    match ty {
        // `as` saturates at the i64 bounds.
        FeatureType::Int64 => Some(FeatureValue::Int64(x.round() as i64)),
        FeatureType::Float32 => {
            let f = x as f32;
            f.is_finite().then_some(FeatureValue::Float32(f))
        }
        FeatureType::Float64 => Some(FeatureValue::Float64(x)),
        FeatureType::Bool | FeatureType::String | FeatureType::Vector(_) => None,
    }
}

/// The view's aggregate features computed from `events` (newest first, as
/// backends return them) at `now`, each over `[now - window, now]`. Features
/// without a contributing event are absent (their default applies).
pub fn compute(
    view: &FeatureView,
    events: &[Event],
    now: SystemTime,
) -> BTreeMap<String, StoredValue> {
    let mut seen = HashSet::with_capacity(events.len());
    let unique: Vec<&Event> = events
        .iter()
        .filter(|e| seen.insert(e.event_id.as_str()))
        .collect();
    let mut out = BTreeMap::new();
    for (spec, aggregate) in view.aggregates() {
        let from = now.checked_sub(aggregate.window).unwrap_or(UNIX_EPOCH);
        let (mut n, mut sum) = (0u64, 0.0f64);
        let (mut max, mut min) = (f64::NEG_INFINITY, f64::INFINITY);
        let mut newest: Option<SystemTime> = None;
        for e in &unique {
            if e.event_time < from || e.event_time > now {
                continue;
            }
            let Some(value) = e.fields.get(&aggregate.of) else {
                continue;
            };
            if aggregate.function != AggregateFunction::Count {
                let Some(x) = number(value) else { continue };
                sum += x;
                max = max.max(x);
                min = min.min(x);
            }
            n += 1;
            newest = Some(newest.map_or(e.event_time, |t| t.max(e.event_time)));
        }
        let Some(written_at) = newest else { continue };
        let result = match aggregate.function {
            AggregateFunction::Count => n as f64,
            AggregateFunction::Sum => sum,
            AggregateFunction::Mean => sum / n as f64,
            AggregateFunction::Max => max,
            AggregateFunction::Min => min,
        };
        if let Some(value) = typed(result, spec.feature_type) {
            out.insert(spec.name.clone(), StoredValue { value, written_at });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::definitions::FeatureDefinitions;

    fn example() -> FeatureDefinitions {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("definitions/fraud.toml");
        FeatureDefinitions::load(&path).unwrap()
    }

    fn fields(pairs: &[(&str, FeatureValue)]) -> BTreeMap<String, FeatureValue> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    fn txn(id: &str, at: SystemTime, amount: f64) -> Event {
        Event {
            event_id: id.to_owned(),
            event_time: at,
            fields: fields(&[
                ("transaction_id", FeatureValue::String(id.to_owned())),
                ("amount", FeatureValue::Float64(amount)),
            ]),
        }
    }

    #[test]
    fn each_aggregate_uses_its_own_window() {
        let defs = example();
        let view = defs.view("customer_activity").unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(10_000_000);
        let min = Duration::from_secs(60);
        let failed = Event {
            event_id: "f-1".into(),
            event_time: now - 300 * min,
            fields: fields(&[("failed_auth_id", FeatureValue::String("f-1".into()))]),
        };
        // Newest first, as backends return them; one outside the 1h window.
        let events = vec![
            txn("t-3", now - 2 * min, 30.25),
            txn("t-2", now - 10 * min, 10.5),
            txn("t-1", now - 61 * min, 1000.0),
            failed,
        ];
        let got = compute(view, &events, now);
        assert_eq!(
            got["txn_count_1h"],
            StoredValue {
                value: FeatureValue::Int64(2),
                written_at: now - 2 * min
            }
        );
        assert_eq!(got["txn_amount_sum_1h"].value, FeatureValue::Float64(40.75));
        assert_eq!(
            got["failed_auth_count_24h"],
            StoredValue {
                value: FeatureValue::Int64(1),
                written_at: now - 300 * min
            }
        );
        assert!(
            !got.contains_key("distinct_merchants_24h"),
            "not an aggregate"
        );
        // An hour later only the failed authorisation is left.
        let later = compute(view, &events, now + 60 * min);
        assert_eq!(later.keys().collect::<Vec<_>>(), ["failed_auth_count_24h"]);
        // Events after `now` are not in the window yet.
        assert!(
            compute(view, &events, now - 20 * min)["txn_count_1h"].value == FeatureValue::Int64(1)
        );
    }

    #[test]
    fn duplicate_ids_count_once_and_functions_compute() {
        let text = r#"
[[entity]]
name = "u"
keys = ["id"]
[[dynamic_view]]
name = "v"
entity = "u"
ttl = "1h"
max_age = "1h"
[[dynamic_view.feature]]
name = "mean"
type = "float64"
default = -1.0
aggregate = { function = "mean", window = "1h", of = "x" }
[[dynamic_view.feature]]
name = "max"
type = "int64"
default = -1
aggregate = { function = "max", window = "1h", of = "x" }
[[dynamic_view.feature]]
name = "min"
type = "float32"
default = -1.0
aggregate = { function = "min", window = "1h", of = "x" }
[[dynamic_view.feature]]
name = "n"
type = "float64"
default = 0.0
aggregate = { function = "count", window = "1h", of = "x" }
"#;
        let defs = FeatureDefinitions::parse(text, Path::new("t.toml")).unwrap();
        let view = defs.view("v").unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ev = |id: &str, ago: u64, x: FeatureValue| Event {
            event_id: id.into(),
            event_time: now - Duration::from_secs(ago),
            fields: fields(&[("x", x)]),
        };
        let events = vec![
            ev("a", 1, FeatureValue::Int64(4)),
            ev("b", 2, FeatureValue::Float64(1.5)),
            ev("a", 3, FeatureValue::Int64(400)),
            ev("c", 4, FeatureValue::Float64(2.5)),
        ];
        let got = compute(view, &events, now);
        assert_eq!(got["n"].value, FeatureValue::Float64(3.0));
        assert_eq!(got["mean"].value, FeatureValue::Float64(8.0 / 3.0));
        assert_eq!(got["max"].value, FeatureValue::Int64(4));
        assert_eq!(got["min"].value, FeatureValue::Float32(1.5));
        assert!(compute(view, &[], now).is_empty());
    }

    #[test]
    fn fields_are_checked_against_the_aggregates() {
        let defs = example();
        let view = defs.view("customer_activity").unwrap();
        assert_eq!(
            check_field(view, "amount", &FeatureValue::String("x".into())),
            Err(EventFieldProblem::NotANumber {
                found: FeatureType::String
            })
        );
        assert!(check_field(view, "amount", &FeatureValue::Int64(3)).is_ok());
        assert!(check_field(view, "transaction_id", &FeatureValue::String("t".into())).is_ok());
        assert!(matches!(
            check_field(view, "amount", &FeatureValue::Float64(f64::NAN)),
            Err(EventFieldProblem::NotFinite(_))
        ));
        let unknown = check_field(view, "amout", &FeatureValue::Int64(3)).unwrap_err();
        assert_eq!(
            unknown.to_string(),
            "no aggregate of the view reads this field; its aggregates read amount, failed_auth_id, transaction_id"
        );
    }

    #[test]
    fn derived_ids_are_deterministic() {
        let at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let f = fields(&[("amount", FeatureValue::Float64(12.5))]);
        let a = Event::new("c-1", None, at, f.clone());
        assert_eq!(
            a.event_id,
            Event::new("c-1", Some(String::new()), at, f.clone()).event_id
        );
        assert!(a.event_id.starts_with("sha256:") && a.event_id.len() == 39);
        assert_ne!(a.event_id, Event::new("c-2", None, at, f.clone()).event_id);
        assert_ne!(
            a.event_id,
            Event::new("c-1", None, at + Duration::from_micros(1), f.clone()).event_id
        );
        assert_eq!(Event::new("c-1", Some("t-9".into()), at, f).event_id, "t-9");
    }
}
