//! Runs one ONNX model version: graphs holding a tree ensemble on the native
//! tree runtime (`crate::native`), everything else with tract (pure Rust).
//! Loads and optimizes the graph, checks it against the declared config, and
//! executes batches.

use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;

use crate::config::{ModelSpec, TensorSpec};
use crate::datatype::{DataType, TensorData};
use crate::native::{self, NativeGraph};

/// An optimized, runnable model version.
pub struct OnnxModel {
    engine: Runner,
    /// For each graph input, the index of the matching `spec.inputs` entry.
    input_from_spec: Vec<usize>,
    /// For each `spec.outputs` entry, the index of the matching graph output.
    output_index: Vec<usize>,
}

/// What executes the graph.
enum Runner {
    Tract(Arc<TypedRunnableModel>),
    Native(NativeGraph),
}

/// Why a model version could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// tract could not read, type or optimize the graph.
    #[error("cannot load ONNX model {path}: {message}")]
    Tract {
        /// The model file.
        path: String,
        /// tract's error chain.
        message: String,
    },
    /// The native tree runtime cannot run the graph.
    #[error("cannot load ONNX model {path} on the native tree runtime: {message}")]
    Native {
        /// The model file.
        path: String,
        /// What it cannot run, naming the node and operator or attribute.
        message: String,
    },
    /// The graph and config.toml disagree.
    #[error("model {path} does not match its config.toml: {message}")]
    Mismatch {
        /// The model file.
        path: String,
        /// What differs.
        message: String,
    },
}

/// A tensor a model produced, with its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Elements, row-major.
    pub data: TensorData,
}

fn datum_type(dt: DataType) -> Option<DatumType> {
    Some(match dt {
        DataType::Bool => DatumType::Bool,
        DataType::U8 => DatumType::U8,
        DataType::U16 => DatumType::U16,
        DataType::U32 => DatumType::U32,
        DataType::U64 => DatumType::U64,
        DataType::I8 => DatumType::I8,
        DataType::I16 => DatumType::I16,
        DataType::I32 => DatumType::I32,
        DataType::I64 => DatumType::I64,
        DataType::F32 => DatumType::F32,
        DataType::F64 => DatumType::F64,
        DataType::F16 | DataType::Bytes => return None,
    })
}

impl OnnxModel {
    /// Loads, checks against `spec` and optimizes the model at `path`.
    ///
    /// # Errors
    /// `LoadError` when tract cannot load the graph or the graph's input/output
    /// names or types differ from `spec`.
    pub fn load(path: &Path, spec: &ModelSpec) -> Result<Self, LoadError> {
        let shown = path.display().to_string();
        let tract_err = |e: TractError| LoadError::Tract {
            path: shown.clone(),
            message: format!("{e:#}"),
        };
        let mismatch = |message: String| LoadError::Mismatch {
            path: shown.clone(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| LoadError::Tract {
            path: shown.clone(),
            message: format!("cannot read the file: {e}"),
        })?;
        if let Some(model) = native::tree_model(&bytes) {
            return Self::load_native(model, spec, &shown);
        }
        let mut model = tract_onnx::onnx()
            .model_for_read(&mut bytes.as_slice())
            .map_err(tract_err)?;

        let input_names: Vec<String> = model
            .input_outlets()
            .map_err(tract_err)?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let input_from_spec = inputs_from_spec(spec, &input_names).map_err(mismatch)?;
        // Pin each input's element type and rank from the config, keeping the
        // batch (and any -1) dimension symbolic, so the graph is typed once here.
        for (graph_idx, spec_idx) in input_from_spec.iter().enumerate() {
            let t = &spec.inputs[*spec_idx];
            let dt = datum_type(t.datatype).ok_or_else(|| {
                mismatch(format!(
                    "input \"{}\": {} is not supported",
                    t.name, t.datatype
                ))
            })?;
            let dims: Vec<TDim> = t
                .shape
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    if *d < 0 {
                        model.symbols.sym(&format!("{}_d{i}", t.name)).into()
                    } else {
                        TDim::from(*d)
                    }
                })
                .collect();
            model
                .set_input_fact(graph_idx, InferenceFact::dt_shape(dt, dims))
                .map_err(tract_err)?;
        }

        let output_outlets = model.output_outlets().map_err(tract_err)?.to_vec();
        let output_names: Vec<String> = output_outlets
            .iter()
            .map(|o| {
                model
                    .outlet_label(*o)
                    .map(str::to_owned)
                    .unwrap_or_else(|| model.node(o.node).name.clone())
            })
            .collect();
        let output_index = outputs_in_graph(spec, &output_names).map_err(mismatch)?;

        let typed = model.into_optimized().map_err(tract_err)?;
        for (t, idx) in spec.outputs.iter().zip(&output_index) {
            let outlet = typed.output_outlets().map_err(tract_err)?[*idx];
            let fact = typed.outlet_fact(outlet).map_err(tract_err)?;
            if Some(fact.datum_type) != datum_type(t.datatype) {
                return Err(mismatch(format!(
                    "output \"{}\" is {:?} in the graph but {} in config.toml",
                    t.name, fact.datum_type, t.datatype
                )));
            }
        }
        let plan = typed.into_runnable().map_err(tract_err)?;
        Ok(OnnxModel {
            engine: Runner::Tract(plan),
            input_from_spec,
            output_index,
        })
    }

    /// A graph holding a tree ensemble, on the native tree runtime.
    fn load_native(
        model: native::ModelProto,
        spec: &ModelSpec,
        shown: &str,
    ) -> Result<Self, LoadError> {
        let graph = NativeGraph::from_model(model).map_err(|message| LoadError::Native {
            path: shown.to_owned(),
            message,
        })?;
        let mismatch = |message: String| LoadError::Mismatch {
            path: shown.to_owned(),
            message,
        };
        let same_type =
            |t: &TensorSpec, onnx: i32| onnx == 0 || onnx_type(t.datatype) == Some(onnx);
        let inputs: Vec<(&str, i32)> = graph.inputs().collect();
        let names: Vec<&str> = inputs.iter().map(|(n, _)| *n).collect();
        let input_from_spec = inputs_from_spec(spec, &names).map_err(mismatch)?;
        for ((name, elem), idx) in inputs.iter().zip(&input_from_spec) {
            if !same_type(&spec.inputs[*idx], *elem) {
                return Err(mismatch(format!(
                    "input \"{name}\" is {} in the graph but {} in config.toml",
                    native::ops::type_name(*elem),
                    spec.inputs[*idx].datatype
                )));
            }
        }
        let outputs: Vec<(&str, i32)> = graph.outputs().collect();
        let names: Vec<&str> = outputs.iter().map(|(n, _)| *n).collect();
        let output_index = outputs_in_graph(spec, &names).map_err(mismatch)?;
        for (t, idx) in spec.outputs.iter().zip(&output_index) {
            if !same_type(t, outputs[*idx].1) {
                return Err(mismatch(format!(
                    "output \"{}\" is {} in the graph but {} in config.toml",
                    t.name,
                    native::ops::type_name(outputs[*idx].1),
                    t.datatype
                )));
            }
        }
        tracing::info!(model = %spec.name, file = %shown, ensembles = %graph.summary(), "tree ensemble runs on the native tree runtime");
        Ok(OnnxModel {
            engine: Runner::Native(graph),
            input_from_spec,
            output_index,
        })
    }

    /// Runs the model on `inputs` (ordered as `spec.inputs`, each with its full
    /// shape) and returns the outputs ordered as `spec.outputs`.
    ///
    /// # Errors
    /// tract's error text when the run fails (e.g. a shape the graph rejects).
    pub fn run(
        &self,
        spec: &ModelSpec,
        inputs: &[(Vec<usize>, TensorData)],
    ) -> Result<Vec<OutputTensor>, String> {
        let plan = match &self.engine {
            Runner::Tract(plan) => plan,
            Runner::Native(graph) => return self.run_native(graph, spec, inputs),
        };
        let mut feed: TVec<TValue> = TVec::with_capacity(self.input_from_spec.len());
        for spec_idx in &self.input_from_spec {
            let (shape, data) = inputs
                .get(*spec_idx)
                .ok_or_else(|| format!("input {} missing", spec.inputs[*spec_idx].name))?;
            feed.push(to_tract(shape, data).map_err(|e| format!("{e:#}"))?.into());
        }
        let outputs = plan.run(feed).map_err(|e| format!("{e:#}"))?;
        spec.outputs
            .iter()
            .zip(&self.output_index)
            .map(|(t, idx)| {
                let value = outputs
                    .get(*idx)
                    .ok_or_else(|| format!("output {} missing from the run", t.name))?;
                from_tract(t, value)
            })
            .collect()
    }
}

impl OnnxModel {
    fn run_native(
        &self,
        graph: &NativeGraph,
        spec: &ModelSpec,
        inputs: &[(Vec<usize>, TensorData)],
    ) -> Result<Vec<OutputTensor>, String> {
        let feed = self
            .input_from_spec
            .iter()
            .map(|i| {
                inputs
                    .get(*i)
                    .cloned()
                    .ok_or_else(|| format!("input {} missing", spec.inputs[*i].name))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut outputs: Vec<Option<(Vec<usize>, TensorData)>> =
            graph.run(feed)?.into_iter().map(Some).collect();
        spec.outputs
            .iter()
            .zip(&self.output_index)
            .map(|(t, idx)| {
                let (shape, data) = outputs
                    .get_mut(*idx)
                    .and_then(Option::take)
                    .ok_or_else(|| format!("output {} missing from the run", t.name))?;
                Ok(OutputTensor { shape, data })
            })
            .collect()
    }
}

/// For each graph input (by name, in graph order), the index of the
/// `spec.inputs` entry of that name; every declared input must be there.
fn inputs_from_spec<N: AsRef<str> + std::fmt::Debug>(
    spec: &ModelSpec,
    graph: &[N],
) -> Result<Vec<usize>, String> {
    let order = graph
        .iter()
        .map(|name| {
            let name = name.as_ref();
            spec.inputs
                .iter()
                .position(|t| t.name == name)
                .ok_or_else(|| {
                    format!("the graph has input \"{name}\" which config.toml does not declare")
                })
        })
        .collect::<Result<Vec<_>, String>>()?;
    if graph.len() != spec.inputs.len() {
        return Err(format!(
            "config.toml declares inputs {:?} but the graph has {graph:?}",
            spec.inputs.iter().map(|t| &t.name).collect::<Vec<_>>()
        ));
    }
    Ok(order)
}

/// For each `spec.outputs` entry, the index of the graph output (by name, in
/// graph order) of that name.
fn outputs_in_graph<N: AsRef<str> + std::fmt::Debug>(
    spec: &ModelSpec,
    graph: &[N],
) -> Result<Vec<usize>, String> {
    spec.outputs
        .iter()
        .map(|t| {
            graph
                .iter()
                .position(|n| n.as_ref() == t.name)
                .ok_or_else(|| {
                    format!(
                        "config.toml declares output \"{}\" but the graph's outputs are {graph:?}",
                        t.name
                    )
                })
        })
        .collect()
}

/// The ONNX element type code of a V2 datatype.
fn onnx_type(dt: DataType) -> Option<i32> {
    use tract_onnx::pb::tensor_proto::DataType as Pb;
    Some(match dt {
        DataType::Bool => Pb::Bool,
        DataType::U8 => Pb::Uint8,
        DataType::U16 => Pb::Uint16,
        DataType::U32 => Pb::Uint32,
        DataType::U64 => Pb::Uint64,
        DataType::I8 => Pb::Int8,
        DataType::I16 => Pb::Int16,
        DataType::I32 => Pb::Int32,
        DataType::I64 => Pb::Int64,
        DataType::F16 => Pb::Float16,
        DataType::F32 => Pb::Float,
        DataType::F64 => Pb::Double,
        DataType::Bytes => return None,
    } as i32)
}

fn to_tract(shape: &[usize], data: &TensorData) -> TractResult<Tensor> {
    crate::datatype::each_variant!(data, v => Tensor::from_shape(shape, v))
}

fn from_tract(spec: &TensorSpec, value: &Tensor) -> Result<OutputTensor, String> {
    let shape = value.shape().to_vec();
    let wrong = |e: TractError| format!("output {}: {e:#}", spec.name);
    let view = value.try_as_plain_ram().map_err(wrong)?;
    macro_rules! take {
        ($t:ty, $var:ident) => {
            TensorData::$var(view.as_slice::<$t>().map_err(wrong)?.to_vec())
        };
    }
    let data = match value.datum_type() {
        DatumType::Bool => take!(bool, Bool),
        DatumType::U8 => take!(u8, U8),
        DatumType::U16 => take!(u16, U16),
        DatumType::U32 => take!(u32, U32),
        DatumType::U64 => take!(u64, U64),
        DatumType::I8 => take!(i8, I8),
        DatumType::I16 => take!(i16, I16),
        DatumType::I32 => take!(i32, I32),
        DatumType::I64 => take!(i64, I64),
        DatumType::F32 => take!(f32, F32),
        DatumType::F64 => take!(f64, F64),
        other => {
            return Err(format!(
                "output {} has unsupported type {other:?}",
                spec.name
            ));
        }
    };
    Ok(OutputTensor { shape, data })
}
