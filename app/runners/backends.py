"""How a model version runs: the one table of inference backends.

``SEG_BACKEND`` names a row of :data:`BACKENDS`. Settings validate against it (:data:`BackendName`), the
application gives the registry the row's runner factory, and ``app.cli.tune`` and ``benchmarks/`` build
runners through :func:`runner_factory` too, so what they measure is what the service runs. A new backend is
a module in this folder and one row here.

``auto`` (the default) is not a runtime but a choice among the others, made per model version at load
(:mod:`app.runners.auto`): every *available* row (:attr:`Backend.available`) runs the version's warm-up
requests, rows whose outputs leave TensorFlow's tolerance are refused, and the fastest of the rest serves.
:func:`register` adds a row after import (a test's deliberately wrong runner, a site's own runtime): it is
then one of ``auto``'s candidates, though not a value ``SEG_BACKEND`` accepts by name.

Each factory imports its runtime late, so an in-process deployment never loads gRPC stubs or OpenVINO and a
TF Serving one needs nothing but the model cards from the shared models directory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from segcore.card import ModelCard
from segcore.runner import Runner

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger("app.runners.backends")

BackendName = Literal["auto", "inprocess", "tfserving", "openvino", "openvino-int8"]

RunnerFactory = Callable[[Path, ModelCard], Runner]
"""Builds a runner for ``(version_dir, card)``. An exception with a true ``retryable`` attribute means
"the backend cannot tell yet" (TF Serving still starting): the registry retries the version on its next
refresh instead of marking it failed."""


def _always(settings: Settings) -> str | None:
    return None


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    extra: str  # the pyproject extra that installs its runtime
    build: Callable[[Settings], RunnerFactory]
    available: Callable[[Settings], str | None] = _always
    """Whether ``auto`` should try this row: ``None`` if so, else the reason why not (logged)."""


class NamedFactory:
    """A row's runner factory that stamps :attr:`Runner.backend` on what it builds, so the registry can say
    which runtime serves each version. ``close()`` reaches the wrapped factory (the TF Serving channel)."""

    def __init__(self, name: str, factory: RunnerFactory) -> None:
        self.name = name
        self.factory = factory

    def __call__(self, version_dir: Path, card: ModelCard) -> Runner:
        runner = self.factory(version_dir, card)
        if runner.backend is None:
            runner.backend = self.name
        return runner

    def close(self) -> None:
        close = getattr(self.factory, "close", None)
        if close is not None:
            close()


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
    # The same SavedModel, converted once into SEG_CACHE_DIR; threads follow SEG_INTRA_OP_THREADS (or the tuning file).
    from functools import partial

    from app.runners.openvino import OpenVINORunner

    return partial(
        OpenVINORunner,
        threads=settings.intra_op_threads,
        precision=settings.openvino_precision,
        cache_dir=settings.cache_dir,
    )


def _openvino_int8(settings: Settings) -> RunnerFactory:
    # The version's NNCF-quantized IR (card variant "openvino-int8"), if its validation Dice allows it.
    from functools import partial

    from app.runners.openvino import OpenVINORunner

    return partial(OpenVINORunner, threads=settings.intra_op_threads, precision="int8", cache_dir=settings.cache_dir)


def _openvino_available(settings: Settings) -> str | None:
    import importlib.util

    return None if importlib.util.find_spec("openvino") else "openvino is not installed (the openvino extra)"


def _tfserving_available(settings: Settings) -> str | None:
    # The default target is only a default: auto tries TF Serving only where an operator named one.
    configured = "tfserving_target" in settings.model_fields_set
    return None if configured else "SEG_TFSERVING_TARGET is not set"


def _auto(settings: Settings) -> RunnerFactory:
    from app.runners.auto import AutoFactory

    candidates: dict[str, RunnerFactory] = {}
    for backend in list(BACKENDS.values()):
        if backend.name == "auto":
            continue
        reason = backend.available(settings)
        if reason is None:
            candidates[backend.name] = NamedFactory(backend.name, backend.build(settings))
        else:
            log.info("auto_backend_skipped backend=%s reason=%s", backend.name, reason)
    return AutoFactory(candidates, repeats=settings.auto_repeats, margin=settings.auto_margin)


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "auto",
            "per model version, the fastest backend whose warm-up outputs match TensorFlow's (see Performance)",
            "serve",
            _auto,
        ),
        Backend("inprocess", "the SavedModel in this process (TensorFlow)", "serve", _inprocess),
        Backend(
            "tfserving", "each tile to TF Serving over one gRPC channel", "serve", _tfserving, _tfserving_available
        ),
        Backend(
            "openvino",
            "the same SavedModel run by OpenVINO in this process",
            "openvino",
            _openvino,
            _openvino_available,
        ),
        Backend(
            "openvino-int8",
            "OpenVINO on the version's INT8 variant (only if its validation Dice is within 0.005 of float)",
            "openvino",
            _openvino_int8,
            _openvino_available,
        ),
    )
}
if tuple(BACKENDS) != get_args(BackendName):  # SEG_BACKEND's allowed values and the table must not drift
    raise RuntimeError(f"BackendName {get_args(BackendName)} and BACKENDS {tuple(BACKENDS)} differ")


def register(backend: Backend) -> None:
    """Add a row after import: it becomes one of ``auto``'s candidates (and buildable through
    :func:`runner_factory` by name). Refuses to replace an existing row; ``BACKENDS.pop(name)`` removes it."""
    if backend.name in BACKENDS:
        raise ValueError(f'backend "{backend.name}" is already registered')
    BACKENDS[backend.name] = backend


def runner_factory(settings: Settings) -> RunnerFactory:
    """The runner factory of ``settings.backend``; each runner it builds names its backend
    (:attr:`Runner.backend`). A factory with a ``close()`` (the TF Serving channel, ``auto``'s candidates)
    is closed by the application at shutdown."""
    backend = BACKENDS.get(settings.backend)
    if backend is None:
        raise ValueError(f'backend "{settings.backend}" is not one of: {", ".join(BACKENDS)}')
    factory = backend.build(settings)
    return factory if backend.name == "auto" else NamedFactory(backend.name, factory)
