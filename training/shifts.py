"""Simulated protocol shifts for evaluation: what a labelled BraTS case would look like from another scanner.

BraTS cases are skull-stripped, 1 mm isotropic and free of strong bias fields; the clinical studies the
service receives are often none of these. ``python -m training.evaluate --shift thick|bias`` runs the
service's pipeline on a shifted copy of each case and scores it against the label *on the shifted grid*, so
that a model's robustness (and what augmentation buys) is a number per case, not a hope.

- ``thick``: the volume resampled onto an oblique (8° and 5°) grid of 0.9 × 0.9 × 5.5 mm voxels, after a
  Gaussian slice profile along the new slice axis (σ 2.3 mm), stored as int16 as a scanner writes it; the
  label goes onto the same grid with nearest-neighbour. This is a 2D clinical FLAIR's geometry.
- ``bias``: a smooth multiplicative field ``exp(p(x, y, z))`` (polynomial of order 2 in physical
  coordinates, fixed seeded coefficients, about 0.6–1.6 across a brain) applied to every modality, the
  receive-coil shading that made version 1 call a bright cerebellum tumour. The grid is unchanged.

Both are deterministic (the same case always gets the same shift) so that two models compare on equal
inputs. Images and labels are SimpleITK images; nothing is written to disk.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import SimpleITK as sitk

Images = dict[str, sitk.Image]
Shift = Callable[[Images, sitk.Image], tuple[Images, sitk.Image]]

THICK_SPACING_MM = (0.9, 0.9, 5.5)
THICK_TILT_DEG = (8.0, 0.0, 5.0)
SLICE_PROFILE_SIGMA_MM = 2.3
BIAS_MAX_COEFFICIENT = 0.35


def thick_grid(reference: sitk.Image) -> sitk.Image:
    """An empty int16 image on the tilted thick-slice grid covering ``reference``'s field of view (same
    centre); spacing :data:`THICK_SPACING_MM`, direction ``reference``'s rotated by :data:`THICK_TILT_DEG`."""
    size_in, spacing_in = np.array(reference.GetSize()), np.array(reference.GetSpacing())
    centre = reference.TransformContinuousIndexToPhysicalPoint([float(n - 1) / 2 for n in size_in])
    tilt = sitk.Euler3DTransform(centre, *(math.radians(a) for a in THICK_TILT_DEG), (0.0, 0.0, 0.0))
    direction = np.array(tilt.GetMatrix()).reshape(3, 3) @ np.array(reference.GetDirection()).reshape(3, 3)
    spacing = np.array(THICK_SPACING_MM)
    size = [int(n) for n in np.floor(size_in * spacing_in / spacing)]
    grid = sitk.Image(size, sitk.sitkInt16)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(direction.flatten().tolist())
    half = (np.array(size) - 1) * spacing / 2
    grid.SetOrigin((np.array(centre) - direction @ half).tolist())
    return grid


def thick_slices(images: Images, label: sitk.Image) -> tuple[Images, sitk.Image]:
    """Every image and the label on :func:`thick_grid` of the first image (see the module docstring)."""
    grid = thick_grid(next(iter(images.values())))
    sigma = [SLICE_PROFILE_SIGMA_MM * abs(float(d)) + 0.3 for d in np.array(grid.GetDirection())[6:]]
    shifted = {}
    for name, image in images.items():
        image = sitk.Cast(image, sitk.sitkFloat32)
        scale = _int16_scale(image)
        blurred = sitk.SmoothingRecursiveGaussian(image * scale, sigma)
        shifted[name] = sitk.Resample(blurred, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkInt16)
    label = sitk.Resample(label, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID())
    return shifted, label


def _int16_scale(image: sitk.Image) -> float:
    """A factor that puts ``image``'s intensities in a scanner's int16 range without losing contrast:
    raw MRI (max ≥ 100) is kept as it is; z-scored archives (max ~10) are stretched by 100."""
    stats = sitk.StatisticsImageFilter()
    stats.Execute(image)
    return 1.0 if stats.GetMaximum() >= 100 else 100.0


def bias_field(images: Images, label: sitk.Image, seed: int = 0) -> tuple[Images, sitk.Image]:
    """Every image times one smooth field (see the module docstring); background below the image's minimum
    is not created: the field multiplies intensities measured from each image's minimum."""
    first = next(iter(images.values()))
    field = _field_array(first, np.random.default_rng(seed))
    shifted = {}
    for name, image in images.items():
        image = sitk.Cast(image, sitk.sitkFloat32)
        values = sitk.GetArrayFromImage(image)
        low = float(values.min())
        out = sitk.GetImageFromArray(((values - low) * field + low).astype(np.float32))
        out.CopyInformation(image)
        shifted[name] = out
    return shifted, label


def _field_array(reference: sitk.Image, rng: np.random.Generator) -> np.ndarray:
    """``exp`` of an order-2 polynomial in physical coordinates scaled to [-1, 1] over the volume, as a
    float32 ``[Z, Y, X]`` array on ``reference``'s grid."""
    size = reference.GetSize()
    index = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in size], indexing="ij")  # x, y, z
    origin = np.array(reference.GetOrigin())
    matrix = np.array(reference.GetDirection()).reshape(3, 3) * np.array(reference.GetSpacing())
    points = [origin[i] + sum(matrix[i, j] * index[j] for j in range(3)) for i in range(3)]
    coords = [(p - p.mean()) / max(float(np.abs(p - p.mean()).max()), 1e-6) for p in points]
    log_field = np.zeros(size, dtype=np.float32)
    for powers in np.ndindex(3, 3, 3):
        if 0 < sum(powers) <= 2:
            term = rng.uniform(-BIAS_MAX_COEFFICIENT, BIAS_MAX_COEFFICIENT)
            for axis, power in zip(coords, powers, strict=True):
                term = term * axis**power
            log_field += term
    return np.exp(log_field).transpose(2, 1, 0).astype(np.float32)


SHIFTS: dict[str, Shift] = {"thick": thick_slices, "bias": bias_field}
