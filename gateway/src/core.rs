//! The prediction core both fronts call: route to the model, enrich, infer,
//! post-process, answer with an ID, the version and the features' freshness.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use feature_store::definitions::{FeatureDefinitions, ModelFeatures};
use feature_store::log::{
    FeedbackRecord, LoggedOutput, Outcome, PredictionKey, PredictionRecord, unix_ms,
};
use feature_store::reader::FeatureReader;
use feature_store::store::FeatureStore;

use tracing::Instrument as _;

use crate::config::{GatewayConfig, ModelConfig};
use crate::enrich::{Enricher, WireValue};
use crate::error::GatewayError;
use crate::infer::{BreakerConfig, ModelClient};
use crate::postprocess::Processed;
use crate::predlog::PredictionLog;

/// One prediction request, wire-neutral.
#[derive(Debug, Clone, Default)]
pub struct PredictInput {
    /// The model.
    pub model: String,
    /// A version asked for explicitly ("" = the configured one).
    pub model_version: String,
    /// Entity key columns to values.
    pub keys: HashMap<String, String>,
    /// Request features.
    pub request_features: HashMap<String, WireValue>,
    /// The caller's subject (from its token), recorded in the prediction log.
    pub subject: String,
}

/// The subject recorded for calls made without a verified caller.
pub const ANONYMOUS: &str = "anonymous";

/// Ground truth for an earlier prediction, wire-neutral.
#[derive(Debug, Clone)]
pub struct FeedbackInput {
    /// The prediction's ID as returned by predict.
    pub prediction_id: String,
    /// What happened (None: the caller sent neither a label nor a value).
    pub outcome: Option<Outcome>,
    /// When it was observed (None: now).
    pub observed_at: Option<SystemTime>,
    /// The caller's subject.
    pub subject: String,
}

/// One answer, wire-neutral.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// Time-ordered (UUIDv7) ID for feedback.
    pub prediction_id: String,
    /// The model.
    pub model: String,
    /// The version that answered.
    pub model_version: String,
    /// Post-processed outputs.
    pub outputs: Vec<Processed>,
    /// Age of each view's values (None: no row).
    pub view_ages: Vec<(String, Option<Duration>)>,
    /// Columns that got their default.
    pub defaulted: Vec<String>,
    /// The input row sent to the model.
    pub row: Vec<f32>,
    /// Time spent in the model-server call.
    pub model_time: Duration,
}

/// Fresh values of a dynamic view for one entity, wire-neutral.
#[derive(Debug, Clone, Default)]
pub struct PushRow {
    /// Entity key columns to values.
    pub keys: HashMap<String, String>,
    /// Feature name to value.
    pub values: HashMap<String, WireValue>,
    /// When the values were observed (None: now).
    pub event_time: Option<SystemTime>,
}

struct Route {
    config: ModelConfig,
    features: ModelFeatures,
    client: Arc<ModelClient>,
}

/// The gateway's core.
pub struct Gateway<S> {
    enricher: Enricher<S>,
    routes: HashMap<String, Route>,
    request_timeout: Duration,
    log: Option<PredictionLog>,
    log_retention: Duration,
}

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A configured model is not in the definitions file.
    #[error("model {model:?} is configured but {definitions} declares no [[model]] of that name")]
    ModelNotDefined {
        /// The model.
        model: String,
        /// The definitions file.
        definitions: String,
    },
    /// The model-server's metadata does not match what the gateway assembles.
    #[error("model {model:?} on {endpoint}: {detail}")]
    Mismatch {
        /// The model.
        model: String,
        /// The endpoint.
        endpoint: String,
        /// What differs.
        detail: String,
    },
    /// The model-server could not be asked.
    #[error(transparent)]
    Model(#[from] crate::infer::InferError),
}

impl<S: FeatureStore> Gateway<S> {
    /// Builds the core: one client per model endpoint.
    ///
    /// # Errors
    /// [`StartError`] if a configured model is not defined, or its endpoint
    /// is not a valid URI.
    pub fn new(config: &GatewayConfig, reader: Arc<FeatureReader<S>>) -> Result<Self, StartError> {
        let defs: &FeatureDefinitions = reader.definitions();
        let mut clients: HashMap<String, Arc<ModelClient>> = HashMap::new();
        let mut routes = HashMap::new();
        for m in &config.models {
            let features = defs
                .model(&m.name)
                .ok_or_else(|| StartError::ModelNotDefined {
                    model: m.name.clone(),
                    definitions: config.definitions.display().to_string(),
                })?
                .clone();
            let client = match clients.get(&m.endpoint) {
                Some(c) => Arc::clone(c),
                None => {
                    let c = Arc::new(ModelClient::new(
                        &m.endpoint,
                        Duration::from_secs(2),
                        BreakerConfig::default(),
                    )?);
                    clients.insert(m.endpoint.clone(), Arc::clone(&c));
                    c
                }
            };
            routes.insert(
                m.name.clone(),
                Route {
                    config: m.clone(),
                    features,
                    client,
                },
            );
        }
        let log = config
            .prediction_log
            .enabled
            .then(|| PredictionLog::start(Arc::clone(reader.store()), &config.prediction_log));
        Ok(Gateway {
            enricher: Enricher::new(reader),
            routes,
            request_timeout: config.server.request_timeout,
            log,
            log_retention: config.prediction_log.retention,
        })
    }

    /// The prediction log (None when disabled by config).
    pub fn prediction_log(&self) -> Option<&PredictionLog> {
        self.log.as_ref()
    }

    /// Writes what the prediction log holds and stops it (graceful
    /// shutdown), waiting at most `deadline`. Returns whether everything was
    /// written in time.
    pub async fn close_log(&self, deadline: Duration) -> bool {
        match &self.log {
            Some(log) => log.close(deadline).await,
            None => true,
        }
    }

    /// Stores ground truth for a logged prediction.
    ///
    /// # Errors
    /// [`GatewayError::InvalidArgument`] naming the field,
    /// [`GatewayError::UnknownPrediction`] when no such prediction is
    /// logged, or the store's failure.
    pub async fn feedback(&self, input: FeedbackInput) -> Result<(), GatewayError> {
        let key = PredictionKey::parse(&input.prediction_id)
            .map_err(|e| GatewayError::InvalidArgument(format!("prediction_id: {e}")))?;
        let outcome = match input.outcome {
            None => {
                return Err(GatewayError::InvalidArgument(
                    "outcome: send `label` (a class) or `value` (a number)".to_owned(),
                ));
            }
            Some(Outcome::Label(l)) if l.is_empty() || l.len() > 256 => {
                return Err(GatewayError::InvalidArgument(format!(
                    "label: must be 1 to 256 bytes, got {}",
                    l.len()
                )));
            }
            Some(Outcome::Value(v)) if !v.is_finite() => {
                return Err(GatewayError::InvalidArgument(format!(
                    "value: {v} is not a finite number"
                )));
            }
            Some(o) => o,
        };
        let now = feature_store::store::now_micros();
        let observed_at = input.observed_at.unwrap_or(now);
        if observed_at > now + Duration::from_secs(300) {
            return Err(GatewayError::InvalidArgument(
                "observed_at_ms: more than 5 minutes in the future; send Unix milliseconds"
                    .to_owned(),
            ));
        }
        let store = self.enricher.reader().store();
        let store_err = |e: feature_store::store::StoreError| GatewayError::FeatureStore(e.into());
        let mut found = store
            .read_prediction(&input.prediction_id)
            .await
            .map_err(store_err)?;
        // A prediction made moments ago may still be in the log's buffer.
        let recent = unix_ms(now).saturating_sub(key.unix_ms) < 600_000;
        if let Some(log) = self.log.as_ref().filter(|_| found.is_none() && recent) {
            log.flush(Duration::from_secs(2)).await;
            found = store
                .read_prediction(&input.prediction_id)
                .await
                .map_err(store_err)?;
        }
        let prediction = found.ok_or_else(|| GatewayError::UnknownPrediction {
            prediction_id: input.prediction_id.clone(),
        })?;
        if let (Outcome::Label(label), Some(route)) = (&outcome, self.routes.get(&prediction.model))
        {
            let labels = &route.config.postprocess.labels;
            if !labels.is_empty() && !labels.contains(label) {
                return Err(GatewayError::InvalidArgument(format!(
                    "label: {label:?} is not a label of model {:?}; its labels are {}",
                    prediction.model,
                    labels.join(", ")
                )));
            }
        }
        let record = FeedbackRecord {
            prediction_id: input.prediction_id,
            outcome,
            observed_at,
            received_at: now,
            subject: input.subject,
        };
        store
            .write_feedback(&record, self.log_retention)
            .await
            .map_err(store_err)
    }

    /// Whether `model` is configured.
    pub fn serves(&self, model: &str) -> bool {
        self.routes.contains_key(model)
    }

    /// The enricher (for pushes and stats).
    pub fn enricher(&self) -> &Enricher<S> {
        &self.enricher
    }

    /// The longest a request may take.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Checks every model against its model-server's metadata: the input
    /// tensor's name, FP32 datatype and width, and the scores output.
    ///
    /// # Errors
    /// [`StartError::Mismatch`] saying exactly what differs, or the call's
    /// error.
    pub async fn check_models(&self, deadline: Duration) -> Result<(), StartError> {
        for route in self.routes.values() {
            let m = &route.config;
            let meta = route.client.metadata(&m.name, &m.version, deadline).await?;
            let mismatch = |detail: String| StartError::Mismatch {
                model: m.name.clone(),
                endpoint: m.endpoint.clone(),
                detail,
            };
            let input = route.features.input();
            let Some(t) = meta.inputs.iter().find(|t| t.name == input.name()) else {
                let names: Vec<&str> = meta.inputs.iter().map(|t| t.name.as_str()).collect();
                return Err(mismatch(format!(
                    "the definitions build input {:?}, the server's inputs are {names:?}",
                    input.name()
                )));
            };
            if t.datatype != input.dtype().as_str() {
                return Err(mismatch(format!(
                    "input {:?} is {} on the server, the definitions build {}",
                    t.name,
                    t.datatype,
                    input.dtype()
                )));
            }
            let width = input.width() as i64;
            if t.shape.len() != 2 || t.shape[1] != width {
                return Err(mismatch(format!(
                    "input {:?} has shape {:?} on the server, the definitions build [batch, {width}]",
                    t.name, t.shape
                )));
            }
            let scores = &m.postprocess.scores_output;
            if !meta.outputs.iter().any(|o| &o.name == scores) {
                let names: Vec<&str> = meta.outputs.iter().map(|o| o.name.as_str()).collect();
                return Err(mismatch(format!(
                    "postprocess.scores_output {scores:?} is not an output; the server's outputs are {names:?}"
                )));
            }
        }
        Ok(())
    }

    /// Whether every model is ready on its model-server.
    pub async fn models_ready(&self, deadline: Duration) -> bool {
        for route in self.routes.values() {
            if !route
                .client
                .ready(&route.config.name, &route.config.version, deadline)
                .await
            {
                return false;
            }
        }
        true
    }

    /// Writes fresh values of dynamic view `view`, row by row in order; stops
    /// at the first bad row (rows before it are written) and says which.
    ///
    /// # Errors
    /// [`GatewayError::UnknownView`], [`GatewayError::InvalidArgument`] naming
    /// `rows[i]…`, or the store's failure.
    pub async fn push(&self, view_name: &str, rows: &[PushRow]) -> Result<u64, GatewayError> {
        let defs = self.enricher.definitions();
        let view = defs
            .view(view_name)
            .filter(|v| !v.is_static())
            .ok_or_else(|| GatewayError::UnknownView {
                view: view_name.to_owned(),
                known: defs
                    .dynamic_views()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let entity = defs.entity(&view.entity).ok_or_else(|| {
            GatewayError::InvalidArgument(format!("view {view_name:?} has no entity"))
        })?;
        let mut written = 0;
        for (i, row) in rows.iter().enumerate() {
            let bad = |m: String| GatewayError::InvalidArgument(format!("rows[{i}].{m}"));
            for k in row.keys.keys() {
                if !entity.keys.contains(k) {
                    return Err(bad(format!(
                        "entity.keys: unknown key {k:?}; entity {:?} is keyed by {}",
                        entity.name,
                        entity.keys.join(", ")
                    )));
                }
            }
            let mut parts = Vec::with_capacity(entity.keys.len());
            for k in &entity.keys {
                match row.keys.get(k) {
                    Some(v) if !v.is_empty() => parts.push(v.as_str()),
                    _ => return Err(bad(format!("entity.keys: missing key {k:?}"))),
                }
            }
            let key = parts.join(&feature_store::source::KEY_SEPARATOR.to_string());
            if row.values.is_empty() {
                return Err(bad("values: empty; send at least one feature".to_owned()));
            }
            let mut values = Vec::with_capacity(row.values.len());
            for (name, v) in &row.values {
                let spec = view.feature(name).ok_or_else(|| {
                    bad(format!(
                        "values.{name}: view {view_name:?} has no such feature"
                    ))
                })?;
                let typed = v.typed(spec.feature_type).ok_or_else(|| {
                    bad(format!(
                        "values.{name}: expected {}, got {v:?}",
                        spec.feature_type
                    ))
                })?;
                values.push((name.clone(), typed));
            }
            let at = row.event_time.unwrap_or_else(SystemTime::now);
            self.enricher
                .reader()
                .push(view_name, &key, &values, at)
                .await
                .map_err(GatewayError::FeatureStore)?;
            written += 1;
        }
        Ok(written)
    }

    /// Predicts for one entity within `deadline` (capped by the configured
    /// request timeout).
    ///
    /// # Errors
    /// [`GatewayError`]: unknown model, bad input, feature store or
    /// model-server failure, deadline.
    pub async fn predict(
        &self,
        input: &PredictInput,
        deadline: Option<Duration>,
    ) -> Result<Prediction, GatewayError> {
        let budget = deadline.map_or(self.request_timeout, |d| d.min(self.request_timeout));
        match tokio::time::timeout(budget, self.predict_inner(input, budget)).await {
            Ok(result) => result,
            Err(_) => Err(GatewayError::DeadlineExceeded),
        }
    }

    async fn predict_inner(
        &self,
        input: &PredictInput,
        budget: Duration,
    ) -> Result<Prediction, GatewayError> {
        let started = tokio::time::Instant::now();
        let route = self
            .routes
            .get(&input.model)
            .ok_or_else(|| GatewayError::UnknownModel {
                model: input.model.clone(),
                known: {
                    let mut names: Vec<&str> = self.routes.keys().map(String::as_str).collect();
                    names.sort_unstable();
                    names.join(", ")
                },
            })?;
        let enriched = self
            .enricher
            .enrich(
                &route.features,
                &input.keys,
                &input.request_features,
                SystemTime::now(),
            )
            .instrument(tracing::info_span!("enrich", model = %route.config.name))
            .await?;
        let version = if input.model_version.is_empty() {
            route.config.version.as_str()
        } else {
            input.model_version.as_str()
        };
        let left = budget.saturating_sub(started.elapsed());
        let model_deadline = left.min(route.config.timeout);
        let answer = route
            .client
            .infer(
                &route.config.name,
                version,
                route.features.input().name(),
                &enriched.row,
                route.features.input().width(),
                model_deadline,
            )
            .instrument(tracing::info_span!("infer", endpoint = %route.config.endpoint))
            .await?;
        let outputs = route
            .config
            .postprocess
            .apply(&answer.outputs, 0)
            .map_err(|detail| GatewayError::BadModelAnswer {
                model: route.config.name.clone(),
                detail,
            })?;
        let prediction = Prediction {
            prediction_id: uuid::Uuid::now_v7().to_string(),
            model: route.config.name.clone(),
            model_version: answer.model_version,
            outputs,
            view_ages: enriched.view_ages,
            defaulted: enriched.defaulted,
            row: enriched.row,
            model_time: answer.elapsed,
        };
        if let Some(log) = &self.log {
            log.record(PredictionRecord {
                prediction_id: prediction.prediction_id.clone(),
                at: feature_store::store::now_micros(),
                subject: input.subject.clone(),
                model: prediction.model.clone(),
                model_version: prediction.model_version.clone(),
                route: if input.model_version.is_empty() {
                    "stable"
                } else {
                    "explicit"
                }
                .to_owned(),
                entity: enriched.entity_key,
                inputs: prediction.row.clone(),
                view_ages_ms: prediction
                    .view_ages
                    .iter()
                    .map(|(v, age)| {
                        (
                            v.clone(),
                            age.map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX)),
                        )
                    })
                    .collect(),
                defaulted: prediction.defaulted.clone(),
                outputs: prediction
                    .outputs
                    .iter()
                    .map(|o| LoggedOutput {
                        name: o.name.clone(),
                        label: (!o.label.is_empty()).then(|| o.label.clone()),
                        score: o.score,
                    })
                    .collect(),
            });
        }
        Ok(prediction)
    }
}
