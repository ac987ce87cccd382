"""Optional runners on peer CPU runtimes (OpenVINO, ONNX Runtime), behind the same interface as
:class:`segcore.runner.SavedModelRunner`.

Both convert the published SavedModel in memory when a version is loaded (nothing is written next to the
model, nothing is downloaded): OpenVINO reads the SavedModel directly (``openvino.convert_model``), ONNX
Runtime gets an ONNX graph from ``tf2onnx``. The model card, warm-up requests and the pipeline stay the
same, so ``SEG_BACKEND=openvino`` changes only which library multiplies the numbers. Parity with
TensorFlow is tested (``tests/app/test_peer_runtimes.py``) and measured in ``benchmarks/latency.py``;
only OpenVINO is offered as a service backend (``SEG_BACKEND=openvino``) because only it measured faster
than TensorFlow here (ONNX Runtime is kept for the benchmark's comparison).

Why OpenVINO may be faster here: on CPUs with AVX-512 BF16 (this development machine's AMD EPYC has it)
OpenVINO runs convolutions in bfloat16 by default (``INFERENCE_PRECISION_HINT``), with float32
accumulation; TensorFlow's CPU kernels stay in float32. ``precision="f32"`` asks for float32 exactly.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Literal

import numpy as np

from segcore.card import ModelCard

Precision = Literal["default", "f32", "bf16"]


class OpenVINORunner:
    """A SavedModel version compiled by OpenVINO for the CPU (latency hint, batch size 1)."""

    def __init__(
        self,
        version_dir: Path,
        card: ModelCard | None = None,
        *,
        threads: int | None = None,
        precision: Precision = "default",
    ) -> None:
        import openvino as ov

        self.version_dir = Path(version_dir)
        self.card = card or ModelCard.load(self.version_dir)
        model = ov.convert_model(str(self.version_dir))
        names = [set(port.get_names()) for port in model.inputs]
        if len(names) != 1 or self.card.input_name not in names[0]:
            raise ValueError(f"OpenVINO sees inputs {names}, but the card says {self.card.input_name!r}")
        config: dict[str, str] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        if precision != "default":
            config["INFERENCE_PRECISION_HINT"] = precision
        self._compiled = ov.Core().compile_model(model, "CPU", config)
        hint = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision: str = hint.to_string() if hasattr(hint, "to_string") else str(hint)
        self._output = self._compiled.output(self.card.output_name)
        # One infer request per calling thread, reused: OpenVINO keeps its buffers between calls of the same
        # shape, but a request must not run two inferences at once (SEG_MAX_CONCURRENT_INFERENCES > 1).
        self._local = threading.local()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        result = request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.array(result[self._output], dtype=np.float32, copy=True)


class OnnxRuntimeRunner:
    """A SavedModel version converted to ONNX by tf2onnx (in memory) and run by ONNX Runtime's CPU provider."""

    def __init__(
        self, version_dir: Path, card: ModelCard | None = None, *, threads: int | None = None, opset: int = 17
    ) -> None:
        import onnxruntime as ort

        self.version_dir = Path(version_dir)
        self.card = card or ModelCard.load(self.version_dir)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads is not None:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            onnx_bytes(self.version_dir, self.card, opset), options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._output = self.card.output_name

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([self._output], {self._input: np.ascontiguousarray(batch, dtype=np.float32)})[0]


def onnx_bytes(version_dir: Path, card: ModelCard, opset: int = 17) -> bytes:
    """The ``serving_default`` signature of a SavedModel as a serialized ONNX model (tf2onnx)."""
    import tensorflow as tf
    import tf2onnx

    loaded = tf.saved_model.load(str(version_dir))
    signature = loaded.signatures["serving_default"]
    spec = signature.structured_input_signature[1][card.input_name]

    # tf2onnx wants a tf.function it can trace; the signature itself is a wrapped concrete function.
    @tf.function(input_signature=[tf.TensorSpec(spec.shape, spec.dtype, name=card.input_name)])
    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return {card.output_name: signature(**{card.input_name: image})[card.output_name]}

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=opset)
    return proto.SerializeToString()
