//! Per-model configuration (`DIR/<model>/config.toml`): parsed once with
//! `deny_unknown_fields`, then validated into a [`ModelSpec`] with errors that name
//! the file and key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::datatype::DataType;

/// The `config.toml` of one model, as written by a person.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModelConfig {
    platform: String,
    #[serde(default)]
    max_batch_size: u32,
    #[serde(default)]
    instances: Option<u32>,
    #[serde(default)]
    inline_max_us: Option<f64>,
    #[serde(default)]
    default_version: Option<u64>,
    dynamic_batching: Option<RawDynamicBatching>,
    #[serde(default)]
    warmup: RawWarmup,
    #[serde(rename = "input", default)]
    inputs: Vec<RawTensor>,
    #[serde(rename = "output", default)]
    outputs: Vec<RawTensor>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDynamicBatching {
    max_queue_delay_ms: f64,
    max_queue_size: Option<usize>,
    #[serde(default)]
    wait_when_idle: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWarmup {
    #[serde(default = "default_warmup_iterations")]
    iterations: u32,
    #[serde(default)]
    batch_size: Option<u32>,
}

impl Default for RawWarmup {
    fn default() -> Self {
        RawWarmup {
            iterations: default_warmup_iterations(),
            batch_size: None,
        }
    }
}

fn default_warmup_iterations() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTensor {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    #[serde(default)]
    allow_nan: Option<bool>,
}

/// Declared shape and type of one model input or output.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// Tensor name as in the ONNX graph.
    pub name: String,
    /// Element type.
    pub datatype: DataType,
    /// Dimensions; -1 is variable. With batching the first dimension is the batch.
    pub shape: Vec<i64>,
    /// Whether NaN values are accepted (inputs only; default false).
    pub allow_nan: bool,
}

/// How concurrent requests are gathered into one inference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DynamicBatching {
    /// How long the oldest queued request may wait for others to join it.
    pub max_queue_delay: Duration,
    /// Whether a worker waits for the batch to fill even when no other
    /// worker of the version is running an inference. Off (the default): an
    /// idle server runs a request at once with whatever is already queued, and
    /// the wait applies only while the CPU is busy with other batches, which
    /// is when waiting gathers more rows for nothing.
    pub wait_when_idle: bool,
}

/// A validated model configuration.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// Model name (its folder name).
    pub name: String,
    /// Runtime platform; only `onnx` exists.
    pub platform: String,
    /// Inputs in the order the model declares them.
    pub inputs: Vec<TensorSpec>,
    /// Outputs in the order the model declares them.
    pub outputs: Vec<TensorSpec>,
    /// Most rows in one request and in one inference; 0 means the model has no
    /// batch dimension (then every request runs alone).
    pub max_batch_size: usize,
    /// Whether the model's first dimension is a batch dimension.
    pub batched_dims: bool,
    /// Gathering of concurrent requests; None runs each request alone.
    pub dynamic_batching: Option<DynamicBatching>,
    /// Requests waiting beyond this are refused at once with 429 / RESOURCE_EXHAUSTED.
    pub max_queue_size: usize,
    /// Worker threads running this model's inferences.
    pub instances: usize,
    /// A request that finds the version idle (nothing running, nothing
    /// queued) and whose run is expected to take at most this long runs on
    /// the thread that decoded it, skipping the hand-off to an inference
    /// thread and back (two thread wake-ups, which cost more than a small
    /// model's whole run). Zero: every request goes through the queue.
    pub inline_max: Duration,
    /// Warm-up inferences each version must answer before it is ready.
    pub warmup_iterations: u32,
    /// Rows in each warm-up inference.
    pub warmup_batch_size: usize,
    /// The version unversioned calls get; None: the highest ready version.
    /// Declaring it means publishing a new version never changes what
    /// unversioned callers get until this key (and the server) changes.
    pub default_version: Option<u64>,
}

/// A model configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read model config {path}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown / missing keys.
    #[error("invalid model config {path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// What the parser said, including the line and key.
        message: String,
    },
    /// A key holds a value that cannot work.
    #[error("invalid model config {path}: `{key}`: {message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Key path, e.g. `input[0].datatype`.
        key: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

/// Server-wide defaults and overrides applied when a model config is validated.
#[derive(Debug, Clone, Copy)]
pub struct ConfigOverrides {
    /// Turn dynamic batching off for every model (each request runs alone).
    pub disable_batching: bool,
    /// Worker threads per model version when the config does not say.
    pub default_instances: usize,
}

const DEFAULT_MAX_QUEUE_SIZE: usize = 1024;
/// Beyond this the "batch" stops being a latency trade-off and becomes a stall.
const MAX_QUEUE_DELAY_MS: f64 = 1000.0;
/// Default of `inline_max_us`: short enough that a run on the async runtime's
/// thread does not hold up the other requests it serves.
const DEFAULT_INLINE_MAX_US: f64 = 50.0;
/// Upper bound of `inline_max_us`: longer runs belong on inference threads.
const MAX_INLINE_MAX_US: f64 = 1000.0;

impl ModelSpec {
    /// Reads and validates `path` for the model called `name`.
    ///
    /// # Errors
    /// `ConfigError` naming the file and key of the first problem found.
    pub fn load(path: &Path, name: &str, overrides: ConfigOverrides) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, name, overrides)
    }

    /// Validates config text; `path` only labels errors.
    ///
    /// # Errors
    /// `ConfigError` naming the file and key of the first problem found.
    pub fn parse(
        text: &str,
        path: &Path,
        name: &str,
        overrides: ConfigOverrides,
    ) -> Result<Self, ConfigError> {
        let raw: RawModelConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            message,
        };
        if raw.platform != "onnx" {
            return Err(invalid(
                "platform",
                format!("\"{}\" is not supported; use \"onnx\"", raw.platform),
            ));
        }
        if raw.inputs.is_empty() {
            return Err(invalid("input", "declare at least one [[input]]".into()));
        }
        if raw.outputs.is_empty() {
            return Err(invalid("output", "declare at least one [[output]]".into()));
        }
        let batched_dims = raw.max_batch_size > 0;
        let inputs = validate_tensors(&raw.inputs, "input", batched_dims, &invalid)?;
        let outputs = validate_tensors(&raw.outputs, "output", batched_dims, &invalid)?;
        if raw.outputs.iter().any(|t| t.allow_nan.is_some()) {
            return Err(invalid(
                "output[].allow_nan",
                "allow_nan applies to inputs only".into(),
            ));
        }

        let mut max_queue_size = DEFAULT_MAX_QUEUE_SIZE;
        let mut dynamic_batching = None;
        if let Some(db) = &raw.dynamic_batching {
            if !(0.0..=MAX_QUEUE_DELAY_MS).contains(&db.max_queue_delay_ms) {
                return Err(invalid(
                    "dynamic_batching.max_queue_delay_ms",
                    format!(
                        "{} is out of range; use 0 to {MAX_QUEUE_DELAY_MS} ms",
                        db.max_queue_delay_ms
                    ),
                ));
            }
            if !batched_dims {
                return Err(invalid(
                    "dynamic_batching",
                    "needs max_batch_size > 0 (a model without a batch dimension cannot be batched)"
                        .into(),
                ));
            }
            if let Some(size) = db.max_queue_size {
                if size == 0 {
                    return Err(invalid(
                        "dynamic_batching.max_queue_size",
                        "must be at least 1".into(),
                    ));
                }
                max_queue_size = size;
            }
            if !overrides.disable_batching {
                dynamic_batching = Some(DynamicBatching {
                    max_queue_delay: Duration::from_secs_f64(db.max_queue_delay_ms / 1000.0),
                    wait_when_idle: db.wait_when_idle,
                });
            }
        }
        let instances = match raw.instances {
            Some(0) => return Err(invalid("instances", "must be at least 1".into())),
            Some(n) => n as usize,
            None => overrides.default_instances.max(1),
        };
        let inline_max_us = raw.inline_max_us.unwrap_or(DEFAULT_INLINE_MAX_US);
        if !(0.0..=MAX_INLINE_MAX_US).contains(&inline_max_us) {
            return Err(invalid(
                "inline_max_us",
                format!("{inline_max_us} is out of range; use 0 (never) to {MAX_INLINE_MAX_US} µs"),
            ));
        }
        let warmup_batch_size = match raw.warmup.batch_size {
            Some(0) => return Err(invalid("warmup.batch_size", "must be at least 1".into())),
            Some(n) if batched_dims && n > raw.max_batch_size => {
                return Err(invalid(
                    "warmup.batch_size",
                    format!("{n} exceeds max_batch_size {}", raw.max_batch_size),
                ));
            }
            Some(n) => n as usize,
            None => 1,
        };
        Ok(ModelSpec {
            name: name.to_owned(),
            platform: raw.platform,
            inputs,
            outputs,
            max_batch_size: raw.max_batch_size as usize,
            batched_dims,
            dynamic_batching,
            max_queue_size,
            instances,
            inline_max: Duration::from_secs_f64(inline_max_us / 1e6),
            warmup_iterations: raw.warmup.iterations,
            warmup_batch_size,
            default_version: raw.default_version,
        })
    }

    /// The declared input called `name`.
    pub fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|t| t.name == name)
    }

    /// The declared output called `name`.
    pub fn output(&self, name: &str) -> Option<&TensorSpec> {
        self.outputs.iter().find(|t| t.name == name)
    }
}

fn validate_tensors(
    raw: &[RawTensor],
    kind: &str,
    batched_dims: bool,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Vec<TensorSpec>, ConfigError> {
    let mut out: Vec<TensorSpec> = Vec::with_capacity(raw.len());
    for (i, t) in raw.iter().enumerate() {
        let key = |field: &str| format!("{kind}[{i}].{field}");
        if t.name.is_empty() {
            return Err(invalid(&key("name"), "must not be empty".into()));
        }
        if out.iter().any(|o| o.name == t.name) {
            return Err(invalid(
                &key("name"),
                format!("duplicate {kind} name \"{}\"", t.name),
            ));
        }
        let datatype: DataType =
            t.datatype
                .parse()
                .map_err(|e: crate::datatype::UnknownDataType| {
                    invalid(&key("datatype"), e.to_string())
                })?;
        if !datatype.is_supported() {
            return Err(invalid(
                &key("datatype"),
                format!("{datatype} tensors are not supported by the ONNX runtime here"),
            ));
        }
        if t.shape.is_empty() {
            return Err(invalid(
                &key("shape"),
                "must have at least one dimension".into(),
            ));
        }
        if let Some(d) = t.shape.iter().find(|d| **d == 0 || **d < -1) {
            return Err(invalid(
                &key("shape"),
                format!("dimension {d} is invalid; use a positive size or -1 for variable"),
            ));
        }
        if batched_dims && t.shape[0] != -1 {
            return Err(invalid(
                &key("shape"),
                "with max_batch_size > 0 the first dimension is the batch and must be -1".into(),
            ));
        }
        out.push(TensorSpec {
            name: t.name.clone(),
            datatype,
            shape: t.shape.clone(),
            allow_nan: t.allow_nan.unwrap_or(false),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
platform = "onnx"
max_batch_size = 64
[dynamic_batching]
max_queue_delay_ms = 2
max_queue_size = 100
[[input]]
name = "features"
datatype = "FP32"
shape = [-1, 15]
[[output]]
name = "label"
datatype = "INT64"
shape = [-1]
"#;

    fn overrides() -> ConfigOverrides {
        ConfigOverrides {
            disable_batching: false,
            default_instances: 2,
        }
    }

    fn parse(text: &str) -> Result<ModelSpec, ConfigError> {
        ModelSpec::parse(text, Path::new("m/config.toml"), "m", overrides())
    }

    #[test]
    fn good_config_validates() {
        let spec = parse(GOOD).unwrap();
        assert_eq!(spec.max_batch_size, 64);
        let delay = spec.dynamic_batching.map(|b| b.max_queue_delay);
        assert_eq!(delay, Some(Duration::from_millis(2)));
        assert_eq!(spec.max_queue_size, 100);
        assert_eq!(spec.inputs[0].datatype, DataType::F32);
        assert!(!spec.inputs[0].allow_nan);
        assert_eq!(spec.instances, 2);
        assert_eq!(spec.inline_max, Duration::from_micros(50));
        assert_eq!(spec.default_version, None);
        let pinned = parse(&format!("default_version = 1\n{GOOD}")).unwrap();
        assert_eq!(pinned.default_version, Some(1));
        let err = parse(&format!("default_version = -1\n{GOOD}")).unwrap_err();
        assert!(err.to_string().contains("default_version"), "{err}");
    }

    #[test]
    fn unknown_key_names_the_file_and_key() {
        let err = parse(&format!("{GOOD}\nmax_batch = 3\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("m/config.toml"), "{err}");
        assert!(err.contains("max_batch"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (GOOD.replace("FP32", "FLOAT"), "input[0].datatype"),
            (GOOD.replace("[-1, 15]", "[8, 15]"), "input[0].shape"),
            (GOOD.replace("\"onnx\"", "\"tensorflow\""), "platform"),
            (GOOD.replace("= 2\n", "= 5000\n"), "max_queue_delay_ms"),
            (format!("inline_max_us = -1\n{GOOD}"), "inline_max_us"),
            (
                GOOD.replace("\"label\"", "\"features\"")
                    .replace("INT64", "FP32"),
                "",
            ),
        ];
        for (text, key) in &cases[..5] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{err} should name {key}");
        }
        // Same name for an input and an output is fine (different namespaces).
        assert!(parse(&cases[5].0).is_ok());
    }

    #[test]
    fn disable_batching_stops_gathering_only() {
        let spec = ModelSpec::parse(
            GOOD,
            Path::new("c.toml"),
            "m",
            ConfigOverrides {
                disable_batching: true,
                default_instances: 1,
            },
        )
        .unwrap();
        assert_eq!(spec.max_batch_size, 64, "requests may still carry 64 rows");
        assert!(spec.dynamic_batching.is_none());
    }
}
