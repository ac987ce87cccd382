"""ONNX Runtime on a published SavedModel, for ``benchmarks/latency.py``'s comparison only.

It measured slower than TensorFlow on this machine, so it is not a service backend (``app.runners.backends``);
it keeps the runner interface (``card``, ``predict(batch) -> ndarray``) so the pipeline can run it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segcore.card import ModelCard
from segcore.model_folder import SIGNATURE_NAME
from segcore.runner import Runner


class OnnxRuntimeRunner(Runner):
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
    """The serving signature (``SIGNATURE_NAME``) of a SavedModel as a serialized ONNX model (tf2onnx)."""
    import tensorflow as tf
    import tf2onnx

    loaded = tf.saved_model.load(str(version_dir))
    signature = loaded.signatures[SIGNATURE_NAME]
    spec = signature.structured_input_signature[1][card.input_name]

    # tf2onnx wants a tf.function it can trace; the signature itself is a wrapped concrete function.
    @tf.function(input_signature=[tf.TensorSpec(spec.shape, spec.dtype, name=card.input_name)])
    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return {card.output_name: signature(**{card.input_name: image})[card.output_name]}

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=opset)
    return proto.SerializeToString()
