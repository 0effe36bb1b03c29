#!/usr/bin/env python3
"""Interop check: NVIDIA Triton's official Python clients against our model-server.

    tests/interop/tritonclient_check.py GRPC_URL HTTP_URL

URLs are host:port (an http://, https:// or grpc:// prefix is stripped, as
tritonclient wants none). Needs tests/interop/requirements.txt installed, e.g.
with the interpreter printed by tests/rig/python-venv.sh.

With tritonclient.grpc, tritonclient.http (and their asyncio variants) it checks
health, readiness, server and model metadata, inference on every version of
fraud_detector with the 256 reference rows (model-server/training/reference/,
computed with onnxruntime) in chunks of 64 -- over HTTP with every combination
of JSON / binary-extension inputs and outputs -- and the error paths (unknown
model or version, wrong input name).

Prints one line per check and `tritonclient interop: N checks passed`; on the
first failure prints what was expected and what came back, and exits 1.
"""

import asyncio
import importlib.metadata
import json
import sys
import traceback
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpclient_aio
from tritonclient.utils import InferenceServerException

MODEL = "fraud_detector"
VERSIONS = ["1", "2", "3", "4"]
N_FEATURES = 15
CHUNK = 64
TOL = 1e-5
TIMEOUT_S = 30
EXPECTED_INPUTS = {"features": ("FP32", [-1, N_FEATURES])}
EXPECTED_OUTPUTS = {"label": ("INT64", [-1]), "probabilities": ("FP32", [-1, 2])}
OUTPUT_NAMES = list(EXPECTED_OUTPUTS)
UNKNOWN_MODEL = "no_such_model"
WRONG_INPUT = "feature_vector"
REFERENCE_DIR = Path(__file__).resolve().parents[2] / "model-server" / "training" / "reference"

passed = 0


class CheckFailed(Exception):
    pass


def expect(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def check(name, fn):
    """Runs one check; fn returns a short detail string. Exits 1 on failure."""
    global passed
    try:
        detail = fn()
    except CheckFailed as e:
        fail(name, str(e))
    except InferenceServerException as e:
        fail(name, f"unexpected InferenceServerException: status={e.status()!r} message={e.message()!r}"
                   f" debug_details={e.debug_details()!r}")
    except Exception:  # noqa: BLE001 - anything else is a failure too, with its traceback
        fail(name, "unexpected exception:\n" + traceback.format_exc())
    passed += 1
    print(f"ok   {name}" + (f": {detail}" if detail else ""), flush=True)


def fail(name, msg):
    print(f"FAIL {name}: {msg}", flush=True)
    print(f"tritonclient interop: FAILED at check {passed + 1} ({name}); {passed} checks passed before it",
          flush=True)
    sys.exit(1)


def host_port(url):
    for scheme in ("http://", "https://", "grpc://"):
        if url.startswith(scheme):
            url = url[len(scheme):]
    return url.rstrip("/")


def load_reference(version):
    path = REFERENCE_DIR / f"fraud_detector_v{version}.json"
    ref = json.loads(path.read_text())
    x = np.asarray(ref["inputs"], dtype=np.float32)
    labels = np.asarray(ref["outputs"]["label"], dtype=np.int64)
    probs = np.asarray(ref["outputs"]["probabilities"], dtype=np.float32)
    assert x.shape == (256, N_FEATURES), f"{path}: inputs shape {x.shape}"
    assert labels.shape == (256,) and probs.shape == (256, 2), f"{path}: outputs shapes"
    return x, labels, probs


REF = {v: load_reference(v) for v in VERSIONS}


def chunks(version):
    x = REF[version][0]
    for start in range(0, len(x), CHUNK):
        yield start, x[start:start + CHUNK]


def compare(version, start, label, probs, where):
    """Compares one chunk's outputs with the reference; returns max |diff| of probabilities."""
    _, ref_labels, ref_probs = REF[version]
    n = min(CHUNK, len(ref_labels) - start)
    exp_l, exp_p = ref_labels[start:start + n], ref_probs[start:start + n]
    expect(label is not None, f"{where}: as_numpy('label') returned None (output missing)")
    expect(probs is not None, f"{where}: as_numpy('probabilities') returned None (output missing)")
    expect(label.dtype == np.int64 and label.shape == (n,),
           f"{where}: label dtype/shape {label.dtype} {label.shape}, expected int64 ({n},)")
    expect(probs.dtype == np.float32 and probs.shape == (n, 2),
           f"{where}: probabilities dtype/shape {probs.dtype} {probs.shape}, expected float32 ({n}, 2)")
    bad = np.flatnonzero(label != exp_l)
    expect(bad.size == 0, f"{where}: {bad.size} labels differ from the reference, first at row {start + bad[0]}"
                          f" got {label[bad[0]]} expected {exp_l[bad[0]]}" if bad.size else "")
    diff = float(np.max(np.abs(probs.astype(np.float64) - exp_p.astype(np.float64))))
    i = int(np.argmax(np.abs(probs - exp_p)) // 2)
    expect(diff <= TOL, f"{where}: probabilities max |diff| {diff:.3g} > {TOL} (row {start + i}: got"
                        f" {probs[i].tolist()} expected {exp_p[i].tolist()})")
    return diff


def expect_error(name, call, want_in_message=(), status_ok=None):
    """call() must raise InferenceServerException; returns a description of it."""
    try:
        result = call()
    except InferenceServerException as e:
        status, msg = e.status(), e.message() or ""
        print(f"     {name} -> InferenceServerException status={status!r} message={msg!r}", flush=True)
        for s in want_in_message:
            expect(s.lower() in msg.lower(), f"message {msg!r} (status {status!r}) does not mention {s!r}")
        if status_ok is not None:
            ok, why = status_ok(status, msg)
            expect(ok, f"status {status!r} message {msg!r}: {why}")
        return f"raised status={status}"
    raise CheckFailed(f"no exception raised; call returned {result!r}")


def says_not_found(status, msg):
    ok = str(status) in ("404", "StatusCode.NOT_FOUND") or "not found" in msg.lower()
    return ok, "neither the status (404 / NOT_FOUND) nor the message says 'not found'"


def client_error(status, msg):
    ok = str(status).startswith("4") or str(status) in (
        "StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND", "StatusCode.FAILED_PRECONDITION",
        "StatusCode.OUT_OF_RANGE")
    return ok, "expected a client-error status (HTTP 4xx / gRPC INVALID_ARGUMENT)"


def metadata_tensors(tensors):
    return {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in tensors}


def check_model_metadata(md, where, versions=VERSIONS):
    """md: dict form (http, or grpc as_json=True). The versioned form lists only that version (as Triton)."""
    expect(md.get("name") == MODEL, f"{where}: name {md.get('name')!r}, expected {MODEL!r}; metadata {md}")
    expect(list(md.get("versions", [])) == versions,
           f"{where}: versions {md.get('versions')!r}, expected {versions}; metadata {md}")
    ins, outs = metadata_tensors(md.get("inputs", [])), metadata_tensors(md.get("outputs", []))
    expect(ins == EXPECTED_INPUTS, f"{where}: inputs {ins}, expected {EXPECTED_INPUTS}")
    expect(outs == EXPECTED_OUTPUTS, f"{where}: outputs {outs}, expected {EXPECTED_OUTPUTS}")
    return (f"name={md['name']} versions={md['versions']} platform={md.get('platform')!r} "
            f"inputs={ins} outputs={outs}")


def readiness_checks(p, c):
    """What both clients say of a running server: live, ready, and the model ready (any version)."""
    check(f"{p} is_server_live", lambda: expect(c.is_server_live() is True, "is_server_live() is not True") or "")
    check(f"{p} is_server_ready", lambda: expect(c.is_server_ready() is True, "is_server_ready() is not True") or "")
    for v in [""] + VERSIONS:
        check(f"{p} is_model_ready({MODEL!r}{', ' + repr(v) if v else ''})",
              lambda v=v: expect(c.is_model_ready(MODEL, v) is True, "is_model_ready() is not True") or "")


# ---------------------------------------------------------------- gRPC


def grpc_checks(url):
    c = grpcclient.InferenceServerClient(url=url)
    p = "grpc"
    readiness_checks(p, c)

    def unknown_ready(model, version=""):
        # The V2 gRPC spec allows either answer: ready=false, or an error status.
        try:
            r = c.is_model_ready(model, version)
        except InferenceServerException as e:
            expect(says_not_found(e.status(), e.message() or "")[0],
                   f"raised status={e.status()!r} message={e.message()!r}, not a not-found")
            return f"raised status={e.status()} message={e.message()!r}"
        expect(r is False, f"returned {r!r}, expected False")
        return "False"
    check(f"{p} is_model_ready({UNKNOWN_MODEL!r}) is not ready", lambda: unknown_ready(UNKNOWN_MODEL))
    check(f"{p} is_model_ready({MODEL!r}, '9') is not ready", lambda: unknown_ready(MODEL, "9"))

    def server_md():
        md = c.get_server_metadata(as_json=True)
        expect(md.get("name"), f"server metadata without a name: {md}")
        expect(md.get("version"), f"server metadata without a version: {md}")
        proto = c.get_server_metadata()
        expect(proto.name == md["name"], f"protobuf name {proto.name!r} != json {md['name']!r}")
        return f"name={md['name']!r} version={md['version']!r} extensions={md.get('extensions', [])}"
    check(f"{p} get_server_metadata", server_md)

    def model_md(version=""):
        md = c.get_model_metadata(MODEL, version, as_json=True)
        proto = c.get_model_metadata(MODEL, version)
        versions = [version] if version else VERSIONS
        expect(proto.name == MODEL and list(proto.versions) == versions,
               f"protobuf form: name {proto.name!r} versions {list(proto.versions)}, expected {versions}")
        return check_model_metadata(md, "get_model_metadata", versions)
    check(f"{p} get_model_metadata({MODEL!r})", model_md)
    check(f"{p} get_model_metadata({MODEL!r}, '1')", lambda: model_md("1"))

    def infer(version, outputs_mode):
        maxdiff, raw = 0.0, 0
        for start, x in chunks(version):
            inp = grpcclient.InferInput("features", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            outputs = None if outputs_mode == "all" else [grpcclient.InferRequestedOutput(n) for n in OUTPUT_NAMES]
            rid = f"grpc-v{version}-{start}"
            r = c.infer(MODEL, [inp], model_version=version, outputs=outputs, request_id=rid,
                        client_timeout=TIMEOUT_S)
            resp = r.get_response()
            where = f"v{version} rows {start}..{start + len(x) - 1}"
            expect(resp.model_name == MODEL and resp.model_version == version,
                   f"{where}: response model_name/model_version {resp.model_name!r}/{resp.model_version!r}")
            expect(resp.id == rid, f"{where}: response id {resp.id!r}, expected the request's {rid!r}")
            names = sorted(o.name for o in resp.outputs)
            expect(names == sorted(OUTPUT_NAMES), f"{where}: response outputs {names}")
            raw = len(resp.raw_output_contents)
            maxdiff = max(maxdiff, compare(version, start, r.as_numpy("label"), r.as_numpy("probabilities"), where))
        return f"256 rows in {256 // CHUNK} requests, labels equal, probabilities max |diff| {maxdiff:.2g} " \
               f"(raw_output_contents: {raw})"
    for v in VERSIONS:
        check(f"{p} infer v{v} (outputs requested by name)", lambda v=v: infer(v, "named"))
        check(f"{p} infer v{v} (no outputs named: all)", lambda v=v: infer(v, "all"))

    def features(name="features", n=2):
        inp = grpcclient.InferInput(name, [n, N_FEATURES], "FP32")
        inp.set_data_from_numpy(REF["1"][0][:n])
        return [inp]
    not_found_checks(p, c, features)
    check(f"{p} infer with input {WRONG_INPUT!r} raises naming it",
          lambda: expect_error("infer", lambda: c.infer(MODEL, features(WRONG_INPUT)),
                               want_in_message=(WRONG_INPUT,), status_ok=client_error))
    c.close()


def not_found_checks(p, c, features):
    """What both clients raise for an unknown model (metadata and infer) and an unknown version;
    `features()` makes a valid input for client `c`."""
    check(f"{p} get_model_metadata({UNKNOWN_MODEL!r}) raises not found",
          lambda: expect_error("get_model_metadata", lambda: c.get_model_metadata(UNKNOWN_MODEL),
                               status_ok=says_not_found))
    check(f"{p} infer {UNKNOWN_MODEL!r} raises not found",
          lambda: expect_error("infer", lambda: c.infer(UNKNOWN_MODEL, features()), status_ok=says_not_found))
    check(f"{p} infer {MODEL!r} version '9' raises not found",
          lambda: expect_error("infer", lambda: c.infer(MODEL, features(), model_version="9"),
                               status_ok=says_not_found))


# ---------------------------------------------------------------- HTTP


def http_checks(url):
    c = httpclient.InferenceServerClient(url=url, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S)
    p = "http"
    readiness_checks(p, c)
    check(f"{p} is_model_ready({UNKNOWN_MODEL!r}) is False",
          lambda: expect(c.is_model_ready(UNKNOWN_MODEL) is False, "not False") or "")
    check(f"{p} is_model_ready({MODEL!r}, '9') is False",
          lambda: expect(c.is_model_ready(MODEL, "9") is False, "not False") or "")

    def server_md():
        md = c.get_server_metadata()
        expect(md.get("name"), f"server metadata without a name: {md}")
        expect(md.get("version"), f"server metadata without a version: {md}")
        return f"name={md['name']!r} version={md['version']!r} extensions={md.get('extensions', [])}"
    check(f"{p} get_server_metadata", server_md)
    check(f"{p} get_model_metadata({MODEL!r})",
          lambda: check_model_metadata(c.get_model_metadata(MODEL), "get_model_metadata"))
    check(f"{p} get_model_metadata({MODEL!r}, '1')",
          lambda: check_model_metadata(c.get_model_metadata(MODEL, "1"), "get_model_metadata", ["1"]))

    # outputs mode -> {output name: binary_data flag}; None = no outputs named, the client then asks
    # for all outputs in binary (parameters.binary_data_output = true).
    out_modes = {
        "binary": {"label": True, "probabilities": True},
        "json": {"label": False, "probabilities": False},
        "mixed": {"label": True, "probabilities": False},
        "unnamed": None,
    }

    def infer(version, binary_in, out_mode):
        flags = out_modes[out_mode]
        maxdiff = 0.0
        for start, x in chunks(version):
            inp = httpclient.InferInput("features", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary_in)
            outputs = None if flags is None else [
                httpclient.InferRequestedOutput(n, binary_data=b) for n, b in flags.items()]
            rid = f"http-v{version}-{start}"
            r = c.infer(MODEL, [inp], model_version=version, outputs=outputs, request_id=rid)
            resp = r.get_response()
            where = f"v{version} rows {start}..{start + len(x) - 1}"
            expect(resp.get("model_name") == MODEL and resp.get("model_version") == version,
                   f"{where}: response model_name/model_version {resp.get('model_name')!r}/"
                   f"{resp.get('model_version')!r}")
            expect(resp.get("id") == rid, f"{where}: response id {resp.get('id')!r}, expected {rid!r}")
            for n in OUTPUT_NAMES:
                o = r.get_output(n)
                expect(o is not None, f"{where}: output {n!r} missing from the response {resp}")
                want_bin = True if flags is None else flags[n]
                is_bin = "binary_data_size" in (o.get("parameters") or {})
                expect(is_bin == want_bin,
                       f"{where}: output {n!r} came back {'binary' if is_bin else 'as JSON'}, asked for "
                       f"{'binary' if want_bin else 'JSON'}: {o}")
            maxdiff = max(maxdiff, compare(version, start, r.as_numpy("label"), r.as_numpy("probabilities"), where))
        return f"256 rows in {256 // CHUNK} requests, labels equal, probabilities max |diff| {maxdiff:.2g}"

    for v in VERSIONS:
        for binary_in in (True, False):
            for mode in out_modes:
                desc = {"binary": "outputs binary", "json": "outputs JSON",
                        "mixed": "label binary + probabilities JSON",
                        "unnamed": "no outputs named (all, binary)"}[mode]
                check(f"{p} infer v{v} (inputs {'binary' if binary_in else 'JSON'}, {desc})",
                      lambda v=v, b=binary_in, m=mode: infer(v, b, m))

    def features(name="features", binary=True, n=2):
        inp = httpclient.InferInput(name, [n, N_FEATURES], "FP32")
        inp.set_data_from_numpy(REF["1"][0][:n], binary_data=binary)
        return [inp]
    not_found_checks(p, c, features)
    for binary in (True, False):
        check(f"{p} infer with input {WRONG_INPUT!r} ({'binary' if binary else 'JSON'}) raises naming it",
              lambda b=binary: expect_error("infer", lambda: c.infer(MODEL, features(WRONG_INPUT, b)),
                                            want_in_message=(WRONG_INPUT,), status_ok=client_error))
    c.close()


# ---------------------------------------------------------------- asyncio clients


def aio_checks(grpc_url, http_url):
    """The asyncio variants (grpc.aio, http.aio on aiohttp): 4 chunks of v2 sent concurrently."""

    async def run(mod, url, binary):
        c = mod.InferenceServerClient(url=url)
        try:
            expect(await c.is_server_ready() is True, "is_server_ready() is not True")
            expect(await c.is_model_ready(MODEL, "2") is True, "is_model_ready(v2) is not True")

            async def one(start, x):
                inp = mod.InferInput("features", list(x.shape), "FP32")
                if binary is None:
                    inp.set_data_from_numpy(x)
                else:
                    inp.set_data_from_numpy(x, binary_data=binary)
                r = await c.infer(MODEL, [inp], model_version="2")
                return compare("2", start, r.as_numpy("label"), r.as_numpy("probabilities"),
                               f"v2 rows {start}..{start + len(x) - 1}")
            diffs = await asyncio.gather(*(one(s, x) for s, x in chunks("2")))
        finally:
            await c.close()
        return f"256 rows in {len(diffs)} concurrent requests, labels equal, probabilities max " \
               f"|diff| {max(diffs):.2g}"

    check("grpc.aio infer v2 (concurrent)", lambda: asyncio.run(run(grpcclient_aio, grpc_url, None)))
    check("http.aio infer v2 (concurrent, inputs binary)", lambda: asyncio.run(run(httpclient_aio, http_url, True)))
    check("http.aio infer v2 (concurrent, inputs JSON)", lambda: asyncio.run(run(httpclient_aio, http_url, False)))


def main(argv):
    if len(argv) != 3:
        print(f"usage: {argv[0]} GRPC_URL HTTP_URL   (host:port; an http:// prefix is stripped)", file=sys.stderr)
        return 2
    grpc_url, http_url = host_port(argv[1]), host_port(argv[2])
    print(f"tritonclient {importlib.metadata.version('tritonclient')} (grpcio {importlib.metadata.version('grpcio')},"
          f" protobuf {importlib.metadata.version('protobuf')}, numpy {np.__version__}) against grpc={grpc_url}"
          f" http={http_url}", flush=True)
    grpc_checks(grpc_url)
    http_checks(http_url)
    aio_checks(grpc_url, http_url)
    print(f"tritonclient interop: {passed} checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
