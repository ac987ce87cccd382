"""Moving images between the input's grid and the model's grid, with SimpleITK only.

The model sees volumes in one orientation (the card's, e.g. LPS) at one spacing. The mask it produces is
mapped back onto the caller's original grid through physical space, so it lands on the same anatomy
whatever the input's direction (RAS, sagittal, oblique) was. No affine is computed by hand here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

_SPACING_TOLERANCE_MM = 1e-3


def to_model_grid(image: sitk.Image, orientation: str, spacing_mm: Sequence[float]) -> sitk.Image:
    """Reorient ``image`` to ``orientation`` (a permutation/flip of axes, lossless), then resample it
    linearly to ``spacing_mm`` if its spacing differs. The physical extent is preserved."""
    oriented = sitk.DICOMOrient(image, orientation)
    if np.allclose(oriented.GetSpacing(), spacing_mm, atol=_SPACING_TOLERANCE_MM):
        return oriented
    old_size = np.array(oriented.GetSize(), dtype=float)
    old_spacing = np.array(oriented.GetSpacing(), dtype=float)
    new_spacing = np.array(spacing_mm, dtype=float)
    new_size = np.maximum(np.round(old_size * old_spacing / new_spacing), 1).astype(int)
    return sitk.Resample(
        oriented,
        [int(s) for s in new_size],
        sitk.Transform(),
        sitk.sitkLinear,
        oriented.GetOrigin(),
        [float(s) for s in new_spacing],
        oriented.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )


_AXIS_OF_LETTER = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}


def model_grid_size(
    size: Sequence[int],
    spacing: Sequence[float],
    direction: np.ndarray,
    orientation: str,
    spacing_mm: Sequence[float],
) -> tuple[int, int, int]:
    """The size (x, y, z) :func:`to_model_grid` will produce for an image of this geometry, computed
    from the header alone so that memory can be refused before it is spent.

    ``direction`` is 3x3 with the image axes' LPS directions as columns. Reorientation maps each image
    axis to the model axis of its dominant direction (as ``DICOMOrient`` does); if two axes tie (a 45
    degree oblique), the finest model spacing is assumed for both, which over- rather than underestimates.
    """
    dominant = [int(np.argmax(np.abs(np.asarray(direction, dtype=float)[:, i]))) for i in range(3)]
    target_of_world = {_AXIS_OF_LETTER[letter]: j for j, letter in enumerate(orientation.upper())}
    result = [0, 0, 0]
    for i in range(3):
        extent = float(size[i]) * float(spacing[i])
        j = target_of_world[dominant[i]]
        step = float(spacing_mm[j]) if len(set(dominant)) == 3 else float(min(spacing_mm))
        result[j] = max(int(round(extent / step)), 1)
    return result[0], result[1], result[2]


def onto_grid(image: sitk.Image, reference: sitk.Image, *, label: bool) -> sitk.Image:
    """Resample ``image`` onto ``reference``'s grid through physical space.

    ``label=True`` uses nearest neighbour and writes ``uint8`` (masks: no invented label values);
    otherwise linear interpolation to ``float32`` (intensities). Voxels outside ``image`` become 0.
    """
    return sitk.Resample(
        image,
        reference,
        sitk.Transform(),
        sitk.sitkNearestNeighbor if label else sitk.sitkLinear,
        0.0,
        sitk.sitkUInt8 if label else sitk.sitkFloat32,
    )


def same_grid(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-4) -> bool:
    """True if two images share size, spacing, origin and direction (within ``tolerance``)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance)
    )


def physical_overlap(a: sitk.Image, b: sitk.Image) -> bool:
    """True if the physical bounding boxes of two images intersect."""

    def bounds(img: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
        size = np.array(img.GetSize()) - 1
        corners = [
            img.TransformContinuousIndexToPhysicalPoint([float(c) for c in (i * size[0], j * size[1], k * size[2])])
            for i in (0, 1)
            for j in (0, 1)
            for k in (0, 1)
        ]
        pts = np.array(corners)
        return pts.min(axis=0), pts.max(axis=0)

    lo_a, hi_a = bounds(a)
    lo_b, hi_b = bounds(b)
    return bool(np.all(lo_a <= hi_b) and np.all(lo_b <= hi_a))


def voxel_volume_ml(image: sitk.Image) -> float:
    """Volume of one voxel in millilitres (spacing is in mm)."""
    return float(np.prod(image.GetSpacing())) / 1000.0
