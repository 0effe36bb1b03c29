//! The definition file as written by a person, before validation. Unknown keys
//! are refused so that a typo never silently drops a setting.

use serde::Deserialize;

use super::model::InputDtype;
use super::value::FeatureType;
use super::view::AggregateFunction;

/// A whole definition file. Every list is optional at the top level; lists inside
/// an item are defaulted to empty so that validation can name their key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefinitions {
    /// Other definition files merged into this one (paths relative to it).
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(rename = "entity", default)]
    pub entities: Vec<RawEntity>,
    #[serde(rename = "static_view", default)]
    pub static_views: Vec<RawStaticView>,
    #[serde(rename = "dynamic_view", default)]
    pub dynamic_views: Vec<RawDynamicView>,
    #[serde(rename = "request_feature", default)]
    pub request_features: Vec<RawRequestFeature>,
    #[serde(rename = "model", default)]
    pub models: Vec<RawModel>,
    #[serde(rename = "refresh_job", default)]
    pub refresh_jobs: Vec<super::job::RawRefreshJob>,
    #[serde(rename = "scoring_job", default)]
    pub scoring_jobs: Vec<super::scoring::RawScoringJob>,
}

impl RawDefinitions {
    /// Appends every list of `other` to this one's.
    pub fn merge(&mut self, other: RawDefinitions) {
        self.entities.extend(other.entities);
        self.static_views.extend(other.static_views);
        self.dynamic_views.extend(other.dynamic_views);
        self.request_features.extend(other.request_features);
        self.models.extend(other.models);
        self.refresh_jobs.extend(other.refresh_jobs);
        self.scoring_jobs.extend(other.scoring_jobs);
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEntity {
    pub name: String,
    #[serde(default)]
    pub keys: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStaticView {
    pub name: String,
    pub entity: String,
    pub refresh_job: String,
    pub max_age: String,
    #[serde(rename = "feature", default)]
    pub features: Vec<RawFeature>,
    pub index: Option<super::index::RawIndex>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDynamicView {
    pub name: String,
    pub entity: String,
    pub ttl: String,
    pub max_age: String,
    pub source: Option<super::stream::RawSource>,
    #[serde(rename = "feature", default)]
    pub features: Vec<RawFeature>,
}

/// One feature of a view. `aggregate` is accepted on static views too so that
/// validation can say why it does not belong there.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFeature {
    pub name: String,
    #[serde(rename = "type")]
    pub feature_type: FeatureType,
    pub default: toml::Value,
    pub aggregate: Option<RawAggregate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAggregate {
    pub function: AggregateFunction,
    pub window: String,
    pub of: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRequestFeature {
    pub name: String,
    #[serde(rename = "type")]
    pub feature_type: FeatureType,
    pub required: Option<bool>,
    pub default: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    pub name: String,
    pub input: String,
    pub dtype: InputDtype,
    #[serde(default)]
    pub features: Vec<String>,
}
