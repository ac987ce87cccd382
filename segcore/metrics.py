"""Overlap and volume measures used by evaluation, tests and the JSON answer."""

from __future__ import annotations

import numpy as np


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice coefficient of two boolean masks. Both empty counts as perfect agreement (1.0)."""
    pred = np.asarray(prediction, dtype=bool)
    ref = np.asarray(reference, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {ref.shape}")
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def label_counts(mask: np.ndarray, labels: dict[int, str]) -> dict[int, int]:
    """Voxel count per label value (labels absent from the mask count 0)."""
    counts = np.bincount(mask.ravel(), minlength=256)
    return {value: int(counts[value]) for value in labels}


def bounding_box(mask: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    """Inclusive (start, stop) index per axis of the nonzero region, or None if empty."""
    nonzero = np.nonzero(mask)
    if nonzero[0].size == 0:
        return None
    return tuple((int(ax.min()), int(ax.max())) for ax in nonzero)
