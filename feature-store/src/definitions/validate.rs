//! Raw definitions → runtime types. The first problem found refuses the file,
//! named by its key path; later steps rely on earlier ones (views need their
//! entity, models need their views), so there is no point going on.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::FeatureDefinitions;
use super::error::{DefinitionProblem, DefinitionsError, duration, known};
use super::model::{ColumnSource, InputColumn, ModelFeatures, ModelInput};
use super::raw::{RawAggregate, RawDefinitions, RawFeature, RawModel};
use super::value::{FeatureType, FeatureValue, describe_toml};
use super::view::{
    Aggregate, Entity, FeatureSpec, FeatureView, RefreshJobName, RequestFeature, ViewKind,
};

const NAME_RULE: &str = "use lowercase letters, digits and `_`, starting with a letter or `_` \
     (names become storage table and column names and appear in `view.feature` references)";
const MODEL_NAME_RULE: &str =
    "use letters, digits, `_`, `-` and `.`, as in the model repository's folder names";
const TENSOR_NAME_RULE: &str = "write the input tensor's name as the model declares it";
/// Views may not take this name: `request.name` refers to request features.
const REQUEST: &str = "request";

/// Validates a parsed file; `path` only labels errors.
pub(super) fn validate(
    raw: &RawDefinitions,
    path: &Path,
) -> Result<FeatureDefinitions, DefinitionsError> {
    let v = Validator { path };
    let entities = v.entities(raw)?;
    let views = v.views(raw, &entities)?;
    let event_sources = v.event_sources(raw, &views, &entities)?;
    let request_features = v.request_features(raw)?;
    let mut models = Vec::with_capacity(raw.models.len());
    let mut names = Seen::new("model");
    for (i, model) in raw.models.iter().enumerate() {
        let at = format!("model[{i}]");
        let name_key = format!("{at}.name");
        v.check(&name_key, check_model_name(&model.name))?;
        v.check(&name_key, names.insert(&model.name, &name_key))?;
        models.push(v.model(model, &at, &views, &request_features)?);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut jobs: Vec<super::job::RefreshJobSpec> = Vec::with_capacity(raw.refresh_jobs.len());
    for (i, job) in raw.refresh_jobs.iter().enumerate() {
        let at = format!("refresh_job[{i}]");
        let spec = super::job::validate_job(job, &views, dir)
            .map_err(|(key, problem)| v.invalid(&format!("{at}.{key}"), problem))?;
        if let Some(first) = jobs.iter().position(|j| j.name == spec.name) {
            return Err(v.invalid(
                &format!("{at}.name"),
                DefinitionProblem::RefreshJob(format!(
                    "job {:?} is already declared at `refresh_job[{first}]`; declare each job once",
                    spec.name
                )),
            ));
        }
        if let Some(t) = &spec.tuning
            && !models.iter().any(|m| m.name == t.scoring.model)
        {
            return Err(v.invalid(
                &format!("{at}.tuner.model"),
                DefinitionProblem::RefreshJob(format!(
                    "no [[model]] is named {:?}; models: {}",
                    t.scoring.model,
                    known(models.iter().map(|m| m.name.as_str()))
                )),
            ));
        }
        jobs.push(spec);
    }
    let mut scoring_jobs: Vec<super::scoring::ScoringJobSpec> =
        Vec::with_capacity(raw.scoring_jobs.len());
    for (i, job) in raw.scoring_jobs.iter().enumerate() {
        let at = format!("scoring_job[{i}]");
        let spec = super::scoring::validate_scoring_job(job, &models, &views, dir)
            .map_err(|(key, problem)| v.invalid(&format!("{at}.{key}"), problem))?;
        if let Some(first) = scoring_jobs.iter().position(|j| j.name == spec.name) {
            return Err(v.invalid(
                &format!("{at}.name"),
                DefinitionProblem::ScoringJob(format!(
                    "job {:?} is already declared at `scoring_job[{first}]`; declare each job once",
                    spec.name
                )),
            ));
        }
        // The gateway serves one prediction store per model.
        if let Some(first) = scoring_jobs.iter().position(|j| j.model == spec.model) {
            return Err(v.invalid(
                &format!("{at}.model"),
                DefinitionProblem::ScoringJob(format!(
                    "model {:?} is already scored by `scoring_job[{first}]`; a model has one scoring job",
                    spec.model
                )),
            ));
        }
        scoring_jobs.push(spec);
    }
    Ok(FeatureDefinitions {
        source: path.to_owned(),
        entities,
        views,
        request_features,
        models,
        jobs,
        scoring_jobs,
        event_sources,
    })
}

struct Validator<'p> {
    path: &'p Path,
}

impl Validator<'_> {
    fn invalid(&self, key: &str, problem: DefinitionProblem) -> DefinitionsError {
        DefinitionsError::Invalid {
            path: self.path.to_owned(),
            key: key.to_owned(),
            problem,
        }
    }

    fn check<T>(
        &self,
        key: &str,
        result: Result<T, DefinitionProblem>,
    ) -> Result<T, DefinitionsError> {
        result.map_err(|problem| self.invalid(key, problem))
    }

    fn duration(&self, value: &str, key: &str) -> Result<Duration, DefinitionsError> {
        self.check(key, duration(value))
    }

    fn entities(&self, raw: &RawDefinitions) -> Result<Vec<Entity>, DefinitionsError> {
        let mut names = Seen::new("entity");
        let mut entities = Vec::with_capacity(raw.entities.len());
        for (i, entity) in raw.entities.iter().enumerate() {
            let name_key = format!("entity[{i}].name");
            self.check(&name_key, check_name(&entity.name))?;
            self.check(&name_key, names.insert(&entity.name, &name_key))?;
            let keys_key = format!("entity[{i}].keys");
            if entity.keys.is_empty() {
                return Err(self.invalid(
                    &keys_key,
                    DefinitionProblem::EmptyList {
                        hint: "list the key columns that identify one entity, e.g. keys = [\"customer_id\"]",
                    },
                ));
            }
            let mut columns = Seen::new("key column of this entity");
            for (j, column) in entity.keys.iter().enumerate() {
                let key = format!("{keys_key}[{j}]");
                self.check(&key, check_name(column))?;
                self.check(&key, columns.insert(column, &key))?;
            }
            entities.push(Entity {
                name: entity.name.clone(),
                keys: entity.keys.clone(),
            });
        }
        Ok(entities)
    }

    /// Static views, then dynamic views, each in file order; names unique across both.
    fn views(
        &self,
        raw: &RawDefinitions,
        entities: &[Entity],
    ) -> Result<Vec<FeatureView>, DefinitionsError> {
        let mut names = Seen::new("view");
        let mut views = Vec::with_capacity(raw.static_views.len() + raw.dynamic_views.len());
        for (i, view) in raw.static_views.iter().enumerate() {
            let at = format!("static_view[{i}]");
            self.view_name(&view.name, &at, &mut names)?;
            self.entity_exists(&view.entity, &at, entities)?;
            let job_key = format!("{at}.refresh_job");
            self.check(&job_key, check_name(&view.refresh_job))?;
            let max_age = self.duration(&view.max_age, &format!("{at}.max_age"))?;
            let features = self.features(&view.features, &at, None)?;
            let index = match &view.index {
                None => None,
                Some(raw) => Some(super::index::validate_index(raw, &features).map_err(
                    |(key, problem)| self.invalid(&format!("{at}.index.{key}"), problem),
                )?),
            };
            views.push(FeatureView {
                name: view.name.clone(),
                entity: view.entity.clone(),
                max_age,
                kind: ViewKind::Static {
                    refresh_job: RefreshJobName::new(view.refresh_job.clone()),
                },
                features,
                index,
            });
        }
        for (i, view) in raw.dynamic_views.iter().enumerate() {
            let at = format!("dynamic_view[{i}]");
            self.view_name(&view.name, &at, &mut names)?;
            self.entity_exists(&view.entity, &at, entities)?;
            let ttl_key = format!("{at}.ttl");
            let ttl = self.duration(&view.ttl, &ttl_key)?;
            let max_age = self.duration(&view.max_age, &format!("{at}.max_age"))?;
            if ttl < max_age {
                return Err(self.invalid(
                    &ttl_key,
                    DefinitionProblem::TtlShorterThanMaxAge {
                        ttl: view.ttl.clone(),
                        max_age: view.max_age.clone(),
                    },
                ));
            }
            let features = self.features(&view.features, &at, Some((ttl, &view.ttl)))?;
            views.push(FeatureView {
                name: view.name.clone(),
                entity: view.entity.clone(),
                max_age,
                kind: ViewKind::Dynamic { ttl },
                features,
                index: None,
            });
        }
        Ok(views)
    }

    /// The dynamic views' Kafka sources; a topic feeds one view.
    fn event_sources(
        &self,
        raw: &RawDefinitions,
        views: &[FeatureView],
        entities: &[Entity],
    ) -> Result<Vec<super::KafkaSource>, DefinitionsError> {
        let mut sources: Vec<(String, super::KafkaSource)> = Vec::new();
        for (i, view) in raw.dynamic_views.iter().enumerate() {
            let Some(source) = &view.source else {
                continue;
            };
            let at = format!("dynamic_view[{i}].source.kafka");
            let (Some(validated), Some(entity)) = (
                views.iter().find(|v| v.name == view.name),
                entities.iter().find(|e| e.name == view.entity),
            ) else {
                continue;
            };
            let spec = super::stream::validate_source(source, validated, entity)
                .map_err(|(key, problem)| self.invalid(&format!("{at}.{key}"), problem))?;
            if let Some((first, _)) = sources.iter().find(|(_, s)| s.topic == spec.topic) {
                return Err(self.invalid(
                    &format!("{at}.topic"),
                    DefinitionProblem::EventSource(format!(
                        "topic {:?} already feeds `{first}`; give each view its own topic",
                        spec.topic
                    )),
                ));
            }
            sources.push((at, spec));
        }
        Ok(sources.into_iter().map(|(_, s)| s).collect())
    }

    fn view_name<'a>(
        &self,
        name: &'a str,
        at: &str,
        names: &mut Seen<'a>,
    ) -> Result<(), DefinitionsError> {
        let key = format!("{at}.name");
        self.check(&key, check_name(name))?;
        if name == REQUEST {
            return Err(self.invalid(&key, DefinitionProblem::ReservedName));
        }
        self.check(&key, names.insert(name, &key))
    }

    fn entity_exists(
        &self,
        name: &str,
        at: &str,
        entities: &[Entity],
    ) -> Result<(), DefinitionsError> {
        if entities.iter().any(|e| e.name == name) {
            return Ok(());
        }
        Err(self.invalid(
            &format!("{at}.entity"),
            DefinitionProblem::UnknownEntity {
                name: name.to_owned(),
                known: known(entities.iter().map(|e| e.name.as_str())),
            },
        ))
    }

    /// The features of the view at `at`; `ttl` (value and text) for dynamic views.
    fn features(
        &self,
        raw: &[RawFeature],
        at: &str,
        ttl: Option<(Duration, &str)>,
    ) -> Result<Vec<FeatureSpec>, DefinitionsError> {
        if raw.is_empty() {
            return Err(self.invalid(
                &format!("{at}.feature"),
                DefinitionProblem::EmptyList {
                    hint: "add at least one feature table ([[static_view.feature]] or [[dynamic_view.feature]]) with name, type and default",
                },
            ));
        }
        let mut names = Seen::new("feature of this view");
        let mut features = Vec::with_capacity(raw.len());
        for (j, feature) in raw.iter().enumerate() {
            let key = format!("{at}.feature[{j}]");
            let name_key = format!("{key}.name");
            self.check(&name_key, check_name(&feature.name))?;
            self.check(&name_key, names.insert(&feature.name, &name_key))?;
            if ttl.is_some() && matches!(feature.feature_type, FeatureType::Vector(_)) {
                return Err(self.invalid(
                    &format!("{key}.type"),
                    DefinitionProblem::VectorOutsideStaticView {
                        place: "dynamic views",
                    },
                ));
            }
            let default = self.check(
                &format!("{key}.default"),
                typed_default(feature.feature_type, &feature.default),
            )?;
            let aggregate_key = format!("{key}.aggregate");
            let aggregate = match (&feature.aggregate, ttl) {
                (None, _) => None,
                (Some(_), None) => {
                    return Err(
                        self.invalid(&aggregate_key, DefinitionProblem::AggregateInStaticView)
                    );
                }
                (Some(aggregate), Some(ttl)) => {
                    Some(self.aggregate(aggregate, feature.feature_type, &aggregate_key, ttl)?)
                }
            };
            features.push(FeatureSpec {
                name: feature.name.clone(),
                feature_type: feature.feature_type,
                default,
                aggregate,
            });
        }
        Ok(features)
    }

    fn aggregate(
        &self,
        raw: &RawAggregate,
        feature_type: FeatureType,
        at: &str,
        (ttl, ttl_text): (Duration, &str),
    ) -> Result<Aggregate, DefinitionsError> {
        if !raw.function.produces(feature_type) {
            return Err(self.invalid(
                &format!("{at}.function"),
                DefinitionProblem::AggregateType {
                    function: raw.function,
                    feature_type,
                    allowed: raw.function.result_types(),
                },
            ));
        }
        let window_key = format!("{at}.window");
        let window = self.duration(&raw.window, &window_key)?;
        if window > ttl {
            return Err(self.invalid(
                &window_key,
                DefinitionProblem::WindowLongerThanTtl {
                    window: raw.window.clone(),
                    ttl: ttl_text.to_owned(),
                },
            ));
        }
        self.check(&format!("{at}.of"), check_name(&raw.of))?;
        Ok(Aggregate {
            function: raw.function,
            window,
            of: raw.of.clone(),
        })
    }

    fn request_features(
        &self,
        raw: &RawDefinitions,
    ) -> Result<Vec<RequestFeature>, DefinitionsError> {
        let mut names = Seen::new("request feature");
        let mut features = Vec::with_capacity(raw.request_features.len());
        for (i, feature) in raw.request_features.iter().enumerate() {
            let at = format!("request_feature[{i}]");
            let name_key = format!("{at}.name");
            self.check(&name_key, check_name(&feature.name))?;
            self.check(&name_key, names.insert(&feature.name, &name_key))?;
            if matches!(feature.feature_type, FeatureType::Vector(_)) {
                return Err(self.invalid(
                    &format!("{at}.type"),
                    DefinitionProblem::VectorOutsideStaticView {
                        place: "request features",
                    },
                ));
            }
            let default_key = format!("{at}.default");
            let default = match (feature.required, &feature.default) {
                (Some(true), Some(_)) => {
                    return Err(self.invalid(&default_key, DefinitionProblem::RequiredWithDefault));
                }
                (Some(true), None) => None,
                (_, Some(value)) => {
                    Some(self.check(&default_key, typed_default(feature.feature_type, value))?)
                }
                (_, None) => return Err(self.invalid(&at, DefinitionProblem::MissingDefault)),
            };
            features.push(RequestFeature {
                name: feature.name.clone(),
                feature_type: feature.feature_type,
                default,
            });
        }
        Ok(features)
    }

    fn model(
        &self,
        raw: &RawModel,
        at: &str,
        views: &[FeatureView],
        request_features: &[RequestFeature],
    ) -> Result<ModelFeatures, DefinitionsError> {
        if raw.input.is_empty() {
            return Err(self.invalid(
                &format!("{at}.input"),
                DefinitionProblem::InvalidName {
                    name: String::new(),
                    rule: TENSOR_NAME_RULE,
                },
            ));
        }
        let features_key = format!("{at}.features");
        if raw.features.is_empty() {
            return Err(self.invalid(
                &features_key,
                DefinitionProblem::EmptyList {
                    hint: "list the features that become the input's columns, in column order, e.g. features = [\"view.feature\", \"request.name\"]",
                },
            ));
        }
        let mut columns: Vec<InputColumn> = Vec::with_capacity(raw.features.len());
        let mut default_row = Vec::with_capacity(raw.features.len());
        let mut entities = Vec::new();
        let mut static_views = Vec::new();
        let mut dynamic_views = Vec::new();
        for (j, reference) in raw.features.iter().enumerate() {
            let key = format!("{features_key}[{j}]");
            let Some((source_name, name)) = reference
                .split_once('.')
                .filter(|(s, n)| !s.is_empty() && !n.is_empty() && !n.contains('.'))
            else {
                return Err(self.invalid(
                    &key,
                    DefinitionProblem::BadReference {
                        reference: reference.clone(),
                    },
                ));
            };
            let (source, feature_type, default) = if source_name == REQUEST {
                let Some(feature) = request_features.iter().find(|f| f.name == name) else {
                    return Err(self.invalid(
                        &key,
                        DefinitionProblem::UnknownRequestFeature {
                            name: name.to_owned(),
                            known: known(request_features.iter().map(|f| f.name.as_str())),
                        },
                    ));
                };
                (
                    ColumnSource::Request,
                    feature.feature_type,
                    feature.default.as_ref(),
                )
            } else {
                let Some(view) = views.iter().find(|v| v.name == source_name) else {
                    return Err(self.invalid(
                        &key,
                        DefinitionProblem::UnknownView {
                            view: source_name.to_owned(),
                            known: known(views.iter().map(|v| v.name.as_str())),
                        },
                    ));
                };
                let Some(feature) = view.feature(name) else {
                    return Err(self.invalid(
                        &key,
                        DefinitionProblem::UnknownFeature {
                            view: view.name.clone(),
                            feature: name.to_owned(),
                            known: known(view.features.iter().map(|f| f.name.as_str())),
                        },
                    ));
                };
                push_new(&mut entities, &view.entity);
                let source = if view.is_static() {
                    push_new(&mut static_views, &view.name);
                    ColumnSource::StaticView(view.name.clone())
                } else {
                    push_new(&mut dynamic_views, &view.name);
                    ColumnSource::DynamicView(view.name.clone())
                };
                (source, feature.feature_type, Some(&feature.default))
            };
            if let Some(first_index) = columns.iter().position(|c| c.name == name) {
                return Err(self.invalid(
                    &key,
                    DefinitionProblem::DuplicateColumn {
                        name: name.to_owned(),
                        first_index,
                        first_reference: columns[first_index].reference.clone(),
                    },
                ));
            }
            if !raw.dtype.accepts(feature_type) {
                return Err(self.invalid(
                    &key,
                    DefinitionProblem::ColumnType {
                        reference: reference.clone(),
                        feature_type,
                        dtype: raw.dtype,
                    },
                ));
            }
            let default = match default {
                None => None,
                Some(value) => Some(value.to_f32().ok_or_else(|| {
                    self.invalid(
                        &key,
                        DefinitionProblem::DefaultOutOfRange {
                            reference: reference.clone(),
                            default: value.to_string(),
                            dtype: raw.dtype,
                        },
                    )
                })?),
            };
            default_row.push(default.unwrap_or(f32::NAN));
            columns.push(InputColumn {
                name: name.to_owned(),
                reference: reference.clone(),
                source,
                feature_type,
                default,
            });
        }
        Ok(ModelFeatures {
            name: raw.name.clone(),
            input: ModelInput {
                name: raw.input.clone(),
                dtype: raw.dtype,
                columns,
                default_row,
            },
            entities,
            static_views,
            dynamic_views,
        })
    }
}

/// Names of one kind seen so far, with the key path of each first declaration.
struct Seen<'a> {
    kind: &'static str,
    first: HashMap<&'a str, String>,
}

impl<'a> Seen<'a> {
    fn new(kind: &'static str) -> Self {
        Seen {
            kind,
            first: HashMap::new(),
        }
    }

    fn insert(&mut self, name: &'a str, key: &str) -> Result<(), DefinitionProblem> {
        if let Some(first) = self.first.get(name) {
            return Err(DefinitionProblem::DuplicateName {
                kind: self.kind,
                name: name.to_owned(),
                first: first.clone(),
            });
        }
        self.first.insert(name, key.to_owned());
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), DefinitionProblem> {
    let mut chars = name.chars();
    let first_ok = matches!(chars.next(), Some('a'..='z' | '_'));
    if first_ok && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_')) {
        return Ok(());
    }
    Err(DefinitionProblem::InvalidName {
        name: name.to_owned(),
        rule: NAME_RULE,
    })
}

fn check_model_name(name: &str) -> Result<(), DefinitionProblem> {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Ok(());
    }
    Err(DefinitionProblem::InvalidName {
        name: name.to_owned(),
        rule: MODEL_NAME_RULE,
    })
}

fn typed_default(
    feature_type: FeatureType,
    value: &toml::Value,
) -> Result<FeatureValue, DefinitionProblem> {
    feature_type
        .typed_value(value)
        .ok_or_else(|| DefinitionProblem::DefaultType {
            feature_type,
            found: describe_toml(value),
            expected: feature_type.default_example(),
        })
}

/// Declared names for a message: comma-separated, or "none".
fn push_new(list: &mut Vec<String>, name: &str) {
    if !list.iter().any(|n| n == name) {
        list.push(name.to_owned());
    }
}
