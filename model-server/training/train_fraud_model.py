#!/usr/bin/env python3
"""Train the example `fraud_detector` model and export it to ONNX.

Everything here is deterministic (fixed seeds): re-running the script with the
pinned versions in requirements.txt regenerates the same data set, the same
models and the same reference outputs.

What it does:

1. generates a synthetic card-payment data set (one transaction per customer,
   keyed by ``customer_id``) -- see DATASET.md for the generator and the label
   rule;
2. trains version 1 (StandardScaler + LogisticRegression), version 2
   (StandardScaler + MLPClassifier), version 3 (HistGradientBoostingClassifier,
   300 trees of depth <= 6) and version 4 (RandomForestClassifier, 100 trees
   of depth <= 12) on a stratified 80/20 split, reports test AUC and accuracy;
3. exports each with skl2onnx (input ``features`` float32 [N, 15], outputs
   ``label`` int64 [N] and ``probabilities`` float32 [N, 2], no ZipMap,
   target opsets ``'': 17`` / ``ai.onnx.ml: 3``) into the model repository;
   versions 1 and 2 are restricted to ops tract runs, versions 3 and 4 are one
   ``ai.onnx.ml.TreeEnsembleClassifier`` node, which the server evaluates
   natively;
4. writes ``config.toml`` for the model (unversioned calls get version 2);
5. runs 256 held-out rows through onnxruntime (CPUExecutionProvider) and
   writes them as reference JSON for the Rust server's tests;
6. checks each ONNX file again with onnxruntime: output names, dtypes, shapes
   and agreement with sklearn ``predict_proba`` on the whole test set (for
   versions 3 and 4 also on test rows with missing values).

The tree versions use their own ``random_state`` and are trained after
versions 1 and 2 on the same split, so they leave every random stream and
every file of versions 1 and 2 as it was.

The module also holds ``generate_merchant_history()``: merchants and each
customer's transactions of the last 30 days, from a stream of their own, for
``train_embeddings.py``.  This script does not call it.

Usage (from the repository root):

    python model-server/training/train_fraud_model.py \
        --out-repo model-server/models \
        --reference-dir model-server/training/reference
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np

import onnx
import onnxruntime as ort
import skl2onnx
import skl2onnx.common.tree_ensemble
import sklearn
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

# --------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------

MODEL_NAME = "fraud_detector"
INPUT_NAME = "features"

STATIC_FEATURES = [
    "account_age_days",
    "avg_txn_amount_30d",
    "txn_count_30d",
    "chargeback_count_1y",
    "home_country_risk",
]
DYNAMIC_FEATURES = [
    "txn_count_1h",
    "txn_amount_sum_1h",
    "distinct_merchants_24h",
    "failed_auth_count_24h",
    "minutes_since_last_txn",
]
REQUEST_FEATURES = [
    "amount",
    "merchant_category_risk",
    "is_card_present",
    "hour_of_day",
    "distance_from_home_km",
]
FEATURE_NAMES = STATIC_FEATURES + DYNAMIC_FEATURES + REQUEST_FEATURES
N_FEATURES = len(FEATURE_NAMES)
assert N_FEATURES == 15

N_CUSTOMERS = 50_000
DATA_SEED = 20240611          # numpy Generator seed for the data set
SPLIT_SEED = 42               # train/test split
MLP_SEED = 0                  # MLPClassifier random_state (weights, shuffling, early-stopping split)
LR_SEED = 0                   # LogisticRegression random_state (lbfgs ignores it)
SAMPLE_SEED = 1234            # choice of the reference rows
TEST_FRACTION = 0.2
N_REFERENCE = 256
N_REFERENCE_FRAUD = 64        # fraud rows among the 256 reference rows

MLP_HIDDEN = (32, 16)
# L2 penalty.  The usual 1e-3 overfits this small, imbalanced data set (test AUC
# 0.93-0.94 depending on the seed); 1.0 gives 0.945-0.948 over seeds 0-5.
MLP_ALPHA = 1.0
MLP_MAX_ITER = 300

# Version 3: gradient-boosted trees, exactly HGB_MAX_ITER trees (no early
# stopping, so the count does not depend on a validation split).
HGB_MAX_ITER = 300
HGB_MAX_DEPTH = 6
HGB_SEED = 0                  # HistGradientBoostingClassifier random_state (unused without early stopping or subsampling; fixed anyway)
# Version 4: random forest.  n_jobs=1 so the trees are built in order from the
# forest's own RandomState.
RF_N_ESTIMATORS = 100
RF_MAX_DEPTH = 12
RF_SEED = 0                   # RandomForestClassifier random_state (bootstrap samples, feature draws)
MISSING_SEED = 7              # where the missing-value check puts its NaNs
N_MISSING_CHECK = 2000        # test rows in that check

TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}

# Label rule coefficients (logit scale).  Documented in DATASET.md.
LABEL_INTERCEPT = -7.5
LABEL_NOISE_SD = 0.8
LABEL_COEF = {
    "log_amount_ratio": 0.9,          # log(amount / avg_txn_amount_30d), clipped at 0 below
    "txn_count_1h": 0.35,
    "log1p_sum_1h_ratio": 0.4,        # log1p(txn_amount_sum_1h / avg_txn_amount_30d)
    "distinct_merchants_24h": 0.12,
    "failed_auth_count_24h": 0.55,
    "short_gap": 0.6,                 # minutes_since_last_txn < 5
    "merchant_category_risk": 2.2,
    "home_country_risk": 1.5,
    "chargeback_count_1y": 0.7,
    "new_account": 0.8,               # account_age_days < 30
    "log1p_age_months": -0.25,        # log1p(account_age_days / 30)
    "log1p_distance": 0.3,            # log1p(distance_from_home_km)
    "cnp_night": 1.4,                 # card not present and hour in [0, 5]
    "cnp_far": 1.0,                   # card not present and distance > 500 km
    "big_amount_and_burst": 0.8,      # amount > 3 x avg and txn_count_1h >= 3
    "card_not_present": 0.5,
}

# Diurnal profile for the hour of day of ordinary transactions (relative weights).
HOUR_WEIGHTS = np.array(
    [0.6, 0.4, 0.3, 0.25, 0.25, 0.4, 0.9, 1.8, 3.0, 3.8, 4.2, 4.6,
     5.2, 5.0, 4.6, 4.5, 4.7, 5.2, 5.6, 5.4, 4.6, 3.6, 2.4, 1.3]
)


# --------------------------------------------------------------------------
# Data generation
# --------------------------------------------------------------------------


def _round(x: np.ndarray, decimals: int) -> np.ndarray:
    return np.round(x, decimals)


def generate_dataset(n: int, seed: int) -> dict:
    """Return a dict with customer ids, the feature matrix X (float32, n x 15),
    the label y (int64), the true fraud probability and the latent
    'risky session' flag (only used for documentation)."""
    rng = np.random.default_rng(seed)

    customer_id = np.array([f"C{i:06d}" for i in range(1, n + 1)])

    # ---- static customer features (daily batch) -------------------------
    account_age_days = np.clip(np.floor(rng.gamma(shape=1.5, scale=500.0, size=n)) + 1, 1, 3650)
    avg_txn_amount_30d = _round(np.clip(rng.lognormal(mean=np.log(45.0), sigma=0.8, size=n), 2.0, 5000.0), 2)
    activity = rng.gamma(shape=2.0, scale=12.0, size=n)          # expected txns / 30 days
    txn_count_30d = rng.poisson(activity).astype(np.float64)
    chargeback_count_1y = rng.poisson(0.06 + 0.15 * (account_age_days < 90), size=n).astype(np.float64)
    home_country_risk = _round(rng.beta(2.0, 8.0, size=n), 4)

    # ---- latent: is this a risky session (account takeover / card testing)?
    # Raises the chance of bursts, CNP, night, far from home.  NOT a feature and
    # NOT the label -- the label comes from the logistic rule below.
    risky = rng.random(n) < 0.06

    # ---- dynamic recent-activity features (streamed) ---------------------
    base_rate_1h = txn_count_30d / (30.0 * 24.0)
    txn_count_1h = rng.poisson(base_rate_1h + np.where(risky, 2.5, 0.05)).astype(np.float64)
    per_txn = avg_txn_amount_30d[:, None] * rng.lognormal(0.0, 0.5, size=(n, 1))
    txn_amount_sum_1h = _round(txn_count_1h * per_txn[:, 0], 2)
    distinct_merchants_24h = np.minimum(
        txn_count_1h + rng.poisson(np.minimum(txn_count_30d / 30.0, 10.0) * 0.8 + np.where(risky, 2.0, 0.0)),
        60,
    ).astype(np.float64)
    failed_auth_count_24h = rng.poisson(np.where(risky, 1.2, 0.08)).astype(np.float64)
    mean_gap_min = 30.0 * 24.0 * 60.0 / np.maximum(txn_count_30d, 1.0)
    gap_normal = 60.0 + rng.exponential(mean_gap_min)
    gap_in_hour = rng.uniform(0.2, 60.0, size=n)
    minutes_since_last_txn = np.where(txn_count_1h > 0, gap_in_hour, gap_normal)
    minutes_since_last_txn = _round(np.clip(minutes_since_last_txn, 0.0, 43200.0), 1)

    # ---- request-time features (sent with the call) ----------------------
    amount_mult = np.where(risky, rng.lognormal(0.9, 0.9, size=n), rng.lognormal(0.0, 0.6, size=n))
    amount = _round(np.clip(avg_txn_amount_30d * amount_mult, 0.5, 20000.0), 2)
    merchant_category_risk = _round(
        np.where(risky, rng.beta(3.0, 4.0, size=n), rng.beta(2.0, 7.0, size=n)), 4
    )
    is_card_present = (rng.random(n) < np.where(risky, 0.2, 0.62)).astype(np.float64)
    hour_normal = rng.choice(24, size=n, p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
    hour_risky = rng.integers(0, 24, size=n)
    hour_of_day = np.where(risky, hour_risky, hour_normal).astype(np.float64)
    dist_normal = np.where(
        is_card_present > 0,
        rng.lognormal(np.log(6.0), 1.0, size=n),
        rng.lognormal(np.log(25.0), 1.4, size=n),
    )
    dist_risky = rng.lognormal(np.log(250.0), 1.5, size=n)
    distance_from_home_km = _round(np.clip(np.where(risky, dist_risky, dist_normal), 0.0, 20000.0), 1)

    # ---- label: logistic of a combination of features plus noise ---------
    c = LABEL_COEF
    amount_ratio = amount / avg_txn_amount_30d
    cnp = 1.0 - is_card_present
    night = (hour_of_day <= 5).astype(np.float64)
    logit = (
        LABEL_INTERCEPT
        + c["log_amount_ratio"] * np.maximum(np.log(amount_ratio), 0.0)
        + c["txn_count_1h"] * txn_count_1h
        + c["log1p_sum_1h_ratio"] * np.log1p(txn_amount_sum_1h / avg_txn_amount_30d)
        + c["distinct_merchants_24h"] * distinct_merchants_24h
        + c["failed_auth_count_24h"] * failed_auth_count_24h
        + c["short_gap"] * (minutes_since_last_txn < 5.0)
        + c["merchant_category_risk"] * merchant_category_risk
        + c["home_country_risk"] * home_country_risk
        + c["chargeback_count_1y"] * chargeback_count_1y
        + c["new_account"] * (account_age_days < 30)
        + c["log1p_age_months"] * np.log1p(account_age_days / 30.0)
        + c["log1p_distance"] * np.log1p(distance_from_home_km)
        + c["cnp_night"] * cnp * night
        + c["cnp_far"] * cnp * (distance_from_home_km > 500.0)
        + c["big_amount_and_burst"] * (amount_ratio > 3.0) * (txn_count_1h >= 3)
        + c["card_not_present"] * cnp
        + rng.normal(0.0, LABEL_NOISE_SD, size=n)
    )
    p_fraud = 1.0 / (1.0 + np.exp(-logit))
    y = (rng.random(n) < p_fraud).astype(np.int64)

    columns = {
        "account_age_days": account_age_days,
        "avg_txn_amount_30d": avg_txn_amount_30d,
        "txn_count_30d": txn_count_30d,
        "chargeback_count_1y": chargeback_count_1y,
        "home_country_risk": home_country_risk,
        "txn_count_1h": txn_count_1h,
        "txn_amount_sum_1h": txn_amount_sum_1h,
        "distinct_merchants_24h": distinct_merchants_24h,
        "failed_auth_count_24h": failed_auth_count_24h,
        "minutes_since_last_txn": minutes_since_last_txn,
        "amount": amount,
        "merchant_category_risk": merchant_category_risk,
        "is_card_present": is_card_present,
        "hour_of_day": hour_of_day,
        "distance_from_home_km": distance_from_home_km,
    }
    X = np.stack([columns[name] for name in FEATURE_NAMES], axis=1).astype(np.float32)
    assert X.shape == (n, N_FEATURES)
    assert np.isfinite(X).all()
    return {"customer_id": customer_id, "X": X, "y": y, "p_fraud": p_fraud, "risky": risky}


# --------------------------------------------------------------------------
# Merchant history: merchants and each customer's last 30 days of transactions
# --------------------------------------------------------------------------
#
# Not used by any model of this script.  Drawn from its own stream,
# default_rng(MERCHANT_SEED), from nothing of the data set but the customers'
# txn_count_30d, so every column above, the label and every file this script
# writes stay as they were.  train_embeddings.py learns merchant embeddings
# from it; DATASET.md (its section) describes it.

MERCHANT_SEED = 20240613      # numpy Generator seed for merchants and their transactions
N_MERCHANTS = 2_000

# Merchant categories: (name, share of all spending in it, probability that a
# transaction in it is at a merchant of the customer's own region).  Everyday
# shopping is local; travel, hotels and online goods are not.
MERCHANT_CATEGORIES = [
    ("grocery", 18.0, 0.97),
    ("restaurants", 12.0, 0.85),
    ("fast_food", 10.0, 0.90),
    ("fuel", 8.0, 0.92),
    ("transport", 5.0, 0.95),
    ("pharmacy", 5.0, 0.96),
    ("fashion", 6.0, 0.75),
    ("home_garden", 4.0, 0.92),
    ("electronics", 4.0, 0.60),
    ("digital_media", 5.0, 0.35),
    ("games", 3.0, 0.35),
    ("travel", 2.0, 0.30),
    ("hotels", 2.0, 0.15),
    ("gambling", 1.0, 0.55),
    ("money_transfer", 1.0, 0.60),
]
# Regions: the merchant's / the customer's home country (ISO 3166-1 alpha-2)
# and its share of customers and merchants.
MERCHANT_REGIONS = [
    ("US", 22.0), ("GB", 12.0), ("DE", 12.0), ("FR", 10.0), ("IT", 6.0),
    ("ES", 6.0), ("NL", 5.0), ("PL", 3.0), ("CA", 3.0), ("SE", 2.0),
]
# Customer lifestyles: the categories a customer of each one is more likely to
# prefer (each listed category's weight is multiplied by SEGMENT_BOOST when the
# customer's preferred categories are drawn).  Shares of customers in brackets.
CUSTOMER_SEGMENTS = [
    ("family", 0.25, ["grocery", "pharmacy", "home_garden", "fuel", "fast_food"]),
    ("urban", 0.20, ["restaurants", "fast_food", "transport", "fashion", "digital_media"]),
    ("commuter", 0.20, ["fuel", "transport", "grocery", "fast_food"]),
    ("traveller", 0.10, ["travel", "hotels", "restaurants", "fashion"]),
    ("tech", 0.15, ["electronics", "games", "digital_media", "fast_food"]),
    ("gambler", 0.10, ["gambling", "money_transfer", "fast_food", "games"]),
]
SEGMENT_BOOST = 6.0
N_PREFERRED_CATEGORIES = 3    # each customer's favourite categories...
PREFERRED_SHARE = 0.75        # ...take this share of their transactions; the rest follows MERCHANT_CATEGORIES
SECOND_REGION_SHARE = 0.6     # a transaction away from home goes to the customer's second region this often
MERCHANT_CATEGORY_EXPONENT = 0.6  # merchants per category ~ category share ** this (many small grocers, few airlines)
MERCHANT_POPULARITY_SIGMA = 1.0   # merchant popularity ~ LogNormal(0, this) within its category and region


def generate_merchant_history(txn_count_30d: np.ndarray, seed: int = MERCHANT_SEED) -> dict:
    """Merchants (category, home region) and each customer's transactions of
    the last 30 days (customer i has ``txn_count_30d[i]`` of them, the data
    set's own column), all from ``default_rng(seed)``.

    Returns numpy arrays: ``merchant_category`` / ``merchant_region`` (indices
    into MERCHANT_CATEGORIES / MERCHANT_REGIONS, one per merchant),
    ``merchant_popularity``, ``customer_region``, ``customer_second_region``,
    ``customer_segment``, ``customer_preferred`` (n x N_PREFERRED_CATEGORIES
    category indices), and one entry per transaction, grouped by customer in
    customer order: ``txn_customer`` (row index of the data set) and
    ``txn_merchant`` (merchant index; merchant i is ``merchant_id(i)``)."""
    rng = np.random.default_rng(seed)
    cat_share = np.array([c[1] for c in MERCHANT_CATEGORIES])
    cat_share /= cat_share.sum()
    cat_local = np.array([c[2] for c in MERCHANT_CATEGORIES])
    region_share = np.array([r[1] for r in MERCHANT_REGIONS])
    region_share /= region_share.sum()
    n_cat, n_region = len(cat_share), len(region_share)
    cat_index = {c[0]: i for i, c in enumerate(MERCHANT_CATEGORIES)}

    # ---- merchants: one in every (category, region) cell, the rest drawn in
    # proportion to category share ** exponent x region share; then shuffled so
    # that a merchant's index says nothing about its category or region.
    cell_weight = np.outer(cat_share ** MERCHANT_CATEGORY_EXPONENT, region_share).ravel()
    cells = np.concatenate([
        np.arange(n_cat * n_region),
        rng.choice(n_cat * n_region, size=N_MERCHANTS - n_cat * n_region, p=cell_weight / cell_weight.sum()),
    ])
    cells = cells[rng.permutation(N_MERCHANTS)]
    merchant_category, merchant_region = cells // n_region, cells % n_region
    popularity = rng.lognormal(0.0, MERCHANT_POPULARITY_SIGMA, size=N_MERCHANTS)

    # ---- customers: home and second region, lifestyle, favourite categories
    n = len(txn_count_30d)
    customer_region = rng.choice(n_region, size=n, p=region_share)
    customer_second_region = rng.choice(n_region, size=n, p=region_share)
    seg_share = np.array([s[1] for s in CUSTOMER_SEGMENTS])
    customer_segment = rng.choice(len(CUSTOMER_SEGMENTS), size=n, p=seg_share / seg_share.sum())
    boost = np.ones((len(CUSTOMER_SEGMENTS), n_cat))
    for s, (_, _, cats) in enumerate(CUSTOMER_SEGMENTS):
        boost[s, [cat_index[c] for c in cats]] = SEGMENT_BOOST
    pref_weight = cat_share * boost[customer_segment]            # n x n_cat
    # N_PREFERRED_CATEGORIES distinct categories, drawn without replacement in
    # proportion to pref_weight (the Gumbel top-k trick).
    keys = np.log(pref_weight) + rng.gumbel(size=(n, n_cat))
    customer_preferred = np.argsort(-keys, axis=1, kind="stable")[:, :N_PREFERRED_CATEGORIES]
    pref_mix = rng.dirichlet(np.full(N_PREFERRED_CATEGORIES, 2.0), size=n)
    cat_prob = np.tile((1.0 - PREFERRED_SHARE) * cat_share, (n, 1))
    np.add.at(cat_prob, (np.arange(n)[:, None], customer_preferred), PREFERRED_SHARE * pref_mix)

    # ---- transactions: category from the customer's mix, region home / second
    # / anywhere, merchant in proportion to popularity within (category, region)
    counts = np.asarray(txn_count_30d, dtype=np.int64)
    txn_customer = np.repeat(np.arange(n), counts)
    t = len(txn_customer)
    cum = np.cumsum(cat_prob, axis=1)
    cum[:, -1] = 1.0
    txn_cat = (rng.random(t)[:, None] >= cum[txn_customer]).sum(axis=1)
    local = rng.random(t) < cat_local[txn_cat]
    second = rng.random(t) < SECOND_REGION_SHARE
    anywhere = rng.choice(n_region, size=t, p=region_share)
    txn_region = np.where(local, customer_region[txn_customer],
                          np.where(second, customer_second_region[txn_customer], anywhere))
    # Inverse-CDF draw inside each cell: merchants sorted by cell, key = cell
    # number + cumulative popularity share inside the cell (ending at exactly
    # cell + 1), searched with cell + U[0, 1).
    cell = merchant_category * n_region + merchant_region
    order = np.lexsort((np.arange(N_MERCHANTS), cell))
    cell_sorted = cell[order]
    pop_sorted = popularity[order]
    cell_total = np.bincount(cell_sorted, weights=pop_sorted, minlength=n_cat * n_region)
    within = np.cumsum(pop_sorted) - np.concatenate([[0.0], np.cumsum(cell_total)[:-1]])[cell_sorted]
    key = cell_sorted + within / cell_total[cell_sorted]
    last = np.r_[cell_sorted[1:] != cell_sorted[:-1], True]
    key[last] = cell_sorted[last] + 1.0
    txn_cell = txn_cat * n_region + txn_region
    pos = np.searchsorted(key, txn_cell + rng.random(t), side="right")
    txn_merchant = order[pos]
    assert (cell[txn_merchant] == txn_cell).all()

    return {
        "merchant_category": merchant_category, "merchant_region": merchant_region,
        "merchant_popularity": popularity,
        "customer_region": customer_region, "customer_second_region": customer_second_region,
        "customer_segment": customer_segment, "customer_preferred": customer_preferred,
        "txn_customer": txn_customer, "txn_merchant": txn_merchant,
    }


def merchant_id(i: int) -> str:
    """The entity key of merchant ``i`` (0-based): ``m-00042``."""
    return f"m-{i:05d}"


# --------------------------------------------------------------------------
# ONNX export and checks
# --------------------------------------------------------------------------


def final_estimator(model):
    return model.steps[-1][1] if isinstance(model, Pipeline) else model


# Ops that tract-onnx 0.23.9 implements and that these exports may contain.
# Notably absent: ai.onnx.ml Scaler (hence StandardScaler is exported with
# the `div` option as Sub + Div), ZipMap, ArrayFeatureExtractor (skl2onnx's
# MLP label path, replaced by a plain ArgMax, see fix_label_for_tract) and the
# tree ensembles: tract loads TreeEnsembleClassifier but evaluates it far too
# slowly to serve and gets the binary `label` wrong (see README.md).
TRACT_OPS = {
    ("", "Cast"), ("", "Sub"), ("", "Div"), ("", "Mul"), ("", "Add"),
    ("", "MatMul"), ("", "Gemm"), ("", "Relu"), ("", "Sigmoid"), ("", "Softmax"),
    ("", "Identity"), ("", "Reshape"), ("", "Concat"), ("", "ArgMax"),
    ("ai.onnx.ml", "LinearClassifier"), ("ai.onnx.ml", "Normalizer"),
}

# Ops of the tree versions (3 and 4).  tract cannot serve them (above), so the
# model server evaluates ai.onnx.ml tree ensembles with its own code; their
# graphs may contain nothing else.
NATIVE_TREE_OPS = {("ai.onnx.ml", "TreeEnsembleClassifier")}


@contextlib.contextmanager
def hist_gradient_boosting_missing_tracks_as_int():
    """Work around skl2onnx 1.20.0 failing on HistGradientBoostingClassifier.

    skl2onnx's ``add_tree_to_attribute_pairs_hist_gradient_boosting`` passes
    ``nodes_missing_value_tracks_true`` to ``add_node`` as the Python bool
    ``False`` for leaves (and numpy's uint8 ``missing_go_to_left`` for
    splits); current onnx/protobuf refuse a bool in an ``ints`` attribute
    ("Field onnx.AttributeProto.ints: Expected an int, got a boolean").  While
    this context is active, ``skl2onnx.common.tree_ensemble.add_node`` (looked
    up from that module's globals by the HGB helper) receives the same value
    as an int: 1 where sklearn sends a missing value to the left (true)
    child, 0 elsewhere, so the exported graph keeps sklearn's missing-value
    routing.  The installed package is not edited; leaving the context puts
    the original function back.  Remove this once skl2onnx converts HGB
    models on its own.
    """
    original = skl2onnx.common.tree_ensemble.add_node

    def add_node(*args, nodes_missing_value_tracks_true=0, **kwargs):
        return original(*args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs)

    with mock.patch.object(skl2onnx.common.tree_ensemble, "add_node", add_node):
        yield


def sklearn_missing_go_to_left(model) -> dict:
    """{(tree id, node id): 1 if sklearn sends a missing value to the left
    child} for every split node of a fitted HGB or forest.  sklearn routes a
    NaN at predict time even for features without NaN in training (to the
    child that got more training samples)."""
    if isinstance(model, HistGradientBoostingClassifier):
        return {(t, i): int(n["missing_go_to_left"])
                for t, (p,) in enumerate(model._predictors) for i, n in enumerate(p.nodes) if not n["is_leaf"]}
    return {(t, i): int(e.tree_.missing_go_to_left[i])
            for t, e in enumerate(model.estimators_) for i in range(e.tree_.node_count)
            if e.tree_.children_left[i] != -1}


def set_forest_missing_value_tracks(onx: onnx.ModelProto, model) -> None:
    """skl2onnx 1.20.0 writes nodes_missing_value_tracks_true = 0 for every
    node of a random forest, so onnxruntime sends a NaN to the false (right)
    branch where sklearn may send it left.  Copy sklearn's direction of each
    split into the attribute (BRANCH_LEQ: true = left child)."""
    node = tree_node(onx)
    attrs = {a.name: a for a in node.attribute}
    go_left = sklearn_missing_go_to_left(model)
    tracks = [go_left.get((t, i), 0) for t, i in zip(attrs["nodes_treeids"].ints, attrs["nodes_nodeids"].ints)]
    del attrs["nodes_missing_value_tracks_true"].ints[:]
    attrs["nodes_missing_value_tracks_true"].ints.extend(tracks)


def export_options(model) -> dict:
    """skl2onnx options: no ZipMap on the classifier (plain `probabilities`
    tensor), and StandardScaler as Sub + Div instead of the ai.onnx.ml Scaler
    op, which tract does not implement."""
    options = {id(final_estimator(model)): {"zipmap": False}}
    steps = model.steps if isinstance(model, Pipeline) else []
    for _, step in steps:
        if isinstance(step, StandardScaler):
            options[id(step)] = {"div": "div"}
    return options


def fix_label_for_tract(onx: onnx.ModelProto, classes) -> None:
    """Compute `label` as ArgMax(probabilities) when skl2onnx ends it with a Cast(to=INT64).

    For MLPClassifier skl2onnx derives `label` as ArgMax(probabilities) ->
    ArrayFeatureExtractor(classes, .) -> Reshape([-1]) -> Cast(to=INT64).
    tract 0.23.9 turns an ONNX Cast(to=INT64) into its TDim type, so `label`
    would come out as TDim, not i64.  With classes [0, 1] the class *is* the
    argmax index, so the chain is replaced by one standard
    ArgMax(probabilities, axis=1, keepdims=0), whose output is int64 [N] in
    onnxruntime and tract alike (first index wins on a tie: P = 0.5 gives 0,
    like sklearn's predict).  The probabilities are untouched.  Graphs whose
    `label` is not produced by a Cast(to=INT64) are left alone.
    """
    producer = {out: node for node in onx.graph.node for out in node.output}
    cast = producer.get("label")
    if cast is None or cast.op_type != "Cast" or not any(
        a.name == "to" and a.i == onnx.TensorProto.INT64 for a in cast.attribute
    ):
        return
    if [int(c) for c in classes] != [0, 1]:
        raise RuntimeError(f"label fix assumes classes [0, 1], got {list(classes)}")
    onx.graph.node.remove(cast)
    # Drop what only fed the old label (ArgMax, ArrayFeatureExtractor, Reshape
    # and their constant inputs).
    graph_outputs = {o.name for o in onx.graph.output}
    while True:
        used = {i for node in onx.graph.node for i in node.input} | graph_outputs
        dead = [n for n in onx.graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            onx.graph.node.remove(node)
    used = {i for node in onx.graph.node for i in node.input}
    for init in [t for t in onx.graph.initializer if t.name not in used]:
        onx.graph.initializer.remove(init)
    onx.graph.node.append(onnx.helper.make_node(
        "ArgMax", ["probabilities"], ["label"], name="label_argmax", axis=1, keepdims=0,
    ))


def dedupe_opsets(onx: onnx.ModelProto) -> None:
    """skl2onnx may list the default domain twice; keep one entry per domain,
    and drop domains no node uses any more (after fix_label_for_tract)."""
    best = {}
    used = {node.domain or "" for node in onx.graph.node} | {""}
    for o in onx.opset_import:
        domain = "" if o.domain in ("", "ai.onnx") else o.domain
        if domain not in used:
            continue
        best[domain] = max(best.get(domain, 0), o.version)
    del onx.opset_import[:]
    for domain, version in sorted(best.items()):
        onx.opset_import.append(onnx.helper.make_opsetid(domain, version))


def is_tree_model(model) -> bool:
    return isinstance(final_estimator(model), (HistGradientBoostingClassifier, RandomForestClassifier))


def export_onnx(model, version: str, description: str) -> onnx.ModelProto:
    """Convert with skl2onnx and check the graph.  Linear and MLP models must
    use only ops tract runs (TRACT_OPS); tree models only NATIVE_TREE_OPS."""
    hgb = isinstance(final_estimator(model), HistGradientBoostingClassifier)
    with hist_gradient_boosting_missing_tracks_as_int() if hgb else contextlib.nullcontext():
        onx = convert_sklearn(
            model,
            name=f"{MODEL_NAME}_v{version}",
            initial_types=[(INPUT_NAME, FloatTensorType([None, N_FEATURES]))],
            # `final_types` is deliberately not passed: with it skl2onnx appends
            # Cast nodes to the outputs, and tract turns an ONNX Cast(to=INT64)
            # into its TDim type, so `label` would come out as TDim, not i64.
            # skl2onnx already names the classifier outputs `label` and
            # `probabilities`; they are renamed below only if that ever changes.
            options=export_options(model),
            target_opset=TARGET_OPSET,
        )
    # Make sure the graph's outputs are exactly `label` and `probabilities`.
    outs = [o.name for o in onx.graph.output]
    if outs != ["label", "probabilities"]:
        assert len(outs) == 2, outs
        rename = dict(zip(outs, ["label", "probabilities"]))
        for node in onx.graph.node:
            node.output[:] = [rename.get(x, x) for x in node.output]
        for o in onx.graph.output:
            o.name = rename.get(o.name, o.name)
    fix_label_for_tract(onx, final_estimator(model).classes_)
    if isinstance(final_estimator(model), RandomForestClassifier):
        set_forest_missing_value_tracks(onx, final_estimator(model))
    dedupe_opsets(onx)
    # Name the batch dimension: skl2onnx leaves it anonymous, and tract cannot
    # type a model whose input has an anonymous dim unless the caller sets an
    # input fact; with dim_param "batch" it gets a symbol of its own.
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
    onx.doc_string = description
    onx.model_version = int(version)
    onx.producer_name = "mlgw train_fraud_model.py"
    del onx.metadata_props[:]
    for k, v in {
        "model": MODEL_NAME,
        "version": version,
        "feature_names": ",".join(FEATURE_NAMES),
        "sklearn_version": sklearn.__version__,
        "skl2onnx_version": skl2onnx.__version__,
    }.items():
        entry = onx.metadata_props.add()
        entry.key = k
        entry.value = v
    onnx.checker.check_model(onx)
    if is_tree_model(model):
        for node in onx.graph.node:
            key = (node.domain or "", node.op_type)
            if key not in NATIVE_TREE_OPS:
                raise RuntimeError(f"op {key} in a tree version: the server's tree evaluator runs only {NATIVE_TREE_OPS}")
        check_tree_export(onx, final_estimator(model))
        return onx
    for node in onx.graph.node:
        key = (node.domain or "", node.op_type)
        if node.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.INT64 for a in node.attribute):
            raise RuntimeError("Cast(to=INT64) in the graph: tract would produce TDim, not i64")
        if key not in TRACT_OPS:
            raise RuntimeError(
                f"op {key} is not in the list of ops tract-onnx 0.23.9 is known to load; refusing to export"
            )
    return onx


def tree_node(onx: onnx.ModelProto) -> onnx.NodeProto:
    (node,) = [n for n in onx.graph.node if n.op_type == "TreeEnsembleClassifier"]
    return node


def tree_stats(model) -> dict:
    """Trees, depth reached, nodes and leaves of a fitted HGB or forest."""
    if isinstance(model, HistGradientBoostingClassifier):
        trees = [p.nodes for (p,) in model._predictors]
        depth = max(int(t["depth"].max()) for t in trees)
        nodes = sum(len(t) for t in trees)
        leaves = sum(int(t["is_leaf"].sum()) for t in trees)
    else:
        trees = [e.tree_ for e in model.estimators_]
        depth = max(t.max_depth for t in trees)
        nodes = sum(t.node_count for t in trees)
        leaves = sum(t.n_leaves for t in trees)
    return {"trees": len(trees), "depth": depth, "nodes": nodes, "leaves": leaves}


def check_tree_export(onx: onnx.ModelProto, model) -> None:
    """The TreeEnsembleClassifier holds every tree and node of the model, and
    sklearn's missing-value direction of every split node."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in tree_node(onx).attribute}
    stats = tree_stats(model)
    if len(set(attrs["nodes_treeids"])) != stats["trees"] or len(attrs["nodes_nodeids"]) != stats["nodes"]:
        raise RuntimeError(f"tree export: {len(set(attrs['nodes_treeids']))} trees / {len(attrs['nodes_nodeids'])} "
                           f"nodes in the graph, the model has {stats}")
    if list(attrs["classlabels_int64s"]) != [0, 1]:
        raise RuntimeError(f"tree export: classlabels {attrs['classlabels_int64s']}")
    tracks = list(attrs["nodes_missing_value_tracks_true"])
    if len(tracks) != stats["nodes"]:
        raise RuntimeError("tree export: nodes_missing_value_tracks_true missing or short")
    go_left = sklearn_missing_go_to_left(model)
    expected = [go_left.get((t, i), 0) for t, i in zip(attrs["nodes_treeids"], attrs["nodes_nodeids"])]
    if tracks != expected or not any(tracks):
        raise RuntimeError("tree export: nodes_missing_value_tracks_true differs from sklearn's missing_go_to_left")


def describe_graph(onx: onnx.ModelProto) -> dict:
    """Op types, opsets and (tree versions) the TreeEnsembleClassifier's
    attributes, for the log and DATASET.md."""
    info = {
        "ops": [f"{n.op_type} ({n.domain or 'ai.onnx'})" for n in onx.graph.node],
        "opsets": ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in onx.opset_import),
    }
    trees = [n for n in onx.graph.node if n.op_type == "TreeEnsembleClassifier"]
    if trees:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in trees[0].attribute}
        info["attribute_names"] = sorted(attrs)
        info["post_transform"] = attrs.get("post_transform", b"NONE").decode()
        info["base_values"] = [float(v) for v in attrs.get("base_values", [])]
        info["classlabels"] = [int(v) for v in attrs["classlabels_int64s"]]
        info["missing_tracks_true"] = int(sum(attrs["nodes_missing_value_tracks_true"]))
    return info


def check_with_tract(path: Path, X_ref: np.ndarray, ref_label: np.ndarray, ref_proba: np.ndarray):
    """Optional: run the reference rows through tract's Python bindings (the
    same tract version as the Rust server) if they are installed.  Returns the
    max abs diff to onnxruntime, or None when `tract` is not importable."""
    try:
        import tract  # noqa: PLC0415
    except ImportError:
        print(f"  tract check {path}: skipped (python package `tract` not installed)")
        return None
    # No input fact is set on purpose: the ONNX file alone must be enough.
    model = tract.onnx().load(str(path)).into_model()
    runnable = model.into_runnable()
    worst = 0.0
    for bs in (1, 3, 64, len(X_ref)):
        label, proba = (t.to_numpy() for t in runnable.run([X_ref[:bs]]))
        if label.dtype != np.int64 or label.shape != (bs,):
            raise AssertionError(f"tract {path}: label {label.dtype} {label.shape}")
        if proba.dtype != np.float32 or proba.shape != (bs, 2):
            raise AssertionError(f"tract {path}: probabilities {proba.dtype} {proba.shape}")
        diff = float(np.max(np.abs(proba - ref_proba[:bs])))
        worst = max(worst, diff)
        bad = np.nonzero(label != ref_label[:bs])[0]
        if any(abs(float(ref_proba[i, 1]) - 0.5) > 1e-5 for i in bad) or diff > 1e-5:
            raise AssertionError(f"tract {path}: batch {bs}: {len(bad)} label mismatches, max diff {diff:.3g}")
    print(f"  tract {tract.version()} check {path}: loads without input facts, label i64, "
          f"probabilities f32; max |tract - onnxruntime| over {len(X_ref)} reference rows = {worst:.3e}")
    return worst


def tract_version() -> str:
    import tract  # noqa: PLC0415

    return tract.version()


def ort_session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def check_onnx(path: Path, model, X_test: np.ndarray) -> float:
    """Reload with onnxruntime, check the signature and compare with sklearn.
    Returns the max abs difference of the probabilities."""
    sess = ort_session(path)
    ins = sess.get_inputs()
    assert [i.name for i in ins] == [INPUT_NAME], ins
    assert ins[0].type == "tensor(float)", ins[0].type
    assert len(ins[0].shape) == 2 and ins[0].shape[1] == N_FEATURES, ins[0].shape
    assert not isinstance(ins[0].shape[0], int), ins[0].shape  # dynamic batch
    outs = sess.get_outputs()
    assert [o.name for o in outs] == ["label", "probabilities"], [o.name for o in outs]
    assert outs[0].type == "tensor(int64)", outs[0].type
    assert outs[1].type == "tensor(float)", outs[1].type
    assert len(outs[0].shape) == 1 and not isinstance(outs[0].shape[0], int), outs[0].shape
    assert len(outs[1].shape) == 2 and outs[1].shape[1] == 2, outs[1].shape
    assert not isinstance(outs[1].shape[0], int), outs[1].shape

    label, proba = sess.run(None, {INPUT_NAME: X_test})
    assert label.dtype == np.int64 and label.shape == (X_test.shape[0],)
    assert proba.dtype == np.float32 and proba.shape == (X_test.shape[0], 2)
    sk_proba = model.predict_proba(X_test)
    sk_label = model.predict(X_test)
    diff = float(np.max(np.abs(proba.astype(np.float64) - sk_proba)))
    # Labels may only differ where sklearn's probability is at the 0.5 tie.
    mismatch = np.nonzero(label != sk_label)[0]
    for i in mismatch:
        if abs(sk_proba[i, 1] - 0.5) > 1e-5:
            raise AssertionError(f"{path}: label mismatch at row {i}: ort={label[i]} sk={sk_label[i]} p={sk_proba[i]}")
    # Single-row and batch-of-one calls must agree with the batch call.
    l1, p1 = sess.run(None, {INPUT_NAME: X_test[:1]})
    assert l1.shape == (1,) and p1.shape == (1, 2)
    assert np.allclose(p1, proba[:1], atol=1e-6)
    if diff > 1e-5:
        raise AssertionError(f"{path}: onnxruntime vs sklearn max abs diff {diff:.3g} > 1e-5")
    print(f"  check {path}: outputs label int64 [N], probabilities float32 [N,2]; "
          f"max |ort - sklearn| over {X_test.shape[0]} test rows = {diff:.3e}; "
          f"label mismatches = {len(mismatch)}")
    return diff


def check_missing_values(path: Path, model, X_test: np.ndarray) -> float:
    """Tree versions: with NaN in the input, onnxruntime must follow the same
    branches as sklearn (the graph's nodes_missing_value_tracks_true).  The
    first N_MISSING_CHECK test rows get each value replaced by NaN with
    P = 0.2, plus one all-NaN row and one row per feature with only that
    feature missing.  Returns the max abs difference of the probabilities."""
    rng = np.random.default_rng(MISSING_SEED)
    X = X_test[:N_MISSING_CHECK].copy()
    X[rng.random(X.shape) < 0.2] = np.nan
    one_missing = np.repeat(X_test[:1], N_FEATURES, axis=0)
    one_missing[np.arange(N_FEATURES), np.arange(N_FEATURES)] = np.nan
    X = np.concatenate([X, np.full((1, N_FEATURES), np.nan, dtype=np.float32), one_missing])
    label, proba = ort_session(path).run(None, {INPUT_NAME: X})
    sk_proba = model.predict_proba(X)
    diff = float(np.max(np.abs(proba.astype(np.float64) - sk_proba)))
    mismatch = np.nonzero(label != model.predict(X))[0]
    if diff > 1e-5 or any(abs(sk_proba[i, 1] - 0.5) > 1e-5 for i in mismatch):
        raise AssertionError(f"{path}: with missing values, max abs diff {diff:.3g}, {len(mismatch)} label mismatches")
    print(f"  missing values {path}: {len(X)} rows with NaNs ({int(np.isnan(X).sum())} values); "
          f"max |ort - sklearn| = {diff:.3e}; label mismatches = {len(mismatch)}")
    return diff


# --------------------------------------------------------------------------
# Output writers
# --------------------------------------------------------------------------

CONFIG_TEMPLATE = """\
# fraud_detector: card-payment fraud score for one transaction, keyed by customer_id (synthetic example model)
platform = "onnx"
max_batch_size = 64

# Unversioned calls keep getting version 2 (the MLP) until someone moves this
# on; versions 3 and 4 are served only to calls that name them.
default_version = 2

# Input `features` is float32 [batch, 15], columns in this exact order:
#   static customer features (daily batch job, keyed by customer_id):
{static}
#   dynamic recent-activity features (streamed, keyed by customer_id):
{dynamic}
#   request-time features (sent with the call):
{request}
# Outputs: `label` int64 [batch] (1 = fraud), `probabilities` float32 [batch, 2]
# ([P(legit), P(fraud)]).
# Versions: 1 = StandardScaler + LogisticRegression, 2 = StandardScaler + MLPClassifier (32, 16),
# 3 = HistGradientBoostingClassifier ({hgb_trees} trees, depth <= {hgb_depth}), 4 = RandomForestClassifier ({rf_trees} trees, depth <= {rf_depth}).
# Generated by model-server/training/train_fraud_model.py -- see DATASET.md there.

# A request that finds this version idle runs at once on the thread that
# decoded it when its run is expected to take at most inline_max_us (default
# 50; a warm one-row run of this model takes ~25 µs); 0 always uses an
# inference thread.
# inline_max_us = 50

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
shape = [-1, 15]
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


def write_config(model_dir: Path) -> Path:
    def block(names, start):
        return "\n".join(f"#   {start + i:2d}  {n}" for i, n in enumerate(names))

    text = CONFIG_TEMPLATE.format(
        static=block(STATIC_FEATURES, 0),
        dynamic=block(DYNAMIC_FEATURES, len(STATIC_FEATURES)),
        request=block(REQUEST_FEATURES, len(STATIC_FEATURES) + len(DYNAMIC_FEATURES)),
        hgb_trees=HGB_MAX_ITER, hgb_depth=HGB_MAX_DEPTH, rf_trees=RF_N_ESTIMATORS, rf_depth=RF_MAX_DEPTH,
    )
    path = model_dir / "config.toml"
    path.write_text(text)
    return path


def f32(x) -> float:
    """Exact float32 value as a Python float (its repr round-trips to the same f32)."""
    return float(np.float32(x))


def write_reference(path: Path, version: str, onnx_path: Path, X_ref: np.ndarray) -> None:
    sess = ort_session(onnx_path)
    label, proba = sess.run(None, {INPUT_NAME: X_ref})
    doc = {
        "model": MODEL_NAME,
        "version": version,
        "input": INPUT_NAME,
        "feature_names": FEATURE_NAMES,
        "inputs": [[f32(v) for v in row] for row in X_ref],
        "outputs": {
            "label": [int(v) for v in label],
            "probabilities": [[f32(a), f32(b)] for a, b in proba],
        },
    }
    # Self-check: the JSON decimals parse back to the very same float32 values.
    back = np.array(doc["inputs"], dtype=np.float32)
    assert np.array_equal(back.view(np.uint32), X_ref.view(np.uint32))
    backp = np.array(doc["outputs"]["probabilities"], dtype=np.float32)
    assert np.array_equal(backp.view(np.uint32), proba.view(np.uint32))
    path.write_text(json.dumps(doc, indent=None, separators=(",", ":")) + "\n")


def op_counts(ops: list) -> str:
    """'MatMul (ai.onnx) x3, Relu (ai.onnx) x2, ...' in first-seen order."""
    counts = {}
    for op in ops:
        counts[op] = counts.get(op, 0) + 1
    return ", ".join(op if n == 1 else f"{op} x{n}" for op, n in counts.items())


def feature_table(X: np.ndarray, y: np.ndarray) -> str:
    lines = [
        "| # | feature | group | mean | std | min | p50 | p99 | max | mean (legit) | mean (fraud) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups = (["static"] * 5) + (["dynamic"] * 5) + (["request"] * 5)
    for j, name in enumerate(FEATURE_NAMES):
        col = X[:, j].astype(np.float64)
        lines.append(
            f"| {j} | `{name}` | {groups[j]} | {col.mean():.3f} | {col.std():.3f} | {col.min():.3f} | "
            f"{np.percentile(col, 50):.3f} | {np.percentile(col, 99):.3f} | {col.max():.3f} | "
            f"{col[y == 0].mean():.3f} | {col[y == 1].mean():.3f} |"
        )
    return "\n".join(lines)


DATASET_TEMPLATE = """\
# Synthetic card-payment fraud data set (`fraud_detector`)

<!-- Generated by train_fraud_model.py; edit the script, not this file. -->

This data set is entirely synthetic. It exists so the gateway and model server
have a realistic, deterministic example model; it says nothing about real fraud.
It is generated in memory by `generate_dataset()` in `train_fraud_model.py`
(numpy `default_rng({data_seed})`); nothing is downloaded and nothing but this
description, the models and the reference rows is written to disk.

## Shape

* {n} rows, one card transaction per customer, keyed by `customer_id`
  (`C000001` ... `C{n:06d}`).
* 15 float32 features, in this exact column order (the ONNX input `features`
  is `[batch, 15]`), grouped by where the gateway gets them from:
  * **static** customer features, refreshed by a daily batch job:
    {static};
  * **dynamic** recent-activity features, streamed:
    {dynamic};
  * **request-time** features, sent with the call:
    {request}.
* Label `y` (1 = fraud, 0 = legitimate).

## Class balance

| split | rows | fraud | fraud rate |
|---|---:|---:|---:|
| all | {n} | {n_fraud} | {rate_all:.2%} |
| train (80 %) | {n_train} | {n_fraud_train} | {rate_train:.2%} |
| test (20 %) | {n_test} | {n_fraud_test} | {rate_test:.2%} |

The split is `train_test_split(test_size=0.2, stratify=y, random_state={split_seed})`.

## Generator

All draws come from one `numpy.random.default_rng({data_seed})`, in the order
of the code. Values are rounded (money to cents, distances to 0.1 km, minutes
to 0.1, risk scores to 4 decimals, counts and hours are integers) and then
stored as float32; the rounding keeps neighbouring values far apart compared
with float32 precision, so tree split thresholds do not fall between two
adjacent float32 values and sklearn, onnxruntime and tract route rows alike.

A latent, unobserved **risky session** flag (P = 6 %) stands for account
takeover / card-testing sessions: it makes bursts, card-not-present, odd hours,
large amounts and far-away locations more likely. It is *not* a feature and
*not* the label; it only creates the correlated structure that real fraud
traffic has. The label is drawn from the logistic rule further down.

Static (per customer):

* `account_age_days` = 1 + floor(Gamma(shape 1.5, scale 500)), clipped to [1, 3650].
* `avg_txn_amount_30d` = LogNormal(ln 45, 0.8), clipped to [2, 5000].
* `txn_count_30d` ~ Poisson(a), a ~ Gamma(2, 12) (customer activity level, mean 24 / 30 days).
* `chargeback_count_1y` ~ Poisson(0.06 + 0.15 * [account_age_days < 90]).
* `home_country_risk` ~ Beta(2, 8) (score in [0, 1]).

Dynamic (recent activity before this transaction):

* `txn_count_1h` ~ Poisson(txn_count_30d / 720 + (2.5 if risky else 0.05)).
* `txn_amount_sum_1h` = txn_count_1h * avg_txn_amount_30d * LogNormal(0, 0.5).
* `distinct_merchants_24h` = min(60, txn_count_1h + Poisson(0.8 * min(txn_count_30d / 30, 10) + (2 if risky else 0))).
* `failed_auth_count_24h` ~ Poisson(1.2 if risky else 0.08).
* `minutes_since_last_txn` = Uniform(0.2, 60) if txn_count_1h > 0, else
  60 + Exponential(mean 43200 / max(txn_count_30d, 1)); clipped to [0, 43200].

Request-time:

* `amount` = avg_txn_amount_30d * LogNormal(0, 0.6) (risky: LogNormal(0.9, 0.9)), clipped to [0.5, 20000].
* `merchant_category_risk` ~ Beta(2, 7) (risky: Beta(3, 4)).
* `is_card_present` ~ Bernoulli(0.62) (risky: Bernoulli(0.2)), 0/1.
* `hour_of_day` ~ diurnal profile peaking 12:00 and 18:00, low 02:00-04:00 (risky: uniform 0..23), integer.
* `distance_from_home_km` = LogNormal(ln 6, 1.0) if card present, LogNormal(ln 25, 1.4) if not
  (risky: LogNormal(ln 250, 1.5)), clipped to [0, 20000].

## Label rule

    ratio = amount / avg_txn_amount_30d
    cnp   = 1 - is_card_present
    night = [hour_of_day <= 5]
    z = {b0}
      + {c[log_amount_ratio]}  * max(ln ratio, 0)                       # high amount relative to the 30-day average
      + {c[txn_count_1h]} * txn_count_1h                            # burst in the last hour
      + {c[log1p_sum_1h_ratio]}  * ln(1 + txn_amount_sum_1h / avg_txn_amount_30d)
      + {c[distinct_merchants_24h]} * distinct_merchants_24h
      + {c[failed_auth_count_24h]} * failed_auth_count_24h
      + {c[short_gap]}  * [minutes_since_last_txn < 5]
      + {c[merchant_category_risk]}  * merchant_category_risk
      + {c[home_country_risk]}  * home_country_risk
      + {c[chargeback_count_1y]}  * chargeback_count_1y
      + {c[new_account]}  * [account_age_days < 30]
      + ({c[log1p_age_months]}) * ln(1 + account_age_days / 30)
      + {c[log1p_distance]}  * ln(1 + distance_from_home_km)            # far from home
      + {c[cnp_night]}  * cnp * night                                 # card-not-present at night
      + {c[cnp_far]}  * cnp * [distance_from_home_km > 500]
      + {c[big_amount_and_burst]}  * [ratio > 3] * [txn_count_1h >= 3]
      + {c[card_not_present]}  * cnp
      + eps,   eps ~ Normal(0, {noise_sd})
    y ~ Bernoulli(1 / (1 + exp(-z)))

The mean of the true fraud probability over the data set is {mean_p:.2%}; the
Bayes-optimal AUC on the test split (scoring with the true probability,
noise included) is {bayes_auc:.4f}.

## Feature summary (all rows)

{table}

## Models and test metrics

| version | model | trees | depth | test AUC | test accuracy | ONNX size |
|---|---|---:|---:|---:|---:|---:|
| 1 | `Pipeline([StandardScaler(), LogisticRegression(max_iter=2000, random_state={lr_seed})])` | - | - | {auc1:.4f} | {acc1:.4f} | {size1} bytes |
| 2 | `Pipeline([StandardScaler(), MLPClassifier(hidden_layer_sizes={mlp_hidden}, activation="relu", alpha={mlp_alpha}, max_iter={mlp_max_iter}, early_stopping=True, random_state={mlp_seed})])` | - | - | {auc2:.4f} | {acc2:.4f} | {size2} bytes |
| 3 | `HistGradientBoostingClassifier(max_iter={hgb_max_iter}, early_stopping=False, max_depth={hgb_max_depth}, random_state={hgb_seed})` | {trees3[trees]} | {trees3[depth]} | {auc3:.4f} | {acc3:.4f} | {size3} bytes |
| 4 | `RandomForestClassifier(n_estimators={rf_n}, max_depth={rf_max_depth}, random_state={rf_seed}, n_jobs=1)` | {trees4[trees]} | {trees4[depth]} | {auc4:.4f} | {acc4:.4f} | {size4} bytes |

All four are trained on the same {n_train} training rows and the same 15 raw
features (the tree versions without a scaler). Depth is the deepest split
path reached. Accuracy scores the `label` output; since only {rate_test:.2%} of
the test rows are fraud, answering "legitimate" every time already scores
{acc_constant:.4f}, so compare the versions by AUC.

Exported graphs (node op types with their domain, opsets, and what runs them
in the model server):

| version | nodes | opsets | server runs it with |
|---|---|---|---|
{graph_rows}

The tree versions are one `TreeEnsembleClassifier` node each (opset 1 of
`ai.onnx.ml`: skl2onnx 1.20.0 writes that version of the op for float
inputs, whatever the target opset), `classlabels_int64s` = [0, 1], leaves
holding only the class-1 score:

| version | tree nodes | leaves | splits sending missing values to the true branch | `post_transform` | `base_values` |
|---|---:|---:|---:|---|---|
| 3 | {trees3[nodes]} | {trees3[leaves]} | {missing3} | `{post3}` | {base3} |
| 4 | {trees4[nodes]} | {trees4[leaves]} | {missing4} | `{post4}` | {base4} |

Those directions (`nodes_missing_value_tracks_true` = 1: a NaN takes the true,
left branch) are sklearn's own: for version 3 skl2onnx copies
`missing_go_to_left` (through the script's workaround for its bool bug), for
version 4 skl2onnx writes all zeros and the script copies each split's
`tree_.missing_go_to_left` itself. sklearn sets them even though training saw
no NaN (toward the child with more training samples).

onnxruntime vs sklearn `predict_proba` on the {n_test} test rows: max abs
difference {diff1:.2e} (v1), {diff2:.2e} (v2), {diff3:.2e} (v3), {diff4:.2e} (v4),
labels identical. The tree versions with missing values (NaN in about 20 % of
the values of {n_missing_check} test rows, one all-NaN row, one row per feature with
only that feature missing): max abs difference {diff3_missing:.2e} (v3),
{diff4_missing:.2e} (v4), labels identical.
tract (Python bindings, same version as the Rust server) vs onnxruntime on the reference rows: {tract_note}.

Reference rows: {n_ref} test rows ({n_ref_fraud} fraud, {n_ref_legit} legitimate; drawn with
`default_rng({sample_seed})`), the same rows for all four versions, in
`reference/fraud_detector_v1.json` ... `reference/fraud_detector_v4.json`. They
hold no missing values: JSON has no NaN literal and the reference layout
reads every input as a number.

Built with: numpy {np_v}, scikit-learn {sk_v}, skl2onnx {skl2onnx_v}, onnx {onnx_v}, onnxruntime {ort_v}{tract_v}.
"""


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def main(argv=None) -> int:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-repo", required=True, type=Path, help="model repository root (model-server/models)")
    ap.add_argument("--reference-dir", required=True, type=Path, help="where to write reference JSON files")
    ap.add_argument("--dataset-doc", type=Path, default=here / "DATASET.md", help="where to write DATASET.md")
    args = ap.parse_args(argv)

    np.random.seed(0)  # nothing should use the global RNG, but just in case

    print(f"numpy {np.__version__}, scikit-learn {sklearn.__version__}, skl2onnx {skl2onnx.__version__}, "
          f"onnx {onnx.__version__}, onnxruntime {ort.__version__}")

    data = generate_dataset(N_CUSTOMERS, DATA_SEED)
    X, y = data["X"], data["y"]
    idx = np.arange(len(y))
    idx_train, idx_test = train_test_split(idx, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED)
    X_train, y_train = X[idx_train], y[idx_train]
    X_test, y_test = X[idx_test], y[idx_test]
    print(f"data: {len(y)} rows, fraud {int(y.sum())} ({y.mean():.2%}); "
          f"train {len(y_train)} ({y_train.mean():.2%} fraud), test {len(y_test)} ({y_test.mean():.2%} fraud); "
          f"mean true p = {data['p_fraud'].mean():.2%}")
    bayes_auc = roc_auc_score(y_test, data["p_fraud"][idx_test])

    # ---- train ------------------------------------------------------------
    v1 = Pipeline([
        ("scaler", StandardScaler()),
        ("clf", LogisticRegression(max_iter=2000, random_state=LR_SEED)),
    ])
    v1.fit(X_train, y_train)
    auc1 = roc_auc_score(y_test, v1.predict_proba(X_test)[:, 1])
    print(f"v1 LogisticRegression: test AUC = {auc1:.4f}")

    model_dir = args.out_repo / MODEL_NAME
    sizes = {}
    onnx_paths = {}
    graphs = {}

    def save(model, version, description):
        onx = export_onnx(model, version, description)
        d = model_dir / version
        d.mkdir(parents=True, exist_ok=True)
        p = d / "model.onnx"
        p.write_bytes(onx.SerializeToString())
        sizes[version] = p.stat().st_size
        onnx_paths[version] = p
        ops = sorted({f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in onx.graph.node})
        opsets = ", ".join(f"{o.domain or 'ai.onnx'}={o.version}" for o in onx.opset_import)
        print(f"  wrote {p} ({sizes[version]} bytes), ops: {', '.join(ops)}; opsets: {opsets}")
        graphs[version] = describe_graph(onx)
        return p

    save(v1, "1", "fraud_detector v1: StandardScaler + LogisticRegression on 15 float32 features")

    v2 = Pipeline([
        ("scaler", StandardScaler()),
        ("clf", MLPClassifier(
            hidden_layer_sizes=MLP_HIDDEN, activation="relu", alpha=MLP_ALPHA, max_iter=MLP_MAX_ITER,
            early_stopping=True, random_state=MLP_SEED,
        )),
    ])
    v2.fit(X_train, y_train)
    auc2 = roc_auc_score(y_test, v2.predict_proba(X_test)[:, 1])
    print(f"v2 MLPClassifier(hidden_layer_sizes={MLP_HIDDEN}, alpha={MLP_ALPHA}): test AUC = {auc2:.4f} "
          f"({final_estimator(v2).n_iter_} epochs)")
    save(v2, "2", f"fraud_detector v2: StandardScaler + MLPClassifier(hidden_layer_sizes={MLP_HIDDEN}, "
                  f"activation=relu) on 15 float32 features")

    # Tree versions: the raw 15 features (trees need no scaling), each model
    # with its own random_state, trained after v1 and v2 so nothing they draw
    # can move those.
    v3 = HistGradientBoostingClassifier(
        max_iter=HGB_MAX_ITER, early_stopping=False, max_depth=HGB_MAX_DEPTH, random_state=HGB_SEED,
    )
    v4 = RandomForestClassifier(
        n_estimators=RF_N_ESTIMATORS, max_depth=RF_MAX_DEPTH, random_state=RF_SEED, n_jobs=1,
    )
    fit_seconds = {}
    trees = {}
    for version, model in (("3", v3), ("4", v4)):
        start = time.perf_counter()
        # One OpenMP thread: HGB's gradient sums are parallel reductions, and a
        # fixed thread count keeps their rounding the same on every machine.
        with threadpool_limits(limits=1, user_api="openmp"):
            model.fit(X_train, y_train)
        fit_seconds[version] = time.perf_counter() - start
        trees[version] = tree_stats(model)
    if v3.n_iter_ != HGB_MAX_ITER:
        raise RuntimeError(f"HistGradientBoostingClassifier built {v3.n_iter_} trees, not {HGB_MAX_ITER}")

    aucs, accs = {}, {}
    for version, model in (("1", v1), ("2", v2), ("3", v3), ("4", v4)):
        aucs[version] = roc_auc_score(y_test, model.predict_proba(X_test)[:, 1])
        accs[version] = accuracy_score(y_test, model.predict(X_test))
    for version, name in (("3", "HistGradientBoostingClassifier"), ("4", "RandomForestClassifier")):
        t = trees[version]
        print(f"v{version} {name}: {t['trees']} trees, depth {t['depth']}, {t['nodes']} nodes, {t['leaves']} leaves; "
              f"test AUC = {aucs[version]:.4f}, accuracy = {accs[version]:.4f}; trained in {fit_seconds[version]:.1f} s")
    save(v3, "3", f"fraud_detector v3: HistGradientBoostingClassifier({HGB_MAX_ITER} trees, max_depth={HGB_MAX_DEPTH}) "
                  f"on 15 float32 features")
    save(v4, "4", f"fraud_detector v4: RandomForestClassifier({RF_N_ESTIMATORS} trees, max_depth={RF_MAX_DEPTH}) "
                  f"on 15 float32 features")

    cfg = write_config(model_dir)
    print(f"  wrote {cfg}")

    # ---- reference rows -----------------------------------------------------
    rng = np.random.default_rng(SAMPLE_SEED)
    test_fraud = np.nonzero(y_test == 1)[0]
    test_legit = np.nonzero(y_test == 0)[0]
    pick = np.concatenate([
        rng.choice(test_fraud, size=N_REFERENCE_FRAUD, replace=False),
        rng.choice(test_legit, size=N_REFERENCE - N_REFERENCE_FRAUD, replace=False),
    ])
    pick = pick[rng.permutation(len(pick))]
    X_ref = np.ascontiguousarray(X_test[pick])
    assert X_ref.shape == (N_REFERENCE, N_FEATURES) and X_ref.dtype == np.float32

    args.reference_dir.mkdir(parents=True, exist_ok=True)
    for version in ("1", "2", "3", "4"):
        path = args.reference_dir / f"{MODEL_NAME}_v{version}.json"
        write_reference(path, version, onnx_paths[version], X_ref)
        print(f"  wrote {path}")
    fn_path = args.reference_dir / "feature_names.json"
    fn_path.write_text(json.dumps(
        {"static": STATIC_FEATURES, "dynamic": DYNAMIC_FEATURES, "request": REQUEST_FEATURES}, indent=2) + "\n")
    print(f"  wrote {fn_path}")

    # ---- final checks ---------------------------------------------------------
    print("checking ONNX files with onnxruntime:")
    diff1 = check_onnx(onnx_paths["1"], v1, X_test)
    diff2 = check_onnx(onnx_paths["2"], v2, X_test)
    diff3 = check_onnx(onnx_paths["3"], v3, X_test)
    diff4 = check_onnx(onnx_paths["4"], v4, X_test)
    diff3_missing = check_missing_values(onnx_paths["3"], v3, X_test)
    diff4_missing = check_missing_values(onnx_paths["4"], v4, X_test)
    tract_diffs = {}
    for version in ("1", "2", "3", "4"):
        ref = json.loads((args.reference_dir / f"{MODEL_NAME}_v{version}.json").read_text())
        labels = ref["outputs"]["label"]
        assert len(ref["inputs"]) == N_REFERENCE and len(labels) == N_REFERENCE
        assert all(len(r) == N_FEATURES for r in ref["inputs"])
        print(f"  reference v{version}: {N_REFERENCE} rows, predicted fraud in {sum(labels)} of them")
        if version in ("3", "4"):
            print(f"  tract check v{version}: skipped (tree ensemble: the server evaluates it natively, not with tract)")
            continue
        tract_diffs[version] = check_with_tract(
            onnx_paths[version],
            np.array(ref["inputs"], dtype=np.float32),
            np.array(labels, dtype=np.int64),
            np.array(ref["outputs"]["probabilities"], dtype=np.float32),
        )

    # ---- DATASET.md -------------------------------------------------------------
    doc = DATASET_TEMPLATE.format(
        data_seed=DATA_SEED, split_seed=SPLIT_SEED, sample_seed=SAMPLE_SEED, lr_seed=LR_SEED,
        n=len(y), n_fraud=int(y.sum()), rate_all=float(y.mean()),
        n_train=len(y_train), n_fraud_train=int(y_train.sum()), rate_train=float(y_train.mean()),
        n_test=len(y_test), n_fraud_test=int(y_test.sum()), rate_test=float(y_test.mean()),
        static=", ".join(f"`{n}`" for n in STATIC_FEATURES),
        dynamic=", ".join(f"`{n}`" for n in DYNAMIC_FEATURES),
        request=", ".join(f"`{n}`" for n in REQUEST_FEATURES),
        b0=LABEL_INTERCEPT, c=LABEL_COEF, noise_sd=LABEL_NOISE_SD,
        mean_p=float(data["p_fraud"].mean()), bayes_auc=bayes_auc,
        table=feature_table(X, y),
        auc1=aucs["1"], auc2=aucs["2"], auc3=aucs["3"], auc4=aucs["4"],
        acc1=accs["1"], acc2=accs["2"], acc3=accs["3"], acc4=accs["4"],
        acc_constant=1.0 - float(y_test.mean()),
        size1=sizes["1"], size2=sizes["2"], size3=sizes["3"], size4=sizes["4"],
        mlp_hidden=MLP_HIDDEN, mlp_alpha=MLP_ALPHA, mlp_max_iter=MLP_MAX_ITER, mlp_seed=MLP_SEED,
        hgb_max_iter=HGB_MAX_ITER, hgb_max_depth=HGB_MAX_DEPTH, hgb_seed=HGB_SEED,
        rf_n=RF_N_ESTIMATORS, rf_max_depth=RF_MAX_DEPTH, rf_seed=RF_SEED,
        trees3=trees["3"], trees4=trees["4"],
        graph_rows="\n".join(
            f"| {v} | {op_counts(graphs[v]['ops'])} | {graphs[v]['opsets']} | "
            f"{'tract' if v in ('1', '2') else 'its own tree-ensemble evaluator'} |"
            for v in ("1", "2", "3", "4")
        ),
        missing3=graphs["3"]["missing_tracks_true"], missing4=graphs["4"]["missing_tracks_true"],
        post3=graphs["3"]["post_transform"], post4=graphs["4"]["post_transform"],
        base3=", ".join(str(np.float32(v)) for v in graphs["3"]["base_values"]) or "none",
        base4=", ".join(str(np.float32(v)) for v in graphs["4"]["base_values"]) or "none",
        diff1=diff1, diff2=diff2, diff3=diff3, diff4=diff4, diff3_missing=diff3_missing, diff4_missing=diff4_missing,
        n_missing_check=N_MISSING_CHECK,
        tract_note=("not checked (python package `tract` not installed)" if None in tract_diffs.values()
                    else f"max abs difference {tract_diffs['1']:.2e} (v1), {tract_diffs['2']:.2e} (v2), labels identical; "
                         f"v3 and v4 are not run in tract (the server does not use tract for tree ensembles)"),
        n_ref=N_REFERENCE, n_ref_fraud=N_REFERENCE_FRAUD, n_ref_legit=N_REFERENCE - N_REFERENCE_FRAUD,
        np_v=np.__version__, sk_v=sklearn.__version__, skl2onnx_v=skl2onnx.__version__,
        onnx_v=onnx.__version__, ort_v=ort.__version__,
        tract_v=("" if None in tract_diffs.values() else f", tract (Python) {tract_version()}"),
    )
    args.dataset_doc.write_text(doc)
    print(f"  wrote {args.dataset_doc}")

    print("summary:")
    print(f"  fraud base rate: {y.mean():.2%} ({int(y.sum())} / {len(y)})")
    print(f"  v1 LogisticRegression test AUC {auc1:.4f}, {sizes['1']} bytes, max abs diff {diff1:.3e}")
    print(f"  v2 MLPClassifier{MLP_HIDDEN} test AUC {auc2:.4f}, {sizes['2']} bytes, max abs diff {diff2:.3e}")
    for version, name, diff in (("3", "HistGradientBoostingClassifier", diff3), ("4", "RandomForestClassifier", diff4)):
        g, t = graphs[version], trees[version]
        print(f"  v{version} {name} ({t['trees']} trees, depth {t['depth']}) test AUC {aucs[version]:.4f}, "
              f"accuracy {accs[version]:.4f}, {sizes[version]} bytes, max abs diff {diff:.3e}, "
              f"trained in {fit_seconds[version]:.1f} s")
        print(f"     graph: {', '.join(g['ops'])}; opsets {g['opsets']}; post_transform {g['post_transform']}, "
              f"base_values {g['base_values']}, classlabels {g['classlabels']}, "
              f"{g['missing_tracks_true']} splits with missing -> true branch")
        print(f"     TreeEnsembleClassifier attributes: {', '.join(g['attribute_names'])}")
    if None not in tract_diffs.values():
        print(f"  tract vs onnxruntime max abs diff: v1 {tract_diffs['1']:.3e}, v2 {tract_diffs['2']:.3e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
