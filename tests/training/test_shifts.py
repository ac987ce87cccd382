"""``training.shifts``: the simulated protocol shifts keep the anatomy where it is and change only what
they claim to (grid and slice profile, or a smooth intensity field), deterministically."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from training.shifts import SHIFTS, THICK_SPACING_MM, bias_field, thick_slices

SHAPE = (60, 80, 80)  # z, y, x at 1 mm


def _case() -> tuple[dict[str, sitk.Image], sitk.Image]:
    """A z-scored-looking "brain" ellipsoid with a bright 20 mm "tumour" ball, and its label."""
    z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]].astype(np.float32)
    brain = ((z - 30) / 25) ** 2 + ((y - 40) / 35) ** 2 + ((x - 40) / 35) ** 2 <= 1
    ball = (z - 30) ** 2 + (y - 40) ** 2 + (x - 50) ** 2 <= 10**2
    values = np.where(brain, 0.5, -3.0).astype(np.float32) + np.where(ball, 3.0, 0.0).astype(np.float32)
    image, label = sitk.GetImageFromArray(values), sitk.GetImageFromArray(ball.astype(np.uint8))
    for im in (image, label):
        im.SetOrigin((-40.0, -40.0, -30.0))
    return {"flair": image}, label


def _physical_volume_ml(label: sitk.Image) -> float:
    return float(sitk.GetArrayFromImage(label).sum()) * float(np.prod(label.GetSpacing())) / 1000


def test_thick_slices_regrids_image_and_label_together():
    images, label = _case()
    shifted, shifted_label = thick_slices(images, label)
    flair = shifted["flair"]
    assert flair.GetPixelID() == sitk.sitkInt16, "a scanner writes integers"
    assert flair.GetSpacing() == pytest.approx(THICK_SPACING_MM)
    assert flair.GetSize() == shifted_label.GetSize() and flair.GetOrigin() == shifted_label.GetOrigin()
    assert not np.allclose(np.array(flair.GetDirection()), np.eye(3).flatten()), "the grid is tilted"
    # The ball keeps its volume (4.19 mL) within what 5.5 mm nearest-neighbour sampling allows ...
    assert _physical_volume_ml(shifted_label) == pytest.approx(4 / 3 * np.pi * 10**3 / 1000, rel=0.2)
    # ... and stays bright where the label says it is (z-scored input stretched into int16).
    values, ball = sitk.GetArrayFromImage(flair), sitk.GetArrayFromImage(shifted_label) > 0
    assert values[ball].mean() > 250 > values[~ball & (values > 0)].mean()


def test_bias_field_is_smooth_bounded_deterministic_and_keeps_the_grid():
    images, label = _case()
    first, same_label = bias_field(images, label)
    again, _ = bias_field(images, label)
    other, _ = bias_field(images, label, seed=1)
    before = sitk.GetArrayFromImage(images["flair"])
    after = sitk.GetArrayFromImage(first["flair"])
    assert same_label is label and first["flair"].GetSize() == images["flair"].GetSize()
    np.testing.assert_array_equal(after, sitk.GetArrayFromImage(again["flair"]))
    assert not np.array_equal(after, sitk.GetArrayFromImage(other["flair"]))
    low = before.min()
    ratio = (after - low)[before > low] / (before - low)[before > low]
    assert 0.3 < ratio.min() < 0.95 and 1.05 < ratio.max() < 3.0, "a visible but plausible field"
    # Smooth: neighbouring voxels differ by under 5 % in gain.
    field = np.full(before.shape, np.nan)
    field[before > low] = ratio
    assert np.nanmax(np.abs(np.diff(field, axis=2))) < 0.05


def test_every_shift_is_named_for_the_command_line():
    assert set(SHIFTS) == {"thick", "bias"}
