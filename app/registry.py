"""Model versions on disk -> loaded, warmed runners, swapped in atomically.

``models_dir`` has the TF Serving layout ``<name>/<version>/``. A version is *complete* when its
``saved_model.pb`` and model card exist (the exporter publishes by renaming a finished directory into
place, so a complete directory is never half written). :meth:`ModelRegistry.refresh` applies the version
policy to what is on disk:

- **latest** (default, TF Serving's ``latest { num_versions: N }``): the ``keep_versions`` newest loadable
  versions stay loaded and the newest of them is served. Requests may ask for any loaded version.
- **pinned** (``pinned={"name": 3}``): version 3 is served whatever else is published; the newest
  ``keep_versions`` stay loaded beside it so they can be tried with ``version=N``. If the pinned version is
  missing or broken the model serves nothing, as TF Serving does: a pin is an operator's explicit choice.

A new version is loaded beside the ones in use, validated (card, signature), warmed with its own
``tf_serving_warmup_requests``, and only then made the served version with one assignment. Requests hold a
reference to the :class:`LoadedModel` they started with, so they finish on it; a version dropped from the
registry (superseded, or its directory removed) is *unloading* until the last such request lets go of it,
then *unloaded* (logged). A version that fails to load or warm is recorded as failed, counted and logged,
and never served; it is retried only if its directory is replaced (a new inode or mtime).

**Quality gate** (:mod:`app.quality_gate`): under the latest policy the served version is the newest
*promoted* one, not simply the newest. A version is promoted when its card's validation Dice is at least
that of the version it would replace (within ``tolerance``), or by an operator (:meth:`ModelRegistry.
promote`). A refused version is still loaded if it is among the ``keep_versions`` newest (so it can be
tried with ``version=N``) and listed as ``refused`` with the reason; the newest promoted version is kept
loaded even when it is older than those. A pin bypasses the gate.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from app import quality_gate, telemetry
from app.quality_gate import Verdict
from app.runners.backends import RunnerFactory
from app.runners.warmup import warmup_batches
from segcore.card import ModelCard
from segcore.model_folder import version_numbers
from segcore.runner import RetryableLoadError, Runner

log = logging.getLogger("app.registry")


@dataclass(eq=False)
class LoadedModel:
    """One loaded, warmed version. Requests keep a reference to it for as long as they run on it."""

    name: str
    version: int
    path: Path
    card: ModelCard
    runner: Runner
    load_ms: float
    warmup_ms: float

    @property
    def backend(self) -> str | None:
        """The runtime that answers for this version (``SEG_BACKEND``, or what ``auto`` chose)."""
        return self.runner.backend


@dataclass(frozen=True)
class Failure:
    """Why a version could not be served, and which directory (inode, mtime) that verdict is about."""

    error: str
    stamp: tuple[int, int]


@dataclass
class ModelState:
    """A model's versions. Refreshes replace these containers instead of mutating them, so a reader
    (a request, ``describe``) iterating one never sees it change under it."""

    name: str
    served: LoadedModel | None = None
    loaded: dict[int, LoadedModel] = field(default_factory=dict)
    failed: dict[int, Failure] = field(default_factory=dict)
    verdicts: dict[int, Verdict] = field(default_factory=dict)  # the quality gate's, per version
    # Dropped from the registry but still referenced by requests in flight; gone once they finish.
    unloading: weakref.WeakValueDictionary[int, LoadedModel] = field(default_factory=weakref.WeakValueDictionary)


class UnknownModel(LookupError):
    pass


def _stamp(path: Path) -> tuple[int, int]:
    """Identity of a version directory: a republished directory (atomic rename) has a new inode."""
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0)
    return (st.st_ino, st.st_mtime_ns)


def warm_up(runner: Runner, version_dir: Path) -> int:
    """Replay the version's warm-up requests (TF Serving's format); returns how many ran.

    Each output is checked against the card (same spatial shape, ``output_channels`` channels), so a
    signature that loads but answers the wrong thing fails here, before it is ever served.
    """
    batches = warmup_batches(version_dir, runner.card)
    for batch in batches:
        runner.checked_predict(batch, "warm-up")
    return len(batches)


def _loaded_fields(model: LoadedModel | None) -> dict:
    """A loaded version's part of ``describe``: load and warm-up times, and the backend that answers (with
    ``SEG_BACKEND=auto``'s trials when it chose)."""
    if model is None:
        return {}
    fields: dict = {"load_ms": round(model.load_ms, 1), "warmup_ms": round(model.warmup_ms, 1)}
    if model.backend is not None:
        fields["backend"] = model.backend
    if model.runner.selection is not None:
        fields["backend_selection"] = model.runner.selection
    return fields


def _on_unloaded(name: str, version: int) -> None:
    log.info("model_unloaded model=%s version=%s", name, version)


class ModelRegistry:
    """Which versions exist, which are loaded, which one each model serves by default.

    ``keep_versions``: how many of the newest loadable versions stay loaded per model (>= 1).
    ``pinned``: model name -> the version to serve instead of the newest.
    ``tolerance``: how much lower (Dice, 0..1) a new version's validation may be and still be promoted.
    """

    def __init__(
        self,
        models_dir: Path,
        runner_factory: RunnerFactory,
        *,
        keep_versions: int = 2,
        pinned: Mapping[str, int] | None = None,
        tolerance: float = 0.0,
    ) -> None:
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be at least 1, not {keep_versions}")
        if not 0 <= tolerance <= 1:
            raise ValueError(f"tolerance is a Dice difference in [0, 1], not {tolerance}")
        self.models_dir = Path(models_dir)
        self.keep_versions = keep_versions
        self.pinned = dict(pinned or {})
        self.tolerance = tolerance
        # Operator promotions that could not be written next to the model (read-only models directory).
        self._operator: dict[str, set[int]] = {}
        self._cards: dict[tuple[str, int], tuple[tuple[int, int], ModelCard | None]] = {}
        self._tried: set[tuple[str, int]] = set()
        self._factory = runner_factory
        self._states: dict[str, ModelState] = {}
        self._lock = threading.Lock()  # one loader at a time; readers never take it

    def names(self) -> list[str]:
        return sorted(self._states)  # one C-level pass under the GIL

    def state(self, name: str) -> ModelState:
        try:
            return self._states[name]
        except KeyError:
            raise UnknownModel(name) from None

    def get(self, name: str, version: int | None = None) -> LoadedModel:
        """The served version of ``name``, or a specific loaded ``version``.

        The caller keeps the returned object for the whole request: that is what lets a swap or an
        unload happen underneath without touching requests in flight.
        """
        state = self.state(name)
        if version is None:
            served = state.served  # one read: the swap is one assignment
            if served is None:
                raise UnknownModel(name)
            return served
        try:
            return state.loaded[version]
        except KeyError:
            raise UnknownModel(f"{name} v{version}") from None

    def ready(self) -> bool:
        # list(): a refresh thread may add a model while this runs on the event loop
        return any(s.served is not None for s in list(self._states.values()))

    def readiness(self) -> tuple[dict[str, int], dict[str, str]]:
        """``(served version by model, reason by model that serves nothing)`` over every model the
        registry knows (each directory under ``models_dir``). A model whose versions all failed, whose
        pin is unavailable, or that the backend has not loaded yet is not ready: a deployment with one
        broken bundled model must not look healthy because another one loads."""
        serving: dict[str, int] = {}
        not_ready: dict[str, str] = {}
        for name, state in list(self._states.items()):
            if state.served is not None:
                serving[name] = state.served.version
            elif state.failed:
                not_ready[name] = "; ".join(f"v{v} failed: {f.error}" for v, f in sorted(state.failed.items()))
            elif name in self.pinned:
                not_ready[name] = f"pinned version {self.pinned[name]} is not loaded"
            else:
                not_ready[name] = "no version is loaded yet"
        return serving, not_ready

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
        telemetry.LOAD_SECONDS.labels(name, "load").observe(t1 - t0)
        telemetry.LOAD_SECONDS.labels(name, "warmup").observe(t2 - t1)
        return LoadedModel(name, version, path, card, runner, (t1 - t0) * 1000, (t2 - t1) * 1000)

    def refresh(self, only: str | None = None) -> None:
        """Apply the version policy to every model on disk (or to ``only``); see the module docstring.

        Never raises for a bad version: failures are recorded per version and the last good one keeps
        serving.
        """
        with self._lock:
            on_disk = {p.name for p in self.models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
            for name in sorted(on_disk | set(self._states)):
                if only is None or name == only:
                    self._refresh_model(name)

    def _refresh_model(self, name: str) -> None:
        root = self.models_dir / name
        state = self._states.get(name) or ModelState(name)
        versions = version_numbers(root)
        self._tried = set()  # this refresh's load attempts: a deferred version waits for the next refresh
        # A failure is a verdict on one directory; a directory republished under the same number is new.
        failed = {v: f for v, f in state.failed.items() if v in versions and f.stamp == _stamp(root / str(v))}
        loaded = {v: m for v, m in state.loaded.items() if v in versions}
        wanted = self._load_wanted(name, versions, loaded, failed)
        pin = self.pinned.get(name)
        # The gate's verdicts (shown even under a pin); the newest promoted version is loaded if needed.
        verdicts, promoted = self._gate(name, versions, failed, loaded)
        self._log_new_refusals(name, state.verdicts, verdicts)
        if pin is not None:
            served = loaded.get(pin)
            if served is None and (state.served is not None or name not in self._states):  # once, not every poll
                log.error("pinned_version_unavailable model=%s version=%s on_disk=%s", name, pin, versions)
        else:
            served = loaded.get(promoted) if promoted is not None else None
            if served is not None:
                wanted.append(served.version)
        keep = {v: loaded[v] for v in sorted(set(wanted))}
        previous = state.served
        state.verdicts = verdicts
        self._swap(state, keep, failed, served, versions)
        self._announce(name, previous, served)
        if not keep and not failed and not versions and not (root.is_dir()):
            self._states.pop(name, None)
        else:
            self._states[name] = state

    def _load_wanted(
        self, name: str, versions: list[int], loaded: dict[int, LoadedModel], failed: dict[int, Failure]
    ) -> list[int]:
        """Load what the policy wants (adding to ``loaded`` and ``failed``); returns the versions to keep.

        Newest first, until ``keep_versions`` are loaded: a broken newest version lets the next one in. A
        pinned version is kept besides those."""
        wanted: list[int] = []
        for version in reversed(versions):
            if len(wanted) == self.keep_versions:
                break
            if version in failed:
                continue
            if version not in loaded:
                self._try_load(name, version, loaded, failed)
            if version in loaded:
                wanted.append(version)
        pin = self.pinned.get(name)
        if pin is not None and pin in versions and pin not in failed and pin not in loaded:
            self._try_load(name, pin, loaded, failed)
        if pin is not None and pin in loaded:
            wanted.append(pin)
        return wanted

    def _try_load(self, name: str, version: int, loaded: dict[int, LoadedModel], failed: dict[int, Failure]) -> None:
        """Load and warm one version into ``loaded``, or record why not in ``failed`` (a retryable error
        records nothing: the next refresh tries again). At most once per version and refresh."""
        if (name, version) in self._tried:
            return
        self._tried.add((name, version))
        stamp = _stamp(self.models_dir / name / str(version))
        try:
            model = self._load(name, version)
        except Exception as exc:  # any failure: keep serving the last good version
            if isinstance(exc, RetryableLoadError):
                log.warning("model_load_deferred model=%s version=%s reason=%s", name, version, exc)
                return
            error = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]  # one log line, one JSON string
            failed[version] = Failure(error, stamp)
            telemetry.LOAD_FAILURES.labels(name).inc()
            log.error("model_load_failed model=%s version=%s error=%s", name, version, error)
            return
        loaded[version] = model
        weakref.finalize(model, _on_unloaded, name, version).atexit = False
        log.info(
            "model_loaded model=%s version=%s load_ms=%.0f warmup_ms=%.0f",
            name,
            version,
            model.load_ms,
            model.warmup_ms,
        )

    @staticmethod
    def _swap(
        state: ModelState,
        keep: dict[int, LoadedModel],
        failed: dict[int, Failure],
        served: LoadedModel | None,
        versions: list[int],
    ) -> None:
        """Replace ``state``'s containers; versions no longer kept become *unloading* until their last
        request lets go. The served reference moves last, in one assignment."""
        dropped = [m for v, m in state.loaded.items() if keep.get(v) is not m]
        for model in dropped:
            reason = "removed" if model.version not in versions else "superseded"
            log.info("model_retired model=%s version=%s reason=%s", state.name, model.version, reason)
        unloading = weakref.WeakValueDictionary({m.version: m for m in dropped})
        for version, model in state.unloading.items():
            unloading.setdefault(version, model)
        state.unloading = unloading
        state.failed = failed
        state.loaded = keep  # version=N lookups see the new set before the default moves
        state.served = served  # the atomic swap

    @staticmethod
    def _announce(name: str, previous: LoadedModel | None, served: LoadedModel | None) -> None:
        """Log a change of served version and keep the served-version gauge in step."""
        if (previous.version if previous else None) != (served.version if served else None):
            log.info(
                "model_served model=%s version=%s previous=%s",
                name,
                served.version if served else None,
                previous.version if previous else None,
            )
        if served is not None:
            telemetry.SERVED_VERSION.labels(name).set(served.version)
        elif previous is not None:
            telemetry.SERVED_VERSION.remove(name)

    def _card(self, name: str, version: int) -> ModelCard | None:
        """The version's card (None if it does not validate), cached per directory identity."""
        path = self.models_dir / name / str(version)
        stamp = _stamp(path)
        cached = self._cards.get((name, version))
        if cached is None or cached[0] != stamp:
            try:
                card: ModelCard | None = ModelCard.load(path)
            except Exception:  # reported when the version is loaded (marked failed with the error)
                card = None
            cached = self._cards[(name, version)] = (stamp, card)
        return cached[1]

    def _gate(
        self,
        name: str,
        versions: list[int],
        failed: dict[int, Failure],
        loaded: dict[int, LoadedModel],
    ) -> tuple[dict[int, Verdict], int | None]:
        """The quality gate's verdict on every version, and the newest promoted version that loads.

        That version is loaded here when it is not among the newest ones already loaded; if it fails, it
        leaves the chain (the next version is then judged against the one before it) and the gate runs
        again, at most once per version. If its load is deferred (TF Serving has not loaded it yet), the
        newest promoted version already loaded keeps serving.
        """
        recorded = quality_gate.read_operator_promotions(self.models_dir / name)
        operator = {v: recorded.get(v, {}) for v in recorded.keys() | self._operator.get(name, set())}
        cards = {v: c for v in versions if (c := self._card(name, v)) is not None}
        self._cards = {k: c for k, c in self._cards.items() if k[0] != name or k[1] in versions}  # drop removed
        for _ in range(len(versions) + 1):
            verdicts = quality_gate.verdicts(cards, operator, self.tolerance, skip=set(failed))
            promoted = [v for v, verdict in verdicts.items() if verdict.promoted]
            if not promoted:
                return verdicts, None
            best = max(promoted)
            if best not in loaded:
                self._try_load(name, best, loaded, failed)
            if best in loaded:
                return verdicts, best
            if best not in failed:  # deferred (backend not ready yet): keep the newest promoted one loaded
                ready = [v for v in promoted if v in loaded]
                return verdicts, max(ready) if ready else None
        return verdicts, None

    @staticmethod
    def _log_new_refusals(name: str, before: dict[int, Verdict], after: dict[int, Verdict]) -> None:
        for version, verdict in after.items():
            if not verdict.promoted and before.get(version) != verdict:
                telemetry.REFUSED_VERSIONS.labels(name).inc()
                log.warning("model_refused model=%s version=%s reason=%s", name, version, verdict.reason)

    def promote(self, name: str, version: int) -> dict:
        """An operator's explicit promotion of ``version`` (refused by the gate, or not yet judged).

        Recorded next to the model (``.promotions.json``) so it outlives a restart; where the models
        directory is read-only it lasts until the service stops (logged). Applies at once (a refresh of
        that model) and returns :meth:`describe`. Raises :class:`UnknownModel` for a version not on disk.
        """
        root = self.models_dir / name
        if version not in version_numbers(root):
            raise UnknownModel(f"{name} v{version}")
        try:
            quality_gate.record_operator_promotion(root, version)
        except OSError as exc:
            log.warning("model_promotion_not_persisted model=%s version=%s error=%s", name, version, exc)
        self._operator.setdefault(name, set()).add(version)
        log.info("model_promoted model=%s version=%s by=operator", name, version)
        self.refresh(name)
        return self.describe(name)

    def describe(self, name: str) -> dict:
        """What ``GET /models/{name}`` shows: every version on disk or in memory, with its state.

        States: ``serving``, ``loaded`` (ask with ``version=N``), ``unloading`` (dropped; requests still
        running on it), ``failed`` (with the error), ``refused`` (by the quality gate, with the reason),
        ``available`` (on disk, outside the policy). Every judged version carries ``promotion``
        (promoted, by ``gate`` | ``operator`` | ``first``, reason).
        """
        state = self._states.get(name)
        root = self.models_dir / name
        if state is None:
            if not root.is_dir():
                raise UnknownModel(name)
            state = ModelState(name)
        served, loaded = state.served, state.loaded
        unloading = {v: m for v, m in list(state.unloading.items()) if loaded.get(v) is not m}
        on_disk = version_numbers(root)
        failed = state.failed
        versions = [
            _version_entry(v, state, unloading)
            for v in sorted(set(on_disk) | set(loaded) | set(failed) | set(unloading))
        ]
        return {
            "name": name,
            "served_version": served.version if served else None,
            "policy": {"pinned": self.pinned[name]} if name in self.pinned else {"latest": self.keep_versions},
            "versions": versions,
            "card": served.card.model_dump(mode="json") if served else None,
        }


def _version_entry(v: int, state: ModelState, unloading: dict[int, LoadedModel]) -> dict:
    """One version of :meth:`ModelRegistry.describe`: its state, and what applies to it (error, the gate's
    verdict, load times)."""
    served, loaded, failed, verdict = state.served, state.loaded, state.failed, state.verdicts.get(v)
    if v in failed:
        status = "failed"
    elif served is not None and v == served.version:
        status = "serving"
    elif verdict is not None and not verdict.promoted:
        status = "refused"
    elif v in loaded:
        status = "loaded"
    elif v in unloading:
        status = "unloading"
    else:
        status = "available"
    entry: dict = {"version": v, "state": status}
    if v in failed:
        entry["error"] = failed[v].error
    if verdict is not None:
        entry["promotion"] = verdict.as_json()
        if status == "refused":
            entry["reason"] = verdict.reason
            entry["loaded"] = v in loaded  # then it answers version=N, for an operator to try
    return entry | _loaded_fields(loaded.get(v) or unloading.get(v))
