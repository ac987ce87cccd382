"""Intensity normalization shared by training conversion and serving.

Why "brain" and not "nonzero": BraTS images are skull-stripped with a zero background, but archives such
as DeepMedic's store images already z-scored inside the brain, whose background is a negative constant.
The background is therefore taken as the value that dominates the volume's outer faces, and the brain
as every voxel that differs from it. That works for both and needs no separate brain mask at serving time.
"""

from __future__ import annotations

import numpy as np

_BACKGROUND_TOLERANCE = 1e-4


def background_value(volume: np.ndarray) -> float:
    """Most frequent value on the six outer faces of a 3D array (the skull-stripped background)."""
    if volume.ndim != 3:
        raise ValueError(f"expected a 3D array, not shape {volume.shape}")
    faces = np.concatenate(
        [
            volume[0].ravel(), volume[-1].ravel(),
            volume[:, 0].ravel(), volume[:, -1].ravel(),
            volume[:, :, 0].ravel(), volume[:, :, -1].ravel(),
        ]
    )
    values, counts = np.unique(faces, return_counts=True)
    return float(values[np.argmax(counts)])


def brain_mask(volume: np.ndarray) -> np.ndarray:
    """Boolean mask of voxels that differ from the background value.

    If the background is not a constant (an image that was not skull-stripped), the faces have no
    dominant value and nearly everything counts as brain, which degrades to a whole-image z-score
    rather than failing.
    """
    bg = background_value(volume)
    scale = max(float(np.abs(volume).max()), 1.0)
    return np.abs(volume - bg) > _BACKGROUND_TOLERANCE * scale


def zscore_brain(
    channels: np.ndarray, clip: float = 5.0, brain: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Z-score each channel over the brain; background set to 0.

    ``channels``: float array ``[C, Z, Y, X]``. ``brain``: bool ``[Z, Y, X]`` from a brain extraction
    (segcore.preprocess), or None for the union of the channels' outer-face heuristic masks. Returns
    ``(normalized float32 [C, Z, Y, X], mask bool [Z, Y, X])``. Statistics are accumulated in float64
    scalars only; no float64 copy of the volume.
    """
    if channels.ndim != 4:
        raise ValueError(f"expected channels as [C, Z, Y, X], not shape {channels.shape}")
    if brain is not None and brain.shape != channels.shape[1:]:
        raise ValueError(f"brain mask shape {brain.shape} differs from the channels' {channels.shape[1:]}")
    mask = np.zeros(channels.shape[1:], dtype=bool) if brain is None else brain.astype(bool, copy=True)
    for channel in channels if brain is None else ():
        mask |= brain_mask(channel)
    out = np.zeros(channels.shape, dtype=np.float32)
    if not mask.any():
        return out, mask
    for i, channel in enumerate(channels):
        values = channel[mask]
        mean = float(values.mean(dtype=np.float64))
        std = float(values.std(dtype=np.float64))
        if not np.isfinite(std) or std < 1e-8:
            std = 1.0
        normalized = (channel.astype(np.float32, copy=False) - np.float32(mean)) / np.float32(std)
        np.clip(normalized, -clip, clip, out=normalized)
        normalized[~mask] = 0.0
        out[i] = normalized
    return out, mask
