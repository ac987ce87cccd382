"""Cutting a normalized volume into network inputs and stitching the outputs back.

2D models: every axial slice that contains brain is cropped to the brain's bounding box (one box for the
whole volume, so every call has the same shape and a concrete function never retraces), padded to a
multiple of the network's downsampling factor, and run at batch size 1. Slices without brain are not run
at all: their probability is 0. The output buffer is float32 of the volume size, never float64.

3D models: a sliding window of fixed-size patches (one shape, so again no retracing) over the brain's
bounding box, at batch size 1, with a fractional overlap. Each patch's output is weighted by a Gaussian
importance map before it is accumulated (as nnU-Net and MONAI do): a network sees less context at a
patch's border, so its border predictions are the least trustworthy and should count least where patches
overlap. Accumulators are float32 of the (cropped) volume size; one patch is in memory at a time.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

PredictFn = Callable[[np.ndarray], np.ndarray]
"""Takes a float32 batch ``[1, H, W, C]`` (2D) or ``[1, D, H, W, C]`` (3D) and returns float32
probabilities of the same spatial shape with ``K`` channels."""


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


def probabilities_to_labels(probs: np.ndarray, labels: dict[int, str], activation: str, threshold: float) -> np.ndarray:
    """Turn ``[K, Z, Y, X]`` probabilities into a uint8 label map ``[Z, Y, X]``.

    Sigmoid: one channel, voxels at or above ``threshold`` get the single label value. Softmax: channel 0
    is background, channel i (1-based) maps to the i-th label value in ascending order.
    """
    if activation == "sigmoid":
        (value,) = labels
        return np.where(probs[0] >= threshold, np.uint8(value), np.uint8(0))
    lookup = np.array([0, *sorted(labels)], dtype=np.uint8)
    return lookup[np.argmax(probs, axis=0)]


def gaussian_importance(patch_size: tuple[int, ...], sigma_scale: float = 0.125) -> np.ndarray:
    """Float32 importance map of ``patch_size``: a Gaussian centred on the patch with sigma
    ``sigma_scale * size`` per axis (nnU-Net's 1/8), scaled to a maximum of 1.

    Zeros are replaced by the smallest positive value so that a voxel covered only by patch borders
    still gets a defined (if uncertain) prediction instead of 0/0.
    """
    if any(s < 1 for s in patch_size) or sigma_scale <= 0:
        raise ValueError(f"patch_size must be positive and sigma_scale > 0, not {patch_size}, {sigma_scale}")
    weights = np.ones((), dtype=np.float64)  # separable: an outer product of 1D Gaussians (small, patch-sized)
    for size in patch_size:
        centre = (size - 1) / 2
        sigma = max(size * sigma_scale, 1e-3)
        axis = np.exp(-0.5 * ((np.arange(size) - centre) / sigma) ** 2)
        weights = np.multiply.outer(weights, axis)
    weights = (weights / weights.max()).astype(np.float32)
    positive = weights[weights > 0]
    weights[weights <= 0] = positive.min()
    return weights


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices of patches of ``patch`` voxels covering ``[0, size)`` exactly, with at least
    ``overlap`` (fraction of the patch) shared between neighbours; the last patch ends at ``size``.

    ``size <= patch`` gives a single start at 0 (the caller pads up to the patch).
    """
    if patch < 1 or not 0 <= overlap < 1:
        raise ValueError(f"patch must be >= 1 and overlap in [0, 1), not {patch}, {overlap}")
    if size <= patch:
        return [0]
    step = max(int(patch * (1 - overlap)), 1)
    count = -(-(size - patch) // step) + 1
    # Evenly spaced between 0 and size - patch (nnU-Net's rule): no patch sticks out of the volume.
    return [int(round(i * (size - patch) / (count - 1))) for i in range(count)]


def brain_box_3d(mask: np.ndarray, margin: int) -> tuple[slice, slice, slice]:
    """Bounding box of ``mask`` ([Z, Y, X]) grown by ``margin`` voxels on every axis, clipped."""
    if not mask.any():
        return slice(0, 0), slice(0, 0), slice(0, 0)
    box = []
    for axes, size in (((1, 2), mask.shape[0]), ((0, 2), mask.shape[1]), ((0, 1), mask.shape[2])):
        idx = np.flatnonzero(mask.any(axis=axes))
        box.append(slice(int(max(idx[0] - margin, 0)), int(min(idx[-1] + 1 + margin, size))))
    return box[0], box[1], box[2]


def _predict_flips(
    predict: PredictFn, batch: np.ndarray, flips: list[tuple[int, ...]], out_channels: int
) -> np.ndarray:
    """The network's answer for ``batch`` ``[1, z, y, x, C]``, averaged over the axis ``flips`` (each
    prediction flipped back first): float32 ``[z, y, x, K]``. One flip ``()`` is plain inference."""
    out = None
    for axes in flips:
        pred = predict(np.flip(batch, axes) if axes else batch)
        if pred.shape[:4] != batch.shape[:4] or pred.shape[4] != out_channels:
            raise ValueError(f"model returned shape {pred.shape} for input {batch.shape}")
        pred = np.flip(pred, axes) if axes else pred
        out = pred[0].astype(np.float32, copy=True) if out is None else out + pred[0]
    if len(flips) > 1:
        out /= np.float32(len(flips))
    return out


def predict_sliding_window_3d(
    volume: np.ndarray,
    brain: np.ndarray,
    predict: PredictFn,
    out_channels: int,
    *,
    patch_size: tuple[int, int, int],
    overlap: float = 0.5,
    margin: int = 8,
    crop_to_brain: bool = True,
    mirror: bool = False,
    skip_empty: bool = True,
) -> np.ndarray:
    """Run a 3D network over ``volume`` with a Gaussian-weighted sliding window and stitch the outputs.

    ``volume``: float32 ``[C, Z, Y, X]`` (normalized; background 0). ``brain``: bool ``[Z, Y, X]``.
    ``patch_size``: ``(z, y, x)`` voxels, each a multiple of the network's downsampling factor. A box
    smaller than the patch along an axis is zero-padded (0 is the normalized background). ``mirror``:
    test-time augmentation averaging the 8 flips over the three axes (8x the cost). ``skip_empty``: patches
    without any brain voxel are not run. Returns float32 probabilities ``[K, Z, Y, X]``; voxels no patch
    covered (outside the box, or only in skipped patches) are 0, i.e. background.
    """
    channels, depth, height, width = volume.shape
    if brain.shape != (depth, height, width):
        raise ValueError(f"brain mask shape {brain.shape} does not match volume {volume.shape}")
    if len(patch_size) != 3 or any(int(p) < 1 for p in patch_size):
        raise ValueError(f"patch_size must be three positive sizes (z, y, x), not {patch_size}")
    patch = tuple(int(p) for p in patch_size)
    probs = np.zeros((out_channels, depth, height, width), dtype=np.float32)
    box = brain_box_3d(brain, margin) if crop_to_brain else (slice(0, depth), slice(0, height), slice(0, width))
    region = tuple(b.stop - b.start for b in box)
    if min(region) == 0:
        return probs
    padded = tuple(max(r, p) for r, p in zip(region, patch, strict=True))
    # Accumulators on the padded box only: float32 sums of weighted probabilities and of weights.
    acc = np.zeros((out_channels, *padded), dtype=np.float32)
    weight_sum = np.zeros(padded, dtype=np.float32)
    importance = gaussian_importance(patch)
    src = volume[:, box[0], box[1], box[2]]
    brain_box = brain[box]
    batch = np.zeros((1, *patch, channels), dtype=np.float32)  # the one input buffer, reused
    flips = [(), (1,), (2,), (3,), (1, 2), (1, 3), (2, 3), (1, 2, 3)] if mirror else [()]
    starts = [window_starts(padded[a], patch[a], overlap) for a in range(3)]
    for z0, y0, x0 in itertools.product(*starts):
        # The part of the patch inside the real (unpadded) box; the rest of the buffer stays 0.
        zs, ys, xs = (slice(s0, min(s0 + p, r)) for s0, p, r in zip((z0, y0, x0), patch, region, strict=True))
        if skip_empty and not brain_box[zs, ys, xs].any():
            continue
        batch.fill(0.0)
        dz, dy, dx = zs.stop - zs.start, ys.stop - ys.start, xs.stop - xs.start
        batch[0, :dz, :dy, :dx, :] = np.moveaxis(src[:, zs, ys, xs], 0, -1)
        out = _predict_flips(predict, batch, flips, out_channels)
        window = (slice(z0, z0 + patch[0]), slice(y0, y0 + patch[1]), slice(x0, x0 + patch[2]))
        acc[(slice(None), *window)] += np.moveaxis(out, -1, 0) * importance
        weight_sum[window] += importance
    covered = weight_sum > 0
    np.divide(acc, weight_sum, out=acc, where=covered)
    acc[:, ~covered] = 0.0
    probs[(slice(None), *box)] = acc[:, : region[0], : region[1], : region[2]]
    return probs
