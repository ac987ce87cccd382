import numpy as np
import pytest

from segcore.tiling import crop_box, pad_amounts, predict_slices_2d, probabilities_to_labels


def test_crop_box_covers_the_mask_and_is_a_multiple_of_the_divisor():
    mask = np.zeros((10, 100, 90), dtype=bool)
    mask[3:7, 20:51, 11:40] = True
    zbox, ybox, xbox = crop_box(mask, margin=4, divisor=16)
    assert (zbox.start, zbox.stop) == (3, 7)
    for box, lo, hi in ((ybox, 20, 51), (xbox, 11, 40)):
        assert box.start <= lo - 4 and box.stop >= hi + 4
        assert (box.stop - box.start) % 16 == 0
        assert box.start >= 0


def test_crop_box_at_the_border_stays_inside_the_volume():
    mask = np.zeros((2, 40, 40), dtype=bool)
    mask[:, 0:5, 35:40] = True
    _, ybox, xbox = crop_box(mask, margin=8, divisor=16)
    assert ybox.start == 0 and ybox.stop == 16
    assert xbox.stop == 40 and xbox.start == 24


def test_pad_amounts():
    assert pad_amounts((30, 32), 16) == [(1, 1), (0, 0)]
    assert pad_amounts((17,), 8) == [(3, 4)]


def test_predict_slices_stitches_each_slice_back_in_place_and_skips_empty_slices():
    rng = np.random.default_rng(0)
    volume = rng.standard_normal((2, 6, 50, 45)).astype(np.float32)
    brain = np.zeros((6, 50, 45), dtype=bool)
    brain[1:5, 5:40, 7:30] = True
    brain[2] = False  # a slice without brain inside the range is not run
    calls = []

    def predict(batch: np.ndarray) -> np.ndarray:
        assert batch.shape[0] == 1 and batch.shape[1] % 8 == 0 and batch.shape[2] % 8 == 0
        assert batch.dtype == np.float32
        calls.append(batch.shape)
        return batch[..., :1] * 2.0  # an "identity" network on channel 0

    probs = predict_slices_2d(volume, brain, predict, 1, divisor=8, margin=2)
    assert probs.dtype == np.float32 and probs.shape == (1, 6, 50, 45)
    assert len(calls) == 3 and len(set(calls)) == 1  # one shape: a concrete function never retraces
    for z in (1, 3, 4):
        np.testing.assert_allclose(probs[0, z, 5:40, 7:30], 2 * volume[0, z, 5:40, 7:30])
    assert not probs[0, 0].any() and not probs[0, 2].any() and not probs[0, 5].any()


def test_predict_slices_without_cropping_covers_the_whole_slice():
    volume = np.ones((1, 3, 20, 20), dtype=np.float32)
    brain = np.zeros((3, 20, 20), dtype=bool)
    probs = predict_slices_2d(volume, brain, lambda b: b, 1, divisor=8, crop_to_brain=False)
    assert probs.min() == 1.0


def test_predict_slices_rejects_a_wrong_output_shape():
    volume = np.ones((1, 2, 16, 16), dtype=np.float32)
    brain = np.ones((2, 16, 16), dtype=bool)
    with pytest.raises(ValueError, match="model returned shape"):
        predict_slices_2d(volume, brain, lambda b: b[:, :8], 1, divisor=8)


def test_probabilities_to_labels_sigmoid_and_softmax():
    probs = np.array([[[[0.2, 0.5, 0.9]]]], dtype=np.float32)
    np.testing.assert_array_equal(probs_to := probabilities_to_labels(probs, {1: "wt"}, "sigmoid", 0.5), [[[0, 1, 1]]])
    assert probs_to.dtype == np.uint8
    soft = np.zeros((4, 1, 1, 4), dtype=np.float32)
    for i, winner in enumerate([0, 1, 2, 3]):
        soft[winner, 0, 0, i] = 1
    labels = probabilities_to_labels(soft, {1: "ncr", 2: "ed", 4: "et"}, "softmax", 0.5)
    np.testing.assert_array_equal(labels[0, 0], [0, 1, 2, 4])
