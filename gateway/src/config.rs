//! The gateway's config file (TOML): server limits, the feature store, the
//! row cache, the prediction log and the models with their model-server endpoints and
//! post-processing. Parsed with `deny_unknown_fields`, then validated into
//! [`GatewayConfig`]; every error names the file and the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use feature_store::config::StoreSettings;
use feature_store::reader::ReaderConfig;
use serde::Deserialize;

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
    #[serde(rename = "model")]
    models: Vec<RawModel>,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: String,
    endpoint: String,
    #[serde(default)]
    version: String,
    #[serde(default = "default_model_timeout_ms")]
    timeout_ms: u64,
    postprocess: PostProcess,
}

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
}

/// One model the gateway serves.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Name, as in the definitions file and on the model-server.
    pub name: String,
    /// The model-server's gRPC endpoint (`http://host:port`).
    pub endpoint: String,
    /// Version to call ("" = the server's default).
    pub version: String,
    /// Deadline of one model-server call (the caller's, if shorter, wins).
    pub timeout: Duration,
    /// Post-processing.
    pub postprocess: PostProcess,
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
    /// The models.
    pub models: Vec<ModelConfig>,
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
            StoreSettings::Embedded { path } => StoreSettings::Embedded {
                path: resolve(&path),
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
        };
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
            if !(m.endpoint.starts_with("http://") || m.endpoint.starts_with("https://")) {
                return Err(err(
                    &format!("model[{i}].endpoint"),
                    format!(
                        "{:?} is not a URL; write http://host:port of the model-server's gRPC port",
                        m.endpoint
                    ),
                ));
            }
            if m.timeout_ms == 0 {
                return Err(err(
                    &format!("model[{i}].timeout_ms"),
                    "must be at least 1".into(),
                ));
            }
            m.postprocess
                .validate()
                .map_err(|e| err(&format!("model[{i}]"), e.to_string()))?;
            models.push(ModelConfig {
                name: m.name,
                endpoint: m.endpoint,
                version: m.version,
                timeout: Duration::from_millis(m.timeout_ms),
                postprocess: m.postprocess,
            });
        }
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
            },
            store,
            cache,
            prediction_log: raw.prediction_log,
            models,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
