#!/usr/bin/env bash
# Re-train the example `fraud_detector` model and regenerate its ONNX files,
# config.toml, reference outputs and DATASET.md.  Runnable from any directory.
#
# The Python environment lives outside the repository, in
#   ${XDG_CACHE_HOME:-$HOME/.cache}/mlgw/train-venv
# and is created on first use (set MLGW_TRAIN_VENV to use another path,
# PYTHON to pick the interpreter that creates it).  Extra arguments are passed
# on to train_fraud_model.py.
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
exec "$venv/bin/python" "$here/train_fraud_model.py" \
    --out-repo model-server/models \
    --reference-dir model-server/training/reference \
    "$@"
