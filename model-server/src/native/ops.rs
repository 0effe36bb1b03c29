//! Reading an ONNX-ML operator's attributes into what the native runtime runs:
//! the three tree-ensemble operators into one [`EnsembleSpec`], and the glue
//! operators exporters put around them. Every attribute is either used,
//! deliberately ignored (performance hints), or refused by name.

use tract_onnx::pb::{AttributeProto, NodeProto, TensorProto, tensor_proto::DataType as PbType};

use super::ensemble::{
    Aggregate, ClassifierSpec, EnsembleSpec, LeafWeight, Mode, NodeSpec, PostTransform,
};

/// An operator's attributes, looked up by name; each one read is ticked off,
/// so whatever the operator does not know can be refused by name.
pub struct Attributes<'a> {
    node: &'a NodeProto,
    used: Vec<bool>,
}

impl<'a> Attributes<'a> {
    /// The attributes of `node`.
    pub fn of(node: &'a NodeProto) -> Self {
        Attributes {
            node,
            used: vec![false; node.attribute.len()],
        }
    }

    fn get(&mut self, name: &str) -> Option<&'a AttributeProto> {
        let i = self.node.attribute.iter().position(|a| a.name == name)?;
        self.used[i] = true;
        Some(&self.node.attribute[i])
    }

    /// Marks `names` as understood without reading them (hints).
    pub fn ignore(&mut self, names: &[&str]) {
        for name in names {
            let _ = self.get(name);
        }
    }

    /// Integers of `name` (empty when absent).
    pub fn ints(&mut self, name: &str) -> Vec<i64> {
        self.get(name).map(|a| a.ints.clone()).unwrap_or_default()
    }

    /// Floats of `name` (empty when absent).
    pub fn floats(&mut self, name: &str) -> Vec<f32> {
        self.get(name).map(|a| a.floats.clone()).unwrap_or_default()
    }

    /// Strings of `name` (empty when absent).
    pub fn strings(&mut self, name: &str) -> Result<Vec<String>, String> {
        self.get(name)
            .map(|a| a.strings.iter().map(|s| utf8(name, s)).collect())
            .unwrap_or_else(|| Ok(Vec::new()))
    }

    /// String `name`, or `default` when absent.
    pub fn string(&mut self, name: &str, default: &str) -> Result<String, String> {
        self.get(name)
            .map_or_else(|| Ok(default.to_owned()), |a| utf8(name, &a.s))
    }

    /// Integer `name`, or `default` when absent.
    pub fn int(&mut self, name: &str, default: i64) -> i64 {
        self.get(name).map_or(default, |a| a.i)
    }

    /// Float tensor `name` (empty when absent).
    pub fn float_tensor(&mut self, name: &str) -> Result<Vec<f32>, String> {
        match self.get(name).and_then(|a| a.t.as_ref()) {
            None => Ok(Vec::new()),
            Some(t) => tensor_f32(name, t),
        }
    }

    /// Unsigned-byte tensor `name` (empty when absent).
    pub fn u8_tensor(&mut self, name: &str) -> Result<Vec<u8>, String> {
        match self.get(name).and_then(|a| a.t.as_ref()) {
            None => Ok(Vec::new()),
            Some(t) if t.data_type == PbType::Uint8 as i32 => {
                if t.raw_data.is_empty() {
                    Ok(t.int32_data.iter().map(|v| *v as u8).collect())
                } else {
                    Ok(t.raw_data.clone())
                }
            }
            Some(t) => Err(format!(
                "attribute {name} is a tensor of type {}; expected UINT8",
                type_name(t.data_type)
            )),
        }
    }

    /// Refuses any attribute that was not read: its meaning is unknown here,
    /// so running without it could give wrong answers.
    ///
    /// # Errors
    /// Names the first such attribute.
    pub fn refuse_unread(&self) -> Result<(), String> {
        match self.used.iter().position(|u| !u) {
            None => Ok(()),
            Some(i) => Err(format!(
                "attribute {} is not supported by the native tree runtime",
                self.node.attribute[i].name
            )),
        }
    }

    /// Refuses `name` when present, saying why.
    ///
    /// # Errors
    /// `name` and `why`.
    pub fn refuse(&mut self, name: &str, why: &str) -> Result<(), String> {
        match self.get(name) {
            Some(_) => Err(format!("attribute {name} is not supported: {why}")),
            None => Ok(()),
        }
    }
}

fn utf8(name: &str, bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("attribute {name} is not UTF-8"))
}

/// The ONNX name of an element type code.
pub fn type_name(code: i32) -> &'static str {
    PbType::try_from(code).map_or("UNKNOWN", |t| t.as_str_name())
}

fn tensor_f32(name: &str, t: &TensorProto) -> Result<Vec<f32>, String> {
    if t.data_type != PbType::Float as i32 {
        return Err(format!(
            "attribute {name} is a tensor of type {}; the native tree runtime takes FLOAT (export with float thresholds and weights)",
            type_name(t.data_type)
        ));
    }
    if !t.float_data.is_empty() {
        return Ok(t.float_data.clone());
    }
    if !t.raw_data.len().is_multiple_of(4) {
        return Err(format!(
            "attribute {name}: raw data is not a whole number of floats"
        ));
    }
    Ok(t.raw_data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn post_transform_named(name: &str) -> Result<PostTransform, String> {
    Ok(match name {
        "NONE" => PostTransform::None,
        "LOGISTIC" => PostTransform::Logistic,
        "SOFTMAX" => PostTransform::Softmax,
        "SOFTMAX_ZERO" => PostTransform::SoftmaxZero,
        "PROBIT" => PostTransform::Probit,
        other => {
            return Err(format!(
                "post_transform {other:?} is not an ONNX-ML transform"
            ));
        }
    })
}

fn mode_named(name: &str) -> Result<Option<Mode>, String> {
    Ok(Some(match name {
        "LEAF" => return Ok(None),
        "BRANCH_LEQ" => Mode::Leq,
        "BRANCH_LT" => Mode::Lt,
        "BRANCH_GTE" => Mode::Gte,
        "BRANCH_GT" => Mode::Gt,
        "BRANCH_EQ" => Mode::Eq,
        "BRANCH_NEQ" => Mode::Neq,
        other => {
            return Err(format!(
                "nodes_modes has {other:?}, not an ONNX-ML node mode"
            ));
        }
    }))
}

fn same_len(what: &[(&str, usize)]) -> Result<(), String> {
    let first = what[0];
    match what.iter().find(|(_, n)| *n != first.1) {
        None => Ok(()),
        Some((name, n)) => Err(format!(
            "attribute {name} has {n} entries but {} has {}",
            first.0, first.1
        )),
    }
}

/// Reads `TreeEnsembleClassifier` or `TreeEnsembleRegressor` (ai.onnx.ml
/// opsets 1 and 3): parallel per-node arrays and per-weight arrays.
///
/// # Errors
/// The attribute that is missing, inconsistent or unsupported.
pub fn legacy_ensemble(node: &NodeProto, classifier: bool) -> Result<EnsembleSpec, String> {
    let mut a = Attributes::of(node);
    a.ignore(&["nodes_hitrates", "nodes_hitrates_as_tensor"]);
    let precise = "it holds double-precision values; export with float thresholds and weights";
    for name in [
        "nodes_values_as_tensor",
        "base_values_as_tensor",
        "class_weights_as_tensor",
        "target_weights_as_tensor",
    ] {
        a.refuse(name, precise)?;
    }
    let tree = a.ints("nodes_treeids");
    let id = a.ints("nodes_nodeids");
    let feature = a.ints("nodes_featureids");
    let value = a.floats("nodes_values");
    let modes = a.strings("nodes_modes")?;
    let truth = a.ints("nodes_truenodeids");
    let falsity = a.ints("nodes_falsenodeids");
    let mut missing = a.ints("nodes_missing_value_tracks_true");
    if missing.is_empty() {
        missing = vec![0; tree.len()];
    }
    if tree.is_empty() {
        return Err("attribute nodes_treeids is empty: the ensemble has no node".into());
    }
    same_len(&[
        ("nodes_treeids", tree.len()),
        ("nodes_nodeids", id.len()),
        ("nodes_featureids", feature.len()),
        ("nodes_values", value.len()),
        ("nodes_modes", modes.len()),
        ("nodes_truenodeids", truth.len()),
        ("nodes_falsenodeids", falsity.len()),
        ("nodes_missing_value_tracks_true", missing.len()),
    ])?;
    let mut nodes = Vec::with_capacity(tree.len());
    for i in 0..tree.len() {
        nodes.push(NodeSpec {
            tree: tree[i],
            id: id[i],
            feature: feature[i],
            value: value[i],
            mode: mode_named(&modes[i])?,
            true_id: truth[i],
            false_id: falsity[i],
            missing_true: missing[i] != 0,
            members: Vec::new(),
        });
    }
    let prefix = if classifier { "class" } else { "target" };
    let w_tree = a.ints(&format!("{prefix}_treeids"));
    let w_node = a.ints(&format!("{prefix}_nodeids"));
    let w_target = a.ints(&format!("{prefix}_ids"));
    let w_value = a.floats(&format!("{prefix}_weights"));
    same_len(&[
        (&format!("{prefix}_treeids"), w_tree.len()),
        (&format!("{prefix}_nodeids"), w_node.len()),
        (&format!("{prefix}_ids"), w_target.len()),
        (&format!("{prefix}_weights"), w_value.len()),
    ])?;
    let weights = (0..w_tree.len())
        .map(|i| LeafWeight {
            tree: w_tree[i],
            node: w_node[i],
            target: w_target[i],
            weight: w_value[i],
        })
        .collect();
    let base_values = a.floats("base_values");
    let post_transform = post_transform_named(&a.string("post_transform", "NONE")?)?;
    let (targets, aggregate, classifier) = if classifier {
        a.refuse(
            "classlabels_strings",
            "string class labels; export integer labels (classlabels_int64s)",
        )?;
        let labels = a.ints("classlabels_int64s");
        if labels.is_empty() {
            return Err("attribute classlabels_int64s is missing".into());
        }
        (
            labels.len(),
            Aggregate::Sum,
            Some(ClassifierSpec { labels }),
        )
    } else {
        let targets = usize::try_from(a.int("n_targets", 1))
            .map_err(|_| "attribute n_targets is negative".to_owned())?;
        let aggregate = match a.string("aggregate_function", "SUM")?.as_str() {
            "SUM" => Aggregate::Sum,
            "AVERAGE" => Aggregate::Average,
            "MIN" => Aggregate::Min,
            "MAX" => Aggregate::Max,
            other => {
                return Err(format!(
                    "aggregate_function {other:?} is not an ONNX-ML aggregate"
                ));
            }
        };
        (targets, aggregate, None)
    };
    if post_transform == PostTransform::Probit && targets == 2 && classifier.is_some() {
        return Err("post_transform PROBIT on a binary classifier writes one score for two columns in onnxruntime; not supported".into());
    }
    a.refuse_unread()?;
    Ok(EnsembleSpec {
        nodes,
        weights,
        targets,
        base_values,
        post_transform,
        aggregate,
        classifier,
    })
}

/// Reads `TreeEnsemble` (ai.onnx.ml opset 5): interior nodes and leaves in
/// separate arrays, trees by their roots, splits and weights as tensors,
/// categorical splits as sets in `membership_values`.
///
/// # Errors
/// The attribute that is missing, inconsistent or unsupported.
pub fn tree_ensemble(node: &NodeProto) -> Result<EnsembleSpec, String> {
    let mut a = Attributes::of(node);
    a.ignore(&["nodes_hitrates"]);
    let roots = a.ints("tree_roots");
    let feature = a.ints("nodes_featureids");
    let splits = a.float_tensor("nodes_splits")?;
    let modes = a.u8_tensor("nodes_modes")?;
    let truth = a.ints("nodes_truenodeids");
    let falsity = a.ints("nodes_falsenodeids");
    let true_leaf = a.ints("nodes_trueleafs");
    let false_leaf = a.ints("nodes_falseleafs");
    let mut missing = a.ints("nodes_missing_value_tracks_true");
    if missing.is_empty() {
        missing = vec![0; feature.len()];
    }
    let leaf_target = a.ints("leaf_targetids");
    let leaf_weight = a.float_tensor("leaf_weights")?;
    let membership = a.float_tensor("membership_values")?;
    same_len(&[
        ("nodes_featureids", feature.len()),
        ("nodes_splits", splits.len()),
        ("nodes_modes", modes.len()),
        ("nodes_truenodeids", truth.len()),
        ("nodes_falsenodeids", falsity.len()),
        ("nodes_trueleafs", true_leaf.len()),
        ("nodes_falseleafs", false_leaf.len()),
        ("nodes_missing_value_tracks_true", missing.len()),
    ])?;
    same_len(&[
        ("leaf_targetids", leaf_target.len()),
        ("leaf_weights", leaf_weight.len()),
    ])?;
    // The sets of the BRANCH_MEMBER nodes, in node order, NaN-separated.
    let mut sets = membership
        .split(|v| v.is_nan())
        .map(<[f32]>::to_vec)
        .collect::<Vec<_>>()
        .into_iter();
    let interior = feature.len();
    let mut nodes = Vec::new();
    let mut weights = Vec::new();
    let mut owner = vec![None; interior];
    let mut leaf_owner = vec![None; leaf_target.len()];
    let mut copies = 0usize;
    let mut modes_read: Vec<Option<Mode>> = Vec::with_capacity(interior);
    for m in &modes {
        modes_read.push(Some(match m {
            0 => Mode::Leq,
            1 => Mode::Lt,
            2 => Mode::Gte,
            3 => Mode::Gt,
            4 => Mode::Eq,
            5 => Mode::Neq,
            6 => Mode::Member,
            other => {
                return Err(format!(
                    "nodes_modes has {other}, not a TreeEnsemble node mode"
                ));
            }
        }));
    }
    let mut members: Vec<Vec<f32>> = vec![Vec::new(); interior];
    for (i, m) in modes_read.iter().enumerate() {
        if *m == Some(Mode::Member) {
            members[i] = sets
                .next()
                .ok_or("membership_values has fewer sets than BRANCH_MEMBER nodes")?;
        }
    }
    // IDs inside a tree: interior node i keeps i, leaf j becomes interior + j.
    let index = |v: i64, len: usize, what: &str| {
        usize::try_from(v)
            .ok()
            .filter(|i| *i < len)
            .ok_or_else(|| format!("{what} {v} is out of range (there are {len})"))
    };
    for (t, root) in roots.iter().enumerate() {
        let tree = i64::try_from(t).unwrap_or(i64::MAX);
        let root = index(*root, interior, "tree root")?;
        let mut stack = vec![root];
        while let Some(i) = stack.pop() {
            if owner[i].replace(t).is_some() {
                return Err(format!(
                    "node {i} is reached twice (a cycle or a shared subtree)"
                ));
            }
            let mut child = |target: i64, is_leaf: i64| -> Result<i64, String> {
                if is_leaf != 0 {
                    let j = index(target, leaf_target.len(), "leaf")?;
                    // A leaf both branches share (how a one-leaf tree is
                    // written) gets its own copy per reference.
                    let id = match leaf_owner[j].replace(t) {
                        None => (interior + j) as i64,
                        Some(o) if o == t => {
                            copies += 1;
                            (interior + leaf_target.len() + copies) as i64
                        }
                        Some(_) => {
                            return Err(format!("leaf {j} belongs to two trees"));
                        }
                    };
                    {
                        nodes.push(NodeSpec::leaf(tree, id));
                        weights.push(LeafWeight {
                            tree,
                            node: id,
                            target: leaf_target[j],
                            weight: leaf_weight[j],
                        });
                    }
                    Ok(id)
                } else {
                    let k = index(target, interior, "node")?;
                    stack.push(k);
                    Ok(k as i64)
                }
            };
            let true_id = child(truth[i], true_leaf[i])?;
            let false_id = child(falsity[i], false_leaf[i])?;
            nodes.push(NodeSpec {
                tree,
                id: i as i64,
                feature: feature[i],
                value: splits[i],
                mode: modes_read[i],
                true_id,
                false_id,
                missing_true: missing[i] != 0,
                members: std::mem::take(&mut members[i]),
            });
        }
    }
    let targets = usize::try_from(a.int("n_targets", 1))
        .map_err(|_| "attribute n_targets is negative".to_owned())?;
    let aggregate = match a.int("aggregate_function", 1) {
        0 => Aggregate::Average,
        1 => Aggregate::Sum,
        2 => Aggregate::Min,
        3 => Aggregate::Max,
        other => {
            return Err(format!(
                "aggregate_function {other} is not a TreeEnsemble aggregate"
            ));
        }
    };
    // The ONNX spec numbers post transforms NONE, SOFTMAX, LOGISTIC,
    // SOFTMAX_ZERO, PROBIT, but onnxruntime 1.31 applies a softmax for 2;
    // rather than pick one reading silently, only NONE is taken.
    let post_transform = match a.int("post_transform", 0) {
        0 => PostTransform::None,
        other => {
            return Err(format!(
                "attribute post_transform = {other} is not supported on TreeEnsemble: runtimes disagree on what its codes mean (onnxruntime reads 2 as SOFTMAX, the ONNX spec as LOGISTIC); export without a post transform and apply it after"
            ));
        }
    };
    a.refuse_unread()?;
    Ok(EnsembleSpec {
        nodes,
        weights,
        targets,
        base_values: Vec::new(),
        post_transform,
        aggregate,
        classifier: None,
    })
}

/// `Scaler` (ai.onnx.ml): `(x - offset) * scale`, per column or one for all.
///
/// # Errors
/// An unsupported attribute.
pub fn scaler(node: &NodeProto) -> Result<(Vec<f32>, Vec<f32>), String> {
    let mut a = Attributes::of(node);
    let offset = a.floats("offset");
    let scale = a.floats("scale");
    a.refuse_unread()?;
    Ok((offset, scale))
}

/// `Cast`: the target element type code.
///
/// # Errors
/// A missing `to` or an unsupported attribute.
pub fn cast(node: &NodeProto) -> Result<i32, String> {
    let mut a = Attributes::of(node);
    a.ignore(&["saturate", "round_mode"]);
    let to = a.int("to", -1);
    a.refuse_unread()?;
    i32::try_from(to)
        .ok()
        .filter(|t| *t >= 0)
        .ok_or_else(|| "Cast without a `to` attribute".to_owned())
}
