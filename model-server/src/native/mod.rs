//! A native runtime for the ONNX-ML graphs tree models export to: the
//! tree-ensemble operators (`TreeEnsembleClassifier`, `TreeEnsembleRegressor`,
//! `TreeEnsemble`) evaluated in O(depth) per tree and row ([`ensemble`]), and
//! the few glue operators exporters put around them (`Identity`, `Cast`,
//! `Scaler`). tract refuses boosted-tree classifiers and walks every leaf of
//! every tree, so graphs holding a tree ensemble run here instead; a graph
//! with any other operator is refused at load, naming it.

pub mod ensemble;
pub mod ops;

use std::collections::HashMap;

use prost::Message;
use tract_onnx::pb::{NodeProto, tensor_proto::DataType as PbType, type_proto};

use crate::datatype::TensorData;
use ensemble::Ensemble;

/// Domain of the ONNX-ML operators.
const ML: &str = "ai.onnx.ml";

pub use tract_onnx::pb::ModelProto;

/// The decoded ONNX file in `bytes` when it holds a tree-ensemble operator,
/// i.e. should run here rather than in tract; None otherwise, and for
/// anything unreadable (tract then reports what is wrong with it).
pub fn tree_model(bytes: &[u8]) -> Option<ModelProto> {
    let model = ModelProto::decode(bytes).ok()?;
    let trees = model.graph.as_ref().is_some_and(|g| {
        g.node
            .iter()
            .any(|n| n.domain == ML && n.op_type.starts_with("TreeEnsemble"))
    });
    trees.then_some(model)
}

/// One step of the graph, on value slots.
enum Step {
    Trees {
        input: usize,
        ensemble: Box<Ensemble>,
        /// Classifier: label slot, then scores slot; regressor: scores slot.
        label: Option<usize>,
        scores: Option<usize>,
    },
    Identity {
        from: usize,
        to: usize,
    },
    Cast {
        from: usize,
        to: usize,
        elem: i32,
    },
    Scaler {
        from: usize,
        to: usize,
        offset: Vec<f32>,
        scale: Vec<f32>,
    },
}

/// A loaded graph: its inputs and outputs by name, and its steps in order.
pub struct NativeGraph {
    inputs: Vec<(String, usize, i32)>,
    outputs: Vec<(String, usize, i32)>,
    steps: Vec<Step>,
    slots: usize,
    summary: String,
}

/// A value between steps: a shape and its elements.
type Value = (Vec<usize>, TensorData);

impl NativeGraph {
    /// Reads and checks the ONNX file in `bytes`.
    ///
    /// # Errors
    /// What cannot run here, naming the node and operator or attribute.
    pub fn load(bytes: &[u8]) -> Result<NativeGraph, String> {
        let model = ModelProto::decode(bytes).map_err(|e| format!("not an ONNX file: {e}"))?;
        Self::from_model(model)
    }

    /// Checks a decoded ONNX model (see [`NativeGraph::load`]).
    ///
    /// # Errors
    /// What cannot run here, naming the node and operator or attribute.
    pub fn from_model(model: ModelProto) -> Result<NativeGraph, String> {
        let graph = model.graph.ok_or("the ONNX file has no graph")?;
        if !graph.initializer.is_empty() {
            return Err(format!(
                "the graph has {} initializers (constant tensors); the native tree runtime runs graphs of tree ensembles and their glue operators only",
                graph.initializer.len()
            ));
        }
        let mut slots: HashMap<String, usize> = HashMap::new();
        let mut types: Vec<i32> = Vec::new();
        let elem_of = |v: &tract_onnx::pb::ValueInfoProto| match v
            .r#type
            .as_ref()
            .and_then(|t| t.value.as_ref())
        {
            Some(type_proto::Value::TensorType(t)) => t.elem_type,
            None => 0,
        };
        let mut inputs = Vec::new();
        for v in &graph.input {
            let slot = types.len();
            slots.insert(v.name.clone(), slot);
            types.push(elem_of(v));
            inputs.push((v.name.clone(), slot, elem_of(v)));
        }
        let mut steps = Vec::new();
        let mut ensembles = Vec::new();
        for node in &graph.node {
            let named = |e: String| format!("node {:?} ({}): {e}", node.name, op_name(node));
            let input = |i: usize, slots: &HashMap<String, usize>, types: &[i32]| {
                let name = node
                    .input
                    .get(i)
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| named(format!("input {i} is missing")))?;
                let slot = *slots.get(name).ok_or_else(|| {
                    named(format!("input {name:?} is produced by no earlier node"))
                })?;
                Ok::<_, String>((slot, types[slot]))
            };
            let output =
                |i: usize, elem: i32, slots: &mut HashMap<String, usize>, types: &mut Vec<i32>| {
                    let name = node.output.get(i).filter(|n| !n.is_empty())?;
                    let slot = types.len();
                    types.push(elem);
                    slots.insert(name.clone(), slot);
                    Some(slot)
                };
            let float = PbType::Float as i32;
            let step = match (node.domain.as_str(), node.op_type.as_str()) {
                (
                    ML,
                    op @ ("TreeEnsembleClassifier" | "TreeEnsembleRegressor" | "TreeEnsemble"),
                ) => {
                    let (from, elem) = input(0, &slots, &types)?;
                    if elem != float {
                        return Err(named(format!(
                            "its input is {}; the native tree runtime takes FLOAT (add a Cast or export float inputs)",
                            ops::type_name(elem)
                        )));
                    }
                    let spec = match op {
                        "TreeEnsembleClassifier" => ops::legacy_ensemble(node, true),
                        "TreeEnsembleRegressor" => ops::legacy_ensemble(node, false),
                        _ => ops::tree_ensemble(node),
                    }
                    .map_err(named)?;
                    let ensemble = Box::new(Ensemble::build(spec).map_err(named)?);
                    ensembles.push(format!(
                        "{op}: {} trees, depth ≤ {}",
                        ensemble.trees(),
                        ensemble.depth()
                    ));
                    let (label, scores) = if ensemble.is_classifier() {
                        (
                            output(0, PbType::Int64 as i32, &mut slots, &mut types),
                            output(1, float, &mut slots, &mut types),
                        )
                    } else {
                        (None, output(0, float, &mut slots, &mut types))
                    };
                    Step::Trees {
                        input: from,
                        ensemble,
                        label,
                        scores,
                    }
                }
                ("", "Identity") => {
                    let (from, elem) = input(0, &slots, &types)?;
                    match output(0, elem, &mut slots, &mut types) {
                        Some(to) => Step::Identity { from, to },
                        None => continue,
                    }
                }
                ("", "Cast") => {
                    let (from, _) = input(0, &slots, &types)?;
                    let elem = ops::cast(node).map_err(named)?;
                    if ![
                        PbType::Float as i32,
                        PbType::Int64 as i32,
                        PbType::Double as i32,
                    ]
                    .contains(&elem)
                    {
                        return Err(named(format!(
                            "Cast to {} is not supported (FLOAT, DOUBLE and INT64 are)",
                            ops::type_name(elem)
                        )));
                    }
                    match output(0, elem, &mut slots, &mut types) {
                        Some(to) => Step::Cast { from, to, elem },
                        None => continue,
                    }
                }
                (ML, "Scaler") => {
                    let (from, _) = input(0, &slots, &types)?;
                    let (offset, scale) = ops::scaler(node).map_err(named)?;
                    match output(0, float, &mut slots, &mut types) {
                        Some(to) => Step::Scaler {
                            from,
                            to,
                            offset,
                            scale,
                        },
                        None => continue,
                    }
                }
                (ML, "ZipMap") => {
                    return Err(named(
                        "ZipMap (probabilities as a list of maps) is not supported; export with zipmap disabled (skl2onnx: options={'zipmap': False})".into(),
                    ));
                }
                _ => {
                    return Err(named(
                        "operator not supported by the native tree runtime, which runs TreeEnsembleClassifier, TreeEnsembleRegressor, TreeEnsemble, Scaler, Cast and Identity".into(),
                    ));
                }
            };
            steps.push(step);
        }
        let mut outputs = Vec::new();
        for v in &graph.output {
            let slot = *slots
                .get(&v.name)
                .ok_or_else(|| format!("graph output {:?} is produced by no node", v.name))?;
            let declared = elem_of(v);
            if declared != 0 && declared != types[slot] {
                return Err(format!(
                    "graph output {:?} is declared {} but computed as {}",
                    v.name,
                    ops::type_name(declared),
                    ops::type_name(types[slot])
                ));
            }
            outputs.push((v.name.clone(), slot, types[slot]));
        }
        Ok(NativeGraph {
            inputs,
            outputs,
            steps,
            slots: types.len(),
            summary: ensembles.join("; "),
        })
    }

    /// Graph inputs: name and ONNX element type code.
    pub fn inputs(&self) -> impl Iterator<Item = (&str, i32)> {
        self.inputs.iter().map(|(n, _, t)| (n.as_str(), *t))
    }

    /// Graph outputs: name and ONNX element type code.
    pub fn outputs(&self) -> impl Iterator<Item = (&str, i32)> {
        self.outputs.iter().map(|(n, _, t)| (n.as_str(), *t))
    }

    /// The ensembles it holds, e.g. "TreeEnsembleClassifier: 300 trees,
    /// depth ≤ 7", for the load log.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// Runs the graph on `inputs` (in graph input order) and returns its
    /// outputs in graph output order.
    ///
    /// # Errors
    /// A shape or type the graph cannot take, in words.
    pub fn run(&self, inputs: Vec<Value>) -> Result<Vec<Value>, String> {
        let mut values: Vec<Option<Value>> = vec![None; self.slots];
        // The inputs' types were matched with the config at load; a step
        // that needs FP32 checks what it gets.
        for ((_, slot, _), value) in self.inputs.iter().zip(inputs) {
            values[*slot] = Some(value);
        }
        let take = |values: &Vec<Option<Value>>, slot: usize| {
            values[slot]
                .clone()
                .ok_or_else(|| "a value was used before it was computed".to_owned())
        };
        for step in &self.steps {
            match step {
                Step::Trees {
                    input,
                    ensemble,
                    label,
                    scores,
                } => {
                    let (shape, data) = values[*input]
                        .as_ref()
                        .ok_or("the ensemble's input was not computed")?;
                    let TensorData::F32(x) = data else {
                        return Err("the ensemble's input is not FP32".into());
                    };
                    let (rows, width) = match shape[..] {
                        [rows, width] => (rows, width),
                        [width] => (1, width),
                        _ => {
                            return Err(format!(
                                "the ensemble takes [rows, features], got shape {shape:?}"
                            ));
                        }
                    };
                    if width < ensemble.width() {
                        return Err(format!(
                            "rows have {width} features; the trees read feature {}",
                            ensemble.width() - 1
                        ));
                    }
                    let t = ensemble.targets();
                    let mut out = vec![0f32; rows * t];
                    let mut labels = vec![0i64; if ensemble.is_classifier() { rows } else { 0 }];
                    ensemble.run(x, rows, width, &mut out, &mut labels);
                    if let Some(slot) = label {
                        values[*slot] = Some((vec![rows], TensorData::I64(labels)));
                    }
                    if let Some(slot) = scores {
                        values[*slot] = Some((vec![rows, t], TensorData::F32(out)));
                    }
                }
                Step::Identity { from, to } => values[*to] = Some(take(&values, *from)?),
                Step::Cast { from, to, elem } => {
                    let (shape, data) = take(&values, *from)?;
                    values[*to] = Some((shape, cast(data, *elem)?));
                }
                Step::Scaler {
                    from,
                    to,
                    offset,
                    scale,
                } => {
                    let (shape, data) = take(&values, *from)?;
                    let TensorData::F32(mut x) = cast(data, PbType::Float as i32)? else {
                        return Err("Scaler input is not numeric".into());
                    };
                    let width = shape.last().copied().unwrap_or(1).max(1);
                    let pick = |v: &[f32], col: usize, default: f32| match v.len() {
                        0 => default,
                        1 => v[0],
                        _ => v.get(col).copied().unwrap_or(default),
                    };
                    for (i, e) in x.iter_mut().enumerate() {
                        let col = i % width;
                        *e = (*e - pick(offset, col, 0.0)) * pick(scale, col, 1.0);
                    }
                    values[*to] = Some((shape, TensorData::F32(x)));
                }
            }
        }
        self.outputs
            .iter()
            .map(|(name, slot, _)| {
                values[*slot]
                    .take()
                    .ok_or_else(|| format!("output {name} was not computed"))
            })
            .collect()
    }
}

fn op_name(node: &NodeProto) -> String {
    if node.domain.is_empty() {
        node.op_type.clone()
    } else {
        format!("{}.{}", node.domain, node.op_type)
    }
}

fn cast(data: TensorData, elem: i32) -> Result<TensorData, String> {
    macro_rules! convert {
        ($v:expr, $t:ty) => {
            $v.into_iter().map(|e| e as $t).collect()
        };
    }
    let to_f64: Vec<f64> = match data {
        TensorData::F32(v) if elem == PbType::Float as i32 => return Ok(TensorData::F32(v)),
        TensorData::F64(v) if elem == PbType::Double as i32 => return Ok(TensorData::F64(v)),
        TensorData::I64(v) if elem == PbType::Int64 as i32 => return Ok(TensorData::I64(v)),
        TensorData::F32(v) => convert!(v, f64),
        TensorData::F64(v) => v,
        TensorData::I64(v) => convert!(v, f64),
        TensorData::I32(v) => convert!(v, f64),
        other => return Err(format!("Cast from {} is not supported", other.datatype())),
    };
    Ok(if elem == PbType::Float as i32 {
        TensorData::F32(convert!(to_f64, f32))
    } else if elem == PbType::Double as i32 {
        TensorData::F64(to_f64)
    } else {
        TensorData::I64(convert!(to_f64, i64))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Reference {
        inputs: Vec<Vec<f32>>,
        outputs: Outputs,
    }

    #[derive(serde::Deserialize)]
    struct Outputs {
        label: Vec<i64>,
        probabilities: Vec<Vec<f32>>,
    }

    fn example(version: u32) -> (NativeGraph, Reference) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let bytes = std::fs::read(root.join(format!("models/fraud_detector/{version}/model.onnx")))
            .expect("committed model");
        assert!(
            tree_model(&bytes).is_some(),
            "v{version} holds a tree ensemble"
        );
        let graph = NativeGraph::load(&bytes).expect("loads");
        let text = std::fs::read_to_string(
            root.join(format!("training/reference/fraud_detector_v{version}.json")),
        )
        .expect("reference");
        (
            graph,
            serde_json::from_str(&text).expect("reference parses"),
        )
    }

    #[test]
    fn committed_tree_models_match_onnxruntime() {
        for version in [3, 4] {
            let (graph, reference) = example(version);
            let rows = reference.inputs.len();
            let x: Vec<f32> = reference.inputs.concat();
            // Whole batch, then row by row: both must give the reference.
            let batch = graph
                .run(vec![(vec![rows, 15], TensorData::F32(x.clone()))])
                .expect("runs");
            let TensorData::I64(labels) = &batch[0].1 else {
                panic!("label is INT64")
            };
            let TensorData::F32(probs) = &batch[1].1 else {
                panic!("probabilities are FP32")
            };
            assert_eq!(labels, &reference.outputs.label, "v{version} labels");
            let expected = reference.outputs.probabilities.concat();
            let worst = probs
                .iter()
                .zip(&expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst <= 1e-5, "v{version}: worst difference {worst}");
            for (r, row) in reference.inputs.iter().enumerate().take(16) {
                let one = graph
                    .run(vec![(vec![1, 15], TensorData::F32(row.clone()))])
                    .expect("runs");
                let TensorData::F32(p) = &one[1].1 else {
                    panic!("FP32")
                };
                assert_eq!(p[..], probs[r * 2..r * 2 + 2], "v{version} row {r} alone");
            }
        }
    }

    #[derive(serde::Deserialize)]
    struct Fixture {
        inputs: Vec<Vec<Option<f32>>>,
        outputs: std::collections::BTreeMap<String, Vec<f64>>,
    }

    /// The operator shapes the example models do not use (multi-class
    /// SOFTMAX, multi-target AVERAGE, missing-value tracks on a regressor,
    /// opset-5 `TreeEnsemble` with set splits, a `Scaler` in front, integer
    /// inputs through a `Cast`, PROBIT and SOFTMAX_ZERO), against
    /// onnxruntime's outputs from training/tree_fixtures.py.
    #[test]
    fn small_ensembles_match_onnxruntime() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/trees");
        for name in [
            "multiclass_softmax",
            "regressor_two_targets_average",
            "regressor_missing_tracks",
            "tree_ensemble_opset5",
            "scaler_pipeline",
            "cast_int_input",
            "regressor_probit",
            "regressor_softmax_zero",
        ] {
            let bytes = std::fs::read(dir.join(format!("{name}.onnx"))).expect("fixture");
            let graph = NativeGraph::load(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).expect("json");
            let fixture: Fixture = serde_json::from_str(&text).expect("parses");
            let rows = fixture.inputs.len();
            let width = fixture.inputs[0].len();
            let x: Vec<f32> = fixture
                .inputs
                .iter()
                .flatten()
                .map(|v| v.unwrap_or(f32::NAN))
                .collect();
            let (_, elem) = graph.inputs().next().expect("one input");
            let data = if elem == PbType::Int64 as i32 {
                TensorData::I64(x.iter().map(|v| *v as i64).collect())
            } else {
                TensorData::F32(x)
            };
            let outputs = graph
                .run(vec![(vec![rows, width], data)])
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            for ((out, _), (_, data)) in graph.outputs().zip(&outputs) {
                let expected = &fixture.outputs[out];
                let got: Vec<f64> = match data {
                    TensorData::F32(v) => v.iter().map(|x| f64::from(*x)).collect(),
                    TensorData::I64(v) => v.iter().map(|x| *x as f64).collect(),
                    other => panic!("{name}: output {out} is {}", other.datatype()),
                };
                assert_eq!(got.len(), expected.len(), "{name}: {out} length");
                for (i, (a, b)) in got.iter().zip(expected).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5,
                        "{name}: {out}[{i}] = {a}, onnxruntime {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn unknown_attributes_and_operators_are_refused_by_name() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let bytes = std::fs::read(root.join("models/fraud_detector/3/model.onnx")).expect("model");
        let mut model = ModelProto::decode(bytes.as_slice()).expect("decodes");
        let graph = model.graph.as_mut().expect("graph");
        graph.node[0]
            .attribute
            .push(tract_onnx::pb::AttributeProto {
                name: "classlabels_strings".into(),
                strings: vec![b"legit".to_vec(), b"fraud".to_vec()],
                ..Default::default()
            });
        let e = NativeGraph::load(&model.encode_to_vec())
            .err()
            .expect("refused");
        assert!(e.contains("classlabels_strings"), "{e}");

        let graph = model.graph.as_mut().expect("graph");
        graph.node[0].attribute.pop();
        graph.node[0]
            .attribute
            .push(tract_onnx::pb::AttributeProto {
                name: "nodes_future_hint".into(),
                ..Default::default()
            });
        let e = NativeGraph::load(&model.encode_to_vec())
            .err()
            .expect("refused");
        assert!(
            e.contains("attribute nodes_future_hint is not supported"),
            "{e}"
        );

        let graph = model.graph.as_mut().expect("graph");
        graph.node[0].attribute.pop();
        graph.node.push(NodeProto {
            op_type: "Softmax".into(),
            name: "extra".into(),
            input: vec!["probabilities".into()],
            output: vec!["soft".into()],
            ..Default::default()
        });
        let e = NativeGraph::load(&model.encode_to_vec())
            .err()
            .expect("refused");
        assert!(
            e.contains("\"extra\" (Softmax)") && e.contains("not supported"),
            "{e}"
        );
    }
}
