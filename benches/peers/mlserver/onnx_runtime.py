"""An MLServer inference runtime serving one ONNX file with onnxruntime.

Used by benches/benches/peer_model_server.rs to serve the example
`fraud_detector` model in MLServer (PyPI has no ONNX runtime package for
MLServer 1.7). It answers like our model-server: one FP32 input tensor
[batch, n] (any input name, cast to float32), and every output of the ONNX
graph under its own name and type, here `label` INT64 [batch] and
`probabilities` FP32 [batch, 2].

model-settings.json names it as `"implementation": "onnx_runtime.OnnxModel"`;
the folder holding this file must be on PYTHONPATH (the bench sets it), and
`parameters.uri` points at the model.onnx file. `parameters.extra.intra_op_threads`
(default 1) sets onnxruntime's threads per session: a single row costs
microseconds, and a pool of spinning threads per worker only takes CPU
from the server's own request handling on a small machine.
"""

import numpy as np
import onnxruntime as ort

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    """Runs the model's ONNX graph on each (possibly batched) request."""

    async def load(self) -> bool:
        path = await get_model_uri(self._settings, wellknown_filenames=["model.onnx"])
        extra = {}
        if self._settings.parameters is not None and self._settings.parameters.extra:
            extra = self._settings.parameters.extra
        threads = int(extra.get("intra_op_threads", 1))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            path, options, providers=["CPUExecutionProvider"]
        )
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise MLServerError(f"{path}: expected one input, found {len(inputs)}")
        self._input_name = inputs[0].name
        self._output_names = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if len(payload.inputs) != 1:
            raise MLServerError(f"expected one input tensor, got {len(payload.inputs)}")
        request_input = payload.inputs[0]
        if request_input.datatype != "FP32":
            raise MLServerError(f"input datatype {request_input.datatype}, want FP32")
        rows = NumpyCodec.decode_input(request_input).astype(np.float32, copy=False)
        if rows.ndim != 2:
            raise MLServerError(f"input shape {list(rows.shape)}, want [batch, features]")
        results = self._session.run(self._output_names, {self._input_name: rows})
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                _output(name, np.asarray(value))
                for name, value in zip(self._output_names, results)
            ],
        )


def _output(name: str, value: np.ndarray):
    """The output in V2 form with the graph's own shape: NumpyCodec would
    report a 1-D `label` [batch] as [batch, 1], unlike our model-server."""
    output = NumpyCodec.encode_output(name, value)
    output.shape = list(value.shape)
    return output
