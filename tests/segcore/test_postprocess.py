"""Calibrated masks: the card's ``postprocessing.min_component_ml`` removes small tumour components on
the model grid, in the pipeline the service runs; a card without the field removes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from segcore.card import ModelCard
from segcore.model_folder import CARD_RELPATH
from segcore.pipeline import segment
from segcore.postprocess import min_component_voxels, remove_small_components
from segcore.runner import SavedModelRunner
from tests.helpers import make_known_probability_model, synthetic_head


def test_components_below_the_size_are_removed_and_sub_regions_of_kept_ones_are_untouched():
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[2:8, 2:8, 2:8] = 2  # 216 voxels of oedema ...
    labels[4:6, 4:6, 4:6] = 4  # ... with an enhancing core inside: one component of 216
    labels[15:17, 15:17, 15:17] = 1  # 8 voxels, apart
    labels[10, 10, 10] = 4  # a single voxel
    labels[11, 11, 11] = 4  # touching it only at a corner: the same component (26-connectivity), 2 voxels
    kept = remove_small_components(labels, 9)
    expected = labels.copy()
    expected[15:17, 15:17, 15:17] = 0
    expected[10, 10, 10] = expected[11, 11, 11] = 0
    np.testing.assert_array_equal(kept, expected)
    assert kept.dtype == np.uint8
    at_eight = remove_small_components(labels, 8)  # "fewer than 8": the 8-voxel component stays
    assert at_eight[15:17, 15:17, 15:17].all() and not at_eight[10, 10, 10] and not at_eight[11, 11, 11]
    assert remove_small_components(labels, 0) is labels  # 0: nothing is removed (old cards)
    assert remove_small_components(labels, 217).sum() == 0  # everything is smaller


def test_a_volume_in_ml_becomes_a_voxel_count_rounded_up():
    assert min_component_voxels(0.0, 0.001) == 0
    assert min_component_voxels(0.5, 0.001) == 500
    assert min_component_voxels(0.5, 0.003) == 167  # 166.7 voxels of 3 mm^3
    assert min_component_voxels(0.1, 0.001) == 100  # not 101 from floating-point noise


def _head_with_a_speck() -> tuple[sitk.Image, np.ndarray, np.ndarray]:
    """The synthetic head (tumour ~0.8 mL) plus an 8-voxel bright speck far from it; the two masks."""
    image, truth = synthetic_head()
    volume = sitk.GetArrayFromImage(image)
    speck = np.zeros(volume.shape, dtype=bool)
    speck[12:14, 40:42, 20:22] = True
    volume[speck] = 300
    with_speck = sitk.GetImageFromArray(volume)
    with_speck.CopyInformation(image)
    return with_speck, sitk.GetArrayFromImage(truth).astype(bool), speck


@pytest.mark.parametrize(
    ("min_component_ml", "keeps"),
    [(None, "both"), (0.0, "both"), (0.05, "tumour"), (5.0, "nothing")],
)
def test_the_cards_min_component_ml_decides_what_the_service_returns(tmp_path, min_component_ml, keeps):
    version_dir = make_known_probability_model(tmp_path, "known", threshold=0.3, min_component_ml=min_component_ml)
    written = json.loads((version_dir / CARD_RELPATH).read_text())
    assert ("postprocessing" in written) == (min_component_ml is not None)
    card = ModelCard.load(version_dir)  # an old card (no field) loads, and removes nothing
    assert card.postprocessing.min_component_ml == (min_component_ml or 0.0)
    image, tumour, speck = _head_with_a_speck()
    assert 500 < tumour.sum() < 5000  # 0.5-5 mL: above 0.05 mL, below 5 mL
    mask = sitk.GetArrayFromImage(segment({"flair": image}, SavedModelRunner(version_dir)).mask) > 0
    expected = {"both": tumour | speck, "tumour": tumour, "nothing": np.zeros_like(tumour)}[keeps]
    np.testing.assert_array_equal(mask, expected)
