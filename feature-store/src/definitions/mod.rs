//! Feature definitions: the TOML file data engineers edit to declare entities,
//! feature views (static, loaded by refresh jobs; dynamic, streamed), request
//! features and, per model, the ordered features that become its input tensor;
//! also the jobs around them: refresh jobs (`[[refresh_job]]`) and batch-scoring
//! jobs that precompute a model's predictions (`[[scoring_job]]`).
//!
//! [`FeatureDefinitions::load`] parses the file once with unknown keys refused,
//! then validates it into the runtime types below; any problem refuses the whole
//! file with a [`DefinitionsError`] naming the file and the key path
//! (`static_view[0].feature[2].default`, `model[0].features[7]`).
//!
//! ```toml
//! [[entity]]
//! name = "customer"
//! keys = ["customer_id"]
//!
//! [[static_view]]
//! name = "customer_profile"
//! entity = "customer"
//! refresh_job = "customer_profile_daily"
//! max_age = "36h"
//!
//! [[static_view.feature]]
//! name = "chargeback_count_1y"
//! type = "int64"
//! default = 0
//!
//! [[dynamic_view]]
//! name = "customer_activity"
//! entity = "customer"
//! ttl = "48h"
//! max_age = "24h"
//!
//! [[dynamic_view.feature]]
//! name = "txn_count_1h"
//! type = "int64"
//! default = 0
//! aggregate = { function = "count", window = "1h", of = "transaction_id" }
//!
//! [[request_feature]]
//! name = "amount"
//! type = "float64"
//! required = true
//!
//! [[model]]
//! name = "fraud_detector"
//! input = "features"
//! dtype = "FP32"
//! features = ["customer_profile.chargeback_count_1y", "customer_activity.txn_count_1h", "request.amount"]
//! ```
//!
//! `include = ["other.toml"]` at the top of a file merges other files' lists
//! into it (paths relative to the including file; relative paths inside any
//! of them, such as refresh sources, resolve from the first file's folder).
//!
//! `definitions/fraud.toml` in this crate is the full example for the
//! `fraud_detector` model, with comments on each default.

mod duration;
mod error;
mod index;
mod job;
mod model;
mod raw;
mod scoring;
mod stream;
mod tuning;
mod validate;
mod value;
mod view;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use duration::{DurationError, parse_duration};
pub use error::{DefinitionProblem, DefinitionsError};
pub use index::{
    DEFAULT_MAX_K, DEFAULT_RECALL_THRESHOLD, Distance, IndexSpec, MAX_K_LIMIT, Quantization,
};
pub use job::{JobSource, JobTuning, MissedRun, RefreshJobSpec};
pub use model::{ColumnSource, InputColumn, InputDtype, ModelFeatures, ModelInput};
pub use scoring::{
    Cardinality, DEFAULT_MAX_KEYS, DEFAULT_NEW_CATEGORY_FACTOR, KeyFeature, ScoreSource,
    ScoringJobSpec, ScoringKey,
};
pub use stream::{EventEncoding, KafkaSource, brokers_problem, topic_name_problem};
pub use tuning::{MetricKind, Policy, Scoring};
pub use value::{FeatureType, FeatureValue, MAX_VECTOR_DIMENSION, parse_vector};
pub use view::{
    Aggregate, AggregateFunction, Entity, EventFieldUse, FeatureSpec, FeatureView, RefreshJobName,
    RequestFeature, ViewKind,
};

/// A validated definition file: every reference resolves, every default has its
/// feature's type, every duration is positive and consistent.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureDefinitions {
    source: PathBuf,
    entities: Vec<Entity>,
    views: Vec<FeatureView>,
    request_features: Vec<RequestFeature>,
    models: Vec<ModelFeatures>,
    jobs: Vec<RefreshJobSpec>,
    scoring_jobs: Vec<ScoringJobSpec>,
    event_sources: Vec<KafkaSource>,
}

impl FeatureDefinitions {
    /// Reads and validates the definition file at `path`.
    ///
    /// # Errors
    /// [`DefinitionsError`] naming the file (and, after parsing, the key path) of
    /// the first problem found.
    pub fn load(path: &Path) -> Result<Self, DefinitionsError> {
        let text = std::fs::read_to_string(path).map_err(|source| DefinitionsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Validates definition text; `path` only labels errors and [`source`](Self::source).
    ///
    /// # Errors
    /// [`DefinitionsError`] naming the file (and, after parsing, the key path) of
    /// the first problem found.
    pub fn parse(text: &str, path: &Path) -> Result<Self, DefinitionsError> {
        let mut raw = Self::parse_raw(text, path)?;
        let includes = std::mem::take(&mut raw.include);
        let mut seen = vec![path.to_owned()];
        for name in includes {
            Self::include(&mut raw, path, &name, &mut seen)?;
        }
        validate::validate(&raw, path)
    }

    fn parse_raw(text: &str, path: &Path) -> Result<raw::RawDefinitions, DefinitionsError> {
        toml::from_str(text).map_err(|error| DefinitionsError::Parse {
            path: path.to_owned(),
            error,
        })
    }

    /// Merges the file `name` (relative to `from`'s folder), and what it
    /// includes, into `raw`; a file included twice is refused.
    fn include(
        raw: &mut raw::RawDefinitions,
        from: &Path,
        name: &str,
        seen: &mut Vec<PathBuf>,
    ) -> Result<(), DefinitionsError> {
        let path = from.parent().unwrap_or(Path::new(".")).join(name);
        if seen.contains(&path) {
            return Err(DefinitionsError::Invalid {
                path: from.to_owned(),
                key: "include".to_owned(),
                problem: DefinitionProblem::Include(format!(
                    "{} is included twice (or includes itself); include each file once",
                    path.display()
                )),
            });
        }
        seen.push(path.clone());
        let text = std::fs::read_to_string(&path).map_err(|source| DefinitionsError::Read {
            path: path.clone(),
            source,
        })?;
        let mut included = Self::parse_raw(&text, &path)?;
        let nested = std::mem::take(&mut included.include);
        raw.merge(included);
        for name in nested {
            Self::include(raw, &path, &name, seen)?;
        }
        Ok(())
    }

    /// The file these definitions came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Entities in file order.
    pub fn entities(&self) -> &[Entity] {
        &self.entities
    }

    /// The entity called `name`.
    pub fn entity(&self, name: &str) -> Option<&Entity> {
        self.entities.iter().find(|e| e.name == name)
    }

    /// All views: static views in file order, then dynamic views in file order.
    pub fn views(&self) -> &[FeatureView] {
        &self.views
    }

    /// The view (static or dynamic) called `name`.
    pub fn view(&self, name: &str) -> Option<&FeatureView> {
        self.views.iter().find(|v| v.name == name)
    }

    /// Static views, in file order.
    pub fn static_views(&self) -> impl Iterator<Item = &FeatureView> {
        self.views.iter().filter(|v| v.is_static())
    }

    /// The static views that declare a similarity index, in file order.
    pub fn indexed_views(&self) -> impl Iterator<Item = (&FeatureView, &IndexSpec)> {
        self.views
            .iter()
            .filter_map(|v| v.index.as_ref().map(|i| (v, i)))
    }

    /// Dynamic views, in file order.
    pub fn dynamic_views(&self) -> impl Iterator<Item = &FeatureView> {
        self.views.iter().filter(|v| !v.is_static())
    }

    /// The Kafka topics dynamic views' events are streamed from, in file
    /// order (one per view at most; no two views share a topic).
    pub fn event_sources(&self) -> &[KafkaSource] {
        &self.event_sources
    }

    /// Request features, in file order.
    pub fn request_features(&self) -> &[RequestFeature] {
        &self.request_features
    }

    /// The request feature called `name`.
    pub fn request_feature(&self, name: &str) -> Option<&RequestFeature> {
        self.request_features.iter().find(|f| f.name == name)
    }

    /// Models, in file order.
    pub fn models(&self) -> &[ModelFeatures] {
        &self.models
    }

    /// The features of the model called `name`.
    pub fn model(&self, name: &str) -> Option<&ModelFeatures> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The declared `[[refresh_job]]`s (what the scheduler runs), in file
    /// order.
    pub fn job_specs(&self) -> &[RefreshJobSpec] {
        &self.jobs
    }

    /// The declared `[[refresh_job]]` called `name`.
    pub fn job_spec(&self, name: &str) -> Option<&RefreshJobSpec> {
        self.jobs.iter().find(|j| j.name == name)
    }

    /// The declared `[[scoring_job]]`s, in file order.
    pub fn scoring_jobs(&self) -> &[ScoringJobSpec] {
        &self.scoring_jobs
    }

    /// The `[[scoring_job]]` of `model`, if one is declared.
    pub fn scoring_job_of(&self, model: &str) -> Option<&ScoringJobSpec> {
        self.scoring_jobs.iter().find(|j| j.model == model)
    }

    /// The declared `[[scoring_job]]` called `name`.
    pub fn scoring_job(&self, name: &str) -> Option<&ScoringJobSpec> {
        self.scoring_jobs.iter().find(|j| j.name == name)
    }

    /// The distinct refresh jobs, in the order their first view is declared.
    pub fn refresh_jobs(&self) -> Vec<&RefreshJobName> {
        let mut jobs: Vec<&RefreshJobName> = Vec::new();
        for job in self.views.iter().filter_map(FeatureView::refresh_job) {
            if !jobs.contains(&job) {
                jobs.push(job);
            }
        }
        jobs
    }

    /// The static views that the refresh job called `job` loads.
    pub fn views_refreshed_by<'a>(
        &'a self,
        job: &'a str,
    ) -> impl Iterator<Item = &'a FeatureView> + 'a {
        self.views
            .iter()
            .filter(move |v| v.refresh_job().is_some_and(|j| j.as_str() == job))
    }
}
