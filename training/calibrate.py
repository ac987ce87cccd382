"""Calibrated masks: the threshold (sigmoid models) and the small-component removal chosen on the
validation cases, after training, from the best epoch's probabilities.

Every candidate pair (``[calibration] thresholds`` x ``min_component_ml``) turns the validation cases'
probabilities into label maps exactly as serving will (``segcore.tiling.probabilities_to_labels`` then
``segcore.postprocess.remove_small_components``, on the model grid) and is scored by the mean validation
Dice (multi-class: mean over WT/TC/ET). The best pair wins; ties go to the pair closest to the
uncalibrated default (threshold 0.5, nothing removed), so a setting is only moved when it helps. The
choice is written into the card (``threshold``, ``postprocessing``), and serving applies it.

Choosing on the validation cases and reporting Dice on them is optimistic by construction; with two
knobs and a handful of cases the bias is small, but held-out cases are what give the unbiased number.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from segcore.postprocess import min_component_voxels, remove_small_components
from segcore.tiling import probabilities_to_labels


@dataclass
class Calibration:
    """The chosen setting, the validation scores it gives (case -> region -> Dice), the predicted and
    true tumour volumes per case (mL, model grid), and every candidate's mean Dice (for the README)."""

    threshold: float
    min_component_ml: float
    scores: dict[str, dict[str, float]]
    volumes_ml: dict[str, dict[str, float]]
    table: list[dict] = field(default_factory=list)

    @property
    def mean_dice(self) -> float:
        per_region = {r: np.mean([s[r] for s in self.scores.values()]) for r in next(iter(self.scores.values()))}
        return float(np.mean(list(per_region.values())))


def calibrate(
    probabilities: dict[str, np.ndarray],
    truths: dict[str, np.ndarray],
    labels: dict[int, str],
    activation: str,
    regions: dict[str, list[int]],
    thresholds: list[float],
    min_component_ml: list[float],
    voxel_ml: float = 0.001,
    default_threshold: float = 0.5,
) -> Calibration:
    """Choose threshold and ``min_component_ml``. ``probabilities``: case id -> float32 ``[K, Z, Y, X]``
    on the model grid (voxels of ``voxel_ml`` mL); ``truths``: case id -> uint8 label map ``[Z, Y, X]``
    in the model's label values; ``regions`` as :func:`segcore.card.brats_regions` (``{}``: whole
    tumour). Softmax models ignore ``thresholds`` (arg-max)."""
    from training.loop import region_dice

    if activation != "sigmoid":
        thresholds = [default_threshold]
    table, best = [], None
    for threshold in thresholds:
        thresholded = {
            cid: probabilities_to_labels(p, labels, activation, threshold) for cid, p in probabilities.items()
        }
        for size_ml in sorted(min_component_ml):
            scores, volumes = {}, {}
            for cid, pred in thresholded.items():
                pred = remove_small_components(pred, min_component_voxels(size_ml, voxel_ml))
                scores[cid] = region_dice(pred, truths[cid], regions)
                volumes[cid] = {
                    "pred_ml": round(float(np.count_nonzero(pred)) * voxel_ml, 2),
                    "true_ml": round(float(np.count_nonzero(truths[cid])) * voxel_ml, 2),
                }
            candidate = Calibration(threshold, size_ml, scores, volumes)
            distance = (abs(threshold - default_threshold), size_ml)
            mean = round(candidate.mean_dice, 4)
            table.append({"threshold": threshold, "min_component_ml": size_ml, "mean_dice": mean})
            # Compared at 4 decimals (what the card records): a gain below that is a tie, and ties keep
            # the setting nearest the default.
            key = (round(candidate.mean_dice, 4), tuple(-d for d in distance))
            if best is None or key > (round(best[0].mean_dice, 4), tuple(-d for d in best[1])):
                best = (candidate, distance)
    assert best is not None, "no candidate: thresholds and min_component_ml must not be empty"
    chosen = best[0]
    chosen.table = table
    return chosen
