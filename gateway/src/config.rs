//! The gateway's config file (TOML): server limits, the feature store, the
//! row cache, the prediction log, the models with their model-server
//! endpoints and post-processing, `[auth]`, `[scheduler]`, `[rollout]` and
//! `[telemetry]`. Parsed with `deny_unknown_fields`, then validated into
//! [`GatewayConfig`]; sections owned by a concern are validated by it
//! (`auth::settings`, `rollout::settings`, `scheduler`, `predlog`,
//! `postprocess`), and every error names the file and the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use feature_store::config::StoreSettings;
use feature_store::reader::ReaderConfig;
use serde::Deserialize;

use crate::auth::AuthSettings;
use crate::model::coalesce::Coalesce;
use crate::postprocess::PostProcess;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    definitions: PathBuf,
    #[serde(default)]
    server: RawServer,
    store: StoreSettings,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    prediction_log: crate::predlog::LogConfig,
    #[serde(default)]
    publish: crate::publish::PublishSettings,
    #[serde(default)]
    async_predict: AsyncSettings,
    #[serde(default)]
    ingest: feature_store::ingest::IngestSettings,
    #[serde(default)]
    console: crate::console::ConsoleSettings,
    #[serde(rename = "model")]
    models: Vec<RawModel>,
    auth: Option<crate::auth::settings::RawAuth>,
    #[serde(default)]
    scheduler: crate::scheduler::SchedulerSettings,
    #[serde(default)]
    rollout: RawRollout,
    #[serde(default)]
    telemetry: RawTelemetry,
}

/// `[telemetry]`: trace export (off unless `otlp_endpoint` is set) and logs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    otlp_endpoint: Option<String>,
    #[serde(default = "default_service_name")]
    service_name: String,
    #[serde(default = "one")]
    sample_ratio: f64,
    #[serde(default = "default_export_timeout_ms")]
    export_timeout_ms: u64,
    #[serde(default = "default_batch_delay_ms")]
    batch_delay_ms: u64,
    #[serde(default)]
    log_json: bool,
}

impl Default for RawTelemetry {
    fn default() -> Self {
        RawTelemetry {
            otlp_endpoint: None,
            service_name: default_service_name(),
            sample_ratio: 1.0,
            export_timeout_ms: default_export_timeout_ms(),
            batch_delay_ms: default_batch_delay_ms(),
            log_json: false,
        }
    }
}

fn default_service_name() -> String {
    "mlgw-gateway".to_owned()
}
fn one() -> f64 {
    1.0
}
fn default_export_timeout_ms() -> u64 {
    3000
}
fn default_batch_delay_ms() -> u64 {
    1000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollout {
    #[serde(default = "default_routing_poll_ms")]
    poll_ms: u64,
    #[serde(default = "default_config_watch_ms")]
    config_watch_ms: u64,
    #[serde(default = "default_shadow_concurrency")]
    shadow_concurrency: u32,
    #[serde(default = "default_shadow_timeout_ms")]
    shadow_timeout_ms: u64,
}

impl Default for RawRollout {
    fn default() -> Self {
        RawRollout {
            poll_ms: default_routing_poll_ms(),
            config_watch_ms: default_config_watch_ms(),
            shadow_concurrency: default_shadow_concurrency(),
            shadow_timeout_ms: default_shadow_timeout_ms(),
        }
    }
}

fn default_routing_poll_ms() -> u64 {
    2000
}
fn default_config_watch_ms() -> u64 {
    2000
}
fn default_shadow_concurrency() -> u32 {
    32
}
fn default_shadow_timeout_ms() -> u64 {
    1000
}

/// How routing changes reach a running gateway, and the shadow pool.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutConfig {
    /// How often the stored routing is re-read (changes made through other
    /// replicas).
    pub poll: Duration,
    /// How often the config file is checked for edits (None: never).
    pub config_watch: Option<Duration>,
    /// Shadow calls in flight at most; more copies are dropped and counted.
    pub shadow_concurrency: u32,
    /// Deadline of one shadow call.
    pub shadow_timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default = "default_host")]
    host: String,
    #[serde(default = "default_http_port")]
    http_port: u16,
    #[serde(default = "default_grpc_port")]
    grpc_port: u16,
    #[serde(default = "default_request_timeout_ms")]
    request_timeout_ms: u64,
    #[serde(default = "default_max_concurrent")]
    max_concurrent_requests: usize,
    #[serde(default = "default_max_batch")]
    max_batch_entities: usize,
    #[serde(default = "default_environment")]
    environment: String,
}

fn default_environment() -> String {
    "production".to_owned()
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            host: default_host(),
            http_port: default_http_port(),
            grpc_port: default_grpc_port(),
            request_timeout_ms: default_request_timeout_ms(),
            max_concurrent_requests: default_max_concurrent(),
            max_batch_entities: default_max_batch(),
            environment: default_environment(),
        }
    }
}

fn default_host() -> String {
    "127.0.0.1".to_owned()
}
fn default_http_port() -> u16 {
    8080
}
fn default_grpc_port() -> u16 {
    8081
}
fn default_request_timeout_ms() -> u64 {
    1000
}
fn default_max_concurrent() -> usize {
    256
}
fn default_max_batch() -> usize {
    64
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    max_bytes: Option<u64>,
    static_ttl_s: Option<u64>,
    negative_ttl_s: Option<u64>,
    dynamic_ttl_ms: Option<u64>,
    batch_poll_ms: Option<u64>,
    max_events_per_read: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: String,
    endpoint: String,
    /// Moved to `[model.routing] stable`; kept only to say so.
    version: Option<String>,
    #[serde(default = "default_model_timeout_ms")]
    timeout_ms: u64,
    postprocess: PostProcess,
    routing: Option<crate::rollout::settings::RawRouting>,
    #[serde(default)]
    endpoints: std::collections::BTreeMap<String, String>,
    coalesce: Option<RawCoalesce>,
    #[serde(default)]
    precomputed: PrecomputedMode,
}

/// `[[model]] precomputed`: whether answers come from the prediction store
/// that the model's scoring job fills.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrecomputedMode {
    /// Every answer is computed live (the default).
    #[default]
    Off,
    /// The store first; the model live on a miss, a stale entry or another
    /// version than the one routing chose.
    First,
    /// Only the store: a key it cannot answer is refused (for models that
    /// must never run live).
    Only,
}

impl PrecomputedMode {
    /// `off`, `first` or `only`.
    pub fn as_str(self) -> &'static str {
        match self {
            PrecomputedMode::Off => "off",
            PrecomputedMode::First => "first",
            PrecomputedMode::Only => "only",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCoalesce {
    #[serde(default = "default_coalesce_in_flight")]
    max_in_flight: usize,
    #[serde(default = "default_coalesce_rows")]
    max_rows: usize,
}

fn default_coalesce_in_flight() -> usize {
    DEFAULT_COALESCE.max_in_flight
}

fn default_coalesce_rows() -> usize {
    DEFAULT_COALESCE.max_rows
}

/// `[model.coalesce]` when the section is absent.
pub const DEFAULT_COALESCE: Coalesce = Coalesce {
    max_in_flight: 2,
    max_rows: 16,
};

/// Rows one coalesced call may carry at most (`[model.coalesce] max_rows`).
const MAX_COALESCE_ROWS: usize = 1024;

fn default_model_timeout_ms() -> u64 {
    300
}

/// Server limits.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Address to listen on.
    pub host: String,
    /// REST port (0: any free port).
    pub http_port: u16,
    /// gRPC port (0: any free port).
    pub grpc_port: u16,
    /// Longest a request may take end to end; callers may ask for less.
    pub request_timeout: Duration,
    /// Requests served at once; more are refused at once (429 /
    /// RESOURCE_EXHAUSTED), never queued.
    pub max_concurrent_requests: usize,
    /// Entities per PredictBatch call.
    pub max_batch_entities: usize,
    /// `production` (the default) refuses the dev issuer.
    pub production: bool,
}

/// One model the gateway serves.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Name, as in the definitions file and on the model-server.
    pub name: String,
    /// The model-server's gRPC endpoint (`http://host:port`, or
    /// `unix:/path` for a Unix-domain socket on this host) of every version
    /// not in `endpoints`.
    pub endpoint: String,
    /// Versions served by another model-server (e.g. a canary deployment).
    pub endpoints: std::collections::BTreeMap<String, String>,
    /// The routing in the config file (the stored routing may have changed
    /// since, through the admin API).
    pub routing: crate::rollout::RoutingTable,
    /// Deadline of one model-server call (the caller's, if shorter, wins).
    pub timeout: Duration,
    /// Post-processing.
    pub postprocess: PostProcess,
    /// How single predictions are sent together while the model-server is
    /// busy (`[model.coalesce]`).
    pub coalesce: Coalesce,
    /// Whether answers come from the prediction store first.
    pub precomputed: PrecomputedMode,
}

/// The validated config.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The file it came from.
    pub source: PathBuf,
    /// The feature definitions file (resolved against the config's folder).
    pub definitions: PathBuf,
    /// Server limits.
    pub server: ServerConfig,
    /// The feature store.
    pub store: StoreSettings,
    /// The row cache.
    pub cache: ReaderConfig,
    /// The prediction log.
    pub prediction_log: crate::predlog::LogConfig,
    /// `[publish]`: predictions and feedback sent downstream to Kafka.
    pub publish: crate::publish::PublishSettings,
    /// `[async_predict]`: predictions queued on Kafka and polled.
    pub async_predict: AsyncSettings,
    /// `[ingest]`: dynamic-feature events consumed from Kafka.
    pub ingest: feature_store::ingest::IngestSettings,
    /// `[console]`: the web console and its sign-in.
    pub console: crate::console::ConsoleSettings,
    /// The models.
    pub models: Vec<ModelConfig>,
    /// SSO authentication and the access policy.
    pub auth: AuthSettings,
    /// `[scheduler]`: whether this gateway runs the refresh jobs.
    pub scheduler: crate::scheduler::SchedulerSettings,
    /// Routing changes at run time and the shadow pool.
    pub rollout: RolloutConfig,
    /// Trace export and log format (`[telemetry]`).
    pub telemetry: telemetry::TelemetrySettings,
}

impl ModelConfig {
    /// The model-server endpoint of `version`.
    pub fn endpoint_of(&self, version: &str) -> &str {
        self.endpoints
            .get(version)
            .map_or(&self.endpoint, String::as_str)
    }
}

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct ConfigError {
    /// The config file.
    pub file: String,
    /// The key path (`model[0].timeout_ms`) or `(file)`.
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl GatewayConfig {
    /// Reads and validates `path`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            key: "(file)".to_owned(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Validates `text` as if read from `path`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and key.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            file: path.display().to_string(),
            key: key.to_owned(),
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let key = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].lines().count().max(1);
                    format!("line {line}")
                })
                .unwrap_or_else(|| "(file)".to_owned());
            err(&key, e.message().to_owned())
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };
        let s = &raw.server;
        if s.request_timeout_ms == 0 {
            return Err(err(
                "server.request_timeout_ms",
                "must be at least 1".into(),
            ));
        }
        if s.max_concurrent_requests == 0 {
            return Err(err(
                "server.max_concurrent_requests",
                "must be at least 1".into(),
            ));
        }
        if s.max_batch_entities == 0 {
            return Err(err(
                "server.max_batch_entities",
                "must be at least 1".into(),
            ));
        }
        raw.publish
            .validate()
            .map_err(|(k, m)| err(&format!("publish.{k}"), m))?;
        raw.async_predict
            .validate()
            .map_err(|(k, m)| err(&format!("async_predict.{k}"), m))?;
        raw.ingest
            .validate()
            .map_err(|(k, m)| err(&format!("ingest.{k}"), m))?;
        raw.console
            .validate()
            .map_err(|(k, m)| err(&format!("console.{k}"), m))?;
        if raw.publish.enabled && !raw.prediction_log.enabled {
            return Err(err(
                "publish.enabled",
                "publishing sends what the prediction log writes: enable [prediction_log] too"
                    .into(),
            ));
        }
        if raw.prediction_log.buffer == 0 {
            return Err(err("prediction_log.buffer", "must be at least 1".into()));
        }
        if raw.prediction_log.batch == 0 {
            return Err(err("prediction_log.batch", "must be at least 1".into()));
        }
        if raw.prediction_log.retention.as_secs() == 0 {
            return Err(err(
                "prediction_log.retention",
                "must be at least 1s, e.g. \"90d\"".into(),
            ));
        }
        if let Err(e) = raw.store.scylla_config() {
            return Err(err("store", e.to_string()));
        }
        let store = match raw.store {
            StoreSettings::Embedded { path, cache_mib } => StoreSettings::Embedded {
                path: resolve(&path),
                cache_mib,
            },
            other => other,
        };
        let defaults = ReaderConfig::default();
        let c = &raw.cache;
        let cache = ReaderConfig {
            cache_max_bytes: c.max_bytes.unwrap_or(defaults.cache_max_bytes),
            static_ttl: c
                .static_ttl_s
                .map_or(defaults.static_ttl, Duration::from_secs),
            negative_ttl: c
                .negative_ttl_s
                .map_or(defaults.negative_ttl, Duration::from_secs),
            dynamic_ttl: c
                .dynamic_ttl_ms
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
            batch_poll_interval: c.batch_poll_ms.map_or(defaults.batch_poll_interval, |ms| {
                Duration::from_millis(ms.max(10))
            }),
            max_events_per_read: c
                .max_events_per_read
                .unwrap_or(defaults.max_events_per_read),
        };
        if cache.max_events_per_read == 0 {
            return Err(err(
                "cache.max_events_per_read",
                "must be at least 1 (the raw events read per entity for windowed aggregates)"
                    .into(),
            ));
        }
        if raw.models.is_empty() {
            return Err(err("model", "declare at least one [[model]]".into()));
        }
        let mut models = Vec::with_capacity(raw.models.len());
        for (i, m) in raw.models.into_iter().enumerate() {
            if models.iter().any(|x: &ModelConfig| x.name == m.name) {
                return Err(err(
                    &format!("model[{i}].name"),
                    format!("{:?} is declared twice", m.name),
                ));
            }
            if let Err(e) = crate::model::infer::parse_endpoint(&m.endpoint) {
                return Err(err(&format!("model[{i}].endpoint"), e.to_string()));
            }
            for (v, u) in &m.endpoints {
                if let Err(e) = crate::model::infer::parse_endpoint(u) {
                    return Err(err(&format!("model[{i}].endpoints.{v}"), e.to_string()));
                }
            }
            if m.version.is_some() {
                return Err(err(
                    &format!("model[{i}].version"),
                    "moved: write the version under [model.routing] as stable = \"1\" (the routing can then change at run time)".into(),
                ));
            }
            let routing = crate::rollout::settings::validate(m.routing).map_err(|(k, msg)| {
                let key = if k.is_empty() {
                    format!("model[{i}].routing")
                } else {
                    format!("model[{i}].routing.{k}")
                };
                err(&key, msg)
            })?;
            if m.timeout_ms == 0 {
                return Err(err(
                    &format!("model[{i}].timeout_ms"),
                    "must be at least 1".into(),
                ));
            }
            m.postprocess
                .validate()
                .map_err(|e| err(&format!("model[{i}]"), e.to_string()))?;
            let coalesce = match m.coalesce {
                None => DEFAULT_COALESCE,
                Some(c) if !(1..=MAX_COALESCE_ROWS).contains(&c.max_rows) => {
                    return Err(err(
                        &format!("model[{i}].coalesce.max_rows"),
                        format!(
                            "{} is out of range: write 1 to {MAX_COALESCE_ROWS}, at most the model-server's max batch size (it refuses larger calls)",
                            c.max_rows
                        ),
                    ));
                }
                Some(c) => Coalesce {
                    max_in_flight: c.max_in_flight,
                    max_rows: c.max_rows,
                },
            };
            models.push(ModelConfig {
                name: m.name,
                endpoint: m.endpoint,
                endpoints: m.endpoints,
                routing,
                timeout: Duration::from_millis(m.timeout_ms),
                postprocess: m.postprocess,
                coalesce,
                precomputed: m.precomputed,
            });
        }
        let production = match s.environment.as_str() {
            "production" => true,
            "development" => false,
            other => {
                return Err(err(
                    "server.environment",
                    format!("{other:?}: write \"production\" or \"development\""),
                ));
            }
        };
        let Some(raw_auth) = raw.auth else {
            return Err(err(
                "auth",
                "missing: declare [auth] (mode = \"oidc\" with the issuer, or mode = \"dev\" on a laptop); every model API needs a token".into(),
            ));
        };
        let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
        let auth = crate::auth::settings::validate(raw_auth, production, &names)
            .map_err(|(k, m)| err(&k, m))?;
        let t = raw.telemetry;
        let telemetry = telemetry::TelemetrySettings {
            otlp_endpoint: t.otlp_endpoint.filter(|e| !e.is_empty()),
            service_name: t.service_name,
            sample_ratio: t.sample_ratio,
            export_timeout: Duration::from_millis(t.export_timeout_ms.max(1)),
            batch_delay: Duration::from_millis(t.batch_delay_ms.max(1)),
            log_json: t.log_json,
            stages: &[
                "request",
                "auth",
                "route",
                "enrich",
                "feature_read",
                "infer",
                "postprocess",
                "log",
            ],
        };
        telemetry
            .validate()
            .map_err(|e| err("telemetry", e.to_string()))?;
        Ok(GatewayConfig {
            source: path.to_owned(),
            definitions: resolve(&raw.definitions),
            server: ServerConfig {
                host: s.host.clone(),
                http_port: s.http_port,
                grpc_port: s.grpc_port,
                request_timeout: Duration::from_millis(s.request_timeout_ms),
                max_concurrent_requests: s.max_concurrent_requests,
                max_batch_entities: s.max_batch_entities,
                production,
            },
            store,
            cache,
            prediction_log: raw.prediction_log,
            publish: raw.publish,
            async_predict: raw.async_predict,
            ingest: raw.ingest,
            console: raw.console,
            scheduler: raw.scheduler,
            models,
            auth,
            rollout: RolloutConfig {
                poll: Duration::from_millis(raw.rollout.poll_ms.max(100)),
                config_watch: (raw.rollout.config_watch_ms > 0)
                    .then(|| Duration::from_millis(raw.rollout.config_watch_ms.max(100))),
                shadow_concurrency: raw.rollout.shadow_concurrency.max(1),
                shadow_timeout: Duration::from_millis(raw.rollout.shadow_timeout_ms.max(1)),
            },
            telemetry,
        })
    }
}

/// `[async_predict]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AsyncSettings {
    /// Whether asynchronous predictions are served (default false).
    pub enabled: bool,
    /// Kafka bootstrap servers, `host:port,host:port`.
    pub brokers: String,
    /// Each model's request topic; `{model}` is replaced by its name.
    pub request_topic: String,
    /// Each model's result topic; `{model}` is replaced by its name.
    pub result_topic: String,
    /// Whether the gateway creates missing topics at start (with
    /// `partitions` and `replication_factor`); off where topics are made by
    /// the platform team.
    pub create_topics: bool,
    /// Partitions of a created topic (workers scale up to this many).
    pub partitions: i32,
    /// Replication factor of a created topic.
    pub replication_factor: i32,
    /// Whether this gateway also scores queued requests (joins the workers'
    /// consumer group); false: it only accepts and answers polls.
    pub workers: bool,
    /// The workers' consumer group.
    pub group_id: String,
    /// This worker's name in the group, unique among its workers and the
    /// same across its restarts (its Kafka transactional ID and static
    /// group membership); default: the host name (a pod's name).
    pub worker_id: Option<String>,
    /// Requests scored together at most.
    pub batch_max: usize,
    /// How long a worker waits to fill a batch, ms.
    pub batch_linger_ms: u64,
    /// How long results (and idempotency keys) are kept, seconds.
    pub retention_s: u64,
    /// A request's deadline when the caller names none, ms.
    pub default_deadline_ms: u64,
    /// The longest deadline a caller may ask for, ms.
    pub max_deadline_ms: u64,
    /// How long a submit waits for Kafka's acknowledgement, ms.
    pub submit_timeout_ms: u64,
}

impl Default for AsyncSettings {
    fn default() -> Self {
        AsyncSettings {
            enabled: false,
            brokers: String::new(),
            request_topic: "mlgw.requests.{model}".to_owned(),
            result_topic: "mlgw.results.{model}".to_owned(),
            create_topics: true,
            partitions: 6,
            replication_factor: 1,
            workers: true,
            group_id: "mlgw-async-workers".to_owned(),
            worker_id: None,
            batch_max: 256,
            batch_linger_ms: 5,
            retention_s: 24 * 3600,
            default_deadline_ms: 60_000,
            max_deadline_ms: 3_600_000,
            submit_timeout_ms: 2_000,
        }
    }
}

impl AsyncSettings {
    /// Checks the settings; `(key, message)` of the first problem.
    ///
    /// # Errors
    /// The key (relative to `[async_predict]`) and what is wrong.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.enabled {
            return Ok(());
        }
        if let Some(problem) = feature_store::definitions::brokers_problem(&self.brokers) {
            return Err(("brokers", problem));
        }
        for (key, template) in [
            ("request_topic", &self.request_topic),
            ("result_topic", &self.result_topic),
        ] {
            if !template.contains("{model}")
                || feature_store::definitions::topic_name_problem(&template.replace("{model}", "m"))
                    .is_some()
            {
                return Err((
                    key,
                    format!(
                        "{template:?} must contain {{model}} and otherwise only letters, digits, '.', '_', '-'"
                    ),
                ));
            }
        }
        if self.request_topic == self.result_topic {
            return Err((
                "result_topic",
                "requests and results need topics of their own".into(),
            ));
        }
        if self.partitions < 1 || self.replication_factor < 1 {
            return Err((
                "partitions",
                "partitions and replication_factor must be at least 1".into(),
            ));
        }
        if self.batch_max == 0 || self.retention_s == 0 || self.submit_timeout_ms == 0 {
            return Err((
                "batch_max",
                "batch_max, retention_s and submit_timeout_ms must be at least 1".into(),
            ));
        }
        if self.default_deadline_ms == 0 || self.default_deadline_ms > self.max_deadline_ms {
            return Err((
                "default_deadline_ms",
                format!(
                    "must be between 1 and max_deadline_ms ({})",
                    self.max_deadline_ms
                ),
            ));
        }
        if self.group_id.trim().is_empty() {
            return Err(("group_id", "name the workers' consumer group".into()));
        }
        Ok(())
    }

    /// This worker's name: `worker_id`, else the host name.
    pub fn worker_name(&self) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "worker".to_owned())
        })
    }

    /// `model`'s request topic.
    pub fn request_topic(&self, model: &str) -> String {
        self.request_topic.replace("{model}", model)
    }

    /// `model`'s result topic.
    pub fn result_topic(&self, model: &str) -> String {
        self.result_topic.replace("{model}", model)
    }

    /// How long results and idempotency keys are kept.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::{RoutingTable, StickyBy};

    fn example() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.toml")
    }

    #[test]
    fn the_example_config_is_valid() -> Result<(), ConfigError> {
        let config = GatewayConfig::load(&example())?;
        assert_eq!(config.models[0].name, "fraud_detector");
        assert!(config.prediction_log.enabled);
        assert_eq!(config.prediction_log.buffer, 65_536);
        assert_eq!(
            config.prediction_log.retention,
            Duration::from_secs(90 * 24 * 3600)
        );
        Ok(())
    }

    #[test]
    fn bad_publish_settings_name_the_key() {
        let text = std::fs::read_to_string(example()).unwrap_or_default();
        let on = "[publish]\nenabled = true\nbrokers = \"127.0.0.1:9092\"\n";
        for (section, key) in [
            ("[publish]\nenabled = true\n", "publish.brokers"),
            (
                &*format!("{on}predictions_topic = \"has space\"\n"),
                "publish.predictions_topic",
            ),
            (&*format!("{on}queue_max = 0\n"), "publish.queue_max"),
        ] {
            let err = GatewayConfig::parse(&format!("{text}\n{section}"), &example())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(key), "{section:?}: {err}");
        }
        let ok = GatewayConfig::parse(&format!("{text}\n{on}"), &example());
        assert!(ok.is_ok_and(|c| c.publish.enabled));
    }

    #[test]
    fn bad_prediction_log_settings_name_the_key() {
        let text = std::fs::read_to_string(example()).unwrap_or_default();
        for (from, to, key) in [
            ("buffer = 65536", "buffer = 0", "prediction_log.buffer"),
            ("batch = 512", "batch = 0", "prediction_log.batch"),
            ("retention = \"90d\"", "retention = \"soon\"", "line"),
            ("retries = 3", "retries = 3\nflush = 1", "line"),
        ] {
            assert!(text.contains(from), "the example lost {from:?}");
            let err = GatewayConfig::parse(&text.replace(from, to), &example())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(key), "{to:?}: {err}");
        }
    }

    const BASE: &str = r#"
definitions = "defs.toml"
[server]
environment = "development"
[store]
backend = "embedded"
path = "f.redb"
[[model]]
name = "fraud_detector"
endpoint = "http://127.0.0.1:8001"
[model.postprocess]
scores_output = "probabilities"
labels = ["legit", "fraud"]
[model.routing]
stable = "1"
"#;

    fn parse(auth: &str) -> Result<GatewayConfig, ConfigError> {
        GatewayConfig::parse(&format!("{BASE}{auth}"), Path::new("gw.toml"))
    }

    fn error(auth: &str) -> String {
        parse(auth).err().map(|e| e.to_string()).unwrap_or_default()
    }

    const OIDC: &str = "[auth]\nmode = \"oidc\"\nissuer = \"https://s\"\naudience = \"gw\"\n";

    #[test]
    fn routing_is_read_and_checked() -> Result<(), ConfigError> {
        let with = |routing: &str| {
            let text = BASE.replace("[model.routing]\nstable = \"1\"\n", routing);
            GatewayConfig::parse(&format!("{text}{OIDC}"), Path::new("gw.toml"))
        };
        let c = with(
            "[model.endpoints]\n\"2\" = \"http://127.0.0.1:9001\"\n[model.routing]\nstable = \"1\"\ncanary = \"2\"\ncanary_percent = 12.5\nshadow = [\"3\"]\nsticky_by = \"entity\"\n[[model.routing.pilot]]\nversion = \"4\"\ngroups = [\"pilot-x\"]\n",
        )?;
        let m = &c.models[0];
        assert_eq!(
            m.routing.canary.as_ref().map(|c| c.basis_points),
            Some(1250)
        );
        assert_eq!(m.routing.shadows, vec!["3".to_owned()]);
        assert_eq!(m.routing.sticky_by, StickyBy::Entity);
        assert_eq!(m.routing.pilots[0].groups, vec!["pilot-x".to_owned()]);
        assert_eq!(m.endpoint_of("2"), "http://127.0.0.1:9001");
        assert_eq!(m.endpoint_of("3"), "http://127.0.0.1:8001");
        assert_eq!(with("")?.models[0].routing, RoutingTable::stable(""));
        assert_eq!(with("")?.models[0].coalesce, DEFAULT_COALESCE);
        assert_eq!(
            with("[model.coalesce]\nmax_in_flight = 0\n")?.models[0].coalesce,
            Coalesce {
                max_in_flight: 0,
                max_rows: DEFAULT_COALESCE.max_rows
            }
        );
        assert_eq!(c.rollout.poll, Duration::from_secs(2));
        let error = |routing: &str| {
            with(routing)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        for (routing, want) in [
            (
                "[model.routing]\nstable = \"1\"\ncanary = \"2\"\n",
                "model[0].routing.canary_percent: missing",
            ),
            (
                "[model.routing]\nstable = \"1\"\ncanary = \"2\"\ncanary_percent = 0\n",
                "model[0].routing.canary_percent: 0 is not a share",
            ),
            (
                "[model.routing]\ncanary = \"2\"\ncanary_percent = 5\n",
                "model[0].routing: a canary, pilot or shadow needs a pinned stable version",
            ),
            (
                "[model.routing]\nstable = \"1\"\nshadow = [\"1\"]\n",
                "model[0].routing: version \"1\" cannot be both stable and shadow",
            ),
            (
                "[model.routing]\nstable = \"1\"\nsticky_by = \"ip\"\n",
                "model[0].routing.sticky_by: \"ip\"",
            ),
            (
                "[model.endpoints]\n\"2\" = \"localhost:1\"\n",
                "model[0].endpoints.2: \"localhost:1\": only plaintext HTTP/2",
            ),
            (
                "[model.endpoints]\n\"2\" = \"https://ms.example.com\"\n",
                "model[0].endpoints.2: \"https://ms.example.com\": only plaintext HTTP/2",
            ),
            (
                "[model.endpoints]\n\"2\" = \"unix:run/ms.sock\"\n",
                "model[0].endpoints.2: \"unix:run/ms.sock\": the socket path must be absolute",
            ),
            (
                "[model.endpoints]\n\"2\" = \"unix:\"\n",
                "model[0].endpoints.2: \"unix:\" names no socket path",
            ),
            (
                "[model.coalesce]\nmax_rows = 0\n",
                "model[0].coalesce.max_rows: 0 is out of range: write 1 to 1024",
            ),
        ] {
            let got = error(routing);
            assert!(
                got.starts_with(&format!("gw.toml: {want}")),
                "{routing:?}: {got}"
            );
        }
        let old = BASE.replace(":8001\"\n", ":8001\"\nversion = \"1\"\n");
        let got = GatewayConfig::parse(&format!("{old}{OIDC}"), Path::new("gw.toml"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(got.starts_with("gw.toml: model[0].version: moved"), "{got}");
        Ok(())
    }

    #[test]
    fn auth_is_required_and_defaults_are_safe() {
        assert!(error("").starts_with("gw.toml: auth: missing"));
        let c = parse(
            "[auth]\nmode = \"oidc\"\nissuer = \"https://sso.example.com\"\naudience = \"gw\"\n",
        );
        let a = c.map(|c| c.auth).ok();
        let a = a.as_ref();
        assert_eq!(
            a.map(|a| a.algorithms.clone()),
            Some(vec![jsonwebtoken::Algorithm::RS256])
        );
        assert_eq!(a.map(|a| a.leeway), Some(Duration::from_secs(30)));
        assert_eq!(a.map(|a| a.max_token_bytes), Some(8192));
        assert_eq!(a.map(|a| a.rules.len()), Some(0), "deny by default");
    }

    #[test]
    fn auth_errors_name_the_key() {
        let oidc = "[auth]\nmode = \"oidc\"\naudience = \"gw\"\n";
        for (auth, want) in [
            (
                format!("{oidc}issuer = \"http://sso.example.com\"\n"),
                "gw.toml: auth.issuer: \"http://sso.example.com\" is not an https URL",
            ),
            (
                format!("{oidc}issuer = \"https://s\"\nalgorithms = [\"HS256\"]\n"),
                "gw.toml: auth.algorithms[0]: \"HS256\" is not accepted",
            ),
            (
                format!("{oidc}issuer = \"https://s\"\nalgorithms = [\"none\"]\n"),
                "auth.algorithms[0]: \"none\" is not accepted",
            ),
            (oidc.to_owned(), "auth.issuer: missing"),
            (
                format!("{oidc}issuer = \"https://s\"\nmax_token_bytes = 10\n"),
                "auth.max_token_bytes: must be 256..=65536",
            ),
            (
                format!("{oidc}issuer = \"https://s\"\ngroups_claim = \"a..b\"\n"),
                "auth.groups_claim",
            ),
            (
                format!("{oidc}issuer = \"https://s\"\n[[auth.allow]]\napi = \"predict\"\n"),
                "auth.allow[0]: name groups, scopes or both",
            ),
            (
                format!(
                    "{oidc}issuer = \"https://s\"\n[[auth.allow]]\napi = \"delete\"\ngroups = [\"g\"]\n"
                ),
                "auth.allow[0].api: \"delete\"",
            ),
            (
                format!(
                    "{oidc}issuer = \"https://s\"\n[[auth.allow]]\napi = \"push\"\nmodels = [\"fraud_detector\"]\ngroups = [\"g\"]\n"
                ),
                "auth.allow[0].models: only for api = \"predict\"",
            ),
            (
                format!(
                    "{oidc}issuer = \"https://s\"\n[[auth.pilot]]\nmodel = \"nope\"\ngroups = [\"g\"]\n"
                ),
                "auth.pilot[0].model: \"nope\" is not a configured",
            ),
            (
                format!(
                    "{oidc}issuer = \"https://s\"\n[[auth.pilot]]\nmodel = \"fraud_detector\"\nversion = \"1\"\ngroups = [\"g\"]\n"
                ),
                "auth.pilot[0].version: moved: a pilot version is part of the model's routing",
            ),
            (
                format!("{oidc}issuer = \"https://s\"\nbogus = 1\n"),
                "unknown field `bogus`",
            ),
            (
                "[auth]\nmode = \"dev\"\naudience = \"gw\"\nissuer = \"https://s\"\n".to_owned(),
                "auth.issuer: not used with mode = \"dev\"",
            ),
        ] {
            let got = error(&auth);
            assert!(got.contains(want), "{auth}\n=> {got}");
        }
    }

    #[test]
    fn production_refuses_the_dev_issuer() {
        let dev = "[auth]\nmode = \"dev\"\naudience = \"gw\"\n";
        assert!(parse(dev).is_ok());
        let prod = format!("{BASE}{dev}").replace("environment = \"development\"\n", "");
        let e = GatewayConfig::parse(&prod, Path::new("gw.toml"))
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.starts_with("gw.toml: auth.mode: the dev issuer is refused when server.environment = \"production\"")),
            "{e:?}"
        );
        let odd = format!("{BASE}{dev}").replace("\"development\"", "\"staging\"");
        let e = GatewayConfig::parse(&odd, Path::new("gw.toml"))
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("server.environment")));
    }
}
