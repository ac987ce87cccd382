"""How a model version runs: the one table of inference backends.

``SEG_BACKEND`` names a row of :data:`BACKENDS`. Settings validate against it (:data:`BackendName`), the
application gives the registry the row's runner factory, and ``app.cli.tune`` and ``benchmarks/`` build
runners through :func:`runner_factory` too, so what they measure is what the service runs. A new backend is
a module in this folder and one row here.

Each factory imports its runtime late, so an in-process deployment never loads gRPC stubs or OpenVINO and a
TF Serving one needs nothing but the model cards from the shared models directory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from segcore.card import ModelCard
from segcore.runner import Runner

if TYPE_CHECKING:
    from app.config import Settings

BackendName = Literal["inprocess", "tfserving", "openvino"]

RunnerFactory = Callable[[Path, ModelCard], Runner]
"""Builds a runner for ``(version_dir, card)``. An exception with a true ``retryable`` attribute means
"the backend cannot tell yet" (TF Serving still starting): the registry retries the version on its next
refresh instead of marking it failed."""


@dataclass(frozen=True)
class Backend:
    name: BackendName
    description: str
    extra: str  # the pyproject extra that installs its runtime
    build: Callable[[Settings], RunnerFactory]


def _inprocess(settings: Settings) -> RunnerFactory:
    from segcore.runner import SavedModelRunner

    return SavedModelRunner


def _tfserving(settings: Settings) -> RunnerFactory:
    from app.runners.tfserving import TFServingClient

    return TFServingClient(
        settings.tfserving_target,
        timeout_seconds=settings.tfserving_timeout_seconds,
        max_message_mb=settings.tfserving_max_message_mb,
    )


def _openvino(settings: Settings) -> RunnerFactory:
    # The same SavedModel, converted in memory; threads follow SEG_INTRA_OP_THREADS (or the tuning file).
    from functools import partial

    from app.runners.openvino import OpenVINORunner

    return partial(OpenVINORunner, threads=settings.intra_op_threads, precision=settings.openvino_precision)


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("inprocess", "the SavedModel in this process (TensorFlow)", "serve", _inprocess),
        Backend("tfserving", "each tile to TF Serving over one gRPC channel", "serve", _tfserving),
        Backend("openvino", "the same SavedModel run by OpenVINO in this process", "openvino", _openvino),
    )
}
if tuple(BACKENDS) != get_args(BackendName):  # SEG_BACKEND's allowed values and the table must not drift
    raise RuntimeError(f"BackendName {get_args(BackendName)} and BACKENDS {tuple(BACKENDS)} differ")


def runner_factory(settings: Settings) -> RunnerFactory:
    """The runner factory of ``settings.backend``. A factory with a ``close()`` (the TF Serving channel) is
    closed by the application at shutdown."""
    backend = BACKENDS.get(settings.backend)
    if backend is None:
        raise ValueError(f'backend "{settings.backend}" is not one of: {", ".join(BACKENDS)}')
    return backend.build(settings)
