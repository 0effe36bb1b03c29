//! Entities, feature views (static and dynamic) and request features: where a
//! feature value comes from and what it falls back to.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::value::{FeatureType, FeatureValue};

/// Something features describe, identified by its key columns (e.g. `customer`
/// keyed by `customer_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entity {
    /// Entity name, referenced by views.
    pub name: String,
    /// Key columns that together identify one entity, in declared order.
    pub keys: Vec<String>,
}

/// The name of a refresh job: the batch job that data engineers run to load a
/// static view. Several static views may share one job.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RefreshJobName(String);

impl RefreshJobName {
    /// Wraps a name that validation has already checked.
    pub(super) fn new(name: String) -> Self {
        RefreshJobName(name)
    }

    /// The name as written in the definition file.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RefreshJobName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A named group of features of one entity, stored and read together.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureView {
    /// View name; models reference its features as `view.feature`.
    pub name: String,
    /// The entity whose key addresses a row of this view.
    pub entity: String,
    /// A value older than this counts as stale and is replaced by its default.
    pub max_age: Duration,
    /// How the view is fed: a batch refresh job or a stream.
    pub kind: ViewKind,
    /// The features, in declared order.
    pub features: Vec<FeatureSpec>,
    /// The similarity index over one of its vector features (static views).
    pub index: Option<super::index::IndexSpec>,
}

impl FeatureView {
    /// The feature called `name`.
    pub fn feature(&self, name: &str) -> Option<&FeatureSpec> {
        self.features.iter().find(|f| f.name == name)
    }

    /// Whether a refresh job loads this view.
    pub fn is_static(&self) -> bool {
        matches!(self.kind, ViewKind::Static { .. })
    }

    /// The refresh job of a static view; None for a dynamic view.
    pub fn refresh_job(&self) -> Option<&RefreshJobName> {
        match &self.kind {
            ViewKind::Static { refresh_job } => Some(refresh_job),
            ViewKind::Dynamic { .. } => None,
        }
    }

    /// How long a dynamic view's values are kept; None for a static view.
    pub fn ttl(&self) -> Option<Duration> {
        match self.kind {
            ViewKind::Static { .. } => None,
            ViewKind::Dynamic { ttl } => Some(ttl),
        }
    }

    /// The windowed aggregates of this view with their features, in declared
    /// order.
    pub fn aggregates(&self) -> impl Iterator<Item = (&FeatureSpec, &Aggregate)> {
        self.features
            .iter()
            .filter_map(|f| f.aggregate.as_ref().map(|a| (f, a)))
    }

    /// The widest window of the view's aggregates: how far back a read must
    /// look for events. None when the view declares no aggregate.
    pub fn widest_window(&self) -> Option<Duration> {
        self.aggregates().map(|(_, a)| a.window).max()
    }

    /// How the view's aggregates use the raw event field `name`: None when no
    /// aggregate reads it, [`EventFieldUse::Numeric`] when a sum, mean, max or
    /// min does (so the field must be a number), else
    /// [`EventFieldUse::Counted`].
    pub fn event_field(&self, name: &str) -> Option<EventFieldUse> {
        self.aggregates()
            .filter(|(_, a)| a.of == name)
            .map(|(_, a)| match a.function {
                AggregateFunction::Count => EventFieldUse::Counted,
                _ => EventFieldUse::Numeric,
            })
            .max()
    }

    /// The raw event fields the view's aggregates read, sorted, without
    /// repeats (for messages).
    pub fn event_fields(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.aggregates().map(|(_, a)| a.of.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// How a dynamic view's aggregates use one raw event field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventFieldUse {
    /// Only counted: any value type will do.
    Counted,
    /// Summed, averaged or compared: the value must be a finite number.
    Numeric,
}

/// How a feature view gets its values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewKind {
    /// Loaded in batches by a refresh job (`[[static_view]]`).
    Static {
        /// The job that loads this view.
        refresh_job: RefreshJobName,
    },
    /// Written continuously as events arrive (`[[dynamic_view]]`).
    Dynamic {
        /// Values (and raw events behind aggregates) are kept this long, then
        /// expire; always at least the view's `max_age`.
        ttl: Duration,
    },
}

/// One feature of a view.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSpec {
    /// Feature name, unique within its view.
    pub name: String,
    /// Value type.
    pub feature_type: FeatureType,
    /// Value used when the entity has no value, or its value is older than the
    /// view's `max_age`; always of `feature_type`.
    pub default: FeatureValue,
    /// For dynamic views: the windowed aggregate over raw events that computes
    /// this feature. None means the producer writes the value itself.
    pub aggregate: Option<Aggregate>,
}

/// A windowed aggregate over raw events, declared on a dynamic feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregate {
    /// What is computed.
    pub function: AggregateFunction,
    /// Events older than this (before the read time) are left out; never longer
    /// than the view's ttl.
    pub window: Duration,
    /// The raw event field read; for `count`, events that carry this field are counted.
    pub of: String,
}

/// The function of a windowed aggregate (`function = "count"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AggregateFunction {
    /// Number of events in the window that carry the field.
    Count,
    /// Sum of the field over the window.
    Sum,
    /// Mean of the field over the window.
    Mean,
    /// Largest value of the field in the window.
    Max,
    /// Smallest value of the field in the window.
    Min,
}

impl AggregateFunction {
    /// The name used in definition files.
    pub fn as_str(self) -> &'static str {
        match self {
            AggregateFunction::Count => "count",
            AggregateFunction::Sum => "sum",
            AggregateFunction::Mean => "mean",
            AggregateFunction::Max => "max",
            AggregateFunction::Min => "min",
        }
    }

    /// Whether a feature of type `ty` can hold this function's result: every
    /// function needs a numeric feature, and a mean needs a float.
    pub fn produces(self, ty: FeatureType) -> bool {
        match self {
            AggregateFunction::Mean => matches!(ty, FeatureType::Float32 | FeatureType::Float64),
            _ => ty.is_numeric(),
        }
    }

    /// The feature types that can hold this function's result, for messages.
    pub(super) fn result_types(self) -> &'static str {
        match self {
            AggregateFunction::Mean => "float32 or float64",
            _ => "int64, float32 or float64",
        }
    }
}

impl fmt::Display for AggregateFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A feature the caller sends with each request (`[[request_feature]]`);
/// models reference it as `request.name`.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestFeature {
    /// Feature name, unique among request features.
    pub name: String,
    /// Value type.
    pub feature_type: FeatureType,
    /// Value used when the caller does not send it; None means the feature is
    /// required and a request without it is refused.
    pub default: Option<FeatureValue>,
}

impl RequestFeature {
    /// Whether a request without this feature is refused.
    pub fn is_required(&self) -> bool {
        self.default.is_none()
    }
}
