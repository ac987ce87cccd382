"""3D sliding-window inference: exact stitching, Gaussian weighting, borders, memory, and the pipeline's
3D branch with a real (tiny, hand-written) SavedModel."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from segcore.card import ModelCard, Tiling
from segcore.metrics import dice
from segcore.model_folder import SIGNATURE_NAME
from segcore.pipeline import segment
from segcore.runner import SavedModelRunner
from segcore.tiling import gaussian_importance, predict_sliding_window_3d, window_starts
from tests.helpers import synthetic_head


def identity(batch: np.ndarray) -> np.ndarray:
    """An 'identity' network on channel 0: what goes in comes out, so stitching can be checked exactly."""
    return batch[..., :1].copy()


@pytest.mark.parametrize(("size", "patch", "overlap"), [(100, 32, 0.5), (64, 32, 0.5), (33, 32, 0.25), (20, 32, 0.5)])
def test_window_starts_cover_the_axis_with_at_least_the_requested_overlap(size, patch, overlap):
    starts = window_starts(size, patch, overlap)
    assert starts[0] == 0
    if size <= patch:
        assert starts == [0]
        return
    assert starts[-1] + patch == size  # the last (border) patch ends exactly at the edge, never beyond
    gaps = np.diff(starts)
    assert np.all(gaps > 0) and np.all(gaps <= patch * (1 - overlap))


def test_gaussian_importance_peaks_at_the_centre_and_is_positive_everywhere():
    w = gaussian_importance((8, 12, 16))
    assert w.dtype == np.float32 and w.shape == (8, 12, 16)
    assert w.max() == pytest.approx(1.0) and w.min() > 0
    assert w[4, 6, 8] > w[0, 0, 0] and w[4, 6, 8] > w[4, 6, 0]
    np.testing.assert_allclose(w, w[::-1, ::-1, ::-1], rtol=1e-6)  # symmetric: no direction is favoured


def test_identity_model_is_stitched_back_exactly_including_border_patches():
    rng = np.random.default_rng(0)
    volume = rng.standard_normal((2, 37, 45, 50)).astype(np.float32)  # no size is a multiple of the patch
    brain = np.ones(volume.shape[1:], dtype=bool)
    calls = []

    def predict(batch: np.ndarray) -> np.ndarray:
        calls.append((batch.shape, batch.dtype))
        return identity(batch)

    probs = predict_sliding_window_3d(volume, brain, predict, 1, patch_size=(16, 16, 16), overlap=0.5)
    assert probs.dtype == np.float32 and probs.shape == (1, 37, 45, 50)
    np.testing.assert_allclose(probs[0], volume[0], rtol=1e-5, atol=1e-6)
    expected = len(window_starts(37, 16, 0.5)) * len(window_starts(45, 16, 0.5)) * len(window_starts(50, 16, 0.5))
    assert len(calls) == expected
    assert set(calls) == {((1, 16, 16, 16, 2), np.dtype(np.float32))}  # batch of one, one shape


def test_a_box_smaller_than_the_patch_is_zero_padded_and_cropped_back():
    volume = np.arange(1 * 5 * 6 * 7, dtype=np.float32).reshape(1, 5, 6, 7)
    brain = np.ones((5, 6, 7), dtype=bool)
    shapes = []

    def predict(batch: np.ndarray) -> np.ndarray:
        shapes.append(batch.shape)
        assert not batch[0, 5:].any() and not batch[0, :, 6:].any()  # padding is background (0)
        return identity(batch)

    probs = predict_sliding_window_3d(volume, brain, predict, 1, patch_size=(8, 8, 8), margin=0)
    assert shapes == [(1, 8, 8, 8, 1)]
    np.testing.assert_allclose(probs[0], volume[0], rtol=1e-6)


def test_overlapping_patches_are_blended_with_gaussian_weights():
    """Two patches along x predicting constants 0 and 1: where they overlap, each voxel gets the
    Gaussian-weighted mean, so it leans toward the patch whose centre is nearer."""
    volume = np.ones((1, 8, 8, 24), dtype=np.float32)
    brain = np.ones((8, 8, 24), dtype=bool)
    outputs = iter([0.0, 1.0])

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.full(batch.shape[:-1] + (1,), next(outputs), dtype=np.float32)

    probs = predict_sliding_window_3d(volume, brain, predict, 1, patch_size=(8, 8, 16), overlap=0.5)
    assert window_starts(24, 16, 0.5) == [0, 8]
    g = gaussian_importance((8, 8, 16))[4, 4]  # weights along x
    for x in range(8, 16):  # the overlap
        expected = g[x - 8] / (g[x] + g[x - 8])
        assert probs[0, 4, 4, x] == pytest.approx(expected, rel=1e-5)
    assert probs[0, 4, 4, 9] < 0.5 < probs[0, 4, 4, 14]
    assert np.all(probs[0, :, :, :8] == 0) and np.all(probs[0, :, :, 16:] == 1)


def test_patches_without_brain_are_not_run_and_stay_background():
    volume = np.ones((1, 40, 40, 40), dtype=np.float32)
    brain = np.zeros((40, 40, 40), dtype=bool)
    brain[2:10, 2:10, 2:10] = True
    calls = []

    def predict(batch):
        calls.append(1)
        return identity(batch)

    probs = predict_sliding_window_3d(volume, brain, predict, 1, patch_size=(16, 16, 16), margin=0)
    assert len(calls) == 1  # the brain box (8^3) fits one padded patch
    assert probs[0, 2:10, 2:10, 2:10].min() == 1.0
    assert probs[0, 12:].max() == 0.0 and probs[0, :, :, 12:].max() == 0.0
    empty = predict_sliding_window_3d(volume, np.zeros_like(brain), predict, 1, patch_size=(16, 16, 16))
    assert not empty.any() and len(calls) == 1


def test_mirroring_runs_the_eight_flips_and_keeps_an_equivariant_model_exact():
    rng = np.random.default_rng(1)
    volume = rng.standard_normal((1, 20, 20, 20)).astype(np.float32)
    brain = np.ones((20, 20, 20), dtype=bool)
    calls = []

    def predict(batch):
        calls.append(1)
        return identity(batch)

    plain = predict_sliding_window_3d(volume, brain, predict, 1, patch_size=(16, 16, 16))
    n_plain = len(calls)
    mirrored = predict_sliding_window_3d(volume, brain, predict, 1, patch_size=(16, 16, 16), mirror=True)
    assert len(calls) - n_plain == 8 * n_plain
    np.testing.assert_allclose(mirrored, plain, rtol=1e-5, atol=1e-6)


def test_memory_stays_within_float32_volume_buffers():
    """Peak allocation is a few float32 volume-sized buffers, independent of the number of patches:
    no float64 accumulator (which alone would add 8 bytes per voxel per channel) and no list of patches."""
    shape = (64, 64, 64)
    voxels = int(np.prod(shape))
    volume = np.zeros((1, *shape), dtype=np.float32)
    brain = np.ones(shape, dtype=bool)
    tracemalloc.start()
    try:
        probs = predict_sliding_window_3d(volume, brain, identity, 1, patch_size=(16, 16, 16))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert probs.dtype == np.float32
    # output 4 + accumulator 4 + weight sum 4 + boolean masks 2 bytes per voxel, plus patch-sized scratch
    assert peak < 15 * voxels + 64 * 16**3 * 4, f"peak {peak / voxels:.1f} bytes per voxel"


def test_wrong_output_shape_is_rejected():
    volume = np.ones((1, 16, 16, 16), dtype=np.float32)
    with pytest.raises(ValueError, match="model returned shape"):
        predict_sliding_window_3d(volume, volume[0] > 0, lambda b: b[:, :8], 1, patch_size=(16, 16, 16))
    with pytest.raises(ValueError, match="patch_size"):
        predict_sliding_window_3d(volume, volume[0] > 0, identity, 1, patch_size=(16, 16))


def make_threshold_model_3d(models_dir: Path, patch: int = 16) -> Path:
    """A real 3D SavedModel (rank-5 signature) marking voxels brighter than 2 brain SDs."""
    import tensorflow as tf

    class Threshold3D(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, None, None, None, 1], tf.float32, name="image")])
        def serve(self, image):
            return {"probabilities": tf.sigmoid(8.0 * (image - 2.0))}

    path = Path(models_dir) / "bright-3d" / "1"
    module = Threshold3D()
    tf.saved_model.save(module, str(path), signatures={SIGNATURE_NAME: module.serve})
    ModelCard(
        name="bright-3d",
        version=1,
        dims=3,
        modalities=["flair"],
        spacing_mm=[1.0, 1.0, 1.0],
        tiling=Tiling(divisor=8, patch_size=[patch] * 3, overlap=0.5, margin=4),
        labels={1: "bright"},
    ).write(path)
    return path


def test_pipeline_segments_with_a_3d_savedmodel_onto_the_input_grid(tmp_path):
    image, truth = synthetic_head(shape_zyx=(40, 72, 64), spacing=(1.0, 1.0, 1.0))
    # An RAS-stored copy: the pipeline reorients to the card's LPS and must map the mask back.
    flipped = sitk.DICOMOrient(image, "RAS")
    runner = SavedModelRunner(make_threshold_model_3d(tmp_path))
    for source, reference in ((image, truth), (flipped, sitk.DICOMOrient(truth, "RAS"))):
        result = segment({"flair": source}, runner)
        mask = result.mask
        assert mask.GetSize() == source.GetSize() and mask.GetDirection() == source.GetDirection()
        assert mask.GetPixelID() == sitk.sitkUInt8
        score = dice(sitk.GetArrayFromImage(mask) > 0, sitk.GetArrayFromImage(reference) > 0)
        assert score > 0.95, score
        assert set(result.timings_ms) >= {"preprocess", "infer", "postprocess"}


def test_a_3d_card_needs_a_patch_that_the_network_can_take():
    with pytest.raises(ValueError, match="patch_size"):
        ModelCard(name="x", version=1, dims=3, modalities=["flair"], spacing_mm=[1, 1, 1], labels={1: "t"})
    with pytest.raises(ValueError, match="multiple of divisor"):
        ModelCard(
            name="x", version=1, dims=3, modalities=["flair"], spacing_mm=[1, 1, 1], labels={1: "t"},
            tiling=Tiling(divisor=8, patch_size=[20, 16, 16]),
        )
