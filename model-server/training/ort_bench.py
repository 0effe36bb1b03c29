#!/usr/bin/env python3
"""Time one ONNX model in onnxruntime on one thread, as a baseline for the
model server's own numbers.

Prints ONE JSON line on stdout (everything else goes to stderr):

    {"model": ..., "onnxruntime": "1.31.1", "provider": "CPUExecutionProvider",
     "intra_op_num_threads": 1, "inter_op_num_threads": 1,
     "input": ..., "rows": 4096, "batch": 64,
     "batched": {"calls": ..., "seconds": ..., "rows_per_s": ...},
     "single_row": {"calls": ..., "p50_us": ..., "p99_us": ..., "mean_us": ...}}

* batched: calls of `--batch` rows, cycling through the row pool, for
  `--seconds`; rows_per_s counts rows answered.
* single_row: one-row calls, cycling through the pool, for `--seconds` (and at
  least `--min-calls` calls); each call is timed on its own.

Rows come from `--input-json` (a reference file such as
reference/fraud_detector_v3.json, whose "inputs" are used, or a bare JSON list
of rows) or, by default, from the training data generator
(`generate_dataset(--rows, --seed)` in train_fraud_model.py), so they look
like the example data.  The input name is read from the model.

Run with the training venv (see README.md), e.g.:

    python model-server/training/ort_bench.py \
        --model model-server/models/fraud_detector/3/model.onnx --batch 64 --seconds 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def load_rows(args) -> tuple[np.ndarray, str]:
    if args.input_json is not None:
        doc = json.loads(args.input_json.read_text())
        rows = doc["inputs"] if isinstance(doc, dict) else doc
        return np.asarray(rows, dtype=np.float32), str(args.input_json)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_fraud_model import generate_dataset  # noqa: PLC0415  (heavy imports, only when needed)

    return generate_dataset(args.rows, args.seed)["X"], f"generate_dataset(n={args.rows}, seed={args.seed})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path, help="ONNX file")
    ap.add_argument("--batch", type=int, default=64, help="rows per call in the batched phase (default 64)")
    ap.add_argument("--seconds", type=float, default=2.0, help="duration of each phase (default 2)")
    ap.add_argument("--min-calls", type=int, default=1000, help="at least this many single-row calls (default 1000)")
    ap.add_argument("--input-json", type=Path, help="rows to use: reference JSON or a list of rows")
    ap.add_argument("--rows", type=int, default=4096, help="rows to generate without --input-json (default 4096)")
    ap.add_argument("--seed", type=int, default=1, help="generator seed without --input-json (default 1)")
    args = ap.parse_args(argv)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(str(args.model), sess_options=opts, providers=["CPUExecutionProvider"])
    input_name = sess.get_inputs()[0].name

    pool, source = load_rows(args)
    n = len(pool)
    if n < args.batch:
        pool = np.resize(pool, (args.batch, pool.shape[1]))
        n = len(pool)
    batches = [np.ascontiguousarray(pool[i:i + args.batch]) for i in range(0, n - args.batch + 1, args.batch)]
    singles = [np.ascontiguousarray(pool[i:i + 1]) for i in range(n)]

    for x in batches[:3] + singles[:20]:  # warm-up
        sess.run(None, {input_name: x})

    calls = 0
    start = time.perf_counter()
    deadline = start + args.seconds
    while time.perf_counter() < deadline:
        sess.run(None, {input_name: batches[calls % len(batches)]})
        calls += 1
    batched_seconds = time.perf_counter() - start

    lat_ns = []
    deadline = time.perf_counter() + args.seconds
    while time.perf_counter() < deadline or len(lat_ns) < args.min_calls:
        x = singles[len(lat_ns) % n]
        t0 = time.perf_counter_ns()
        sess.run(None, {input_name: x})
        lat_ns.append(time.perf_counter_ns() - t0)
    lat_us = np.asarray(lat_ns, dtype=np.float64) / 1e3

    print(json.dumps({
        "model": str(args.model),
        "onnxruntime": ort.__version__,
        "provider": "CPUExecutionProvider",
        "intra_op_num_threads": opts.intra_op_num_threads,
        "inter_op_num_threads": opts.inter_op_num_threads,
        "input": source,
        "rows": n,
        "batch": args.batch,
        "batched": {
            "calls": calls,
            "seconds": round(batched_seconds, 3),
            "rows_per_s": round(calls * args.batch / batched_seconds, 1),
        },
        "single_row": {
            "calls": len(lat_ns),
            "p50_us": round(float(np.percentile(lat_us, 50)), 2),
            "p99_us": round(float(np.percentile(lat_us, 99)), 2),
            "mean_us": round(float(lat_us.mean()), 2),
        },
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
