//! The prediction path both fronts call, split by what it does: [`predict`]
//! (route → enrich → infer → post-process, the prediction log and shadow
//! copies), [`push`] (dynamic feature values and events), [`feedback`]
//! (ground truth joined to the log) and [`startup`] (model checks at start
//! and before a routing change, readiness). [`Core`] holds what they share:
//! each model's route and model-server clients, the live routing, the
//! prediction log and the shadow pool.

pub mod feedback;
pub mod precomputed;
pub mod predict;
pub mod push;
pub mod startup;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use feature_store::definitions::{FeatureDefinitions, ModelFeatures};
use feature_store::log::{Outcome, PredictionSource};
use feature_store::reader::FeatureReader;
use feature_store::store::FullStore;
use proto::gateway::v1 as pb;

use crate::auth::Authorizer;
use crate::config::{GatewayConfig, ModelConfig, PrecomputedMode};
use crate::enrich::{Enricher, WireValue};
use crate::error::GatewayError;
use crate::metrics::{Metrics, ModelSlot};
use crate::model::coalesce::RowClient;
use crate::model::infer::{BreakerConfig, ModelClient};
use crate::model::stats::ClientStatus;
use crate::postprocess::Processed;
use crate::predlog::PredictionLog;
use crate::publish::Publisher;
use crate::rollout::RouteKind;
use crate::rollout::live::LiveRouting;
use crate::rollout::shadow::ShadowPool;

pub use startup::StartError;

use self::precomputed::{ModelScores, Precomputed};

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
    /// Where the answer came from: computed live, or precomputed by a
    /// scoring batch.
    pub source: PredictionSource,
    /// A precomputed answer's age.
    pub precomputed_age: Option<Duration>,
}

impl Prediction {
    /// The protobuf form of the answer (gRPC, and stored asynchronous
    /// results).
    pub fn into_proto(self) -> pb::PredictResponse {
        let p = self;
        let age_ms = |age: Option<Duration>| {
            age.map_or(-1, |a| i64::try_from(a.as_millis()).unwrap_or(i64::MAX))
        };
        let precomputed = match &p.source {
            PredictionSource::Live => None,
            PredictionSource::Precomputed { batch_id } => Some(pb::PrecomputedAnswer {
                batch_id: batch_id.clone(),
                age_ms: age_ms(p.precomputed_age),
            }),
        };
        pb::PredictResponse {
            source: p.source.as_str().to_owned(),
            precomputed,
            prediction_id: p.prediction_id,
            model: p.model,
            model_version: p.model_version,
            route: p.route.as_str().to_owned(),
            outputs: p
                .outputs
                .into_iter()
                .map(|o| pb::Output {
                    name: o.name,
                    label: o.label,
                    score: o.score,
                    top_k: o
                        .top_k
                        .into_iter()
                        .map(|(label, score)| pb::LabelScore { label, score })
                        .collect(),
                    values: o.values,
                })
                .collect(),
            freshness: Some(pb::Freshness {
                view_age_ms: p
                    .view_ages
                    .into_iter()
                    .map(|(v, age)| (v, age_ms(age)))
                    .collect(),
                defaulted_features: p.defaulted,
            }),
        }
    }
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
    /// The model's label slot in the request metrics.
    slot: ModelSlot,
    features: ModelFeatures,
    /// Endpoint → client, for callers' calls.
    clients: HashMap<String, Arc<RowClient>>,
    /// Endpoint → client, for shadow copies: their own connections and
    /// circuit breakers, so a slow or failing shadow version never trips
    /// the breaker that callers' calls go through.
    shadow_clients: HashMap<String, Arc<RowClient>>,
    /// The prediction store, for a model answered from it first.
    scores: Option<ModelScores>,
}

impl Route {
    fn client(&self, version: &str) -> Result<&Arc<RowClient>, GatewayError> {
        self.pick(&self.clients, version)
    }

    fn shadow_client(&self, version: &str) -> Result<&Arc<RowClient>, GatewayError> {
        self.pick(&self.shadow_clients, version)
    }

    fn pick<'a>(
        &self,
        clients: &'a HashMap<String, Arc<RowClient>>,
        version: &str,
    ) -> Result<&'a Arc<RowClient>, GatewayError> {
        let endpoint = self.config.endpoint_of(version);
        clients.get(endpoint).ok_or_else(|| {
            GatewayError::RoutingDamaged(format!(
                "no client for {endpoint} (model {:?} version {version:?})",
                self.config.name
            ))
        })
    }
}

/// The prediction path's shared state.
pub struct Core<S> {
    enricher: Enricher<S>,
    routes: HashMap<String, Arc<Route>>,
    request_timeout: Duration,
    max_batch_entities: usize,
    /// The access policy (a prediction's check depends on its model and
    /// routing, so the core runs it).
    authz: Arc<Authorizer>,
    /// Prediction latencies and batch sizes.
    metrics: Arc<Metrics>,
    log: Option<Arc<PredictionLog>>,
    log_retention: Duration,
    routing: LiveRouting<S>,
    shadows: Arc<ShadowPool>,
    precomputed: Precomputed,
    /// Predictions (through the log) and feedback sent to Kafka.
    publisher: Option<Arc<Publisher>>,
}

impl<S: FullStore> Core<S> {
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
        authz: Arc<Authorizer>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StartError> {
        let defs: &FeatureDefinitions = reader.definitions();
        let mut clients: HashMap<String, Arc<RowClient>> = HashMap::new();
        let mut shadow_clients: HashMap<String, Arc<RowClient>> = HashMap::new();
        let mut routes = HashMap::new();
        let client = |pool: &mut HashMap<String, Arc<RowClient>>, endpoint: &str| {
            if let Some(c) = pool.get(endpoint) {
                return Ok::<_, StartError>(Arc::clone(c));
            }
            let c = Arc::new(RowClient::new(ModelClient::new(
                endpoint,
                Duration::from_secs(2),
                BreakerConfig::default(),
            )?));
            pool.insert(endpoint.to_owned(), Arc::clone(&c));
            Ok(c)
        };
        for (i, m) in config.models.iter().enumerate() {
            let features = defs
                .model(&m.name)
                .ok_or_else(|| StartError::ModelNotDefined {
                    model: m.name.clone(),
                    definitions: config.definitions.display().to_string(),
                })?
                .clone();
            let scores = match m.precomputed {
                PrecomputedMode::Off => None,
                mode => Some(ModelScores::new(
                    defs.scoring_job_of(&m.name)
                        .ok_or_else(|| StartError::NoScoringJob {
                            model: m.name.clone(),
                            mode: mode.as_str(),
                            definitions: config.definitions.display().to_string(),
                        })?
                        .clone(),
                )),
            };
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
                    slot: ModelSlot::of_index(i),
                    features,
                    clients: route_clients,
                    shadow_clients: route_shadow_clients,
                    scores,
                }),
            );
        }
        let publisher = if config.publish.enabled {
            Some(Arc::new(Publisher::start(&config.publish)?))
        } else {
            None
        };
        let log = config.prediction_log.enabled.then(|| {
            Arc::new(PredictionLog::start(
                Arc::clone(reader.store()),
                &config.prediction_log,
                publisher.clone(),
            ))
        });
        let file: Vec<(String, crate::rollout::RoutingTable)> = config
            .models
            .iter()
            .map(|m| (m.name.clone(), m.routing.clone()))
            .collect();
        let routing = LiveRouting::open(Arc::clone(reader.store()), &file).await?;
        Ok(Core {
            enricher: Enricher::new(reader),
            routes,
            request_timeout: config.server.request_timeout,
            max_batch_entities: config.server.max_batch_entities,
            authz,
            metrics,
            log,
            log_retention: config.prediction_log.retention,
            routing,
            shadows: Arc::new(ShadowPool::new(
                config.rollout.shadow_concurrency,
                config.rollout.shadow_timeout,
            )),
            precomputed: Precomputed::default(),
            publisher,
        })
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
                        let client = client.client();
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

    /// The route of `model`, or `UnknownModel` listing the served ones.
    fn route(&self, model: &str) -> Result<&Arc<Route>, GatewayError> {
        self.routes
            .get(model)
            .ok_or_else(|| GatewayError::UnknownModel {
                model: model.to_owned(),
                known: self.model_names().join(", "),
            })
    }

    /// The prediction log (None when disabled by config).
    pub fn prediction_log(&self) -> Option<&PredictionLog> {
        self.log.as_deref()
    }

    /// Writes what the prediction log holds and stops it (graceful
    /// shutdown), waiting at most `deadline`. Returns whether everything was
    /// written in time.
    pub async fn close_log(&self, deadline: Duration) -> bool {
        let logged = match &self.log {
            Some(log) => log.close(deadline).await,
            None => true,
        };
        // What the log handed over last is sent before the process ends.
        let published = match &self.publisher {
            Some(p) => {
                let p = Arc::clone(p);
                tokio::task::spawn_blocking(move || p.flush(deadline))
                    .await
                    .unwrap_or(false)
            }
            None => true,
        };
        logged && published
    }

    /// The downstream publisher (None when `[publish]` is off).
    pub fn publisher(&self) -> Option<&Arc<Publisher>> {
        self.publisher.as_ref()
    }

    /// Whether `model` is configured.
    pub fn serves(&self, model: &str) -> bool {
        self.routes.contains_key(model)
    }

    /// The enricher (for pushes and stats).
    pub fn enricher(&self) -> &Enricher<S> {
        &self.enricher
    }

    /// Entities one predict-batch call may carry.
    pub fn max_batch_entities(&self) -> usize {
        self.max_batch_entities
    }

    /// The longest a request may take.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }
}
