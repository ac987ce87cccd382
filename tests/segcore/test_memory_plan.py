"""Memory is planned from headers: the model-grid size computed without an image must be the size the
pipeline then produces, and the estimate must grow with what it counts."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from segcore.card import ModelCard, Preprocessing
from segcore.geometry import model_grid_size, to_model_grid
from segcore.pipeline import input_stage_bytes, peak_bytes


def _rotation(degrees: float, axis: int) -> np.ndarray:
    t = np.deg2rad(degrees)
    r = np.eye(3)
    i, j = [k for k in range(3) if k != axis]
    r[i, i], r[i, j], r[j, i], r[j, j] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
    return r


@pytest.mark.parametrize(
    ("size", "spacing", "orientation", "tilt", "card_spacing"),
    [
        ((64, 72, 40), (1.0, 1.0, 1.0), "LPS", 0.0, (1.0, 1.0, 1.0)),
        ((64, 64, 20), (0.9, 0.9, 5.5), "RAS", 0.0, (1.0, 1.0, 1.0)),
        ((30, 50, 40), (3.0, 0.7, 1.2), "ASL", 12.0, (1.0, 1.0, 1.0)),
        ((40, 40, 40), (8.0, 8.0, 8.0), "PIR", 30.0, (1.0, 1.0, 1.0)),
        ((32, 48, 24), (0.05, 20.0, 1.0), "SLA", 0.0, (1.0, 2.0, 0.5)),
    ],
)
def test_model_grid_size_from_the_header_is_what_resampling_produces(size, spacing, orientation, tilt, card_spacing):
    image = sitk.Image(list(size), sitk.sitkUInt8)
    image.SetSpacing(spacing)
    oriented = sitk.DICOMOrient(image, orientation)
    direction = np.array(oriented.GetDirection()).reshape(3, 3) @ _rotation(tilt, axis=1)
    oriented.SetDirection(direction.ravel().tolist())
    planned = model_grid_size(oriented.GetSize(), oriented.GetSpacing(), direction, "LPS", card_spacing)
    produced = to_model_grid(sitk.Cast(oriented, sitk.sitkFloat32), "LPS", card_spacing).GetSize()
    assert planned == produced


def test_the_peak_estimate_grows_with_what_the_pipeline_allocates():
    card = ModelCard(name="m", version=1, dims=2, modalities=["flair"], spacing_mm=[1, 1, 1], labels={1: "t"})
    pair = card.model_copy(update={"modalities": ["flair", "t1c"]})
    base = peak_bytes([10**6], 10**6, card)
    assert base >= 10**6 * (4 + 4 + 4)  # at least the input, the model-grid image and the probabilities
    assert peak_bytes([10**6], 8 * 10**6, card) > 5 * base  # 8x the model grid: much more
    assert peak_bytes([10**6, 10**6], 10**6, pair) > base  # a second channel costs


def test_the_peak_estimate_counts_the_input_stage_the_card_asks_for():
    card = ModelCard(name="m", version=1, dims=2, modalities=["flair"], spacing_mm=[1, 1, 1], labels={1: "t"})
    stripped = card.model_copy(update={"preprocessing": Preprocessing(skull_strip=True, registration="rigid")})
    assert input_stage_bytes([10**6], card) == 0  # an old card asks for nothing: nothing is planned
    assert input_stage_bytes([10**6], stripped) >= 10**6 * (4 + 4)  # a float32 copy and the stripper's input
    assert peak_bytes([10**6], 10**6, stripped) == peak_bytes([10**6], 10**6, card) + input_stage_bytes(
        [10**6], stripped
    )
