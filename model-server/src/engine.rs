//! The inference engine both fronts call: the served models and versions, their
//! load and warm-up state, readiness, metadata, and `infer`.
//!
//! The set of models is fixed at start; each model's versions can change while
//! it serves (the live repository adds and removes them). Every request takes
//! an `Arc` of its version from a lock-free snapshot, so a removed version stops
//! taking new requests at once and its batcher (threads, ONNX graph) is dropped
//! when the last request holding it has its answer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::batcher::Batcher;
use crate::config::ModelSpec;
use crate::datatype::TensorData;
use crate::error::InferError;
use crate::metrics::{Metrics, ModelMetrics};
use crate::repository::{FileStamp, RepositoryModel, VersionFile};
use crate::request::{InferRequest, InferResponse, NamedOutput, check_inputs, select_outputs};
use crate::runtime::{OnnxModel, OutputTensor};

/// Load state of one version (unset while it loads).
enum VersionState {
    /// Loaded and warmed up.
    Ready(Batcher),
    /// Could not be loaded or warmed up.
    Failed(String),
}

/// One version of a model.
struct Version {
    model: String,
    number: u64,
    label: String,
    file: VersionFile,
    state: OnceLock<VersionState>,
}

impl Version {
    fn new(model: &str, number: u64, file: VersionFile) -> Version {
        Version {
            model: model.to_owned(),
            number,
            label: number.to_string(),
            file,
            state: OnceLock::new(),
        }
    }

    fn is_ready(&self) -> bool {
        matches!(self.state.get(), Some(VersionState::Ready(_)))
    }

    fn status(&self) -> VersionStatus {
        let (state, reason) = match self.state.get() {
            None => (LoadState::Loading, String::new()),
            Some(VersionState::Ready(_)) => (LoadState::Ready, String::new()),
            Some(VersionState::Failed(e)) => (LoadState::Failed, e.clone()),
        };
        VersionStatus {
            version: self.number,
            state,
            reason,
            stamp: self.file.stamp,
        }
    }
}

impl Drop for Version {
    fn drop(&mut self) {
        // The last request holding a removed version has its answer: its
        // batcher goes with it (the threads finish what is queued, then exit).
        if self.is_ready() {
            tracing::info!(model = %self.model, version = %self.label, "model version unloaded");
        }
    }
}

/// A version's load state, as the repository index names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadState {
    /// Being loaded and warmed up; not served yet.
    Loading,
    /// Served.
    Ready,
    /// Could not be loaded; never served.
    Failed,
}

impl LoadState {
    /// The name the repository index and the metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            LoadState::Loading => "LOADING",
            LoadState::Ready => "READY",
            LoadState::Failed => "FAILED",
        }
    }
}

/// Where one version stands.
#[derive(Debug, Clone)]
pub struct VersionStatus {
    /// The version number.
    pub version: u64,
    /// Its state.
    pub state: LoadState,
    /// Why it failed (empty otherwise).
    pub reason: String,
    /// The model file's size and mtime when it was loaded.
    pub stamp: FileStamp,
}

/// A model's versions by number; replaced whole on each change.
type Versions = BTreeMap<u64, Arc<Version>>;

/// One model with its current versions.
struct Model {
    spec: Arc<ModelSpec>,
    versions: ArcSwap<Versions>,
    /// False after an unload call, until a load call.
    serving: AtomicBool,
}

/// Metadata of one model, as the V2 metadata calls return it.
#[derive(Debug, Clone)]
pub struct ModelMetadata {
    /// Model name.
    pub name: String,
    /// Served (ready) versions, ascending; with a version asked for, that one.
    pub versions: Vec<String>,
    /// Runtime platform, e.g. `onnx`.
    pub platform: String,
    /// The validated config (inputs and outputs).
    pub spec: Arc<ModelSpec>,
    /// The declared `default_version`, else the version unversioned calls
    /// get now (None: none is served).
    pub default_version: Option<String>,
    /// Every version the server knows of (with a version asked for, that
    /// one), loading and failed ones included.
    pub states: Vec<VersionStatus>,
}

/// Served models and their state; shared by the gRPC and REST fronts.
pub struct Engine {
    models: BTreeMap<String, Model>,
    metrics: Arc<Metrics>,
    /// Set once the versions found at start have all been tried.
    started: AtomicBool,
}

impl Engine {
    /// An engine for the scanned repository; nothing is loaded yet.
    pub fn new(repository: BTreeMap<String, RepositoryModel>) -> Engine {
        let metrics = Arc::new(Metrics::new(repository.keys().map(String::as_str)));
        let models = repository
            .into_iter()
            .map(|(name, m)| {
                let versions: Versions = m
                    .versions
                    .into_iter()
                    .map(|(number, file)| {
                        metrics.set_version_state(
                            &name,
                            &number.to_string(),
                            Some(LoadState::Loading.as_str()),
                        );
                        (number, Arc::new(Version::new(&name, number, file)))
                    })
                    .collect();
                let model = Model {
                    spec: Arc::new(m.spec),
                    versions: ArcSwap::from_pointee(versions),
                    serving: AtomicBool::new(true),
                };
                (name, model)
            })
            .collect::<BTreeMap<_, _>>();
        Engine {
            models,
            metrics,
            started: AtomicBool::new(false),
        }
    }

    /// The counters `/metrics` shows.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Loads, warms up and starts every version found at start, one after
    /// another; blocking, so run it on a blocking thread. A version that
    /// fails stays failed (reported by the index, the metadata and
    /// ModelReady) until its file changes.
    pub fn load_all(&self) {
        for (name, model) in &self.models {
            for version in model.versions.load_full().values() {
                if version.state.get().is_none() {
                    self.load(name, model, version);
                }
            }
        }
        self.started.store(true, Ordering::Release);
    }

    /// Whether the versions found at start have all been tried.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Loads `file` as `number` of `model` (replacing a failed or changed
    /// entry of that number), warms it up and serves it; blocking. The version
    /// shows as loading meanwhile and is served only once warm.
    ///
    /// # Errors
    /// `ModelNotFound` for a model not served; `LoadFailed` with the reason
    /// when the file cannot be loaded or warmed up (the version is then
    /// reported failed).
    pub fn load_version(
        &self,
        model: &str,
        number: u64,
        file: VersionFile,
    ) -> Result<(), InferError> {
        let m = self.model(model)?;
        let version = Arc::new(Version::new(model, number, file));
        m.versions.rcu(|current| {
            let mut next = Versions::clone(current);
            next.insert(number, Arc::clone(&version));
            next
        });
        self.load(model, m, &version);
        match version.state.get() {
            Some(VersionState::Failed(reason)) => Err(InferError::LoadFailed {
                model: model.to_owned(),
                detail: format!("version {number}: {reason}"),
            }),
            _ => Ok(()),
        }
    }

    fn load(&self, name: &str, model: &Model, version: &Version) {
        let started = Instant::now();
        let counters = self.metrics.model(name).cloned();
        self.metrics
            .set_version_state(name, &version.label, Some(LoadState::Loading.as_str()));
        let state = match load_version(&model.spec, version, counters) {
            Ok(batcher) => {
                tracing::info!(
                    model = %name,
                    version = %version.label,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    warmup_iterations = model.spec.warmup_iterations,
                    "model version loaded and warmed up"
                );
                VersionState::Ready(batcher)
            }
            Err(message) => {
                tracing::error!(model = %name, version = %version.label, %message, "model version failed to load; it is not served, and retried when its model.onnx changes");
                if let Some(m) = self.metrics.model(name) {
                    m.load_failures.inc();
                }
                VersionState::Failed(message)
            }
        };
        let ready = matches!(state, VersionState::Ready(_));
        let _ = version.state.set(state);
        let state = if ready {
            LoadState::Ready
        } else {
            LoadState::Failed
        };
        self.metrics
            .set_version_state(name, &version.label, Some(state.as_str()));
    }

    /// Stops serving `number` of `model` at once. Requests already holding it
    /// finish; its batcher is dropped after the last one. False when there was
    /// no such version.
    pub fn remove_version(&self, model: &str, number: u64) -> bool {
        let Some(m) = self.models.get(model) else {
            return false;
        };
        let mut removed = false;
        m.versions.rcu(|current| {
            let mut next = Versions::clone(current);
            removed = next.remove(&number).is_some();
            next
        });
        if removed {
            self.metrics
                .set_version_state(model, &number.to_string(), None);
        }
        removed
    }

    /// Where each version of `model` stands (None: no such model).
    pub fn version_statuses(&self, model: &str) -> Option<Vec<VersionStatus>> {
        let m = self.models.get(model)?;
        Some(m.versions.load().values().map(|v| v.status()).collect())
    }

    /// Marks `model` as served or not (an unload call); an unserved model does
    /// not count for readiness. Its versions are removed by the caller.
    pub fn set_serving(&self, model: &str, serving: bool) {
        if let Some(m) = self.models.get(model) {
            m.serving.store(serving, Ordering::Release);
        }
    }

    /// Whether `model` is served (not unloaded); false for unknown names.
    pub fn is_serving(&self, model: &str) -> bool {
        self.models
            .get(model)
            .is_some_and(|m| m.serving.load(Ordering::Acquire))
    }

    /// True once the versions found at start have been tried and every
    /// served model's default version is ready: its `default_version`, or
    /// (without one) any version, since unversioned calls then get the
    /// highest ready one. Versions loading or failing beside the default do
    /// not make the server unready; an unloaded model does not count.
    pub fn is_ready(&self) -> bool {
        self.started()
            && self.models.values().all(|m| {
                if !m.serving.load(Ordering::Acquire) {
                    return true;
                }
                let versions = m.versions.load();
                match m.spec.default_version {
                    Some(n) => versions.get(&n).is_some_and(|v| v.is_ready()),
                    None => versions.values().any(|v| v.is_ready()),
                }
            })
    }

    /// Names of the served models.
    pub fn model_names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    fn model(&self, name: &str) -> Result<&Model, InferError> {
        self.models
            .get(name)
            .ok_or_else(|| InferError::model_not_found(name, self.models.keys()))
    }

    /// The version a call names, or (none named) the default one: the
    /// declared `default_version`, else the highest ready version (else the
    /// highest, whose state then says why it cannot answer).
    fn version(&self, model: &Model, version: Option<&str>) -> Result<Arc<Version>, InferError> {
        let versions = model.versions.load();
        let available = || {
            let listed: Vec<&str> = versions.values().map(|v| v.label.as_str()).collect();
            if listed.is_empty() {
                "none".to_owned()
            } else {
                listed.join(", ")
            }
        };
        let Some(asked) = version.filter(|v| !v.is_empty()) else {
            if !model.serving.load(Ordering::Acquire) {
                return Err(InferError::ModelNotReady {
                    model: model.spec.name.clone(),
                    version: "(any)".into(),
                    reason: "it was unloaded; load it with POST /v2/repository/models/{name}/load"
                        .into(),
                });
            }
            if let Some(n) = model.spec.default_version {
                return versions.get(&n).cloned().ok_or_else(|| InferError::ModelNotReady {
                    model: model.spec.name.clone(),
                    version: n.to_string(),
                    reason: format!(
                        "it is the default_version in config.toml but is not in the repository; versions available: {}",
                        available()
                    ),
                });
            }
            return versions
                .values()
                .rev()
                .find(|v| v.is_ready())
                .or_else(|| versions.values().next_back())
                .cloned()
                .ok_or_else(|| InferError::ModelNotReady {
                    model: model.spec.name.clone(),
                    version: "(any)".into(),
                    reason: "the repository holds no version of it".into(),
                });
        };
        asked
            .parse::<u64>()
            .ok()
            .and_then(|n| versions.get(&n))
            .cloned()
            .ok_or_else(|| InferError::VersionNotFound {
                model: model.spec.name.clone(),
                version: asked.to_owned(),
                available: available(),
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

    /// Whether one model version (None: the default one) is ready.
    ///
    /// # Errors
    /// `ModelNotFound` / `VersionNotFound` for names that are not served.
    pub fn model_ready(&self, model: &str, version: Option<&str>) -> Result<bool, InferError> {
        let m = self.model(model)?;
        match self.version(m, version) {
            Ok(v) => Ok(v.is_ready()),
            // No default version to serve: not ready, rather than an error.
            Err(InferError::ModelNotReady { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Metadata of a model; with a version, that version must exist (in any
    /// state: its metadata says which).
    ///
    /// # Errors
    /// `ModelNotFound` / `VersionNotFound` for names that are not served.
    pub fn metadata(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<ModelMetadata, InferError> {
        let m = self.model(model)?;
        // The declared default even while it is not ready (the index says
        // why); without one, the version unversioned calls get now.
        let default_version = match m.spec.default_version {
            Some(n) => Some(n.to_string()),
            None => self
                .version(m, None)
                .ok()
                .filter(|v| v.is_ready())
                .map(|v| v.label.clone()),
        };
        let (versions, states) = match version.filter(|v| !v.is_empty()) {
            Some(_) => {
                let v = self.version(m, version)?;
                (vec![v.label.clone()], vec![v.status()])
            }
            None => {
                let all = m.versions.load();
                let ready = all
                    .values()
                    .filter(|v| v.is_ready())
                    .map(|v| v.label.clone())
                    .collect();
                (ready, all.values().map(|v| v.status()).collect())
            }
        };
        Ok(ModelMetadata {
            name: m.spec.name.clone(),
            versions,
            platform: m.spec.platform.clone(),
            spec: m.spec.clone(),
            default_version,
            states,
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
        // Held until the answer is back: a version removed meanwhile lives
        // (and answers) until then.
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
    let model = OnnxModel::load(&version.file.path, spec).map_err(|e| e.to_string())?;
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
