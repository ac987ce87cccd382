"""Model versions on disk -> loaded, warmed runners, swapped in atomically.

``models_dir`` has the TF Serving layout ``<name>/<version>/``. A version is *complete* when its
``saved_model.pb`` and model card exist (the exporter publishes by renaming a finished directory into
place, so a complete directory is never half written). :meth:`ModelRegistry.refresh` loads the newest
complete version of each model beside the one being served, warms it with its own
``tf_serving_warmup_requests``, and only then makes it the served version with one assignment. Requests
hold a reference to the :class:`LoadedModel` they started with, so they finish on it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app import metrics
from segcore.card import WARMUP_RELPATH, ModelCard
from segcore.runner import Runner

log = logging.getLogger("app.registry")

RunnerFactory = Callable[[Path, ModelCard], Runner]


@dataclass
class LoadedModel:
    name: str
    version: int
    path: Path
    card: ModelCard
    runner: Runner
    load_ms: float
    warmup_ms: float


@dataclass
class ModelState:
    name: str
    served: LoadedModel | None = None
    loaded: dict[int, LoadedModel] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)


class UnknownModel(LookupError):
    pass


def complete_versions(model_root: Path) -> list[int]:
    """Numbered version directories holding a SavedModel and a card, ascending."""
    versions = []
    for entry in model_root.iterdir() if model_root.is_dir() else []:
        if entry.is_dir() and entry.name.isdigit() and int(entry.name) > 0:
            if (entry / "saved_model.pb").is_file() and (entry / "assets.extra" / "model_card.json").is_file():
                versions.append(int(entry.name))
    return sorted(versions)


def warm_up(runner: Runner, version_dir: Path) -> int:
    """Replay the version's warm-up requests (TF Serving's format); returns how many ran."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = version_dir / WARMUP_RELPATH
    count = 0
    if path.is_file():
        for record in tf.data.TFRecordDataset(str(path)):
            log_entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            request = log_entry.predict_log.request
            batch = tf.make_ndarray(request.inputs[runner.card.input_name]).astype(np.float32)
            out = runner.predict(batch)
            if out.shape[:-1] != batch.shape[:-1] or out.shape[-1] != runner.card.output_channels:
                raise ValueError(f"warm-up returned shape {out.shape} for input {batch.shape}")
            count += 1
    if count == 0:  # no warm-up file: one representative call so the first request is not the slow one
        d = runner.card.tiling.divisor
        shape = (1, *([-(-160 // d) * d] * runner.card.dims), len(runner.card.modalities))
        runner.predict(np.zeros(shape, dtype=np.float32))
        count = 1
    return count


class ModelRegistry:
    """Which versions exist, which are loaded, which one each model serves by default."""

    def __init__(self, models_dir: Path, runner_factory: RunnerFactory) -> None:
        self.models_dir = Path(models_dir)
        self._factory = runner_factory
        self._states: dict[str, ModelState] = {}
        self._lock = threading.Lock()  # one loader at a time; readers never take it

    def names(self) -> list[str]:
        return sorted(self._states)

    def state(self, name: str) -> ModelState:
        try:
            return self._states[name]
        except KeyError:
            raise UnknownModel(name) from None

    def get(self, name: str, version: int | None = None) -> LoadedModel:
        """The served version of ``name``, or a specific loaded ``version``."""
        state = self.state(name)
        if version is None:
            if state.served is None:
                raise UnknownModel(name)
            return state.served
        try:
            return state.loaded[version]
        except KeyError:
            raise UnknownModel(f"{name} v{version}") from None

    def ready(self) -> bool:
        return any(s.served is not None for s in self._states.values())

    def _load(self, name: str, version: int) -> LoadedModel:
        path = self.models_dir / name / str(version)
        t0 = time.perf_counter()
        card = ModelCard.load(path)
        if card.name != name or card.version != version:
            raise ValueError(f"card says {card.name} v{card.version} but the directory is {name}/{version}")
        runner = self._factory(path, card)
        t1 = time.perf_counter()
        warm_up(runner, path)
        t2 = time.perf_counter()
        metrics.LOAD_SECONDS.labels(name, "load").observe(t1 - t0)
        metrics.LOAD_SECONDS.labels(name, "warmup").observe(t2 - t1)
        return LoadedModel(name, version, path, card, runner, (t1 - t0) * 1000, (t2 - t1) * 1000)

    def refresh(self, only: str | None = None) -> None:
        """Load the newest complete version of every model (or of ``only``) and serve it.

        A version that fails to load or warm is recorded as failed and never served; the previous one
        keeps serving. Versions whose directory disappeared are dropped (requests holding them finish).
        """
        with self._lock:
            roots = sorted(p for p in self.models_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
            for root in roots:
                if only is not None and root.name != only:
                    continue
                state = self._states.get(root.name) or ModelState(root.name)
                versions = complete_versions(root)
                for gone in [v for v in state.loaded if v not in versions]:
                    del state.loaded[gone]
                candidates = [v for v in versions if v not in state.failed]
                if candidates and candidates[-1] not in state.loaded:
                    version = candidates[-1]
                    try:
                        loaded = self._load(root.name, version)
                    except Exception as exc:  # any failure: keep serving the last good version
                        state.failed[version] = f"{type(exc).__name__}: {exc}"[:500]
                        metrics.LOAD_FAILURES.labels(root.name).inc()
                        log.error("model_load_failed model=%s version=%s error=%s", root.name, version, exc)
                    else:
                        state.loaded[version] = loaded
                        log.info(
                            "model_loaded model=%s version=%s load_ms=%.0f warmup_ms=%.0f",
                            root.name,
                            version,
                            loaded.load_ms,
                            loaded.warmup_ms,
                        )
                newest = max(state.loaded, default=None)
                state.served = state.loaded[newest] if newest is not None else None  # the atomic swap
                # Keep only the served version loaded; older ones are released once requests drop them.
                state.loaded = {newest: state.served} if state.served is not None else {}
                if state.served is not None:
                    metrics.SERVED_VERSION.labels(root.name).set(state.served.version)
                self._states[root.name] = state

    def describe(self, name: str) -> dict:
        state = self.state(name)
        root = self.models_dir / name
        on_disk = complete_versions(root)
        versions = []
        for v in sorted(set(on_disk) | set(state.loaded) | set(state.failed)):
            if v in state.failed:
                status = "failed"
            elif state.served is not None and v == state.served.version:
                status = "serving"
            elif v in state.loaded:
                status = "loaded"
            else:
                status = "available"
            entry: dict = {"version": v, "state": status}
            if v in state.failed:
                entry["error"] = state.failed[v]
            if v in state.loaded:
                entry["load_ms"] = round(state.loaded[v].load_ms, 1)
                entry["warmup_ms"] = round(state.loaded[v].warmup_ms, 1)
            versions.append(entry)
        return {
            "name": name,
            "served_version": state.served.version if state.served else None,
            "versions": versions,
            "card": state.served.card.model_dump(mode="json") if state.served else None,
        }
