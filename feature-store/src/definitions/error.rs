//! Why a definition file was refused. Every message names the file; problems
//! found after parsing also name the key path (e.g. `static_view[0].feature[2].default`).

use std::path::PathBuf;
use std::time::Duration;

use super::duration::{DurationError, parse_duration};
use super::model::InputDtype;
use super::value::FeatureType;
use super::view::AggregateFunction;

/// A feature definition file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DefinitionsError {
    /// The file could not be read.
    #[error("cannot read feature definitions {path}")]
    Read {
        /// The definition file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not valid TOML, or a key is unknown, missing or of the wrong kind. toml's
    /// message carries the line, the column and the offending key.
    #[error("invalid feature definitions {path}: {error}")]
    Parse {
        /// The definition file.
        path: PathBuf,
        /// What the TOML parser said.
        error: toml::de::Error,
    },
    /// A key holds a value that cannot work.
    #[error("invalid feature definitions {path}: `{key}`: {problem}")]
    Invalid {
        /// The definition file.
        path: PathBuf,
        /// Key path of the offending value, e.g. `model[0].features[7]`.
        key: String,
        /// What is wrong and what to do about it.
        problem: DefinitionProblem,
    },
}

impl DefinitionsError {
    /// The key path of an [`Invalid`](Self::Invalid) error.
    pub fn key(&self) -> Option<&str> {
        match self {
            DefinitionsError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The problem of an [`Invalid`](Self::Invalid) error.
    pub fn problem(&self) -> Option<&DefinitionProblem> {
        match self {
            DefinitionsError::Invalid { problem, .. } => Some(problem),
            _ => None,
        }
    }
}

/// What is wrong with one value of a definition file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DefinitionProblem {
    /// A name breaks its naming rule.
    #[error("{name:?} is not a valid name; {rule}")]
    InvalidName {
        /// The name as written.
        name: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// A view is called `request`, which model references use for request features.
    #[error(
        "\"request\" is reserved: `request.name` in a model refers to a request feature; rename the view"
    )]
    ReservedName,
    /// Two things of the same kind share a name.
    #[error("{name:?} is already declared as a {kind} at `{first}`; rename or remove one of them")]
    DuplicateName {
        /// What kind of thing (entity, view, feature of a view…).
        kind: &'static str,
        /// The shared name.
        name: String,
        /// Key path of the first declaration.
        first: String,
    },
    /// A list that must hold at least one item is empty or missing.
    #[error("must not be empty; {hint}")]
    EmptyList {
        /// What to add.
        hint: &'static str,
    },
    /// A view names an entity that is not declared.
    #[error(
        "unknown entity {name:?}; declared entities: {known}. Declare it in an [[entity]] or fix the name"
    )]
    UnknownEntity {
        /// The entity as written.
        name: String,
        /// The declared entities, comma-separated.
        known: String,
    },
    /// A duration cannot be read.
    #[error("bad duration {value:?}: {error}")]
    BadDuration {
        /// The duration as written.
        value: String,
        /// What is wrong with it.
        error: DurationError,
    },
    /// A dynamic view's ttl is shorter than its max_age.
    #[error(
        "ttl {ttl:?} is shorter than max_age {max_age:?}: values would expire before they count as stale, so max_age could never apply; make ttl at least as long as max_age"
    )]
    TtlShorterThanMaxAge {
        /// The ttl as written.
        ttl: String,
        /// The max_age as written.
        max_age: String,
    },
    /// A default value does not fit the feature's type.
    #[error("default {found} does not fit type {feature_type}; write {expected}")]
    DefaultType {
        /// The feature's declared type.
        feature_type: FeatureType,
        /// The default as written, described.
        found: String,
        /// How to write a default of this type.
        expected: &'static str,
    },
    /// A vector feature outside a static view.
    #[error(
        "vector features belong to static views, loaded whole from refresh files (e.g. embeddings); {place} take scalar values: use float32, float64, int64, bool or string"
    )]
    VectorOutsideStaticView {
        /// Where it was declared, e.g. "dynamic views".
        place: &'static str,
    },
    /// A feature of a static view declares an aggregate.
    #[error(
        "aggregates belong to dynamic views: a static view is loaded whole by its refresh job, which computes its own values; remove `aggregate` or move the feature to a [[dynamic_view]]"
    )]
    AggregateInStaticView,
    /// An aggregate's result cannot be held by the feature's type.
    #[error(
        "a {function} aggregate cannot fill a feature of type {feature_type}; declare the feature as {allowed}"
    )]
    AggregateType {
        /// The aggregate function.
        function: AggregateFunction,
        /// The feature's declared type.
        feature_type: FeatureType,
        /// The types that work.
        allowed: &'static str,
    },
    /// An aggregate's window is longer than its view's ttl.
    #[error(
        "window {window:?} is longer than the view's ttl {ttl:?}: events expire after the ttl, so the aggregate would silently cover less than its window; shorten the window or lengthen the ttl"
    )]
    WindowLongerThanTtl {
        /// The window as written.
        window: String,
        /// The view's ttl as written.
        ttl: String,
    },
    /// A request feature is both required and has a default.
    #[error(
        "a required request feature has no default (a request without it is refused); remove `default` or `required = true`"
    )]
    RequiredWithDefault,
    /// A request feature is neither required nor has a default.
    #[error(
        "a request feature needs `required = true` or a `default` for requests that leave it out"
    )]
    MissingDefault,
    /// A model feature reference is not `view.feature` or `request.name`.
    #[error("{reference:?} is not a feature reference; write `view.feature` or `request.name`")]
    BadReference {
        /// The reference as written.
        reference: String,
    },
    /// A model feature reference names a view that is not declared.
    #[error(
        "unknown view {view:?}; declared views: {known}. Declare it or fix the reference (request features are `request.name`)"
    )]
    UnknownView {
        /// The view as written.
        view: String,
        /// The declared views, comma-separated.
        known: String,
    },
    /// A model feature reference names a feature its view does not have.
    #[error(
        "view {view:?} has no feature {feature:?}; its features: {known}. Add it to the view or fix the reference"
    )]
    UnknownFeature {
        /// The view.
        view: String,
        /// The feature as written.
        feature: String,
        /// The view's features, comma-separated.
        known: String,
    },
    /// A model feature reference names a request feature that is not declared.
    #[error(
        "unknown request feature {name:?}; declared request features: {known}. Declare it in a [[request_feature]] or fix the reference"
    )]
    UnknownRequestFeature {
        /// The request feature as written.
        name: String,
        /// The declared request features, comma-separated.
        known: String,
    },
    /// Two columns of one model input have the same feature name (the same
    /// reference twice, or two sources with a feature of the same name).
    #[error(
        "column name {name:?} is already column {first_index} ({first_reference}); a model input's column names must be distinct: remove the repeat or rename one of the features"
    )]
    DuplicateColumn {
        /// The shared feature name.
        name: String,
        /// Index of the first column with that name.
        first_index: usize,
        /// Reference of the first column with that name.
        first_reference: String,
    },
    /// A feature's type cannot become a column of the input's dtype.
    #[error(
        "{reference} is a feature of type {feature_type} and cannot become a column of the {dtype} input; drop it from the model or change its type"
    )]
    ColumnType {
        /// The reference as written.
        reference: String,
        /// The feature's declared type.
        feature_type: FeatureType,
        /// The input's dtype.
        dtype: InputDtype,
    },
    /// A feature's default does not fit the input's dtype.
    #[error(
        "the default {default} of {reference} does not fit the {dtype} column; choose a default within its range"
    )]
    DefaultOutOfRange {
        /// The reference as written.
        reference: String,
        /// The default, as declared.
        default: String,
        /// The input's dtype.
        dtype: InputDtype,
    },
    /// A `[[refresh_job]]` setting is wrong (the message says how).
    #[error("{0}")]
    RefreshJob(String),
    /// A `[[scoring_job]]` setting is wrong (the message says how).
    #[error("{0}")]
    ScoringJob(String),
    /// A dynamic view's event `source` is wrong (the message says how).
    #[error("{0}")]
    EventSource(String),
    /// An `include` cannot be followed (the message says why).
    #[error("{0}")]
    Include(String),
    /// A view's `[static_view.index]` setting is wrong (the message says how).
    #[error("{0}")]
    Index(String),
}

/// `text` as a duration, or the problem naming it.
pub(super) fn duration(text: &str) -> Result<Duration, DefinitionProblem> {
    parse_duration(text).map_err(|error| DefinitionProblem::BadDuration {
        value: text.to_owned(),
        error,
    })
}

/// The names a message offers instead ("a, b", or "none").
pub(super) fn known<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let list: Vec<&str> = names.collect();
    if list.is_empty() {
        "none".to_owned()
    } else {
        list.join(", ")
    }
}
