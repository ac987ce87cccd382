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

``precision="int8"`` runs the version's ``openvino-int8`` variant instead (an IR quantized by NNCF under
``assets.extra/``, made by ``benchmarks/quantize_int8.py``; see :class:`segcore.card.Variant`), and only if
its validation Dice is within :data:`MAX_INT8_DICE_LOSS` of the float model's in the same card. A version
without one raises :class:`segcore.runner.NotApplicable` (``SEG_BACKEND=auto`` then skips the row).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Literal

import numpy as np

from segcore.card import ModelCard
from segcore.runner import NotApplicable, Runner

Precision = Literal["default", "f32", "bf16", "int8"]

INT8_VARIANT = "openvino-int8"
MAX_INT8_DICE_LOSS = 0.005
"""An INT8 variant serves only if its mean validation Dice is at most this much below the float model's."""


def int8_model_path(version_dir: Path, card: ModelCard) -> Path:
    """The INT8 IR to run for this version, or why not: :class:`NotApplicable` when the card has no such
    variant, ``ValueError`` when its validation Dice lost more than :data:`MAX_INT8_DICE_LOSS`."""
    variant = card.variants.get(INT8_VARIANT)
    if variant is None:
        raise NotApplicable(f"{card.name} v{card.version} has no {INT8_VARIANT} variant in its card")
    loss = card.validation_dice.get("mean", 0.0) - variant.validation_dice.get("mean", 0.0)
    if loss > MAX_INT8_DICE_LOSS:
        raise ValueError(
            f"the {INT8_VARIANT} variant's mean validation Dice is {loss:.4f} below the float model's "
            f"(at most {MAX_INT8_DICE_LOSS} allowed): not served"
        )
    return Path(version_dir) / variant.path


class OpenVINORunner(Runner):
    """A SavedModel version compiled by OpenVINO for the CPU (latency hint, batch size 1)."""

    def __init__(
        self,
        version_dir: Path,
        card: ModelCard | None = None,
        *,
        threads: int | None = None,
        precision: Precision = "default",
        model_path: Path | None = None,
    ) -> None:
        """``model_path``: an OpenVINO IR (.xml) of this version to run instead of converting the SavedModel
        (``precision="int8"`` finds the card's variant by itself; the quantizer validates a new one so)."""
        import openvino as ov

        self.version_dir = Path(version_dir)
        self.card = card or ModelCard.load(self.version_dir)
        if precision == "int8" and model_path is None:
            model_path = int8_model_path(self.version_dir, self.card)
        if model_path is not None:
            model = ov.Core().read_model(str(model_path))
        else:
            model = ov.convert_model(str(self.version_dir))
        names = [set(port.get_names()) for port in model.inputs]
        if len(names) != 1 or self.card.input_name not in names[0]:
            raise ValueError(f"OpenVINO sees inputs {names}, but the card says {self.card.input_name!r}")
        config: dict[str, str] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        if precision not in ("default", "int8"):  # int8: the IR's own precisions
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
