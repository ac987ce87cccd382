"""``SEG_BACKEND=openvino``: a published SavedModel run by OpenVINO in this process, behind the same
interface as :class:`segcore.runner.SavedModelRunner`.

OpenVINO converts the SavedModel in memory when a version is loaded (``openvino.convert_model``; nothing is
written next to the model, nothing is downloaded). The model card, warm-up requests and the pipeline stay
the same, so the backend changes only which library multiplies the numbers. Parity with TensorFlow is
tested (``tests/app/test_openvino.py``) and measured in ``benchmarks/latency.py`` (which also compares ONNX
Runtime, ``benchmarks/onnx_runner.py``: it measured slower than TensorFlow here, so it is not a backend).

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
from segcore.runner import Runner

Precision = Literal["default", "f32", "bf16"]


class OpenVINORunner(Runner):
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
