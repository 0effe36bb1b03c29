//! `[[scoring_job]]`: a model's batch-scoring job, declared by data engineers
//! next to the model — the key its precomputed predictions are stored under
//! (the model's entity, or an ordered combination of feature values with
//! continuous ones binned), what it scores (every entity of a static view's
//! current batch, the most requested entities or combinations over a window
//! of the prediction log, or a file of keys), how often, which model
//! version, how long an entry may be served, and the cardinality limits that
//! keep a spike of new keys or categories from replacing the served batch.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::error::{self, DefinitionProblem, known};
use super::model::{ColumnSource, ModelFeatures};
use super::value::FeatureType;
use super::view::FeatureView;
use crate::combination::{Bins, CombinationKey, KeyValue};

/// `[[scoring_job]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScoringJob {
    pub name: String,
    pub model: String,
    pub key: String,
    #[serde(rename = "key_feature", default)]
    pub key_features: Vec<RawKeyFeature>,
    pub score: RawScoreSource,
    pub interval: String,
    pub version: Option<String>,
    pub max_age: String,
    pub cardinality: Option<RawCardinality>,
}

/// `[[scoring_job.key_feature]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeyFeature {
    pub feature: String,
    pub edges: Option<Vec<f64>>,
}

/// `[scoring_job.score]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScoreSource {
    pub view: Option<String>,
    pub top_entities: Option<u64>,
    pub top_combinations: Option<u64>,
    pub window: Option<String>,
    pub file: Option<String>,
}

/// `[scoring_job.cardinality]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCardinality {
    pub max_keys: Option<u64>,
    pub new_category_factor: Option<f64>,
}

/// One feature of a combination key, in key order.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyFeature {
    /// The model input column's reference (`request.amount`,
    /// `view.feature`).
    pub reference: String,
    /// The column's feature name (what the key's encoding names).
    pub name: String,
    /// A continuous feature's bins; `None`: the value itself is the
    /// category.
    pub bins: Option<Bins>,
    /// Its position in the model's input row.
    pub column: usize,
    /// Its declared type (how a category is written in the key).
    pub feature_type: FeatureType,
}

impl ScoringKey {
    /// The key an entry for this assembled input row is stored under: the
    /// entity key, or the combination key of the row's key features
    /// (binned as declared, categories as their canonical text).
    pub fn of_row(&self, entity_key: &str, row: &[f32]) -> String {
        let ScoringKey::Combination(features) = self else {
            return entity_key.to_owned();
        };
        let texts: Vec<Option<String>> = features
            .iter()
            .map(|f| {
                let x = row.get(f.column).copied().unwrap_or(f32::NAN);
                (f.bins.is_none() && !x.is_nan()).then(|| category_text(f.feature_type, x))
            })
            .collect();
        let parts: Vec<(&str, KeyValue<'_>)> = features
            .iter()
            .zip(&texts)
            .map(|(f, text)| {
                let x = row.get(f.column).copied().unwrap_or(f32::NAN);
                let value = match (&f.bins, text) {
                    (Some(bins), _) => bins
                        .bin(f64::from(x))
                        .map_or(KeyValue::Missing, KeyValue::Bin),
                    (None, Some(text)) => KeyValue::Category(text),
                    (None, None) => KeyValue::Missing,
                };
                (f.name.as_str(), value)
            })
            .collect();
        CombinationKey::of(&parts).as_str().to_owned()
    }
}

impl ScoringKey {
    /// The categorical (unbinned) key features' values in `row`, as their
    /// key text: what the cardinality watch counts.
    pub fn categories<'a>(&'a self, row: &[f32]) -> Vec<(&'a str, String)> {
        let ScoringKey::Combination(features) = self else {
            return Vec::new();
        };
        features
            .iter()
            .filter(|f| f.bins.is_none())
            .map(|f| {
                let x = row.get(f.column).copied().unwrap_or(f32::NAN);
                let text = if x.is_nan() {
                    String::new()
                } else {
                    category_text(f.feature_type, x)
                };
                (f.name.as_str(), text)
            })
            .collect()
    }
}

/// A categorical input value as it takes part in a key: integers in
/// decimal, booleans as `true` / `false`; other types by their shortest
/// decimal form.
fn category_text(ty: FeatureType, x: f32) -> String {
    match ty {
        FeatureType::Bool => (x != 0.0).to_string(),
        // A row holds integers exactly up to 2^24, far above any category
        // code; `as` saturates, and the guard keeps it to whole values.
        FeatureType::Int64 if x.fract() == 0.0 && x.abs() < 1e15 => (x as i64).to_string(),
        _ => x.to_string(),
    }
}

/// What a precomputed prediction is stored under.
#[derive(Debug, Clone, PartialEq)]
pub enum ScoringKey {
    /// The model's entity key.
    Entity,
    /// The ordered, binned values of these features (the model's only
    /// inputs); see [`crate::combination`].
    Combination(Vec<KeyFeature>),
}

/// What a run scores.
#[derive(Debug, Clone, PartialEq)]
pub enum ScoreSource {
    /// Every entity of this static view's current batch.
    View(String),
    /// The `n` entities predicted most often over the last `window` of the
    /// prediction log.
    TopEntities {
        /// How many.
        n: u64,
        /// How far back the log is read.
        window: Duration,
    },
    /// The `n` combinations predicted most often over the last `window`.
    TopCombinations {
        /// How many.
        n: u64,
        /// How far back the log is read.
        window: Duration,
    },
    /// The keys in this CSV or Parquet file.
    File(PathBuf),
}

/// The limits that raise the cardinality alarm of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cardinality {
    /// Above this many distinct keys the run alarms and its batch is not
    /// served.
    pub max_keys: u64,
    /// A categorical feature with more never-seen values than this factor
    /// times the previous run's raises the alarm (the batch is still served).
    pub new_category_factor: f64,
}

/// The default hard cap on keys per run.
pub const DEFAULT_MAX_KEYS: u64 = 10_000_000;
/// The default factor of new categories that raises the alarm.
pub const DEFAULT_NEW_CATEGORY_FACTOR: f64 = 3.0;

/// One declared scoring job.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoringJobSpec {
    /// The job's name.
    pub name: String,
    /// The model it scores.
    pub model: String,
    /// What entries are stored under.
    pub key: ScoringKey,
    /// What a run scores.
    pub source: ScoreSource,
    /// How often it runs.
    pub interval: Duration,
    /// The model version scored; `None`: the stable version at run time.
    pub version: Option<String>,
    /// An entry older than this is not served (the live model answers).
    pub max_age: Duration,
    /// The alarm limits.
    pub cardinality: Cardinality,
}

/// A problem with one key of a `[[scoring_job]]`: the key relative to the
/// entry, and what is wrong.
type Problem = (String, DefinitionProblem);

fn bad(key: impl Into<String>, message: impl Into<String>) -> Problem {
    (key.into(), DefinitionProblem::ScoringJob(message.into()))
}

fn duration(key: &str, text: &str) -> Result<Duration, Problem> {
    error::duration(text).map_err(|p| (key.to_owned(), p))
}

/// Validates one `[[scoring_job]]` against the models and views already
/// validated; `dir` is the definitions file's folder, which a relative key
/// file starts from.
pub(super) fn validate_scoring_job(
    raw: &RawScoringJob,
    models: &[ModelFeatures],
    views: &[FeatureView],
    dir: &Path,
) -> Result<ScoringJobSpec, Problem> {
    if raw.name.is_empty() {
        return Err(bad("name", "name the job, e.g. \"fraud_by_customer\""));
    }
    let Some(model) = models.iter().find(|m| m.name() == raw.model) else {
        return Err(bad(
            "model",
            format!(
                "no [[model]] is named {:?}; models: {}",
                raw.model,
                known(models.iter().map(ModelFeatures::name))
            ),
        ));
    };
    let key = match raw.key.as_str() {
        "entity" => entity_key(raw, model)?,
        "combination" => ScoringKey::Combination(combination_key(raw, model)?),
        other => {
            return Err(bad(
                "key",
                format!("{other:?} is not \"entity\" or \"combination\""),
            ));
        }
    };
    let source = source(raw, &key, model, views, dir)?;
    let interval = duration("interval", &raw.interval)?;
    if interval.is_zero() {
        return Err(bad("interval", "must be above zero"));
    }
    let max_age = duration("max_age", &raw.max_age)?;
    if max_age.is_zero() {
        return Err(bad("max_age", "must be above zero"));
    }
    if raw.version.as_deref() == Some("") {
        return Err(bad(
            "version",
            "name a version, or leave it out to score the stable one",
        ));
    }
    Ok(ScoringJobSpec {
        name: raw.name.clone(),
        model: raw.model.clone(),
        key,
        source,
        interval,
        version: raw.version.clone(),
        max_age,
        cardinality: cardinality(raw.cardinality.as_ref())?,
    })
}

/// An entity key needs a model of one entity whose request features all have
/// defaults: the job fills them with their defaults, so the gateway may serve
/// an entry only to a request that sends none of them.
fn entity_key(raw: &RawScoringJob, model: &ModelFeatures) -> Result<ScoringKey, Problem> {
    if !raw.key_features.is_empty() {
        return Err(bad(
            "key_feature",
            "an entity key takes no key features; remove them or use key = \"combination\"",
        ));
    }
    if model.entities().len() != 1 {
        return Err(bad(
            "key",
            format!(
                "model {:?} reads {} entities ({}); an entity key needs a model of exactly one",
                raw.model,
                model.entities().len(),
                known(model.entities().iter().map(String::as_str))
            ),
        ));
    }
    if let Some(required) = model
        .input()
        .columns()
        .iter()
        .find(|c| c.source == ColumnSource::Request && c.default.is_none())
    {
        return Err(bad(
            "key",
            format!(
                "model {:?} needs the request feature {:?}, which has no default, so an entity alone cannot be scored; give it a default or use key = \"combination\"",
                raw.model, required.reference
            ),
        ));
    }
    Ok(ScoringKey::Entity)
}

/// A combination key's features: exactly the model's input columns, each
/// once; continuous ones (floats) binned by edges.
fn combination_key(raw: &RawScoringJob, model: &ModelFeatures) -> Result<Vec<KeyFeature>, Problem> {
    if raw.key_features.is_empty() {
        return Err(bad(
            "key_feature",
            "list the key's features in key order, e.g. [[scoring_job.key_feature]] feature = \"request.country\"",
        ));
    }
    let input = model.input();
    let mut out: Vec<KeyFeature> = Vec::with_capacity(raw.key_features.len());
    for (i, f) in raw.key_features.iter().enumerate() {
        let at = format!("key_feature[{i}]");
        let Some(column) = input.columns().iter().find(|c| c.reference == f.feature) else {
            return Err(bad(
                format!("{at}.feature"),
                format!(
                    "{:?} is not an input of model {:?}; its inputs: {}",
                    f.feature,
                    raw.model,
                    known(input.columns().iter().map(|c| c.reference.as_str()))
                ),
            ));
        };
        if out.iter().any(|k| k.reference == f.feature) {
            return Err(bad(
                format!("{at}.feature"),
                format!("{:?} is listed twice; list each feature once", f.feature),
            ));
        }
        let continuous = matches!(
            column.feature_type,
            FeatureType::Float32 | FeatureType::Float64
        );
        let bins = match (&f.edges, continuous) {
            (Some(edges), _) => {
                if matches!(column.feature_type, FeatureType::Bool | FeatureType::String) {
                    return Err(bad(
                        format!("{at}.edges"),
                        format!(
                            "{:?} is a {} feature: it is a category by value, remove edges",
                            f.feature, column.feature_type
                        ),
                    ));
                }
                Some(
                    Bins::new(edges.clone())
                        .map_err(|e| bad(format!("{at}.edges"), e.to_string()))?,
                )
            }
            (None, true) => {
                return Err(bad(
                    format!("{at}.edges"),
                    format!(
                        "{:?} is a {} feature: declare its bin edges, e.g. edges = [10.0, 50.0, 200.0]",
                        f.feature, column.feature_type
                    ),
                ));
            }
            (None, false) => None,
        };
        out.push(KeyFeature {
            reference: column.reference.clone(),
            name: column.name.clone(),
            bins,
            column: input
                .columns()
                .iter()
                .position(|c| c.reference == column.reference)
                .unwrap_or_default(),
            feature_type: column.feature_type,
        });
    }
    if let Some(missing) = input
        .columns()
        .iter()
        .find(|c| !out.iter().any(|k| k.reference == c.reference))
    {
        return Err(bad(
            "key_feature",
            format!(
                "model {:?} also takes {:?}, which is not in the key: a model scored by combination takes only the key's features as inputs",
                raw.model, missing.reference
            ),
        ));
    }
    Ok(out)
}

fn source(
    raw: &RawScoringJob,
    key: &ScoringKey,
    model: &ModelFeatures,
    views: &[FeatureView],
    dir: &Path,
) -> Result<ScoreSource, Problem> {
    let s = &raw.score;
    let window = || -> Result<Duration, Problem> {
        let text = s.window.as_deref().ok_or_else(|| {
            bad(
                "score.window",
                "give the window of the prediction log to count over, e.g. window = \"7d\"",
            )
        })?;
        duration("score.window", text)
    };
    let given = [
        s.view.is_some(),
        s.top_entities.is_some(),
        s.top_combinations.is_some(),
        s.file.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(bad(
            "score",
            "give exactly one of `view` (every entity of a static view), `top_entities` or `top_combinations` (with a `window` of the prediction log), or `file` (a CSV or Parquet file of keys)",
        ));
    }
    if s.window.is_some() && s.top_entities.is_none() && s.top_combinations.is_none() {
        return Err(bad(
            "score.window",
            "a window goes with top_entities or top_combinations; remove it",
        ));
    }
    let entity_only = |what: &str| -> Result<(), Problem> {
        match key {
            ScoringKey::Entity => Ok(()),
            ScoringKey::Combination(_) => Err(bad(
                format!("score.{what}"),
                format!("{what} scores entities, but this job's key is a combination"),
            )),
        }
    };
    if let Some(view) = &s.view {
        entity_only("view")?;
        let Some(v) = views.iter().find(|v| &v.name == view && v.is_static()) else {
            return Err(bad(
                "score.view",
                format!(
                    "no static view is named {view:?}; static views: {}",
                    known(
                        views
                            .iter()
                            .filter(|v| v.is_static())
                            .map(|v| v.name.as_str())
                    )
                ),
            ));
        };
        if model.entities().first() != Some(&v.entity) {
            return Err(bad(
                "score.view",
                format!(
                    "view {view:?} holds entity {:?}, but model {:?} is keyed by {:?}",
                    v.entity,
                    raw.model,
                    model.entities().first().map_or("", String::as_str)
                ),
            ));
        }
        return Ok(ScoreSource::View(view.clone()));
    }
    if let Some(n) = s.top_entities {
        entity_only("top_entities")?;
        if n == 0 {
            return Err(bad("score.top_entities", "must be at least 1"));
        }
        return Ok(ScoreSource::TopEntities {
            n,
            window: window()?,
        });
    }
    if let Some(n) = s.top_combinations {
        if *key == ScoringKey::Entity {
            return Err(bad(
                "score.top_combinations",
                "top_combinations scores combinations, but this job's key is the entity",
            ));
        }
        if n == 0 {
            return Err(bad("score.top_combinations", "must be at least 1"));
        }
        return Ok(ScoreSource::TopCombinations {
            n,
            window: window()?,
        });
    }
    let file = s.file.as_deref().unwrap_or_default();
    if file.is_empty() {
        return Err(bad("score.file", "name the CSV or Parquet file of keys"));
    }
    let path = Path::new(file);
    Ok(ScoreSource::File(if path.is_absolute() {
        path.to_owned()
    } else {
        dir.join(path)
    }))
}

fn cardinality(raw: Option<&RawCardinality>) -> Result<Cardinality, Problem> {
    let max_keys = raw.and_then(|c| c.max_keys).unwrap_or(DEFAULT_MAX_KEYS);
    if max_keys == 0 {
        return Err(bad("cardinality.max_keys", "must be at least 1"));
    }
    let new_category_factor = raw
        .and_then(|c| c.new_category_factor)
        .unwrap_or(DEFAULT_NEW_CATEGORY_FACTOR);
    if !(new_category_factor.is_finite() && new_category_factor >= 1.0) {
        return Err(bad(
            "cardinality.new_category_factor",
            format!(
                "{new_category_factor} must be a number of at least 1 (e.g. 3: three times the previous run's new categories)"
            ),
        ));
    }
    Ok(Cardinality {
        max_keys,
        new_category_factor,
    })
}
