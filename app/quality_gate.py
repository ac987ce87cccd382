"""The quality gate: which published versions of a model may be served (used by app.registry).

A version is *promoted* (may become the served version) when its validation results are at least as good
as those of the version it would replace, within ``tolerance`` (``SEG_PROMOTION_TOLERANCE``), or when an
operator promoted it explicitly (``POST /models/{name}/versions/{version}/promote``, ``python -m
app.cli.promote``). Otherwise it is *refused*, with the reason, and the version before it keeps serving.

The metric is the card's validation Dice (``ModelCard.validation_dice``, written by ``training.export``).
Two cards are compared on the validation cases they share (mean of the per-case Dice both report), so a
model validated on one case is not compared with the mean over three others; when they share no case,
on their ``mean``. A candidate without validation results is refused where the incumbent has some (it
cannot show it is not worse); where neither has any there is nothing to compare and it is promoted.

Verdicts follow from the cards, so they are recomputed, identically, after a restart. Only an operator's
promotion is a decision that the cards do not hold: it is kept in ``<models_dir>/<name>/.promotions.json``
(hidden: pollers and TF Serving ignore it), written atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from segcore.card import ModelCard

PROMOTIONS_FILE = ".promotions.json"


@dataclass(frozen=True)
class Verdict:
    """Whether a version may be served, who said so, and why (one sentence for GET /models/{name})."""

    promoted: bool
    by: str  # "gate" | "operator" | "first" (nothing earlier to compare with)
    reason: str

    def as_json(self) -> dict:
        return {"promoted": self.promoted, "by": self.by, "reason": self.reason}


def _per_case(card: ModelCard) -> dict[str, float]:
    return {k: v for k, v in card.validation_dice.items() if not k.startswith("mean")}


def compare(candidate: ModelCard, incumbent: ModelCard, tolerance: float) -> Verdict:
    """The gate's verdict on ``candidate`` replacing ``incumbent`` (both of the same model)."""
    who = f"version {incumbent.version}"
    if not candidate.validation_dice:
        if not incumbent.validation_dice:
            return Verdict(True, "gate", f"neither this version nor {who} has validation results to compare")
        return Verdict(False, "gate", f"its card has no validation results; {who} has")
    if not incumbent.validation_dice:
        return Verdict(True, "gate", f"{who} has no validation results to compare with")
    shared = sorted(set(_per_case(candidate)) & set(_per_case(incumbent)))
    if shared:
        new = sum(candidate.validation_dice[k] for k in shared) / len(shared)
        old = sum(incumbent.validation_dice[k] for k in shared) / len(shared)
        on = f"mean validation Dice on {', '.join(shared)}"
    elif "mean" in candidate.validation_dice and "mean" in incumbent.validation_dice:
        new, old = candidate.validation_dice["mean"], incumbent.validation_dice["mean"]
        on = "mean validation Dice (no validation case in common)"
    else:
        return Verdict(False, "gate", f"no validation metric in common with {who}")
    detail = f"{on}: {new:.4f} vs {old:.4f} for {who} (tolerance {tolerance:g})"
    if new >= old - tolerance:
        return Verdict(True, "gate", detail)
    return Verdict(False, "gate", f"worse than {who}: {detail}")


def read_operator_promotions(model_root: Path) -> dict[int, dict]:
    """Versions an operator promoted: ``{version: {"at": iso time, ...}}``; empty when none or unreadable.
    An entry may say ``"by"`` and ``"reason"`` (a promotion bundled with a model says why the gate was
    overruled); :func:`verdicts` repeats the reason."""
    try:
        data = json.loads((model_root / PROMOTIONS_FILE).read_text())
        return {int(v): dict(entry) for v, entry in data.get("promoted", {}).items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def record_operator_promotion(model_root: Path, version: int) -> None:
    """Add ``version`` to the operator's promotions, atomically (temp file + rename in the same folder).

    Raises OSError when the models directory is read-only: the caller says so (the promotion then lasts
    until the service restarts)."""
    promoted = read_operator_promotions(model_root)
    promoted[version] = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    payload = json.dumps({"promoted": {str(v): e for v, e in sorted(promoted.items())}}, indent=2)
    fd, tmp = tempfile.mkstemp(prefix=".promotions-", dir=model_root)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(payload)
        os.replace(tmp, model_root / PROMOTIONS_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def verdicts(
    cards: dict[int, ModelCard],
    operator: Mapping[int, dict] | set[int],
    tolerance: float,
    skip: set[int] = frozenset(),
) -> dict[int, Verdict]:
    """Verdicts for every version of ``cards``, oldest first, each gated against the newest promoted
    version before it (the one it would replace). ``operator``: the versions an operator promoted, with
    their recorded entries (:func:`read_operator_promotions`) whose ``reason`` the verdict repeats. ``skip``
    (versions that failed to load) get none and are never anyone's incumbent."""
    result: dict[int, Verdict] = {}
    incumbent: ModelCard | None = None
    for version in sorted(cards):
        if version in skip:
            continue
        card = cards[version]
        if version in operator:
            why = operator.get(version, {}).get("reason") if isinstance(operator, Mapping) else None
            verdict = Verdict(True, "operator", "promoted explicitly by an operator" + (f": {why}" if why else ""))
        elif incumbent is None:
            verdict = Verdict(True, "first", "no earlier version to compare with")
        else:
            verdict = compare(card, incumbent, tolerance)
        result[version] = verdict
        if verdict.promoted:
            incumbent = card
    return result
