#!/usr/bin/env bash
# Re-train the example models and regenerate their ONNX files, config.toml,
# reference outputs and DATASET.md: first `fraud_detector`
# (train_fraud_model.py), then the batch-scored `customer_risk` and
# `txn_pattern` (train_batch_models.py, which appends its section to
# DATASET.md), then the merchant embeddings of the similarity example
# (train_embeddings.py: feature-store/definitions/exports/merchant_embedding.csv,
# reference/merchant_embedding_eval.json and the last section of DATASET.md).
# Runnable from any directory.
#
# The Python environment lives outside the repository, in
#   ${XDG_CACHE_HOME:-$HOME/.cache}/mlgw/train-venv
# and is created on first use (set MLGW_TRAIN_VENV to use another path,
# PYTHON to pick the interpreter that creates it).  Extra arguments are passed
# on to every script (they take the same options).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/../.." && pwd)"
venv="${MLGW_TRAIN_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/mlgw/train-venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "creating venv $venv" >&2
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
fi

# Cheap when everything is already installed at the pinned versions.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"

cd "$repo_root"
"$venv/bin/python" "$here/train_fraud_model.py" \
    --out-repo model-server/models \
    --reference-dir model-server/training/reference \
    "$@"
"$venv/bin/python" "$here/train_batch_models.py" \
    --out-repo model-server/models \
    --reference-dir model-server/training/reference \
    "$@"
exec "$venv/bin/python" "$here/train_embeddings.py" \
    --out-repo model-server/models \
    --reference-dir model-server/training/reference \
    "$@"
