//! The inference engine both fronts call: the served models and versions, their
//! load and warm-up state, readiness, metadata, and `infer`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::batcher::Batcher;
use crate::config::ModelSpec;
use crate::datatype::TensorData;
use crate::error::InferError;
use crate::metrics::{Metrics, ModelMetrics};
use crate::repository::RepositoryModel;
use crate::request::{InferRequest, InferResponse, NamedOutput, check_inputs, select_outputs};
use crate::runtime::{OnnxModel, OutputTensor};

/// Load state of one version.
enum VersionState {
    /// Loaded and warmed up.
    Ready(Batcher),
    /// Could not be loaded or warmed up.
    Failed(String),
}

/// One version of a model.
struct Version {
    number: u64,
    label: String,
    path: PathBuf,
    state: OnceLock<VersionState>,
}

/// One model with all its versions (ascending).
struct Model {
    spec: Arc<ModelSpec>,
    versions: Vec<Version>,
}

/// Metadata of one model, as the V2 metadata calls return it.
#[derive(Debug, Clone)]
pub struct ModelMetadata {
    /// Model name.
    pub name: String,
    /// Served versions, ascending.
    pub versions: Vec<String>,
    /// Runtime platform, e.g. `onnx`.
    pub platform: String,
    /// The validated config (inputs and outputs).
    pub spec: Arc<ModelSpec>,
}

/// Served models and their state; shared by the gRPC and REST fronts.
pub struct Engine {
    models: BTreeMap<String, Model>,
    metrics: Arc<Metrics>,
}

impl Engine {
    /// An engine for the scanned repository; nothing is loaded yet.
    pub fn new(repository: BTreeMap<String, RepositoryModel>) -> Engine {
        let models = repository
            .into_iter()
            .map(|(name, m)| {
                let versions = m
                    .versions
                    .into_iter()
                    .map(|(number, path)| Version {
                        number,
                        label: number.to_string(),
                        path,
                        state: OnceLock::new(),
                    })
                    .collect();
                (
                    name,
                    Model {
                        spec: Arc::new(m.spec),
                        versions,
                    },
                )
            })
            .collect::<BTreeMap<_, _>>();
        let metrics = Arc::new(Metrics::new(models.keys().map(String::as_str)));
        Engine { models, metrics }
    }

    /// The counters `/metrics` shows.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Loads, warms up and starts every version, one after another; blocking, so
    /// run it on a blocking thread. A version that fails stays failed (and the
    /// server not ready); the error is logged and reported by ModelReady.
    pub fn load_all(&self) {
        for model in self.models.values() {
            for version in &model.versions {
                let started = Instant::now();
                let counters = self.metrics.model(&model.spec.name).cloned();
                let state = match load_version(&model.spec, version, counters) {
                    Ok(batcher) => {
                        tracing::info!(
                            model = %model.spec.name,
                            version = %version.label,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            warmup_iterations = model.spec.warmup_iterations,
                            "model version loaded and warmed up"
                        );
                        VersionState::Ready(batcher)
                    }
                    Err(message) => {
                        tracing::error!(model = %model.spec.name, version = %version.label, %message, "model version failed to load");
                        VersionState::Failed(message)
                    }
                };
                let _ = version.state.set(state);
            }
        }
    }

    /// True when every version of every model is loaded and warmed up.
    pub fn is_ready(&self) -> bool {
        self.models.values().all(|m| {
            m.versions
                .iter()
                .all(|v| matches!(v.state.get(), Some(VersionState::Ready(_))))
        })
    }

    /// Names of the served models.
    pub fn model_names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    fn model(&self, name: &str) -> Result<&Model, InferError> {
        self.models
            .get(name)
            .ok_or_else(|| InferError::ModelNotFound {
                model: name.to_owned(),
                available: format!(
                    "models: {}",
                    self.models
                        .keys()
                        .map(|k| format!("\"{k}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }

    fn version<'a>(
        &self,
        model: &'a Model,
        version: Option<&str>,
    ) -> Result<&'a Version, InferError> {
        let found = match version.filter(|v| !v.is_empty()) {
            None => model.versions.last(),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .and_then(|n| model.versions.iter().find(|x| x.number == n)),
        };
        found.ok_or_else(|| InferError::VersionNotFound {
            model: model.spec.name.clone(),
            version: version.unwrap_or_default().to_owned(),
            available: model
                .versions
                .iter()
                .map(|v| v.label.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// A V2 JSON request body for `model` with one all-zero row per input, for
    /// the "try it" line printed at start; None for an unknown model.
    pub fn example_request(&self, model: &str) -> Option<String> {
        let spec = &self.models.get(model)?.spec;
        let inputs: Vec<String> = spec
            .inputs
            .iter()
            .map(|t| {
                let shape: Vec<i64> = t.shape.iter().map(|d| (*d).max(1)).collect();
                let count: i64 = shape.iter().product();
                let zero = if t.datatype == crate::datatype::DataType::Bool {
                    "false"
                } else {
                    "0"
                };
                let data = vec![zero; usize::try_from(count).unwrap_or(1)].join(",");
                format!(
                    r#"{{"name":"{}","datatype":"{}","shape":{shape:?},"data":[{data}]}}"#,
                    t.name, t.datatype
                )
            })
            .collect();
        Some(format!(r#"{{"inputs":[{}]}}"#, inputs.join(",")))
    }

    /// Whether one model version (None: the highest) is ready.
    ///
    /// # Errors
    /// `ModelNotFound` / `VersionNotFound` for names that are not served.
    pub fn model_ready(&self, model: &str, version: Option<&str>) -> Result<bool, InferError> {
        let m = self.model(model)?;
        let v = self.version(m, version)?;
        Ok(matches!(v.state.get(), Some(VersionState::Ready(_))))
    }

    /// Metadata of a model; with a version, that version must exist.
    ///
    /// # Errors
    /// `ModelNotFound` / `VersionNotFound` for names that are not served.
    pub fn metadata(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<ModelMetadata, InferError> {
        let m = self.model(model)?;
        let versions = match version.filter(|v| !v.is_empty()) {
            Some(_) => vec![self.version(m, version)?.label.clone()],
            None => m.versions.iter().map(|v| v.label.clone()).collect(),
        };
        Ok(ModelMetadata {
            name: m.spec.name.clone(),
            versions,
            platform: m.spec.platform.clone(),
            spec: m.spec.clone(),
        })
    }

    /// Runs one inference. The outputs come in the order asked for, or as
    /// declared when none was named; `deadline` bounds the whole wait.
    ///
    /// # Errors
    /// Any `InferError`; see its variants.
    pub async fn infer(
        &self,
        request: InferRequest,
        deadline: Option<Duration>,
    ) -> Result<InferResponse, InferError> {
        let model = self.model(&request.model)?;
        let version = self.version(model, request.version.as_deref())?;
        let batcher = match version.state.get() {
            Some(VersionState::Ready(b)) => b,
            Some(VersionState::Failed(e)) => {
                return Err(InferError::ModelNotReady {
                    model: model.spec.name.clone(),
                    version: version.label.clone(),
                    reason: format!("failed to load: {e}"),
                });
            }
            None => {
                return Err(InferError::ModelNotReady {
                    model: model.spec.name.clone(),
                    version: version.label.clone(),
                    reason: "still loading".into(),
                });
            }
        };
        let selected = select_outputs(&model.spec, &request.outputs)?;
        let checked = check_inputs(&model.spec, request.inputs)?;
        let started = Instant::now();
        let run = batcher.infer(checked.tensors, checked.rows);
        let mut outputs =
            match deadline {
                Some(d) => tokio::time::timeout(d, run).await.map_err(|_| {
                    InferError::DeadlineExceeded {
                        waited_ms: started.elapsed().as_millis() as u64,
                    }
                })??,
                None => run.await?,
            };
        let mut outputs: Vec<Option<OutputTensor>> = outputs.drain(..).map(Some).collect();
        let named = selected
            .iter()
            .map(|(idx, spec)| {
                let tensor = outputs
                    .get_mut(*idx)
                    .and_then(Option::take)
                    .ok_or_else(|| InferError::Inference {
                        model: model.spec.name.clone(),
                        version: version.label.clone(),
                        message: format!("output \"{}\" missing from the run", spec.name),
                    })?;
                Ok(NamedOutput {
                    name: spec.name.clone(),
                    tensor,
                })
            })
            .collect::<Result<_, InferError>>()?;
        Ok(InferResponse {
            model: model.spec.name.clone(),
            version: version.label.clone(),
            id: request.id,
            outputs: named,
        })
    }
}

fn load_version(
    spec: &Arc<ModelSpec>,
    version: &Version,
    metrics: Option<Arc<ModelMetrics>>,
) -> Result<Batcher, String> {
    let model = OnnxModel::load(&version.path, spec).map_err(|e| e.to_string())?;
    let warm_per_row = warm_up(spec, &model)?;
    Batcher::start(
        spec.clone(),
        version.label.clone(),
        Arc::new(model),
        metrics,
        warm_per_row,
    )
    .map_err(|e| format!("cannot start inference threads: {e}"))
}

/// Runs the configured warm-up inferences on zero-filled inputs, so the first
/// real request does not pay for lazy initialisation, and so readiness means
/// "has answered an inference". Returns the fastest run's time per row (None
/// when no run was configured).
fn warm_up(spec: &ModelSpec, model: &OnnxModel) -> Result<Option<Duration>, String> {
    let inputs: Vec<(Vec<usize>, TensorData)> = spec
        .inputs
        .iter()
        .map(|t| {
            let shape: Vec<usize> = t
                .shape
                .iter()
                .enumerate()
                .map(|(i, d)| match usize::try_from(*d) {
                    Ok(n) => n,
                    Err(_) if i == 0 && spec.batched_dims => spec.warmup_batch_size,
                    Err(_) => 1,
                })
                .collect();
            let count = shape.iter().product();
            let zeros = vec![0u8; count * t.datatype.element_size().unwrap_or(1)];
            let data = TensorData::from_le_bytes(t.datatype, &zeros, count)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("input {}: {} not supported", t.name, t.datatype))?;
            Ok((shape, data))
        })
        .collect::<Result<_, String>>()?;
    let rows: u32 = if spec.batched_dims {
        u32::try_from(spec.warmup_batch_size).unwrap_or(u32::MAX)
    } else {
        1
    };
    let mut fastest = None;
    for _ in 0..spec.warmup_iterations {
        let started = Instant::now();
        let outputs = model
            .run(spec, &inputs)
            .map_err(|e| format!("warm-up inference failed: {e}"))?;
        let took = started.elapsed();
        fastest = Some(fastest.map_or(took, |f: Duration| f.min(took)));
        if outputs.len() != spec.outputs.len() {
            return Err("warm-up inference returned the wrong number of outputs".into());
        }
    }
    Ok(fastest.map(|f| f / rows.max(1)))
}
