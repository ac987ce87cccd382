"""The pipeline thresholds a sigmoid model's probabilities at the card's ``threshold``, not at 0.5: a
real (tiny) SavedModel answers a known probability, 0.4 on the synthetic tumour and 0.02 elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from segcore.pipeline import segment
from segcore.runner import SavedModelRunner
from tests.helpers import make_known_probability_model, synthetic_head


@pytest.mark.parametrize(("threshold", "marks_tumour"), [(0.3, True), (0.45, False), (0.01, None)])
def test_the_cards_threshold_decides_the_mask(tmp_path, threshold, marks_tumour):
    runner = SavedModelRunner(make_known_probability_model(tmp_path, name="known", threshold=threshold))
    assert runner.card.threshold == threshold
    image, truth = synthetic_head()
    mask = sitk.GetArrayFromImage(segment({"flair": image}, runner).mask)  # a copy: the image is a temporary
    expected = sitk.GetArrayViewFromImage(truth)
    if marks_tumour is True:  # 0.4 >= 0.3 on the tumour, 0.02 < 0.3 elsewhere: exactly the tumour
        np.testing.assert_array_equal(mask, expected)
    elif marks_tumour is False:  # 0.4 < 0.45: nothing (a pipeline using 0.5 agrees here, 0.3 does not)
        assert not mask.any()
    else:  # 0.02 >= 0.01: every voxel the model saw (the brain's slices), far more than the tumour
        assert mask.sum() > 20 * expected.sum()
