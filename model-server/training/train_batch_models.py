#!/usr/bin/env python3
"""Train the example batch-scored models `customer_risk` and `txn_pattern` and
export them to ONNX.

The gateway precomputes predictions of these two models in bulk, so their
inputs are restricted:

* ``customer_risk`` (version 1) sees only the 5 static customer-profile
  columns of the fraud data set; it is scored once per customer entity.
* ``txn_pattern`` (version 1) sees a merchant category code, a merchant
  country code, the amount, the hour of day and the card-present flag.  It
  bins amount and hour **inside the ONNX graph** at fixed edges, so its answer
  is constant within each (merchant_category, country, amount bin, hour bin,
  is_card_present) combination and the gateway can store one precomputed
  answer per combination.

Both use the data set of ``train_fraud_model.py`` (imported, unchanged: same
seed, same rows, same label, same train/test split).  The two categorical
columns of ``txn_pattern`` come from a second, separate random stream, drawn
after everything else, so every existing column and the fraud label stay
byte-identical.

Everything is deterministic (fixed seeds).  The script never writes the
``fraud_detector`` files; it writes the two new models, their configs, their
reference rows and feature lists, and appends its own section to DATASET.md
(everything from the BATCH_DOC_MARKER line on; train_fraud_model.py rewrites
the part above it).

Usage (from the repository root; train.sh runs it after train_fraud_model.py):

    python model-server/training/train_batch_models.py \
        --out-repo model-server/models \
        --reference-dir model-server/training/reference
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

import onnx
import onnxruntime as ort
import skl2onnx
import sklearn
from onnx import numpy_helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import KBinsDiscretizer, OneHotEncoder, StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_fraud_model as fraud  # noqa: E402  (the generator and the export helpers)

# --------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------

INPUT_NAME = fraud.INPUT_NAME            # "features"
TARGET_OPSET = fraud.TARGET_OPSET        # {'': 17, 'ai.onnx.ml': 3}
MAX_BATCH_SIZE = 256                     # both models are scored in bulk

CATEGORY_SEED = 20240612                 # second, separate stream for merchant_category / country
LR_SEED = 0                              # LogisticRegression random_state (lbfgs ignores it)
BIN_CHECK_SEED = 4321                    # rows and in-bin values of the bin check
N_BIN_CHECK_ROWS = 512

CUSTOMER_RISK = "customer_risk"
CUSTOMER_RISK_FEATURES = list(fraud.STATIC_FEATURES)
assert CUSTOMER_RISK_FEATURES == [
    "account_age_days", "avg_txn_amount_30d", "txn_count_30d", "chargeback_count_1y", "home_country_risk",
]

TXN_PATTERN = "txn_pattern"
TXN_PATTERN_FEATURES = ["merchant_category", "country", "amount", "hour_of_day", "is_card_present"]

# Bin edges, applied inside the ONNX graph: bin i = number of edges <= x.
AMOUNT_EDGES = [10.0, 50.0, 200.0, 1000.0]
HOUR_EDGES = [6.0, 12.0, 18.0, 22.0]
N_AMOUNT_BINS = len(AMOUNT_EDGES) + 1
N_HOUR_BINS = len(HOUR_EDGES) + 1

# Merchant category codes (ISO 18245 MCCs), ascending -- the one-hot order.
# (code, description, relative weight among legitimate rows, among fraud rows)
MCC_TABLE = [
    (4111, "local and suburban commuter transport", 3.0, 0.5),
    (4121, "taxicabs and limousines", 2.0, 1.5),
    (4511, "airlines", 1.0, 3.0),
    (4722, "travel agencies and tour operators", 1.0, 3.0),
    (4814, "telecommunication services", 2.0, 3.0),
    (4829, "wire transfer, money orders", 0.5, 6.0),
    (5200, "home supply warehouse stores", 2.0, 1.0),
    (5310, "discount stores", 3.0, 1.0),
    (5311, "department stores", 4.0, 2.0),
    (5411, "grocery stores, supermarkets", 16.0, 4.0),
    (5541, "service stations (fuel)", 7.0, 3.0),
    (5542, "automated fuel dispensers", 4.0, 4.0),
    (5651, "family clothing stores", 3.0, 2.0),
    (5661, "shoe stores", 1.5, 1.0),
    (5691, "men's and women's clothing stores", 2.0, 2.0),
    (5732, "electronics stores", 3.0, 9.0),
    (5734, "computer software stores", 1.0, 3.0),
    (5812, "eating places, restaurants", 12.0, 3.0),
    (5814, "fast food restaurants", 9.0, 2.0),
    (5815, "digital goods: media", 2.5, 3.0),
    (5816, "digital goods: games", 1.5, 6.0),
    (5818, "digital goods: large digital goods merchant", 2.5, 4.0),
    (5912, "drug stores, pharmacies", 4.0, 1.0),
    (5942, "book stores", 1.0, 0.5),
    (5944, "jewelry, watch, clock and silverware stores", 0.7, 4.0),
    (5945, "hobby, toy and game shops", 1.0, 1.0),
    (5999, "miscellaneous and specialty retail", 5.0, 7.0),
    (6051, "quasi cash: foreign currency, money orders, crypto", 0.3, 5.0),
    (7011, "hotels, motels, resorts", 1.5, 2.0),
    (7995, "betting, casino gaming, lottery", 0.5, 5.0),
]
# Merchant countries (ISO 3166-1 numeric), ascending -- the one-hot order.
COUNTRY_TABLE = [
    (36, "AU", "Australia", 2.0, 1.5),
    (40, "AT", "Austria", 2.0, 1.0),
    (56, "BE", "Belgium", 3.0, 1.5),
    (76, "BR", "Brazil", 1.0, 5.0),
    (124, "CA", "Canada", 3.0, 2.0),
    (156, "CN", "China", 1.5, 5.0),
    (250, "FR", "France", 10.0, 5.0),
    (276, "DE", "Germany", 12.0, 5.0),
    (356, "IN", "India", 1.0, 4.0),
    (372, "IE", "Ireland", 1.5, 1.5),
    (380, "IT", "Italy", 6.0, 3.0),
    (392, "JP", "Japan", 1.5, 1.0),
    (484, "MX", "Mexico", 1.0, 3.0),
    (528, "NL", "Netherlands", 5.0, 3.0),
    (566, "NG", "Nigeria", 0.3, 6.0),
    (616, "PL", "Poland", 3.0, 3.0),
    (620, "PT", "Portugal", 1.5, 1.0),
    (642, "RO", "Romania", 0.7, 4.0),
    (643, "RU", "Russian Federation", 0.5, 6.0),
    (724, "ES", "Spain", 6.0, 3.0),
    (752, "SE", "Sweden", 2.0, 1.0),
    (756, "CH", "Switzerland", 2.0, 1.0),
    (804, "UA", "Ukraine", 0.5, 4.0),
    (826, "GB", "United Kingdom", 12.0, 6.0),
    (840, "US", "United States", 22.0, 12.0),
]
MCC_CODES = [row[0] for row in MCC_TABLE]
COUNTRY_CODES = [row[0] for row in COUNTRY_TABLE]
assert MCC_CODES == sorted(MCC_CODES) and len(set(MCC_CODES)) == len(MCC_CODES) == 30
assert COUNTRY_CODES == sorted(COUNTRY_CODES) and len(set(COUNTRY_CODES)) == len(COUNTRY_CODES) == 25

# Ops these exports may contain, all checked to run in tract-onnx 0.23.9 (the
# fraud list plus the comparisons and Gather of the binning and one-hot
# encoding).  ai.onnx.ml OneHotEncoder and ArrayFeatureExtractor, which
# skl2onnx emits, are rewritten away by make_tract_compatible().
TRACT_OPS = fraud.TRACT_OPS | {("", "Gather"), ("", "Less"), ("", "Equal")}

# Marker of this script's section of DATASET.md: everything from it to the end
# of the file is rewritten by this script.
BATCH_DOC_MARKER = "<!-- Section below generated by train_batch_models.py; edit that script, not this file. -->"


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


def _weights(table, col):
    w = np.array([row[col] for row in table], dtype=np.float64)
    return w / w.sum()


def add_pattern_columns(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """merchant_category and country for every row, from their own stream
    `default_rng(seed)`, drawn conditionally on the fraud label: a full draw
    from the legitimate weights and a full draw from the fraud weights for all
    rows, then each row takes the one of its label (so the number of draws
    does not depend on the label)."""
    rng = np.random.default_rng(seed)
    n = len(y)
    codes = np.array(MCC_CODES, dtype=np.float64)
    mcc_legit = rng.choice(codes, size=n, p=_weights(MCC_TABLE, 2))
    mcc_fraud = rng.choice(codes, size=n, p=_weights(MCC_TABLE, 3))
    codes = np.array(COUNTRY_CODES, dtype=np.float64)
    country_legit = rng.choice(codes, size=n, p=_weights(COUNTRY_TABLE, 3))
    country_fraud = rng.choice(codes, size=n, p=_weights(COUNTRY_TABLE, 4))
    is_fraud = y == 1
    return np.where(is_fraud, mcc_fraud, mcc_legit), np.where(is_fraud, country_fraud, country_legit)


def column(X: np.ndarray, name: str) -> np.ndarray:
    return X[:, fraud.FEATURE_NAMES.index(name)]


def profile_terms_of_label_rule(X: np.ndarray) -> np.ndarray:
    """The static-profile terms of the fraud label rule (DATASET.md), without
    intercept and noise: the best a model of the profile alone could rank by."""
    c = fraud.LABEL_COEF
    age = column(X, "account_age_days").astype(np.float64)
    return (c["home_country_risk"] * column(X, "home_country_risk")
            + c["chargeback_count_1y"] * column(X, "chargeback_count_1y")
            + c["new_account"] * (age < 30)
            + c["log1p_age_months"] * np.log1p(age / 30.0))


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


def make_customer_risk() -> Pipeline:
    return Pipeline([
        ("scaler", StandardScaler()),
        ("clf", LogisticRegression(max_iter=2000, random_state=LR_SEED)),
    ])


def fit_txn_pattern(X_train: np.ndarray, y_train: np.ndarray) -> Pipeline:
    """ColumnTransformer(one-hot merchant_category and country; bin amount and
    hour at the fixed edges and one-hot the bins; pass is_card_present) +
    LogisticRegression.

    KBinsDiscretizer has no fixed-edge mode: it is fitted (uniform strategy,
    5 bins) and its `bin_edges_` are then overwritten with the declared edges,
    before the classifier is fitted on the transformed rows.  sklearn bins
    with searchsorted(edges[1:-1], x, side="right") and skl2onnx with
    ArgMax(Concat(x < edges[1:-1], 1)) -- both: bin = number of inner edges
    <= x, so x exactly at an edge goes to the upper bin.  The outer edges are
    never compared.
    """
    binning = Pipeline([
        ("kbins", KBinsDiscretizer(n_bins=[N_AMOUNT_BINS, N_HOUR_BINS], encode="ordinal", strategy="uniform")),
        ("onehot", OneHotEncoder(
            categories=[list(range(N_AMOUNT_BINS)), list(range(N_HOUR_BINS))],
            handle_unknown="ignore", sparse_output=False, dtype=np.float64,
        )),
    ])
    prep = ColumnTransformer([
        ("categories", OneHotEncoder(
            categories=[[float(c) for c in MCC_CODES], [float(c) for c in COUNTRY_CODES]],
            handle_unknown="ignore", sparse_output=False, dtype=np.float64,
        ), [0, 1]),
        ("bins", binning, [2, 3]),
        ("card_present", "passthrough", [4]),
    ])
    prep.fit(X_train)
    kbins = prep.named_transformers_["bins"].named_steps["kbins"]
    kbins.bin_edges_ = np.array([
        np.array([-np.inf] + AMOUNT_EDGES + [np.inf]),
        np.array([-np.inf] + HOUR_EDGES + [np.inf]),
    ], dtype=object)
    kbins.n_bins_ = np.array([N_AMOUNT_BINS, N_HOUR_BINS])
    clf = LogisticRegression(max_iter=2000, random_state=LR_SEED)
    clf.fit(prep.transform(X_train), y_train)
    model = Pipeline([("prep", prep), ("clf", clf)])
    # The edges really are the declared ones, with "edge <= x goes up".
    probe = np.array([[9.99, 5.0], [10.0, 6.0], [49.99, 11.0], [50.0, 12.0], [50.01, 17.0],
                      [199.99, 17.99], [200.0, 18.0], [999.99, 21.0], [1000.0, 22.0], [1e6, 23.0]])
    got = kbins.transform(probe)
    want = np.array([[0, 0], [1, 1], [1, 1], [2, 2], [2, 2], [2, 2], [3, 3], [3, 3], [4, 4], [4, 4]])
    assert np.array_equal(got, want), got
    return model


def amount_bin(x) -> np.ndarray:
    return np.searchsorted(np.array(AMOUNT_EDGES), x, side="right")


def hour_bin(x) -> np.ndarray:
    return np.searchsorted(np.array(HOUR_EDGES), x, side="right")


# --------------------------------------------------------------------------
# ONNX export
# --------------------------------------------------------------------------


def _initializer(onx: onnx.ModelProto, name: str):
    for init in onx.graph.initializer:
        if init.name == name:
            return init
    return None


def make_tract_compatible(onx: onnx.ModelProto) -> dict:
    """Rewrite the parts of a skl2onnx ColumnTransformer / KBinsDiscretizer /
    OneHotEncoder export that tract-onnx 0.23.9 cannot run into standard ops
    with the same results.  Returns a count of each rewrite.

    1. ai.onnx.ml ArrayFeatureExtractor(X, const indices) -> Gather(X, indices
       as a 1-D tensor, axis=1): the same [N, k] columns.  tract has no
       ArrayFeatureExtractor.
    2. Cast(to=INT64) -> ai.onnx.ml OneHotEncoder(cats_int64s, zeros=1) ->
       Cast(Equal(x, cats as float32 [K]), to=FLOAT): [N, 1] vs [K] broadcasts
       to [N, K] one-hot rows (the Reshape skl2onnx puts after the Concat of the
       encoders makes it [N, total] either way).  tract has no OneHotEncoder
       and turns Cast(to=INT64) into its TDim type.  All categories here are
       integers far below 2^24, exact in float32; a value that matches no
       category (an unknown code, a non-integer, NaN) gives an all-zero row,
       which is sklearn's handle_unknown="ignore".
    3. KBinsDiscretizer's column of ones, which skl2onnx computes as
       x * 0 + 1 from the raw column (NaN for x = +-inf), is computed from the
       0/1 output of the comparisons instead: Cast(Less(x, edges)) * 0 + 1.
       That makes it [N, n_edges] instead of [N, 1]; ArgMax over
       Concat(x < edges, ones) still picks the first edge above x, or
       n_edges when there is none, and now no arithmetic at all touches the
       raw amount or hour: they only meet the Less comparisons, so the bin
       index, and everything after it, is a function of the bin alone.
    """
    counts = {"ArrayFeatureExtractor": 0, "OneHotEncoder": 0, "ones_column": 0}
    graph = onx.graph
    producer = {out: node for node in graph.node for out in node.output}

    # 1. ArrayFeatureExtractor -> Gather(axis=1)
    for node in graph.node:
        if node.domain == "ai.onnx.ml" and node.op_type == "ArrayFeatureExtractor":
            init = _initializer(onx, node.input[1])
            if init is None:
                raise RuntimeError(f"ArrayFeatureExtractor {node.name}: indices are not a constant")
            idx = numpy_helper.to_array(init).astype(np.int64).reshape(-1)
            new_name = node.input[1] + "_1d"
            if _initializer(onx, new_name) is None:
                graph.initializer.append(numpy_helper.from_array(idx, new_name))
            node.op_type = "Gather"
            node.domain = ""
            node.input[1] = new_name
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute("axis", 1))
            counts["ArrayFeatureExtractor"] += 1

    # 2. Cast(to=INT64) -> OneHotEncoder  =>  Cast(Equal(x, cats), to=FLOAT)
    for node in list(graph.node):
        if not (node.domain == "ai.onnx.ml" and node.op_type == "OneHotEncoder"):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("zeros", 1) != 1 or "cats_int64s" not in attrs:
            raise RuntimeError(f"OneHotEncoder {node.name}: unsupported attributes {sorted(attrs)}")
        cats = np.array(attrs["cats_int64s"], dtype=np.int64)
        if np.any(np.abs(cats) >= 2 ** 24):
            raise RuntimeError(f"OneHotEncoder {node.name}: category not exact in float32")
        cast = producer.get(node.input[0])
        if cast is None or cast.op_type != "Cast" or not any(
            a.name == "to" and a.i == onnx.TensorProto.INT64 for a in cast.attribute
        ):
            raise RuntimeError(f"OneHotEncoder {node.name}: input is not a Cast(to=INT64)")
        users = [n for n in graph.node if cast.output[0] in n.input]
        if users != [node]:
            raise RuntimeError(f"Cast {cast.name} feeds more than the OneHotEncoder")
        x_float = cast.input[0]
        cats_name = node.name + "_cats_f32"
        graph.initializer.append(numpy_helper.from_array(cats.astype(np.float32), cats_name))
        eq_name = node.name + "_equal"
        pos = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(pos, onnx.helper.make_node(
            "Cast", [eq_name], [node.output[0]], name=node.name + "_cast", to=onnx.TensorProto.FLOAT,
        ))
        graph.node.insert(pos, onnx.helper.make_node(
            "Equal", [x_float, cats_name], [eq_name], name=node.name + "_eq",
        ))
        graph.node.remove(cast)
        counts["OneHotEncoder"] += 1

    # 3. The ones column of KBinsDiscretizer: Mul(cast_column, 0) -> Mul(Cast(Less(cast_column, edges)), 0)
    producer = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.op_type != "Mul":
            continue
        zero = _initializer(onx, node.input[1])
        if zero is None or numpy_helper.to_array(zero).tolist() != [0.0]:
            continue
        less = [n for n in graph.node if n.op_type == "Less" and n.input[0] == node.input[0]]
        if len(less) != 1:
            raise RuntimeError(f"Mul {node.name}: no unique Less on {node.input[0]}")
        less_cast = [n for n in graph.node if n.op_type == "Cast" and n.input[0] == less[0].output[0]]
        if len(less_cast) != 1:
            raise RuntimeError(f"Less {less[0].name}: no unique Cast of its result")
        node.input[0] = less_cast[0].output[0]
        counts["ones_column"] += 1

    # Nodes must stay topologically sorted: the Mul now reads the Cast of the
    # Less, which skl2onnx may have placed after it.
    order, done = [], set(graph.initializer[i].name for i in range(len(graph.initializer)))
    done |= {i.name for i in graph.input}
    pending = list(graph.node)
    while pending:
        ready = [n for n in pending if all(i in done or i == "" for i in n.input)]
        if not ready:
            raise RuntimeError("graph has a cycle after the rewrite")
        for n in ready:
            order.append(n)
            done.update(n.output)
            pending.remove(n)
    del graph.node[:]
    graph.node.extend(order)
    used = {i for node in graph.node for i in node.input}
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)
    return counts


def raw_column_consumers(onx: onnx.ModelProto, columns: list[int]) -> set[str]:
    """The op types that the given input columns reach before any op that
    only passes them on (Gather of those columns, Cast to float, Concat).  For
    txn_pattern's amount and hour this must be exactly {"Less"}."""
    graph = onx.graph
    consumers = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    found = set()
    # Start: Gathers of the input that select any of the columns.
    frontier = []
    for node in consumers.get(INPUT_NAME, []):
        if node.op_type != "Gather":
            raise RuntimeError(f"input feeds a {node.op_type}, not a Gather")
        idx = numpy_helper.to_array(_initializer(onx, node.input[1])).reshape(-1).tolist()
        if any(c in idx for c in columns):
            frontier.append((node, [j for j, c in enumerate(idx) if c in columns]))
    # Follow: Gather of a selected column, Cast to float.
    while frontier:
        node, cols = frontier.pop()
        for user in consumers.get(node.output[0], []):
            if user.op_type == "Gather" and user.input[0] == node.output[0]:
                idx = numpy_helper.to_array(_initializer(onx, user.input[1])).reshape(-1).tolist()
                sel = [j for j, c in enumerate(idx) if c in cols]
                if sel:
                    frontier.append((user, sel))
            elif user.op_type == "Cast" and any(
                a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in user.attribute
            ):
                frontier.append((user, cols))
            else:
                found.add(user.op_type)
    return found


def export_onnx(model, name: str, version: str, feature_names: list[str], description: str,
                extra_metadata: dict | None = None) -> tuple[onnx.ModelProto, dict]:
    """skl2onnx export with the fraud export's conventions: no ZipMap,
    StandardScaler as Sub + Div, no final_types, outputs `label` int64 [batch]
    and `probabilities` float32 [batch, 2], label fix, deduplicated opsets,
    batch dimension named `batch`, metadata, op allow-list."""
    onx = convert_sklearn(
        model,
        name=f"{name}_v{version}",
        initial_types=[(INPUT_NAME, FloatTensorType([None, len(feature_names)]))],
        options=fraud.export_options(model),
        target_opset=TARGET_OPSET,
    )
    rewrites = make_tract_compatible(onx)
    outs = [o.name for o in onx.graph.output]
    if outs != ["label", "probabilities"]:
        assert len(outs) == 2, outs
        rename = dict(zip(outs, ["label", "probabilities"]))
        for node in onx.graph.node:
            node.output[:] = [rename.get(x, x) for x in node.output]
        for o in onx.graph.output:
            o.name = rename.get(o.name, o.name)
    fraud.fix_label_for_tract(onx, fraud.final_estimator(model).classes_)
    fraud.dedupe_opsets(onx)
    for vi in list(onx.graph.input) + list(onx.graph.output):
        dim0 = vi.type.tensor_type.shape.dim[0]
        dim0.ClearField("dim_value")
        dim0.dim_param = "batch"
    expected = {
        "label": (onnx.TensorProto.INT64, ["batch"]),
        "probabilities": (onnx.TensorProto.FLOAT, ["batch", 2]),
    }
    for o in onx.graph.output:
        tt = o.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in tt.shape.dim]
        if (tt.elem_type, dims) != expected[o.name]:
            raise RuntimeError(f"unexpected output {o.name}: elem_type {tt.elem_type}, dims {dims}")
    # skl2onnx's intermediate value_info (shapes of the replaced ops) is stale.
    del onx.graph.value_info[:]
    onx.doc_string = description
    onx.model_version = int(version)
    onx.producer_name = "mlgw train_batch_models.py"
    del onx.metadata_props[:]
    meta = {
        "model": name,
        "version": version,
        "feature_names": ",".join(feature_names),
        "sklearn_version": sklearn.__version__,
        "skl2onnx_version": skl2onnx.__version__,
    }
    meta.update(extra_metadata or {})
    for k, v in meta.items():
        entry = onx.metadata_props.add()
        entry.key = k
        entry.value = v
    onnx.checker.check_model(onx, full_check=True)
    for node in onx.graph.node:
        key = (node.domain or "", node.op_type)
        if node.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.INT64 for a in node.attribute):
            raise RuntimeError("Cast(to=INT64) in the graph: tract would produce TDim, not i64")
        if key not in TRACT_OPS:
            raise RuntimeError(f"op {key} is not in the list of ops tract-onnx 0.23.9 is known to run; refusing to export")
    return onx, rewrites


def save_onnx(onx: onnx.ModelProto, path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onx.SerializeToString())
    ops = sorted({f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in onx.graph.node})
    opsets = ", ".join(f"{o.domain or 'ai.onnx'}={o.version}" for o in onx.opset_import)
    size = path.stat().st_size
    print(f"  wrote {path} ({size} bytes), ops: {', '.join(ops)}; opsets: {opsets}")
    return size


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------


def load_tract(path: Path):
    """tract runnable (no input fact set: the file alone must be enough), or
    None when the `tract` package is missing."""
    try:
        import tract  # noqa: PLC0415
    except ImportError:
        return None
    return tract.onnx().load(str(path)).into_model().into_runnable()


def run_tract(runnable, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    label, proba = (t.to_numpy() for t in runnable.run([np.ascontiguousarray(X, dtype=np.float32)]))
    n = X.shape[0]
    if label.dtype != np.int64 or label.shape != (n,):
        raise AssertionError(f"tract: label {label.dtype} {label.shape}")
    if proba.dtype != np.float32 or proba.shape != (n, 2):
        raise AssertionError(f"tract: probabilities {proba.dtype} {proba.shape}")
    return label, proba


def run_ort(sess, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    label, proba = sess.run(None, {INPUT_NAME: np.ascontiguousarray(X, dtype=np.float32)})
    return label, proba


def check_signature(sess, n_features: int) -> None:
    ins = sess.get_inputs()
    assert [i.name for i in ins] == [INPUT_NAME], ins
    assert ins[0].type == "tensor(float)", ins[0].type
    assert len(ins[0].shape) == 2 and ins[0].shape[1] == n_features, ins[0].shape
    assert not isinstance(ins[0].shape[0], int), ins[0].shape
    outs = sess.get_outputs()
    assert [o.name for o in outs] == ["label", "probabilities"], [o.name for o in outs]
    assert outs[0].type == "tensor(int64)", outs[0].type
    assert outs[1].type == "tensor(float)", outs[1].type
    assert len(outs[0].shape) == 1 and not isinstance(outs[0].shape[0], int), outs[0].shape
    assert len(outs[1].shape) == 2 and outs[1].shape[1] == 2, outs[1].shape


def compare(what: str, label, proba, ref_label, ref_proba, tol: float = 1e-5) -> float:
    """Max abs probability difference; labels may differ only at a 0.5 tie."""
    diff = float(np.max(np.abs(proba.astype(np.float64) - ref_proba.astype(np.float64))))
    bad = np.nonzero(label != ref_label)[0]
    if diff > tol or any(abs(float(ref_proba[i, 1]) - 0.5) > 1e-5 for i in bad):
        raise AssertionError(f"{what}: max abs diff {diff:.3g}, {len(bad)} label mismatches")
    return diff


def batch_dependence(run, X: np.ndarray, whole: np.ndarray) -> dict:
    """For batch sizes 1, 3, 64, 256: how many rows get probabilities that are
    not bit-identical to the same rows' in one big call."""
    out = {}
    for bs in (1, 3, 64, 256):
        parts = [run(X[start:start + bs])[1] for start in range(0, len(X), bs)]
        p = np.concatenate(parts)
        out[bs] = int(np.any(p.view(np.uint32) != whole.view(np.uint32), axis=1).sum())
    return out


def check_model(path: Path, model, X_test: np.ndarray, n_features: int) -> dict:
    """onnxruntime and tract vs sklearn on the test rows, and the batch sizes
    1, 3, 64, 256, all rows: returns the max abs differences."""
    sess = fraud.ort_session(path)
    check_signature(sess, n_features)
    sk_proba = model.predict_proba(X_test)
    sk_label = model.predict(X_test)
    ort_label, ort_proba = run_ort(sess, X_test)
    d_ort = compare(f"{path}: onnxruntime vs sklearn", ort_label, ort_proba, sk_label, sk_proba)
    result = {"ort_vs_sklearn": d_ort, "tract_vs_ort": None, "batch_bits_ort": None, "batch_bits_tract": None}
    result["batch_bits_ort"] = batch_dependence(lambda X: run_ort(sess, X), X_test[:512], ort_proba[:512])
    runnable = load_tract(path)
    if runnable is None:
        print(f"  check {path}: max |ort - sklearn| = {d_ort:.3e} over {len(X_test)} rows; "
              f"tract check skipped (python package `tract` not installed)")
        return result
    t_label, t_proba = run_tract(runnable, X_test)
    result["tract_vs_ort"] = compare(f"{path}: tract vs onnxruntime", t_label, t_proba, ort_label, ort_proba)
    compare(f"{path}: tract vs sklearn", t_label, t_proba, sk_label, sk_proba)
    result["batch_bits_tract"] = batch_dependence(lambda X: run_tract(runnable, X), X_test[:512], t_proba[:512])
    print(f"  check {path}: label int64 [N], probabilities float32 [N,2]; over {len(X_test)} test rows "
          f"max |ort - sklearn| = {d_ort:.3e}, max |tract - ort| = {result['tract_vs_ort']:.3e}")
    print(f"    rows of the first 512 whose probabilities are not bit-identical to the 10000-row call, "
          f"by batch size: onnxruntime {result['batch_bits_ort']}, tract {result['batch_bits_tract']}")
    return result


def in_bin_values(edges: list[float], b: int, rng, integer: bool) -> np.ndarray:
    """float32 values inside bin b: its lower edge exactly, the next float32
    above it, the last float32 below its upper edge, random ones in between,
    and for the open-ended bins far values and infinity."""
    f = np.float32
    lo = f(edges[b - 1]) if b > 0 else None
    hi = f(edges[b]) if b < len(edges) else None
    vals = []
    if lo is not None:
        vals += [lo, np.nextafter(lo, f(np.inf))]
    else:
        vals += [f(-np.inf), f(-3.0e38), f(-1.0), f(0.0)]
    if hi is not None:
        vals += [np.nextafter(hi, f(-np.inf))]
    else:
        vals += [f(np.inf), f(3.0e38), f(1.0e7)]
    a = lo if lo is not None else f(0.0 if hi > 0 else hi - 100)
    z = hi if hi is not None else f(a * 20 + 100)
    vals += list(rng.uniform(a, z, size=4).astype(np.float32))
    if integer:
        top = int(np.ceil(z)) - 1 if hi is not None else int(a) + 3
        vals += [f(v) for v in range(int(np.ceil(a)), top + 1)]
    vals = np.array([v for v in vals if (lo is None or v >= lo) and (hi is None or v < hi)], dtype=np.float32)
    assert len(vals) >= 4
    return vals


def check_bins(path: Path, X_rows: np.ndarray, seed: int) -> dict:
    """For each sample row and each runtime: replacing amount and hour_of_day
    with other values of the same bins gives bit-identical probabilities and
    the same label; and the values just below an edge land in another bin."""
    rng = np.random.default_rng(seed)
    sess = fraud.ort_session(path)
    runnable = load_tract(path)
    runtimes = [("onnxruntime", lambda X: run_ort(sess, X))]
    if runnable is not None:
        runtimes.append(("tract", lambda X: run_tract(runnable, X)))
    i_amount = TXN_PATTERN_FEATURES.index("amount")
    i_hour = TXN_PATTERN_FEATURES.index("hour_of_day")
    amount_vals = [in_bin_values(AMOUNT_EDGES, b, rng, integer=False) for b in range(N_AMOUNT_BINS)]
    hour_vals = [in_bin_values(HOUR_EDGES, b, rng, integer=True) for b in range(N_HOUR_BINS)]
    for b, v in enumerate(amount_vals):
        assert np.all(amount_bin(v.astype(np.float64)) == b), (b, v)
    for b, v in enumerate(hour_vals):
        assert np.all(hour_bin(v.astype(np.float64)) == b), (b, v)
    n_variants = 0
    for name, run in runtimes:
        base_label, base_proba = run(X_rows)
        for r, row in enumerate(X_rows):
            ab = int(amount_bin(float(row[i_amount])))
            hb = int(hour_bin(float(row[i_hour])))
            av, hv = amount_vals[ab], hour_vals[hb]
            # every amount value with the row's hour, every hour value with the row's amount,
            # and a few random (amount, hour) pairs
            k = 6
            variants = np.repeat(row[None, :], len(av) + len(hv) + k, axis=0)
            variants[:len(av), i_amount] = av
            variants[len(av):len(av) + len(hv), i_hour] = hv
            variants[len(av) + len(hv):, i_amount] = rng.choice(av, size=k)
            variants[len(av) + len(hv):, i_hour] = rng.choice(hv, size=k)
            label, proba = run(variants)
            if not (np.all(label == base_label[r])
                    and np.array_equal(proba.view(np.uint32),
                                       np.broadcast_to(base_proba[r], proba.shape).view(np.uint32))):
                raise AssertionError(f"{name}: row {r} {row.tolist()}: answer changes within its bins")
            n_variants += len(variants)
        # Edges: just below an edge is another bin, at the edge and above is the same.
        row = X_rows[0].copy()
        for i, edges in ((i_amount, AMOUNT_EDGES), (i_hour, HOUR_EDGES)):
            for e in edges:
                probe = np.repeat(row[None, :], 3, axis=0)
                probe[:, i] = [np.nextafter(np.float32(e), np.float32(-np.inf)), e, np.nextafter(np.float32(e), np.float32(np.inf))]
                _, p = run(probe)
                if not np.array_equal(p[1].view(np.uint32), p[2].view(np.uint32)):
                    raise AssertionError(f"{name}: column {i}: {e} and just above {e} differ")
                if np.array_equal(p[0].view(np.uint32), p[1].view(np.uint32)):
                    raise AssertionError(f"{name}: column {i}: just below {e} and {e} give the same answer")
        probe = np.repeat(row[None, :], 3, axis=0)
        probe[:, i_amount] = [49.99, 50.0, 50.01]
        _, p = run(probe)
        assert np.array_equal(p[1].view(np.uint32), p[2].view(np.uint32)), name
        assert not np.array_equal(p[0].view(np.uint32), p[1].view(np.uint32)), name
    names = [name for name, _ in runtimes]
    print(f"  bin check {path}: {len(X_rows)} rows x {n_variants // len(runtimes) // len(X_rows)} "
          f"in-bin variants each (edges, next float32 above, last float32 below the next edge, random, "
          f"+-inf in the open bins): probabilities bit-identical, labels identical in {', '.join(names)}; "
          f"49.99 / 50.0 / 50.01: 50.0 == 50.01 != 49.99")
    return {"rows": len(X_rows), "variants": n_variants, "runtimes": names}


def representatives() -> np.ndarray:
    """One row per (merchant_category, country, amount bin, hour bin,
    is_card_present) combination -- the gateway's precomputation grid -- using
    each bin's lower edge (0 for the first bin)."""
    amount_rep = [0.0] + AMOUNT_EDGES
    hour_rep = [0.0] + HOUR_EDGES
    grid = np.array(np.meshgrid(
        np.array(MCC_CODES, dtype=np.float64), np.array(COUNTRY_CODES, dtype=np.float64),
        np.array(amount_rep), np.array(hour_rep), np.array([0.0, 1.0]), indexing="ij",
    )).reshape(5, -1).T
    return grid.astype(np.float32)


def check_grid(path: Path, model) -> dict:
    """All 30 x 25 x 5 x 5 x 2 combinations: sklearn, onnxruntime and tract
    agree; and unknown codes give an answer."""
    X = representatives()
    sess = fraud.ort_session(path)
    sk_proba, sk_label = model.predict_proba(X), model.predict(X)
    o_label, o_proba = run_ort(sess, X)
    d_ort = compare("grid: onnxruntime vs sklearn", o_label, o_proba, sk_label, sk_proba)
    runnable = load_tract(path)
    d_tract = None
    if runnable is not None:
        t_label, t_proba = run_tract(runnable, X)
        d_tract = compare("grid: tract vs onnxruntime", t_label, t_proba, o_label, o_proba)
    # Unknown codes: an MCC and a country not in the lists (and a non-integer
    # one) are one-hot zero rows, in sklearn and both runtimes alike.
    unknown = np.array([
        [1234.0, 840.0, 60.0, 13.0, 1.0],
        [5411.0, 999.0, 60.0, 13.0, 1.0],
        [1234.0, 999.0, 60.0, 13.0, 0.0],
        [5411.5, 840.0, 60.0, 13.0, 1.0],
        [-1.0, 0.0, 5.0, 2.0, 0.0],
    ], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Found unknown categories ..."
        sk_up, sk_ul = model.predict_proba(unknown), model.predict(unknown)
    u_label, u_proba = run_ort(sess, unknown)
    compare("unknown codes: onnxruntime vs sklearn", u_label, u_proba, sk_ul, sk_up)
    if runnable is not None:
        tu_label, tu_proba = run_tract(runnable, unknown)
        compare("unknown codes: tract vs onnxruntime", tu_label, tu_proba, u_label, u_proba)
    assert np.isfinite(u_proba).all()
    print(f"  grid check {path}: all {len(X)} combinations (30 MCC x 25 countries x 5 amount bins x "
          f"5 hour bins x card present 0/1): max |ort - sklearn| = {d_ort:.3e}"
          + ("" if d_tract is None else f", max |tract - ort| = {d_tract:.3e}")
          + f"; unknown codes answered: P(fraud) = {', '.join(f'{p:.4f}' for p in u_proba[:, 1])}")
    return {"rows": len(X), "ort_vs_sklearn": d_ort, "tract_vs_ort": d_tract}


# --------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------

CONFIG_HEAD = """\
# {name}: {title} (synthetic example model)
platform = "onnx"
# Scored in bulk by the gateway's batch jobs, so batches are large.
max_batch_size = {max_batch}

# Input `features` is float32 [batch, {n}], columns in this exact order:
{columns}
# Outputs: `label` int64 [batch] (1 = fraud), `probabilities` float32 [batch, 2]
# ([P(legit), P(fraud)]).
{notes}
# Generated by model-server/training/train_batch_models.py -- see DATASET.md there.

# Batching: while an inference of this version runs, queued requests wait up
# to max_queue_delay_ms for others to join them; an idle server runs a request
# at once (set wait_when_idle = true to always wait out the window).
[dynamic_batching]
max_queue_delay_ms = 2
max_queue_size = 1024

[warmup]
iterations = 3

[[input]]
name = "features"
datatype = "FP32"
shape = [-1, {n}]
allow_nan = false

[[output]]
name = "label"
datatype = "INT64"
shape = [-1]

[[output]]
name = "probabilities"
datatype = "FP32"
shape = [-1, 2]
"""


def _wrap_codes(codes, prefix: str, width: int = 79) -> list[str]:
    lines, cur = [], prefix
    for i, c in enumerate(codes):
        piece = f"{c}" + ("," if i < len(codes) - 1 else "")
        if len(cur) + len(piece) + 1 > width:
            lines.append(cur.rstrip())
            cur = prefix
        cur += piece + " "
    lines.append(cur.rstrip())
    return lines


def write_customer_risk_config(model_dir: Path) -> Path:
    columns = ["#   static customer features (daily batch job, keyed by customer_id):"]
    columns += [f"#   {i:2d}  {n}" for i, n in enumerate(CUSTOMER_RISK_FEATURES)]
    notes = ("# Scored once per customer entity from the profile alone (no transaction\n"
             "# data): the customer's fraud propensity.\n"
             "# Versions: 1 = StandardScaler + LogisticRegression.")
    text = CONFIG_HEAD.format(
        name=CUSTOMER_RISK, title="a customer's fraud propensity from the static profile, keyed by customer_id",
        max_batch=MAX_BATCH_SIZE, n=len(CUSTOMER_RISK_FEATURES), columns="\n".join(columns), notes=notes,
    )
    path = model_dir / "config.toml"
    path.write_text(text)
    return path


def write_txn_pattern_config(model_dir: Path) -> Path:
    desc = {
        "merchant_category": "merchant category code (MCC), one of the 30 below",
        "country": "merchant country, ISO 3166-1 numeric, one of the 25 below",
        "amount": "transaction amount",
        "hour_of_day": "hour of day, 0..23",
        "is_card_present": "0 / 1",
    }
    columns = ["#   request-time features (sent with the call):"]
    columns += [f"#   {i:2d}  {n}: {desc[n]}" for i, n in enumerate(TXN_PATTERN_FEATURES)]
    notes = [
        "# The model bins amount and hour_of_day itself (bin = number of edges <= x):",
        f"#   amount edges      {AMOUNT_EDGES}",
        f"#   hour_of_day edges {[int(e) for e in HOUR_EDGES]}",
        "# so its answer is the same for every input of one (merchant_category,",
        "# country, amount bin, hour bin, is_card_present) combination; send the raw",
        "# values. A code not in the lists is an all-zero one-hot column (no error).",
        "# MCCs:",
        *_wrap_codes(MCC_CODES, "#   "),
        "# countries:",
        *_wrap_codes(COUNTRY_CODES, "#   "),
        "# Versions: 1 = one-hot(MCC, country, amount bin, hour bin) + is_card_present",
        "#   -> LogisticRegression.",
    ]
    text = CONFIG_HEAD.format(
        name=TXN_PATTERN, title="fraud score of a transaction pattern, scored per combination of its inputs",
        max_batch=MAX_BATCH_SIZE, n=len(TXN_PATTERN_FEATURES), columns="\n".join(columns), notes="\n".join(notes),
    )
    path = model_dir / "config.toml"
    path.write_text(text)
    return path


def write_reference(path: Path, name: str, version: str, feature_names: list[str],
                    onnx_path: Path, X_ref: np.ndarray) -> None:
    sess = fraud.ort_session(onnx_path)
    label, proba = run_ort(sess, X_ref)
    f32 = fraud.f32
    doc = {
        "model": name,
        "version": version,
        "input": INPUT_NAME,
        "feature_names": feature_names,
        "inputs": [[f32(v) for v in row] for row in X_ref],
        "outputs": {
            "label": [int(v) for v in label],
            "probabilities": [[f32(a), f32(b)] for a, b in proba],
        },
    }
    back = np.array(doc["inputs"], dtype=np.float32)
    assert np.array_equal(back.view(np.uint32), X_ref.view(np.uint32))
    backp = np.array(doc["outputs"]["probabilities"], dtype=np.float32)
    assert np.array_equal(backp.view(np.uint32), proba.view(np.uint32))
    path.write_text(json.dumps(doc, indent=None, separators=(",", ":")) + "\n")


def write_feature_names(reference_dir: Path) -> list[Path]:
    p1 = reference_dir / f"{CUSTOMER_RISK}_feature_names.json"
    p1.write_text(json.dumps({"static": CUSTOMER_RISK_FEATURES}, indent=2) + "\n")
    p2 = reference_dir / f"{TXN_PATTERN}_feature_names.json"
    p2.write_text(json.dumps({
        "request": TXN_PATTERN_FEATURES,
        "bin_edges": {"amount": AMOUNT_EDGES, "hour_of_day": HOUR_EDGES},
        "categories": {"merchant_category": MCC_CODES, "country": COUNTRY_CODES},
    }, indent=2) + "\n")
    return [p1, p2]


def rate_table(codes: np.ndarray, y: np.ndarray, table, label_cols) -> str:
    lines = [
        "| code | " + " | ".join(label_cols) + " | rows | share (legit) | share (fraud) | fraud rate |",
        "|---:|" + "---|" * len(label_cols) + "---:|---:|---:|---:|",
    ]
    legit, fraud_ = y == 0, y == 1
    for row in table:
        c = row[0]
        m = codes == c
        lines.append(
            f"| {c:03d} | " + " | ".join(str(x) for x in row[1:1 + len(label_cols)])
            + f" | {int(m.sum())} | {m[legit].mean():.2%} | {m[fraud_].mean():.2%} | {y[m].mean():.2%} |"
        )
    return "\n".join(lines)


def bin_table(values: np.ndarray, y: np.ndarray, edges: list[float], name: str, fmt) -> str:
    b = np.searchsorted(np.array(edges), values, side="right")
    lines = [f"| {name} bin | range | rows | fraud rate |", "|---:|---|---:|---:|"]
    for i in range(len(edges) + 1):
        lo = "-inf" if i == 0 else fmt(edges[i - 1])
        hi = "+inf" if i == len(edges) else fmt(edges[i])
        m = b == i
        lines.append(f"| {i} | [{lo}, {hi}) | {int(m.sum())} | {y[m].mean():.2%} |")
    return "\n".join(lines)


DATASET_SECTION = """\
{marker}

# Batch-scored models: `customer_risk` and `txn_pattern`

`train_batch_models.py` trains two more models on the same {n} rows (imported
from `train_fraud_model.py`: same generator, same label, same stratified 80/20
split with `random_state={split_seed}`). The gateway precomputes their
predictions in bulk, so their inputs are restricted: `customer_risk` is scored
once per customer entity, `txn_pattern` once per combination of its inputs.
The `fraud_detector` files are not touched by it.

## New columns: `merchant_category` and `country`

Two categorical columns are added for `txn_pattern`. They come from a
**second, separate** stream, `numpy.random.default_rng({category_seed})`, drawn
after the whole data set above is generated, so every existing column, the
fraud label and the `fraud_detector` models and reference files stay
byte-identical. They are drawn conditionally on the fraud label, to make them
informative: the stream first draws `merchant_category` for all rows with the
legitimate weights, then for all rows with the fraud weights, then `country`
the same way, and each row keeps the draw of its own label (so the number of
draws does not depend on the label). Both are stored as float32 integers.

`merchant_category`: an ISO 18245 merchant category code, one of these 30
(ascending; this is also the model's one-hot order), with the relative weights
among legitimate and fraud rows:

{mcc_table}

`country`: the merchant's country, ISO 3166-1 numeric, one of these 25
(ascending, the one-hot order):

{country_table}

## `customer_risk` (version 1)

A customer's fraud propensity from the static profile alone, scored per
customer entity (keyed by `customer_id`).

* Input `features` float32 `[batch, 5]`: {cr_features} (the first 5 columns of the
  fraud data set).
* Label: the fraud label `y`.
* Model: `Pipeline([StandardScaler(), LogisticRegression(max_iter=2000, random_state={lr_seed})])`,
  exported like fraud_detector v1 (StandardScaler as `Sub` + `Div`).
* **Test AUC {auc_cr:.4f}** ({n_test} test rows; train AUC {auc_cr_train:.4f}). The profile
  carries only a small part of the label rule's signal (the `home_country_risk`,
  `chargeback_count_1y`, new-account and account-age terms); those terms of the rule itself,
  the true coefficients, rank the test rows with AUC {auc_cr_rule:.4f}. So this model is close to
  the best the profile allows on this data set and is weak by construction: an example of an
  entity-level score, not a useful fraud detector.

## `txn_pattern` (version 1)

A fraud score of a transaction *pattern*, scored per combination of its inputs.

* Input `features` float32 `[batch, 5]`: {tp_features}.
* Label: the fraud label `y`.
* Model: `Pipeline([ColumnTransformer([...]), LogisticRegression(max_iter=2000, random_state={lr_seed})])`:
  * `OneHotEncoder(categories=[the 30 MCCs, the 25 countries], handle_unknown="ignore")` on
    `merchant_category` and `country`;
  * `KBinsDiscretizer(encode="ordinal")` on `amount` and `hour_of_day`, fitted and then given
    fixed `bin_edges_`, followed by a one-hot encoding of the bin indices (5 + 5 columns);
  * `is_card_present` passed through.
* Binning, inside the ONNX graph, so callers send raw values (bin = number of edges <= x,
  a value exactly at an edge goes to the upper bin):
  * `amount` edges {amount_edges}: bins `< 10`, `[10, 50)`, `[50, 200)`, `[200, 1000)`, `>= 1000`;
  * `hour_of_day` edges {hour_edges}: bins `0-5`, `6-11`, `12-17`, `18-21`, `22-23`.
* The output is therefore constant within each (merchant_category, country, amount bin, hour bin,
  is_card_present) combination: {n_grid} combinations for the listed codes. A code not in the
  lists gets an all-zero one-hot block and still an answer.
* **Test AUC {auc_tp:.4f}** ({n_test} test rows).

Fraud rate by bin (all rows):

{amount_bins}

{hour_bins}

## Checks

* onnxruntime vs sklearn on the test rows: max abs difference {d_cr_ort:.2e} (`customer_risk`),
  {d_tp_ort:.2e} (`txn_pattern`); tract (Python bindings, same version as the Rust server) vs
  onnxruntime: {tract_note}.
* A row's answer in one call vs in batches of 1, 3, 64 and 256 rows (first 512 test rows,
  bit-exact; number of rows that differ per batch size): tract {batch_tract}; onnxruntime
  {batch_ort}. (onnxruntime may differ by one float32 ulp for a 1-row call; the model server
  runs tract.)
* `txn_pattern`, all {n_grid} combinations (each bin's lower edge): sklearn, onnxruntime and tract agree
  (max abs difference onnxruntime vs sklearn {d_grid:.2e}{grid_tract}).
* `txn_pattern` bin check: for {n_bin_rows} test rows, amount and hour_of_day are replaced by
  other values of the same bins (each bin's lower edge, the next float32 above it, the last float32
  below the next edge, random values, every integer hour of the bin, +-inf and +-3e38 in the open
  bins): the probabilities stay **bit-identical** and the labels identical, in {bin_runtimes}. The
  last float32 below each edge gives a different answer than the edge; amount 50.0 and 50.01
  give the same answer, 49.99 another.
* Reference rows: the same {n_ref} test rows as for `fraud_detector` ({n_ref_fraud} fraud,
  {n_ref_legit} legitimate), in `reference/customer_risk_v1.json` and `reference/txn_pattern_v1.json`.

Built with: numpy {np_v}, scikit-learn {sk_v}, skl2onnx {skl2onnx_v}, onnx {onnx_v}, onnxruntime {ort_v}{tract_v}.
"""


def write_dataset_section(doc_path: Path, section: str) -> None:
    text = doc_path.read_text() if doc_path.exists() else ""
    cut = text.find(BATCH_DOC_MARKER)
    if cut >= 0:
        text = text[:cut]
    text = text.rstrip("\n") + "\n\n" + section
    doc_path.write_text(text)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def main(argv=None) -> int:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-repo", required=True, type=Path, help="model repository root (model-server/models)")
    ap.add_argument("--reference-dir", required=True, type=Path, help="where to write reference JSON files")
    ap.add_argument("--dataset-doc", type=Path, default=here / "DATASET.md",
                    help="DATASET.md to append this script's section to")
    args = ap.parse_args(argv)

    np.random.seed(0)  # nothing should use the global RNG, but just in case
    print(f"numpy {np.__version__}, scikit-learn {sklearn.__version__}, skl2onnx {skl2onnx.__version__}, "
          f"onnx {onnx.__version__}, onnxruntime {ort.__version__}")

    # ---- data: the fraud data set, unchanged, plus two columns from their own stream
    data = fraud.generate_dataset(fraud.N_CUSTOMERS, fraud.DATA_SEED)
    X, y = data["X"], data["y"]
    mcc, country = add_pattern_columns(y, CATEGORY_SEED)
    X_cr = np.ascontiguousarray(X[:, [fraud.FEATURE_NAMES.index(n) for n in CUSTOMER_RISK_FEATURES]])
    X_tp = np.stack([mcc, country, column(X, "amount"), column(X, "hour_of_day"), column(X, "is_card_present")],
                    axis=1).astype(np.float32)
    assert X_cr.dtype == np.float32 and np.isfinite(X_tp).all()
    idx = np.arange(len(y))
    idx_train, idx_test = train_test_split(idx, test_size=fraud.TEST_FRACTION, stratify=y,
                                           random_state=fraud.SPLIT_SEED)
    y_train, y_test = y[idx_train], y[idx_test]
    print(f"data: {len(y)} rows, fraud {int(y.sum())} ({y.mean():.2%}); train {len(idx_train)}, test {len(idx_test)}")

    # ---- customer_risk -------------------------------------------------------
    cr = make_customer_risk()
    cr.fit(X_cr[idx_train], y_train)
    auc_cr = roc_auc_score(y_test, cr.predict_proba(X_cr[idx_test])[:, 1])
    auc_cr_train = roc_auc_score(y_train, cr.predict_proba(X_cr[idx_train])[:, 1])
    auc_cr_rule = roc_auc_score(y_test, profile_terms_of_label_rule(X[idx_test]))
    print(f"{CUSTOMER_RISK} v1 LogisticRegression on {len(CUSTOMER_RISK_FEATURES)} static features: "
          f"test AUC = {auc_cr:.4f} (train {auc_cr_train:.4f}; the label rule's own profile terms "
          f"score {auc_cr_rule:.4f} on the test rows)")
    cr_onx, _ = export_onnx(
        cr, CUSTOMER_RISK, "1", CUSTOMER_RISK_FEATURES,
        f"{CUSTOMER_RISK} v1: StandardScaler + LogisticRegression on the 5 static customer features",
    )
    cr_path = args.out_repo / CUSTOMER_RISK / "1" / "model.onnx"
    size_cr = save_onnx(cr_onx, cr_path)
    print(f"  wrote {write_customer_risk_config(args.out_repo / CUSTOMER_RISK)}")

    # ---- txn_pattern ---------------------------------------------------------
    tp = fit_txn_pattern(X_tp[idx_train], y_train)
    auc_tp = roc_auc_score(y_test, tp.predict_proba(X_tp[idx_test])[:, 1])
    print(f"{TXN_PATTERN} v1 one-hot(MCC, country, amount bin, hour bin) + card present -> LogisticRegression: "
          f"test AUC = {auc_tp:.4f}")
    tp_onx, rewrites = export_onnx(
        tp, TXN_PATTERN, "1", TXN_PATTERN_FEATURES,
        f"{TXN_PATTERN} v1: one-hot(merchant_category, country), amount and hour_of_day binned at fixed "
        f"edges and one-hot, is_card_present -> LogisticRegression",
        extra_metadata={
            "amount_bin_edges": ",".join(str(e) for e in AMOUNT_EDGES),
            "hour_of_day_bin_edges": ",".join(str(e) for e in HOUR_EDGES),
            "merchant_category_codes": ",".join(str(c) for c in MCC_CODES),
            "country_codes": ",".join(str(c) for c in COUNTRY_CODES),
        },
    )
    print(f"  rewrites for tract: {rewrites}")
    reach = raw_column_consumers(tp_onx, [TXN_PATTERN_FEATURES.index("amount"),
                                          TXN_PATTERN_FEATURES.index("hour_of_day")])
    if reach != {"Less"}:
        raise RuntimeError(f"amount / hour_of_day reach {reach}, not only the bin comparisons")
    print("  graph check: amount and hour_of_day reach nothing but the Less comparisons against the bin edges")
    tp_path = args.out_repo / TXN_PATTERN / "1" / "model.onnx"
    size_tp = save_onnx(tp_onx, tp_path)
    print(f"  wrote {write_txn_pattern_config(args.out_repo / TXN_PATTERN)}")

    # ---- reference rows: the same 256 test rows as fraud_detector's ----------
    rng = np.random.default_rng(fraud.SAMPLE_SEED)
    test_fraud = np.nonzero(y_test == 1)[0]
    test_legit = np.nonzero(y_test == 0)[0]
    pick = np.concatenate([
        rng.choice(test_fraud, size=fraud.N_REFERENCE_FRAUD, replace=False),
        rng.choice(test_legit, size=fraud.N_REFERENCE - fraud.N_REFERENCE_FRAUD, replace=False),
    ])
    pick = pick[rng.permutation(len(pick))]
    rows = idx_test[pick]
    args.reference_dir.mkdir(parents=True, exist_ok=True)
    for name, feats, path, Xm in ((CUSTOMER_RISK, CUSTOMER_RISK_FEATURES, cr_path, X_cr),
                                  (TXN_PATTERN, TXN_PATTERN_FEATURES, tp_path, X_tp)):
        ref = args.reference_dir / f"{name}_v1.json"
        write_reference(ref, name, "1", feats, path, np.ascontiguousarray(Xm[rows]))
        print(f"  wrote {ref}")
    for p in write_feature_names(args.reference_dir):
        print(f"  wrote {p}")

    # ---- checks ----------------------------------------------------------------
    print("checking the ONNX files:")
    res_cr = check_model(cr_path, cr, X_cr[idx_test], len(CUSTOMER_RISK_FEATURES))
    res_tp = check_model(tp_path, tp, X_tp[idx_test], len(TXN_PATTERN_FEATURES))
    grid = check_grid(tp_path, tp)
    brng = np.random.default_rng(BIN_CHECK_SEED)
    bin_rows = np.ascontiguousarray(X_tp[idx_test][brng.choice(len(idx_test), size=N_BIN_CHECK_ROWS, replace=False)])
    bins = check_bins(tp_path, bin_rows, BIN_CHECK_SEED)
    for name, feats in ((CUSTOMER_RISK, CUSTOMER_RISK_FEATURES), (TXN_PATTERN, TXN_PATTERN_FEATURES)):
        ref = json.loads((args.reference_dir / f"{name}_v1.json").read_text())
        assert len(ref["inputs"]) == fraud.N_REFERENCE and all(len(r) == len(feats) for r in ref["inputs"])
        print(f"  reference {name} v1: {fraud.N_REFERENCE} rows, predicted fraud in {sum(ref['outputs']['label'])}")

    # ---- DATASET.md section ------------------------------------------------------
    have_tract = res_tp["tract_vs_ort"] is not None
    section = DATASET_SECTION.format(
        marker=BATCH_DOC_MARKER, n=len(y), split_seed=fraud.SPLIT_SEED, category_seed=CATEGORY_SEED,
        mcc_table=rate_table(mcc.astype(np.int64), y, MCC_TABLE, ["description", "weight (legit)", "weight (fraud)"]),
        country_table=rate_table(country.astype(np.int64), y, COUNTRY_TABLE,
                                 ["alpha-2", "country", "weight (legit)", "weight (fraud)"]),
        cr_features=", ".join(f"`{n}`" for n in CUSTOMER_RISK_FEATURES),
        tp_features=", ".join(f"`{n}`" for n in TXN_PATTERN_FEATURES),
        lr_seed=LR_SEED, auc_cr=auc_cr, auc_tp=auc_tp, n_test=len(idx_test),
        auc_cr_train=auc_cr_train, auc_cr_rule=auc_cr_rule,
        batch_tract=("not checked" if not have_tract else
                     f"`customer_risk` {res_cr['batch_bits_tract']}, `txn_pattern` {res_tp['batch_bits_tract']}"),
        batch_ort=f"`customer_risk` {res_cr['batch_bits_ort']}, `txn_pattern` {res_tp['batch_bits_ort']}",
        amount_edges=AMOUNT_EDGES, hour_edges=[int(e) for e in HOUR_EDGES], n_grid=grid["rows"],
        amount_bins=bin_table(column(X, "amount"), y, AMOUNT_EDGES, "amount", lambda e: f"{e:g}"),
        hour_bins=bin_table(column(X, "hour_of_day"), y, HOUR_EDGES, "hour_of_day", lambda e: f"{e:g}"),
        d_cr_ort=res_cr["ort_vs_sklearn"], d_tp_ort=res_tp["ort_vs_sklearn"],
        tract_note=("not checked (python package `tract` not installed)" if not have_tract else
                    f"max abs difference {res_cr['tract_vs_ort']:.2e} (`customer_risk`), "
                    f"{res_tp['tract_vs_ort']:.2e} (`txn_pattern`), labels identical"),
        d_grid=grid["ort_vs_sklearn"],
        grid_tract=("" if grid["tract_vs_ort"] is None else f", tract vs onnxruntime {grid['tract_vs_ort']:.2e}"),
        n_bin_rows=bins["rows"], bin_runtimes=" and ".join(bins["runtimes"]),
        n_ref=fraud.N_REFERENCE, n_ref_fraud=fraud.N_REFERENCE_FRAUD,
        n_ref_legit=fraud.N_REFERENCE - fraud.N_REFERENCE_FRAUD,
        np_v=np.__version__, sk_v=sklearn.__version__, skl2onnx_v=skl2onnx.__version__,
        onnx_v=onnx.__version__, ort_v=ort.__version__,
        tract_v=("" if not have_tract else f", tract (Python) {fraud.tract_version()}"),
    )
    write_dataset_section(args.dataset_doc, section)
    print(f"  wrote {args.dataset_doc} (section from the train_batch_models.py marker on)")

    print("summary:")
    print(f"  {CUSTOMER_RISK} v1 test AUC {auc_cr:.4f}, {size_cr} bytes")
    print(f"  {TXN_PATTERN} v1 test AUC {auc_tp:.4f}, {size_tp} bytes")
    print(f"  bin check: {bins['rows']} rows, {bins['variants']} in-bin variants, bit-identical in "
          f"{', '.join(bins['runtimes'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
