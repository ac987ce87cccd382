"""``SEG_BACKEND=auto`` (the default): per model version, the fastest backend that answers like TensorFlow.

When the registry loads a version, :class:`AutoFactory` builds it on every available backend (the rows of
:data:`app.runners.backends.BACKENDS` whose ``available`` says so: ``inprocess`` always, ``openvino`` when
importable, ``tfserving`` when ``SEG_TFSERVING_TARGET`` is set, plus any row added with ``register``) and
replays the version's warm-up requests on each:

1. The first pass warms the backend and yields its answers. TensorFlow in this process (``inprocess``) is
   the reference: the model was trained and validated with it, so its answers are the ones the card's
   validation Dice describes.
2. A candidate is **refused** when, over all warm-up outputs, its probabilities differ from TensorFlow's by
   more than :attr:`Tolerance.max_abs_probability` anywhere, or its class decision (``> threshold`` for a
   sigmoid card, the arg-max for a softmax one) differs on more than :attr:`Tolerance.max_changed_fraction`
   of the voxels. Both bounds are what bfloat16 arithmetic (OpenVINO's default on AVX-512 BF16 CPUs) was
   measured to stay well inside on the bundled models; a wrong conversion or a broken runtime is far
   outside them. A candidate that fails to build or to answer is recorded as failed, one with nothing to
   run for this version (``openvino-int8`` without an INT8 variant) as not applicable; both are skipped.
3. The remaining candidates are then timed in ``repeats`` interleaved rounds (candidate A, B, A, B...), so a
   burst of load from a neighbour falls on all of them; in each round a candidate repeats the warm-up pass
   until at least :data:`MIN_ROUND_SECONDS` have gone by (a single 2D slice takes milliseconds, too short
   to time alone), and its time is the fastest round's per-pass mean (the minimum is the least noisy
   estimate on a shared machine).
4. The choice, with a stated ``margin`` (default 10 %): candidates are taken in order of start cost (their
   ``load_ms``: building, converting, compiling), and one that was slower to start replaces the current
   pick only if its pass is faster by more than ``margin``. Timing noise between two near-equal backends
   therefore never flips the choice towards the costlier one to start (and to hot-swap).

Every trial (load time, every round's time, agreement, verdict, OpenVINO's IR cache hit or miss) is kept
on the chosen runner's ``selection`` and shown by ``GET /models/{name}``. The losers are dropped, so only
the chosen runtime stays in memory (TensorFlow's allocator may keep some of the reference's pages). The cost
is paid at load, off the request path: a first pass plus ``repeats`` rounds per candidate beyond what a
single backend needs, and OpenVINO's conversion only on a machine's first start (``SEG_CACHE_DIR``,
:func:`app.runners.openvino.cached_ir`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.runners.backends import RunnerFactory
from app.runners.warmup import warmup_batches
from segcore.card import ModelCard
from segcore.runner import NotApplicable, Runner

log = logging.getLogger("app.runners.auto")

REFERENCE = "inprocess"
MIN_ROUND_SECONDS = 0.1
"""A timed round repeats the warm-up pass at least this long (ms-long passes are too short to time alone)."""


@dataclass(frozen=True)
class Tolerance:
    """How far a candidate's warm-up answers may be from TensorFlow's (see the module docstring)."""

    max_abs_probability: float = 0.1
    max_changed_fraction: float = 0.001


def decisions(probabilities: np.ndarray, card: ModelCard) -> np.ndarray:
    """Per-voxel class of ``[1, *spatial, K]`` probabilities, as the pipeline would decide it."""
    if card.activation == "sigmoid":
        return probabilities[..., 0] > card.threshold
    return np.argmax(probabilities, axis=-1)


def agreement(reference: list[np.ndarray], answers: list[np.ndarray], card: ModelCard) -> tuple[float, float]:
    """``(max |p - p_ref|, fraction of voxels whose class differs)`` over all warm-up outputs."""
    worst = 0.0
    changed = voxels = 0
    for ref, out in zip(reference, answers, strict=True):
        worst = max(worst, float(np.max(np.abs(out - ref))))
        changed += int(np.count_nonzero(decisions(out, card) != decisions(ref, card)))
        voxels += int(np.prod(ref.shape[:-1]))
    return worst, changed / max(voxels, 1)


def choose(timings: Mapping[str, tuple[float, float]], margin: float) -> str:
    """The backend to serve among ``{name: (load_ms, pass_ms)}``: in order of start cost (``load_ms``), a
    candidate slower to start replaces the current pick only if its ``pass_ms`` is below the pick's by more
    than ``margin`` (a fraction). With ``margin=0`` this is simply the fastest pass."""
    if not timings:
        raise ValueError("no candidate to choose from")
    order = sorted(timings, key=lambda n: timings[n][0])
    pick = order[0]
    for name in order[1:]:
        if timings[name][1] < timings[pick][1] * (1 - margin):
            pick = name
    return pick


class AutoFactory:
    """A :data:`~app.runners.backends.RunnerFactory` that chooses among ``candidates`` (name -> factory;
    each built runner must carry its ``backend`` name) for every version it builds."""

    def __init__(
        self,
        candidates: Mapping[str, RunnerFactory],
        *,
        tolerance: Tolerance | None = None,
        repeats: int = 3,
        margin: float = 0.1,
    ) -> None:
        if REFERENCE not in candidates:
            raise ValueError(f"auto needs the {REFERENCE} backend as its reference, got {sorted(candidates)}")
        if repeats < 1:
            raise ValueError(f"repeats must be at least 1, not {repeats}")
        if not 0 <= margin < 1:
            raise ValueError(f"margin must be a fraction in [0, 1), not {margin}")
        self.candidates = dict(candidates)
        self.tolerance = tolerance or Tolerance()
        self.repeats = repeats
        self.margin = margin

    def close(self) -> None:
        for factory in self.candidates.values():
            close = getattr(factory, "close", None)
            if close is not None:
                close()

    def __call__(self, version_dir: Path, card: ModelCard) -> Runner:
        batches = warmup_batches(version_dir, card)
        reference_runner, trial, reference = self._first_pass(REFERENCE, version_dir, card, batches)
        if reference_runner is None:  # without TensorFlow's answers nothing can be trusted: the version fails
            raise RuntimeError(f"the reference backend {REFERENCE} failed: {trial['reason']}")
        contenders: dict[str, Runner] = {REFERENCE: reference_runner}
        trials = {REFERENCE: trial | {"max_abs_diff": 0.0, "changed_fraction": 0.0}}
        for name in self.candidates:
            if name == REFERENCE:
                continue
            runner, trial, answers = self._first_pass(name, version_dir, card, batches)
            if runner is not None:
                worst, changed = agreement(reference, answers, card)
                trial |= {"max_abs_diff": float(f"{worst:.3g}"), "changed_fraction": float(f"{changed:.3g}")}
                tol = self.tolerance
                if worst > tol.max_abs_probability or changed > tol.max_changed_fraction:
                    trial |= {
                        "verdict": "refused",
                        "reason": f"differs from TensorFlow: max |dp| {worst:.4g} (tolerance "
                        f"{tol.max_abs_probability:g}), class changed on {changed:.4%} of voxels (tolerance "
                        f"{tol.max_changed_fraction:.2%})",
                    }
                else:
                    contenders[name] = runner
            trials[name] = trial
        for name, rounds in self._timed_rounds(contenders, batches).items():
            trials[name] |= {
                "warmup_ms": round(min(rounds), 2),
                "rounds_ms": [round(r, 2) for r in rounds],
                "verdict": "accepted",
            }
        chosen = choose({n: (trials[n]["load_ms"], trials[n]["warmup_ms"]) for n in contenders}, self.margin)
        trials[chosen]["verdict"] = "chosen"
        fastest = min(contenders, key=lambda n: trials[n]["warmup_ms"])
        if fastest != chosen:
            trials[chosen]["reason"] = (
                f"{fastest} passes faster but by less than the {self.margin:.0%} margin and is slower to start"
            )
        runner = contenders[chosen]
        runner.selection = list(trials.values())
        log.info(
            "auto_backend model=%s version=%s chosen=%s margin=%s %s",
            card.name,
            card.version,
            chosen,
            self.margin,
            " ".join(
                f"{t['backend']}={t['verdict']}:load={t.get('load_ms', '-')}ms:pass={t.get('warmup_ms', '-')}ms"
                for t in trials.values()
            ),
        )
        return runner

    def _first_pass(
        self, name: str, version_dir: Path, card: ModelCard, batches: list[np.ndarray]
    ) -> tuple[Runner | None, dict, list[np.ndarray]]:
        """Build ``name``'s runner and answer every warm-up batch once: ``(runner or None, trial, answers)``."""
        trial: dict = {"backend": name}
        started = time.perf_counter()
        try:
            runner = self.candidates[name](version_dir, card)
            trial["load_ms"] = round((time.perf_counter() - started) * 1000, 1)
            cache = getattr(runner, "cache", None)  # OpenVINO: was the converted IR on disk already?
            if cache is not None:
                trial["cache"] = cache
            answers = [runner.checked_predict(batch, f"{name} warm-up") for batch in batches]
        except NotApplicable as exc:  # e.g. the INT8 row for a version without an INT8 variant
            return None, trial | {"verdict": "not_applicable", "reason": str(exc)[:300]}, []
        except Exception as exc:  # one broken runtime must not stop the others from serving
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            log.warning(
                "auto_backend_failed model=%s version=%s backend=%s error=%s", card.name, card.version, name, reason
            )
            return None, trial | {"verdict": "failed", "reason": reason}, []
        return runner, trial, answers

    def _timed_rounds(self, runners: Mapping[str, Runner], batches: list[np.ndarray]) -> dict[str, list[float]]:
        """``repeats`` rounds per runner, interleaved across runners: each round's mean milliseconds per pass
        over the warm-up batches, a round lasting at least :data:`MIN_ROUND_SECONDS`."""
        rounds: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(self.repeats):
            for name, runner in runners.items():
                passes = 0
                started = time.perf_counter()
                while True:
                    for batch in batches:
                        runner.predict(batch)
                    passes += 1
                    elapsed = time.perf_counter() - started
                    if elapsed >= MIN_ROUND_SECONDS:
                        break
                rounds[name].append(elapsed * 1000 / passes)
        return rounds
