"""Cutting a normalized volume into network inputs and stitching the outputs back.

2D models: every axial slice that contains brain is cropped to the brain's bounding box (one box for the
whole volume, so every call has the same shape and a concrete function never retraces), padded to a
multiple of the network's downsampling factor, and run at batch size 1. Slices without brain are not run
at all: their probability is 0. The output buffer is float32 of the volume size, never float64.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

PredictFn = Callable[[np.ndarray], np.ndarray]
"""Takes a float32 batch ``[1, H, W, C]`` (2D) and returns float32 ``[1, H, W, K]`` probabilities."""


def crop_box(mask: np.ndarray, margin: int, divisor: int) -> tuple[slice, slice, slice]:
    """Bounding box of ``mask`` ([Z, Y, X]) with ``margin`` voxels in-plane, clipped to the volume.

    The in-plane extent is then grown (within the volume) toward a multiple of ``divisor`` so that as
    little padding as possible is needed. Z is not padded: slices are independent for a 2D model.
    """
    if not mask.any():
        return slice(0, 0), slice(0, 0), slice(0, 0)
    zs, ys, xs = (np.flatnonzero(mask.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
    boxes = []
    for lo, hi, size in ((ys[0], ys[-1] + 1, mask.shape[1]), (xs[0], xs[-1] + 1, mask.shape[2])):
        lo, hi = max(lo - margin, 0), min(hi + margin, size)
        want = -(-(hi - lo) // divisor) * divisor
        if want <= size:  # grow symmetrically, shifted to stay inside the volume
            lo = max(0, min(lo - (want - (hi - lo)) // 2, size - want))
            hi = lo + want
        else:  # the volume is smaller than one multiple: take all of it, padding does the rest
            lo, hi = 0, size
        boxes.append(slice(int(lo), int(hi)))
    return slice(int(zs[0]), int(zs[-1]) + 1), boxes[0], boxes[1]


def pad_amounts(shape: tuple[int, ...], divisor: int) -> list[tuple[int, int]]:
    """Symmetric (before, after) padding that makes each size a multiple of ``divisor``."""
    pads = []
    for size in shape:
        extra = (-size) % divisor
        pads.append((extra // 2, extra - extra // 2))
    return pads


def predict_slices_2d(
    volume: np.ndarray,
    brain: np.ndarray,
    predict: PredictFn,
    out_channels: int,
    *,
    divisor: int,
    margin: int = 8,
    crop_to_brain: bool = True,
) -> np.ndarray:
    """Run a 2D network over the axial slices of ``volume`` and stitch the outputs.

    ``volume``: float32 ``[C, Z, Y, X]`` (normalized). ``brain``: bool ``[Z, Y, X]``. Returns float32
    probabilities ``[K, Z, Y, X]``; voxels outside the processed box are 0 (background).
    """
    channels, depth, height, width = volume.shape
    probs = np.zeros((out_channels, depth, height, width), dtype=np.float32)
    if crop_to_brain:
        zbox, ybox, xbox = crop_box(brain, margin, divisor)
    else:
        zbox, ybox, xbox = slice(0, depth), slice(0, height), slice(0, width)
    box_h, box_w = ybox.stop - ybox.start, xbox.stop - xbox.start
    if box_h == 0 or box_w == 0:
        return probs
    (py0, py1), (px0, px1) = pad_amounts((box_h, box_w), divisor)
    # One preallocated input buffer: channels-last, padded, batch of one.
    batch = np.zeros((1, box_h + py0 + py1, box_w + px0 + px1, channels), dtype=np.float32)
    slice_has_brain = brain.any(axis=(1, 2)) if crop_to_brain else np.ones(depth, dtype=bool)
    for z in range(zbox.start, zbox.stop):
        if not slice_has_brain[z]:
            continue
        batch[0, py0 : py0 + box_h, px0 : px0 + box_w, :] = np.moveaxis(volume[:, z, ybox, xbox], 0, -1)
        out = predict(batch)
        if out.shape[:3] != batch.shape[:3] or out.shape[3] != out_channels:
            raise ValueError(f"model returned shape {out.shape} for input {batch.shape}")
        probs[:, z, ybox, xbox] = np.moveaxis(out[0, py0 : py0 + box_h, px0 : px0 + box_w, :], -1, 0)
    return probs


def probabilities_to_labels(
    probs: np.ndarray, labels: dict[int, str], activation: str, threshold: float
) -> np.ndarray:
    """Turn ``[K, Z, Y, X]`` probabilities into a uint8 label map ``[Z, Y, X]``.

    Sigmoid: one channel, voxels at or above ``threshold`` get the single label value. Softmax: channel 0
    is background, channel i (1-based) maps to the i-th label value in ascending order.
    """
    if activation == "sigmoid":
        (value,) = labels
        return np.where(probs[0] >= threshold, np.uint8(value), np.uint8(0))
    lookup = np.array([0, *sorted(labels)], dtype=np.uint8)
    return lookup[np.argmax(probs, axis=0)]
