"""``SEG_BACKEND=openvino``: a published SavedModel run by OpenVINO in this process, behind the same
interface as :class:`segcore.runner.SavedModelRunner`.

OpenVINO converts the SavedModel when a version is loaded (``openvino.convert_model``; nothing is written
next to the model, nothing is downloaded). With a ``cache_dir`` (the service passes ``SEG_CACHE_DIR``,
default ``~/.cache/brats-serve``) the converted IR is kept there, keyed by the SavedModel's content and
OpenVINO's version (:func:`cached_ir`), and OpenVINO's own compiled-kernel cache sits beside it: only the
first start on a machine pays the conversion and the compilation (1.4-2.3 s and 1.7-6.2 s per bundled model
on a quiet 2-core machine, several times that under load), later starts read both back in well under a
second. A cache that cannot be written is skipped with a warning: the version still loads, as before.
The model card, warm-up requests and the pipeline stay the same, so the backend changes only which library
multiplies the numbers. Parity with TensorFlow is tested (``tests/app/test_openvino.py``) and measured in
``benchmarks/latency.py`` (which also compares ONNX Runtime, ``benchmarks/onnx_runner.py``: it measured slower
than TensorFlow here, so it is not a backend).

Why OpenVINO may be faster here: on CPUs with AVX-512 BF16 (this development machine's AMD EPYC has it)
OpenVINO runs convolutions in bfloat16 by default (``INFERENCE_PRECISION_HINT``), with float32
accumulation; TensorFlow's CPU kernels stay in float32. ``precision="f32"`` asks for float32 exactly.

``precision="int8"`` runs the version's ``openvino-int8`` variant instead (an IR quantized by NNCF under
``assets.extra/``, made by ``benchmarks/quantize_int8.py``; see :class:`segcore.card.Variant`), and only if
its validation Dice is within :data:`MAX_INT8_DICE_LOSS` of the float model's in the same card. A version
without one raises :class:`segcore.runner.NotApplicable` (``SEG_BACKEND=auto`` then skips the row).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Literal

import numpy as np

from segcore.card import ModelCard
from segcore.runner import NotApplicable, Runner

log = logging.getLogger("app.runners.openvino")

Precision = Literal["default", "f32", "bf16", "int8"]
CacheOutcome = Literal["hit", "miss", "off"]

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


def savedmodel_digest(version_dir: Path) -> str:
    """SHA-256 (hex) over the SavedModel's files (relative path and bytes of each, in sorted order), leaving
    out ``assets.extra/`` (card, warm-up requests, variants: they do not change the network). Two version
    directories with the same network share one digest, whatever their name or number."""
    version_dir = Path(version_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in version_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(version_dir)
        if relative.parts[0] == "assets.extra":
            continue
        digest.update(relative.as_posix().encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def cached_ir(version_dir: Path, cache_dir: Path) -> tuple[Path, CacheOutcome]:
    """The version's SavedModel as OpenVINO IR under ``cache_dir/openvino-ir/``: ``(model.xml, "hit")`` when
    an earlier start converted it, else converted now and written, ``(model.xml, "miss")``.

    The folder is named by :func:`savedmodel_digest` and OpenVINO's version, so a changed network or a
    new converter never reads a stale IR, and a hot-swapped version with new weights is converted once.
    Written under a temporary name in the same parent and renamed (one ``rename``), so a concurrent
    process (another replica, a test server) never reads half an IR; weights are kept in float32
    (``compress_to_fp16=False``), exactly the SavedModel's. ``OSError`` if ``cache_dir`` is not writable.
    """
    import openvino as ov

    version = "".join(c if c.isalnum() or c in ".-" else "_" for c in ov.get_version())
    folder = Path(cache_dir) / "openvino-ir" / f"{savedmodel_digest(version_dir)[:32]}-ov{version}"
    xml = folder / "model.xml"
    if xml.is_file() and xml.with_suffix(".bin").is_file():
        return xml, "hit"
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        ov.save_model(ov.convert_model(str(version_dir)), str(tmp / "model.xml"), compress_to_fp16=False)
        try:
            tmp.rename(folder)
        except OSError:
            if not xml.is_file():  # not "another process finished first": a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return xml, "miss"


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
        cache_dir: Path | None = None,
    ) -> None:
        """``model_path``: an OpenVINO IR (.xml) of this version to run instead of converting the SavedModel
        (``precision="int8"`` finds the card's variant by itself; the quantizer validates a new one so).
        ``cache_dir``: keep the converted IR and the compiled kernels there (:func:`cached_ir`); ``None``
        converts in memory every time. :attr:`cache` says which happened: ``hit`` (the IR was on disk), ``miss``
        (converted now and written) or ``off`` (converted in memory: no cache, or it could not be written)."""
        import openvino as ov

        self.version_dir = Path(version_dir)
        self.card = card or ModelCard.load(self.version_dir)
        if precision == "int8" and model_path is None:
            model_path = int8_model_path(self.version_dir, self.card)
        self.cache: CacheOutcome = "off"
        core = ov.Core()
        if cache_dir is not None:
            try:
                if model_path is None:
                    model_path, self.cache = cached_ir(self.version_dir, cache_dir)
                else:  # an IR on disk already (the INT8 variant): only the compiled kernels are cached
                    self.cache = "hit"
                kernels = Path(cache_dir) / "openvino-kernels"
                kernels.mkdir(parents=True, exist_ok=True)
                core.set_property({"CACHE_DIR": str(kernels)})
            except OSError as exc:
                log.warning("openvino_cache_unusable dir=%s error=%s", cache_dir, type(exc).__name__)
                self.cache = "off"
        if model_path is not None:
            model = core.read_model(str(model_path))
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
        self._compiled = core.compile_model(model, "CPU", config)
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


def prepare(models_dir: Path, cache_dir: Path) -> list[tuple[str, CacheOutcome]]:
    """Fill ``cache_dir`` with the IR of every version under ``models_dir`` (``<name>/<version>/``), so even
    a first start reads it: the image does this for its bundled models at build time. Compiled kernels are
    not prepared (they depend on the CPU that runs them). Returns ``(version dir, hit|miss)`` per version."""
    from segcore.model_folder import version_numbers

    done: list[tuple[str, CacheOutcome]] = []
    for model in sorted(p for p in Path(models_dir).iterdir() if p.is_dir() and not p.name.startswith(".")):
        for version in version_numbers(model):
            _, outcome = cached_ir(model / str(version), cache_dir)
            done.append((f"{model.name}/{version}", outcome))
    return done

