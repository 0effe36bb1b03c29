//! The prediction core both fronts call: route to the model, enrich, infer,
//! post-process, answer with an ID, the version and the features' freshness.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use feature_store::aggregate::Event;
use feature_store::definitions::{FeatureDefinitions, FeatureValue, ModelFeatures};
use feature_store::log::{
    FeedbackRecord, LoggedOutput, Outcome, PredictionKey, PredictionRecord, unix_ms,
};
use feature_store::reader::{FeatureReader, ReadError};
use feature_store::store::FullStore;

use tracing::Instrument as _;

use crate::config::{GatewayConfig, ModelConfig};
use crate::enrich::{Enricher, WireValue};
use crate::error::GatewayError;
use crate::infer::{BreakerConfig, CircuitState, ModelClient};
use crate::postprocess::Processed;
use crate::predlog::PredictionLog;
use crate::rollout::live::LiveRouting;
use crate::rollout::shadow::ShadowPool;
use crate::rollout::{self, RouteKey, RouteKind, StickyBy};

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
    /// The caller's groups (pilot routing).
    pub groups: Vec<String>,
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
    /// How the version was chosen (`stable`, `canary`, `pilot`, `explicit`).
    pub route: RouteKind,
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

/// One raw event behind a dynamic view's windowed aggregates, wire-neutral.
#[derive(Debug, Clone, Default)]
pub struct PushEvent {
    /// Entity key columns to values.
    pub keys: HashMap<String, String>,
    /// The caller's event ID; empty: derived from the entity, event time and
    /// fields, so a replay of the same event counts once.
    pub event_id: String,
    /// Field name to value (`amount`, `transaction_id`, …).
    pub fields: HashMap<String, WireValue>,
    /// When it happened (None: now).
    pub event_time: Option<SystemTime>,
}

/// What a push wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PushCounts {
    /// Rows of values written.
    pub rows: u64,
    /// Events written (a replayed event is written again and counted).
    pub events: u64,
}

struct Route {
    config: ModelConfig,
    features: ModelFeatures,
    /// Endpoint → client, for callers' calls.
    clients: HashMap<String, Arc<ModelClient>>,
    /// Endpoint → client, for shadow copies: their own connections and
    /// circuit breakers, so a slow or failing shadow version never trips
    /// the breaker that callers' calls go through.
    shadow_clients: HashMap<String, Arc<ModelClient>>,
}

impl Route {
    fn client(&self, version: &str) -> Result<&Arc<ModelClient>, GatewayError> {
        self.pick(&self.clients, version)
    }

    fn shadow_client(&self, version: &str) -> Result<&Arc<ModelClient>, GatewayError> {
        self.pick(&self.shadow_clients, version)
    }

    fn pick<'a>(
        &self,
        clients: &'a HashMap<String, Arc<ModelClient>>,
        version: &str,
    ) -> Result<&'a Arc<ModelClient>, GatewayError> {
        let endpoint = self.config.endpoint_of(version);
        clients.get(endpoint).ok_or_else(|| {
            GatewayError::RoutingDamaged(format!(
                "no client for {endpoint} (model {:?} version {version:?})",
                self.config.name
            ))
        })
    }
}

/// One model-server client as `/metrics` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientStatus<'a> {
    /// `callers` or `shadow`.
    pub pool: &'static str,
    /// Its endpoint.
    pub endpoint: &'a str,
    /// Its circuit breaker now.
    pub state: CircuitState,
    /// Times the breaker opened since start.
    pub opens: u64,
    /// `ModelInfer` calls sent since start.
    pub calls: u64,
    /// Rows those calls carried (more than calls: predictions sent together).
    pub rows: u64,
    /// Calls of several predictions the model-server refused.
    pub refused_batches: u64,
}

/// The gateway's core.
pub struct Gateway<S> {
    enricher: Enricher<S>,
    routes: HashMap<String, Arc<Route>>,
    request_timeout: Duration,
    log: Option<Arc<PredictionLog>>,
    log_retention: Duration,
    routing: LiveRouting<S>,
    shadows: Arc<ShadowPool>,
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
    /// The stored routing could not be read or stored.
    #[error("routing: {0}")]
    Routing(#[from] crate::rollout::live::RolloutError),
}

impl<S: FullStore> Gateway<S> {
    /// Builds the core: clients for every model-server endpoint, and each
    /// model's routing loaded from the store (or first stored from the
    /// config file).
    ///
    /// # Errors
    /// [`StartError`] if a configured model is not defined, an endpoint is
    /// not a valid URI, or the stored routing cannot be read.
    pub async fn new(
        config: &GatewayConfig,
        reader: Arc<FeatureReader<S>>,
    ) -> Result<Self, StartError> {
        let defs: &FeatureDefinitions = reader.definitions();
        let mut clients: HashMap<String, Arc<ModelClient>> = HashMap::new();
        let mut shadow_clients: HashMap<String, Arc<ModelClient>> = HashMap::new();
        let mut routes = HashMap::new();
        let client = |pool: &mut HashMap<String, Arc<ModelClient>>, endpoint: &str| {
            if let Some(c) = pool.get(endpoint) {
                return Ok::<_, StartError>(Arc::clone(c));
            }
            let c = Arc::new(ModelClient::new(
                endpoint,
                Duration::from_secs(2),
                BreakerConfig::default(),
            )?);
            pool.insert(endpoint.to_owned(), Arc::clone(&c));
            Ok(c)
        };
        for m in &config.models {
            let features = defs
                .model(&m.name)
                .ok_or_else(|| StartError::ModelNotDefined {
                    model: m.name.clone(),
                    definitions: config.definitions.display().to_string(),
                })?
                .clone();
            let mut route_clients = HashMap::new();
            let mut route_shadow_clients = HashMap::new();
            for endpoint in std::iter::once(&m.endpoint).chain(m.endpoints.values()) {
                route_clients.insert(endpoint.clone(), client(&mut clients, endpoint)?);
                route_shadow_clients
                    .insert(endpoint.clone(), client(&mut shadow_clients, endpoint)?);
            }
            routes.insert(
                m.name.clone(),
                Arc::new(Route {
                    config: m.clone(),
                    features,
                    clients: route_clients,
                    shadow_clients: route_shadow_clients,
                }),
            );
        }
        let log = config.prediction_log.enabled.then(|| {
            Arc::new(PredictionLog::start(
                Arc::clone(reader.store()),
                &config.prediction_log,
            ))
        });
        let file: Vec<(String, crate::rollout::RoutingTable)> = config
            .models
            .iter()
            .map(|m| (m.name.clone(), m.routing.clone()))
            .collect();
        let routing = LiveRouting::open(Arc::clone(reader.store()), &file).await?;
        Ok(Gateway {
            enricher: Enricher::new(reader),
            routes,
            request_timeout: config.server.request_timeout,
            log,
            log_retention: config.prediction_log.retention,
            routing,
            shadows: Arc::new(ShadowPool::new(
                config.rollout.shadow_concurrency,
                config.rollout.shadow_timeout,
            )),
        })
    }

    /// Whether the caller of `input` may have the version it asks for
    /// explicitly (a pilot version only for its groups), checked before any
    /// work is done; nothing to check without an explicit version.
    ///
    /// # Errors
    /// [`GatewayError::PermissionDenied`] for a pilot version outside the
    /// caller's groups, [`GatewayError::UnknownVersion`] for a version the
    /// routing does not serve.
    pub fn check_explicit_version(&self, input: &PredictInput) -> Result<(), GatewayError> {
        if input.model_version.is_empty() {
            return Ok(());
        }
        let Some(served) = self.routing.current(&input.model) else {
            return Ok(());
        };
        rollout::choose(
            &served.table,
            &input.model,
            RouteKey {
                subject: &input.subject,
                groups: &input.groups,
                entity: "",
                explicit: &input.model_version,
            },
        )
        .map(drop)
        .map_err(GatewayError::from)
    }

    /// The live routing of every model.
    pub fn routing(&self) -> &LiveRouting<S> {
        &self.routing
    }

    /// The shadow pool (counts for `/metrics`; drained at shutdown).
    pub fn shadows(&self) -> &ShadowPool {
        &self.shadows
    }

    /// Every model-server client's circuit breaker and call counts, once per
    /// endpoint and pool (`callers` or `shadow`), sorted.
    pub fn model_clients(&self) -> Vec<ClientStatus<'_>> {
        let mut seen: BTreeMap<(&'static str, &str), ClientStatus<'_>> = BTreeMap::new();
        for route in self.routes.values() {
            for (pool, clients) in [
                ("callers", &route.clients),
                ("shadow", &route.shadow_clients),
            ] {
                for (endpoint, client) in clients {
                    seen.entry((pool, endpoint.as_str())).or_insert_with(|| {
                        let (state, opens) = client.circuit();
                        let (calls, rows) = client.calls_and_rows();
                        ClientStatus {
                            pool,
                            endpoint,
                            state,
                            opens,
                            calls,
                            rows,
                            refused_batches: client.refused_batches(),
                        }
                    });
                }
            }
        }
        seen.into_values().collect()
    }

    /// The configured models, sorted.
    pub fn model_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.routes.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The prediction log (None when disabled by config).
    pub fn prediction_log(&self) -> Option<&PredictionLog> {
        self.log.as_deref()
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

    /// Checks every version the routing serves (stable, canary, pilots)
    /// against its model-server's metadata: the input tensor's name, FP32
    /// datatype and width, and the scores output. A shadow version that
    /// fails is only logged: it never answers a caller.
    ///
    /// # Errors
    /// [`StartError::Mismatch`] saying exactly what differs, or the call's
    /// error.
    pub async fn check_models(&self, deadline: Duration) -> Result<(), StartError> {
        for route in self.routes.values() {
            let Some(served) = self.routing.current(&route.config.name) else {
                continue;
            };
            for version in served.table.serving_versions() {
                Self::check_version(route, version, deadline).await?;
            }
            for version in &served.table.shadows {
                if let Err(e) = Self::check_version(route, version, deadline).await {
                    tracing::warn!(model = %route.config.name, version = %version, "shadow version failed its check (its copies will fail and be counted): {e}");
                }
            }
        }
        Ok(())
    }

    /// Checks `versions` of `model` on their model-servers before a routing
    /// change brings them into service.
    ///
    /// # Errors
    /// What differs or why the model-server could not say, for a person.
    pub async fn check_versions(
        &self,
        model: &str,
        versions: &[String],
        deadline: Duration,
    ) -> Result<(), String> {
        let route = self
            .routes
            .get(model)
            .ok_or_else(|| format!("model {model:?} is not configured"))?;
        for v in versions {
            Self::check_version(route, v, deadline)
                .await
                .map_err(|e| format!("version '{v}' cannot serve: {e}"))?;
        }
        Ok(())
    }

    async fn check_version(
        route: &Route,
        version: &str,
        deadline: Duration,
    ) -> Result<(), StartError> {
        let m = &route.config;
        let endpoint = m.endpoint_of(version);
        let client = route.client(version).map_err(|e| StartError::Mismatch {
            model: m.name.clone(),
            endpoint: endpoint.to_owned(),
            detail: e.to_string(),
        })?;
        let meta = client.metadata(&m.name, version, deadline).await?;
        let mismatch = |detail: String| StartError::Mismatch {
            model: m.name.clone(),
            endpoint: endpoint.to_owned(),
            detail: if version.is_empty() {
                detail
            } else {
                format!("version {version}: {detail}")
            },
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
        let coalesce = m.coalesce;
        if coalesce.max_in_flight > 0 && coalesce.max_rows > 1 && t.shape[0] != -1 {
            return Err(mismatch(format!(
                "input {:?} has a fixed batch size ({}) on the server, so predictions cannot be sent together; set [model.coalesce] max_rows = 1 (or max_in_flight = 0)",
                t.name, t.shape[0]
            )));
        }
        let scores = &m.postprocess.scores_output;
        if !meta.outputs.iter().any(|o| &o.name == scores) {
            let names: Vec<&str> = meta.outputs.iter().map(|o| o.name.as_str()).collect();
            return Err(mismatch(format!(
                "postprocess.scores_output {scores:?} is not an output; the server's outputs are {names:?}"
            )));
        }
        Ok(())
    }

    /// Whether every version that answers callers is ready on its
    /// model-server (shadows do not count).
    pub async fn models_ready(&self, deadline: Duration) -> bool {
        for route in self.routes.values() {
            let Some(served) = self.routing.current(&route.config.name) else {
                return false;
            };
            for version in served.table.serving_versions() {
                let Ok(client) = route.client(version) else {
                    return false;
                };
                if !client.ready(&route.config.name, version, deadline).await {
                    return false;
                }
            }
        }
        true
    }

    /// Writes fresh values (`rows`) and raw events (`events`) of dynamic view
    /// `view`, one by one in order, rows first; stops at the first bad one
    /// (those before it are written) and says which.
    ///
    /// # Errors
    /// [`GatewayError::UnknownView`], [`GatewayError::InvalidArgument`] naming
    /// `rows[i]…` or `events[i]…`, or the store's failure.
    pub async fn push(
        &self,
        view_name: &str,
        rows: &[PushRow],
        events: &[PushEvent],
    ) -> Result<PushCounts, GatewayError> {
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
        let entity_key = |keys: &HashMap<String, String>| -> Result<String, String> {
            for k in keys.keys() {
                if !entity.keys.contains(k) {
                    return Err(format!(
                        "entity.keys: unknown key {k:?}; entity {:?} is keyed by {}",
                        entity.name,
                        entity.keys.join(", ")
                    ));
                }
            }
            let mut parts = Vec::with_capacity(entity.keys.len());
            for k in &entity.keys {
                match keys.get(k) {
                    Some(v) if !v.is_empty() => parts.push(v.as_str()),
                    _ => return Err(format!("entity.keys: missing key {k:?}")),
                }
            }
            Ok(parts.join(&feature_store::source::KEY_SEPARATOR.to_string()))
        };
        let mut written = PushCounts::default();
        for (i, row) in rows.iter().enumerate() {
            let bad = |m: String| GatewayError::InvalidArgument(format!("rows[{i}].{m}"));
            let key = entity_key(&row.keys).map_err(bad)?;
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
                if let Some(a) = &spec.aggregate {
                    return Err(bad(format!(
                        "values.{name}: computed by the feature store ({} of {} over {}); push events carrying {:?} instead",
                        a.function,
                        a.of,
                        feature_store::tuner::controller::human(a.window),
                        a.of
                    )));
                }
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
            written.rows += 1;
        }
        for (i, event) in events.iter().enumerate() {
            let bad = |m: String| GatewayError::InvalidArgument(format!("events[{i}].{m}"));
            let key = entity_key(&event.keys).map_err(bad)?;
            let fields: BTreeMap<String, FeatureValue> = event
                .fields
                .iter()
                .map(|(name, v)| (name.clone(), v.untyped()))
                .collect();
            let at = event
                .event_time
                .unwrap_or_else(feature_store::store::now_micros);
            let id = Some(event.event_id.clone()).filter(|id| !id.is_empty());
            let stored = Event::new(&key, id, at, fields);
            self.enricher
                .reader()
                .push_event(view_name, &key, &stored)
                .await
                .map_err(|e| match e {
                    ReadError::EventField { field, problem, .. } => {
                        bad(format!("fields.{field}: {problem}"))
                    }
                    ReadError::NoEventFields { known, .. } => bad(format!(
                        "fields: empty; send at least one of the fields the aggregates read: {known}"
                    )),
                    ReadError::EventIdTooLong { .. } => bad(format!("event_id: {e}")),
                    ReadError::NoAggregates { .. } => bad(e.to_string()),
                    ReadError::Store(_) => GatewayError::FeatureStore(e),
                    other => GatewayError::InvalidArgument(other.to_string()),
                })?;
            written.events += 1;
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
                known: self.model_names().join(", "),
            })?;
        let served = self.routing.current(&input.model).ok_or_else(|| {
            GatewayError::RoutingDamaged(format!("model {:?} has no routing", input.model))
        })?;
        let table = &served.table;
        // The entity key is hashed only when a canary splits by entity.
        let sticky_entity = if table.canary.is_some() && table.sticky_by == StickyBy::Entity {
            self.enricher.entity_key(&route.features, &input.keys)?
        } else {
            String::new()
        };
        let (version, kind) = tracing::info_span!("route").in_scope(|| {
            rollout::choose(
                table,
                &route.config.name,
                RouteKey {
                    subject: &input.subject,
                    groups: &input.groups,
                    entity: &sticky_entity,
                    explicit: &input.model_version,
                },
            )
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
        let left = budget.saturating_sub(started.elapsed());
        let model_deadline = left.min(route.config.timeout);
        let answer = route
            .client(version)?
            .infer_row(
                &route.config.name,
                version,
                route.features.input().name(),
                &enriched.row,
                route.config.coalesce,
                model_deadline,
            )
            .instrument(tracing::info_span!("infer", endpoint = %route.config.endpoint_of(version), version = %version, route = kind.as_str()))
            .await?;
        let outputs = tracing::info_span!("postprocess")
            .in_scope(|| {
                route
                    .config
                    .postprocess
                    .apply(&answer.outputs.outputs, answer.row)
            })
            .map_err(|detail| GatewayError::BadModelAnswer {
                model: route.config.name.clone(),
                detail,
            })?;
        let prediction = Prediction {
            prediction_id: uuid::Uuid::now_v7().to_string(),
            model: route.config.name.clone(),
            model_version: answer.outputs.model_version.clone(),
            outputs,
            view_ages: enriched.view_ages,
            defaulted: enriched.defaulted,
            row: enriched.row,
            model_time: answer.elapsed,
            route: kind,
        };
        if let Some(log) = &self.log {
            // telemetry (issue 9): building and queueing the log record.
            let _log_span = tracing::info_span!("log").entered();
            let record = PredictionRecord {
                prediction_id: prediction.prediction_id.clone(),
                at: feature_store::store::now_micros(),
                subject: input.subject.clone(),
                model: prediction.model.clone(),
                model_version: prediction.model_version.clone(),
                route: kind.as_str().to_owned(),
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
                outputs: logged(&prediction.outputs),
                shadow_of: None,
                model_time_us: Some(micros(prediction.model_time)),
            };
            if !table.shadows.is_empty() {
                self.shadow(route, &table.shadows, &record, log);
            }
            log.record(record);
        }
        Ok(prediction)
    }

    /// Sends a copy of an answered call's input to each shadow version, on
    /// tasks of their own bounded by the shadow pool; a full pool drops the
    /// copy (counted). Each answer is logged as a `shadow` record naming the
    /// prediction it shadowed. Nothing here can delay or fail the caller.
    fn shadow(
        &self,
        route: &Arc<Route>,
        versions: &[String],
        primary: &PredictionRecord,
        log: &Arc<PredictionLog>,
    ) {
        for version in versions {
            let Some(permit) = self.shadows.try_start(&route.config.name, version) else {
                continue;
            };
            let (route, pool, log) = (
                Arc::clone(route),
                Arc::clone(&self.shadows),
                Arc::clone(log),
            );
            let version = version.clone();
            let mut record = primary.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let m = &route.config;
                let result = async {
                    let answer = route
                        .shadow_client(&version)?
                        .infer_row(
                            &m.name,
                            &version,
                            route.features.input().name(),
                            &record.inputs,
                            m.coalesce,
                            pool.timeout(),
                        )
                        .await?;
                    let outputs = m
                        .postprocess
                        .apply(&answer.outputs.outputs, answer.row)
                        .map_err(|detail| GatewayError::BadModelAnswer {
                            model: m.name.clone(),
                            detail,
                        })?;
                    Ok::<_, GatewayError>((
                        answer.outputs.model_version.clone(),
                        answer.elapsed,
                        outputs,
                    ))
                }
                .await;
                match result {
                    Ok((answered_version, elapsed, outputs)) => {
                        pool.finished(&m.name, &version, true);
                        record.shadow_of = Some(std::mem::take(&mut record.prediction_id));
                        record.prediction_id = uuid::Uuid::now_v7().to_string();
                        record.at = feature_store::store::now_micros();
                        record.model_version = answered_version;
                        record.route = RouteKind::Shadow.as_str().to_owned();
                        record.outputs = logged(&outputs);
                        record.model_time_us = Some(micros(elapsed));
                        log.record(record);
                    }
                    Err(e) => {
                        pool.finished(&m.name, &version, false);
                        tracing::debug!(model = %m.name, version = %version, "shadow call failed: {e}");
                    }
                }
            });
        }
    }
}

fn logged(outputs: &[Processed]) -> Vec<LoggedOutput> {
    outputs
        .iter()
        .map(|o| LoggedOutput {
            name: o.name.clone(),
            label: (!o.label.is_empty()).then(|| o.label.clone()),
            score: o.score,
        })
        .collect()
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
