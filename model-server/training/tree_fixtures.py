#!/usr/bin/env python3
"""Small tree-ensemble ONNX files and their onnxruntime outputs, for the
native tree runtime's unit tests (model-server/src/native): the operator
shapes the example models do not cover.

Writes model-server/testdata/trees/<name>.onnx and <name>.json
({"inputs": rows, "outputs": {output name: flat values}}; NaN inputs are
written as null). Run with the training venv:

    ~/.cache/mlgw/train-venv/bin/python model-server/training/tree_fixtures.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from skl2onnx import to_onnx
sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_fraud_model import hist_gradient_boosting_missing_tracks_as_int  # noqa: E402
from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestRegressor,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

OUT = Path(__file__).resolve().parents[1] / "testdata" / "trees"
FEATURES = 4


def data(rng: np.random.Generator, rows: int) -> np.ndarray:
    return rng.normal(size=(rows, FEATURES)).astype(np.float32)


def sklearn_models(rng: np.random.Generator):
    x = data(rng, 600)
    y3 = (x[:, 0] > 0.3).astype(int) + (x[:, 1] > 0.0).astype(int)  # 3 classes
    yr = x[:, 0] * 2 + x[:, 2] ** 2
    y2 = np.stack([yr, x[:, 1] - x[:, 3]], axis=1)
    xn = x.copy()
    xn[::7, 2] = np.nan
    gb = GradientBoostingClassifier(n_estimators=6, max_depth=3, random_state=0).fit(x, y3)
    rf = RandomForestRegressor(n_estimators=5, max_depth=4, random_state=0).fit(x, y2)
    hgb = HistGradientBoostingRegressor(max_iter=8, max_depth=3, random_state=0).fit(xn, yr)
    opts = {"zipmap": False}
    yield "multiclass_softmax", to_onnx(gb, x[:1], options={id(gb): opts}, target_opset={"": 17, "ai.onnx.ml": 3})
    yield "regressor_two_targets_average", to_onnx(rf, x[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    scaled = make_pipeline(
        StandardScaler(), GradientBoostingClassifier(n_estimators=4, max_depth=2, random_state=0)
    ).fit(x, (x[:, 2] > 0.1).astype(int))
    yield "scaler_pipeline", to_onnx(
        scaled, x[:1], options={id(scaled[-1]): opts}, target_opset={"": 17, "ai.onnx.ml": 3}
    )
    with hist_gradient_boosting_missing_tracks_as_int():
        exported = to_onnx(hgb, x[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    yield "regressor_missing_tracks", exported


def tree_ensemble_opset5():
    """Two trees by hand: a set-membership split and a NaN-tracking split,
    two targets, SUM, no post transform (the runtimes disagree on the
    opset-5 transform codes, so the server refuses any other)."""
    # Node 0 (tree 0): x1 in {1, 2, 5} ? leaf 0 : node 1.
    # Node 1: x0 < 0.5 (NaN goes true) ? leaf 1 : leaf 2.
    # Node 2 (tree 1): x3 >= -0.25 ? leaf 3 : leaf 4 (both branches of a
    # one-leaf-looking split share nothing).
    node = helper.make_node(
        "TreeEnsemble",
        ["X"],
        ["Y"],
        domain="ai.onnx.ml",
        n_targets=2,
        aggregate_function=1,
        post_transform=0,
        tree_roots=[0, 2],
        nodes_featureids=[1, 0, 3],
        nodes_modes=helper.make_tensor("nodes_modes", TensorProto.UINT8, [3], [6, 1, 2]),
        nodes_splits=helper.make_tensor("nodes_splits", TensorProto.FLOAT, [3], [0.0, 0.5, -0.25]),
        nodes_truenodeids=[0, 1, 3],
        nodes_trueleafs=[1, 1, 1],
        nodes_falsenodeids=[1, 2, 4],
        nodes_falseleafs=[0, 1, 1],
        nodes_missing_value_tracks_true=[0, 1, 0],
        membership_values=helper.make_tensor(
            "membership_values", TensorProto.FLOAT, [4], [1.0, 2.0, 5.0, np.nan]
        ),
        leaf_targetids=[0, 1, 0, 1, 0],
        leaf_weights=helper.make_tensor("leaf_weights", TensorProto.FLOAT, [5], [0.5, -1.0, 2.0, 0.25, -0.75]),
    )
    graph = helper.make_graph(
        [node],
        "tree_ensemble_opset5",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, FEATURES])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 2])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.onnx.ml", 5)]
    )
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def legacy_regressor(post_transform: str, n_targets: int) -> onnx.ModelProto:
    """A hand-built TreeEnsembleRegressor with `post_transform`: two stumps,
    leaf weights that put some targets at exactly zero (SOFTMAX_ZERO leaves
    those at zero) and keep single scores inside (0, 1) (PROBIT's domain)."""
    weights = {
        # (tree, leaf node) -> weight per target
        (0, 1): [0.2, 0.0, 0.7][:n_targets],
        (0, 2): [0.6, 0.3, 0.0][:n_targets],
        (1, 1): [0.1, 0.0, 0.05][:n_targets],
        (1, 2): [0.15, 0.4, 0.0][:n_targets],
    }
    target_tree, target_node, target_ids, target_weights = [], [], [], []
    for (tree, node), ws in weights.items():
        for t, w in enumerate(ws):
            target_tree.append(tree)
            target_node.append(node)
            target_ids.append(t)
            target_weights.append(w)
    node = helper.make_node(
        "TreeEnsembleRegressor",
        ["X"],
        ["Y"],
        domain="ai.onnx.ml",
        n_targets=n_targets,
        post_transform=post_transform,
        nodes_treeids=[0, 0, 0, 1, 1, 1],
        nodes_nodeids=[0, 1, 2, 0, 1, 2],
        nodes_featureids=[0, 0, 0, 3, 0, 0],
        nodes_values=[0.1, 0.0, 0.0, -0.3, 0.0, 0.0],
        nodes_modes=["BRANCH_LT", "LEAF", "LEAF", "BRANCH_GT", "LEAF", "LEAF"],
        nodes_truenodeids=[1, 0, 0, 1, 0, 0],
        nodes_falsenodeids=[2, 0, 0, 2, 0, 0],
        target_treeids=target_tree,
        target_nodeids=target_node,
        target_ids=target_ids,
        target_weights=target_weights,
    )
    graph = helper.make_graph(
        [node],
        f"regressor_{post_transform.lower()}",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, FEATURES])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, n_targets])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def cast_front(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` fed through a Cast from INT64, as graphs taking integer codes
    are exported."""
    graph = model.graph
    name = graph.input[0].name
    cast = helper.make_node("Cast", [f"{name}_int"], [name], to=TensorProto.FLOAT, name="codes_to_float")
    new_input = helper.make_tensor_value_info(f"{name}_int", TensorProto.INT64, [None, FEATURES])
    nodes = [cast, *graph.node]
    out = helper.make_graph(nodes, graph.name, [new_input], list(graph.output))
    result = helper.make_model(out, opset_imports=list(model.opset_import))
    result.ir_version = model.ir_version
    onnx.checker.check_model(result)
    return result


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261206)
    models = list(sklearn_models(rng)) + [("tree_ensemble_opset5", tree_ensemble_opset5())]
    models.append(("cast_int_input", cast_front(dict(models)["tree_ensemble_opset5"])))
    models.append(("regressor_probit", legacy_regressor("PROBIT", 1)))
    models.append(("regressor_softmax_zero", legacy_regressor("SOFTMAX_ZERO", 3)))
    rows = data(rng, 64)
    rows[:8, 1] = [1, 2, 5, 3, 0, 1, 2, 5]
    rows[::5, 0] = np.nan
    rows[::9, 2] = np.nan
    for name, model in models:
        path = OUT / f"{name}.onnx"
        path.write_bytes(model.SerializeToString())
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        kind = session.get_inputs()[0].type
        feed = {session.get_inputs()[0].name: np.nan_to_num(rows).round().astype(np.int64) if "int64" in kind else rows}
        outputs = session.run(None, feed)
        record = {
            "inputs": [[None if np.isnan(v) else float(v) for v in row] for row in feed[session.get_inputs()[0].name]],
            "outputs": {
                o.name: np.asarray(v).ravel().tolist() for o, v in zip(session.get_outputs(), outputs)
            },
            "nodes": [n.op_type for n in model.graph.node],
        }
        (OUT / f"{name}.json").write_text(json.dumps(record) + "\n")
        print(name, record["nodes"], {k: len(v) for k, v in record["outputs"].items()}, path.stat().st_size)


if __name__ == "__main__":
    main()
