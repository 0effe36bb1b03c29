//! Telling present, stale and missing feature values apart.
//!
//! A backend returns a view's row for an entity as a [`StoredRow`]: the values,
//! each with the time it was written (static views: the refresh batch's data
//! time, the same for the whole row; dynamic views: each value's event time)
//! and the batch that wrote them.
//! [`resolve_view`] turns that, the view's definition and the current time into
//! one value per declared feature, with the declared default wherever the row is
//! absent, older than the view's `max_age`, lacks the feature, or holds a value of
//! the wrong type — and says which of those happened, so the gateway can report
//! freshness and defaulted features to the caller.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::definitions::{FeatureValue, FeatureView};

/// One stored value and when it was written (static) or observed (dynamic).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredValue {
    /// The value.
    pub value: FeatureValue,
    /// Its time.
    pub written_at: SystemTime,
}

/// A view's row for one entity, as a backend stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    /// Feature name to value; features may be absent.
    pub values: BTreeMap<String, StoredValue>,
    /// The row's time: the batch's data time (static) or the newest value's
    /// event time (dynamic).
    pub written_at: SystemTime,
    /// The refresh batch that wrote the row (static views), if known.
    pub batch_id: Option<Arc<str>>,
}

impl StoredRow {
    /// A dynamic view's row from its unexpired values: the row's time is the
    /// newest value's; None when there is no value.
    pub fn dynamic(values: BTreeMap<String, StoredValue>) -> Option<StoredRow> {
        let written_at = values.values().map(|v| v.written_at).max()?;
        Some(StoredRow {
            values,
            written_at,
            batch_id: None,
        })
    }
}

/// What happened to one feature's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueState {
    /// The stored value was used.
    Present,
    /// The entity has no row in the view: the default was used.
    MissingRow,
    /// The row has no value for this feature: the default was used.
    MissingValue,
    /// The row is older than the view's `max_age`: the default was used.
    Stale,
    /// The stored value has another type than declared: the default was used.
    WrongType,
}

impl ValueState {
    /// Whether the declared default replaced the stored value.
    pub fn is_defaulted(self) -> bool {
        self != ValueState::Present
    }
}

/// One feature's value after resolution. Names borrow from the definitions,
/// so resolving a cached row allocates only the feature list.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedFeature<'a> {
    /// Feature name.
    pub name: &'a str,
    /// The stored value, or the declared default.
    pub value: FeatureValue,
    /// Why this value was chosen.
    pub state: ValueState,
}

/// A view's features for one entity, every declared feature present.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedView<'a> {
    /// View name.
    pub view: &'a str,
    /// Age of the row at resolution time (zero for a row written "in the
    /// future" by a skewed clock); None when there was no row.
    pub age: Option<Duration>,
    /// The batch that wrote the row, if known.
    pub batch_id: Option<Arc<str>>,
    /// Declared features in declared order.
    pub features: Vec<ResolvedFeature<'a>>,
}

impl<'a> ResolvedView<'a> {
    /// The resolved feature called `name`.
    pub fn feature(&self, name: &str) -> Option<&ResolvedFeature<'a>> {
        self.features.iter().find(|f| f.name == name)
    }

    /// Names of the features whose default replaced the stored value.
    pub fn defaulted(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.features
            .iter()
            .filter(|f| f.state.is_defaulted())
            .map(|f| f.name)
    }
}

/// Resolves `row` (None: the entity has no row) against `view` at time `now`.
///
/// A value older than `view.max_age` is stale and gets its default. A static
/// row's values share the batch's time, so a static row is stale as a whole
/// (never a mix of two batches); a dynamic row's values age one by one. A
/// windowed aggregate (see the `aggregate` module) is never stale: it was computed
/// for `now` from the events in its window, and without any it is missing.
pub fn resolve_view<'a>(
    view: &'a FeatureView,
    row: Option<&StoredRow>,
    now: SystemTime,
) -> ResolvedView<'a> {
    let age_of = |t: SystemTime| now.duration_since(t).unwrap_or(Duration::ZERO);
    let age = row.map(|r| age_of(r.written_at));
    let row_stale = view.is_static() && age.is_some_and(|a| a > view.max_age);
    let features = view
        .features
        .iter()
        .map(|spec| {
            let default = |state| ResolvedFeature {
                name: &spec.name,
                value: spec.default.clone(),
                state,
            };
            let Some(row) = row else {
                return default(ValueState::MissingRow);
            };
            if row_stale {
                return default(ValueState::Stale);
            }
            match row.values.get(&spec.name) {
                None => default(ValueState::MissingValue),
                // An aggregate is computed at read time over its own window,
                // which already bounds how old its events may be.
                Some(v) if spec.aggregate.is_none() && age_of(v.written_at) > view.max_age => {
                    default(ValueState::Stale)
                }
                Some(v) if v.value.feature_type() != spec.feature_type => {
                    default(ValueState::WrongType)
                }
                Some(v) => ResolvedFeature {
                    name: &spec.name,
                    value: v.value.clone(),
                    state: ValueState::Present,
                },
            }
        })
        .collect();
    ResolvedView {
        view: &view.name,
        age,
        batch_id: row.and_then(|r| r.batch_id.clone()),
        features,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::definitions::FeatureDefinitions;

    fn example() -> FeatureDefinitions {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("definitions/fraud.toml");
        FeatureDefinitions::load(&path).unwrap()
    }

    fn row(written_at: SystemTime, values: &[(&str, FeatureValue)]) -> StoredRow {
        StoredRow {
            values: values
                .iter()
                .map(|(k, v)| {
                    let stored = StoredValue {
                        value: v.clone(),
                        written_at,
                    };
                    ((*k).to_owned(), stored)
                })
                .collect(),
            written_at,
            batch_id: Some("b-42".into()),
        }
    }

    #[test]
    fn fresh_values_are_used_and_gaps_get_defaults() {
        let defs = example();
        let view = defs.view("customer_profile").unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let written = now - Duration::from_secs(3600);
        let r = row(
            written,
            &[
                ("chargeback_count_1y", FeatureValue::Int64(2)),
                // Wrong type: the view declares account_age_days as int64.
                ("account_age_days", FeatureValue::String("old".into())),
            ],
        );
        let resolved = resolve_view(view, Some(&r), now);
        assert_eq!(resolved.age, Some(Duration::from_secs(3600)));
        assert_eq!(resolved.batch_id.as_deref(), Some("b-42"));
        assert_eq!(resolved.features.len(), view.features.len());
        let cb = resolved.feature("chargeback_count_1y").unwrap();
        assert_eq!(
            (cb.value.clone(), cb.state),
            (FeatureValue::Int64(2), ValueState::Present)
        );
        let age = resolved.feature("account_age_days").unwrap();
        assert_eq!(age.state, ValueState::WrongType);
        assert_eq!(age.value, view.feature("account_age_days").unwrap().default);
        let missing = resolved.feature("avg_txn_amount_30d").unwrap();
        assert_eq!(missing.state, ValueState::MissingValue);
        let defaulted: Vec<&str> = resolved.defaulted().collect();
        assert!(
            defaulted.contains(&"account_age_days") && !defaulted.contains(&"chargeback_count_1y")
        );
    }

    #[test]
    fn a_row_older_than_max_age_is_stale_as_a_whole() {
        let defs = example();
        let view = defs.view("customer_profile").unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000_000);
        let just_fresh = row(
            now - view.max_age,
            &[("chargeback_count_1y", FeatureValue::Int64(2))],
        );
        let resolved = resolve_view(view, Some(&just_fresh), now);
        assert_eq!(
            resolved.feature("chargeback_count_1y").unwrap().state,
            ValueState::Present
        );
        let stale = row(
            now - view.max_age - Duration::from_secs(1),
            &[("chargeback_count_1y", FeatureValue::Int64(2))],
        );
        let resolved = resolve_view(view, Some(&stale), now);
        assert!(
            resolved
                .features
                .iter()
                .all(|f| f.state == ValueState::Stale)
        );
        assert_eq!(
            resolved.feature("chargeback_count_1y").unwrap().value,
            view.feature("chargeback_count_1y").unwrap().default
        );
    }

    #[test]
    fn no_row_means_every_default_and_no_age() {
        let defs = example();
        let view = defs.view("customer_activity").unwrap();
        let resolved = resolve_view(view, None, SystemTime::now());
        assert_eq!(resolved.age, None);
        assert!(
            resolved
                .features
                .iter()
                .all(|f| f.state == ValueState::MissingRow)
        );
        assert_eq!(resolved.defaulted().count(), view.features.len());
    }

    #[test]
    fn an_aggregate_is_never_stale_a_plain_dynamic_value_is() {
        let defs = example();
        let view = defs.view("customer_activity").unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000_000);
        let old = now - view.max_age - Duration::from_secs(1);
        let r = row(
            old,
            &[
                ("failed_auth_count_24h", FeatureValue::Int64(3)),
                ("minutes_since_last_txn", FeatureValue::Float32(2.0)),
            ],
        );
        let resolved = resolve_view(view, Some(&r), now);
        assert_eq!(
            resolved.feature("failed_auth_count_24h").unwrap().state,
            ValueState::Present
        );
        assert_eq!(
            resolved.feature("minutes_since_last_txn").unwrap().state,
            ValueState::Stale
        );
    }

    #[test]
    fn a_row_from_the_future_counts_as_age_zero() {
        let defs = example();
        let view = defs.view("customer_activity").unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(5_000);
        let r = row(now + Duration::from_secs(30), &[]);
        assert_eq!(resolve_view(view, Some(&r), now).age, Some(Duration::ZERO));
    }
}
