"""``training.evaluate`` against hand-computed Dice: a real (tiny) multi-class SavedModel whose answer is
known voxel by voxel, a BraTS label map drawn by hand, and WT / TC / ET Dice worked out on paper."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from segcore.card import ModelCard, Normalization, Tiling
from segcore.model_folder import publish_atomically
from training.evaluate import evaluate

SHAPE = (20, 32, 32)  # z, y, x
ROWS, SLICES = slice(10, 20), slice(8, 12)  # every region: 10 rows x 4 slices = 40 voxels per column
# Intensity -> the label the model answers: 100 brain (background), 200 -> 1, 300 -> 2, 400 -> 4.
PREDICTED = {200: (4, 8), 300: (8, 16), 400: (16, 20)}  # x column ranges [start, stop)
# Archive labels (BraTS 2015 convention, 3 = non-enhancing core): x column ranges
TRUTH = {1: (4, 6), 3: (6, 8), 2: (8, 12), 4: (12, 20)}
TRUTH_EXTRA_OEDEMA = (20, 22)  # label 2 beyond what the model marks


def _volumes() -> tuple[np.ndarray, np.ndarray]:
    image = np.zeros(SHAPE, dtype=np.float32)
    image[2:18, 4:28, 2:30] = 100  # the brain
    labels = np.zeros(SHAPE, dtype=np.uint8)
    for value, (x0, x1) in PREDICTED.items():
        image[SLICES, ROWS, x0:x1] = value
    for value, (x0, x1) in TRUTH.items():
        labels[SLICES, ROWS, x0:x1] = value
    labels[SLICES, ROWS, slice(*TRUTH_EXTRA_OEDEMA)] = 2
    return image, labels


def _write_hand_case(root):
    """The hand-drawn case as ``<root>/hand_001`` (standard BraTS names); returns its image array."""
    image, labels = _volumes()
    case = root / "hand_001"
    case.mkdir(parents=True)
    for array, name in ((image, "hand_001_flair.nii.gz"), (labels, "hand_001_seg.nii.gz")):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(case / name))
    return image


def _model(models_dir, image: np.ndarray):
    """Softmax over (background, 1, 2, 4) from the brain z-score of the intensities above; the cut points
    are midpoints of the z-scores computed here with numpy (clip is raised so nothing saturates)."""
    brain = image[image != 0].astype(np.float64)
    z = {v: (v - brain.mean()) / brain.std() for v in (100, 200, 300, 400)}
    cuts = [(z[a] + z[b]) / 2 for a, b in ((100, 200), (200, 300), (300, 400))]

    def build(tmp):
        import tensorflow as tf

        class Bands(tf.Module):
            @tf.function(input_signature=[tf.TensorSpec([1, None, None, 1], tf.float32, name="image")])
            def serve(self, image):
                band = sum(tf.cast(image[..., 0] > c, tf.int32) for c in cuts)
                return {"probabilities": tf.one_hot(band, 4, dtype=tf.float32)}

        module = Bands()
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve})
        ModelCard(
            name="bands",
            version=1,
            dims=2,
            modalities=["flair"],
            spacing_mm=[1.0, 1.0, 1.0],
            tiling=Tiling(divisor=8, margin=2),
            normalization=Normalization(clip=1000.0),
            labels={1: "core", 2: "oedema", 4: "enhancing"},
            activation="softmax",
        ).write(tmp)

    return publish_atomically(models_dir / "bands" / "1", build)


def test_per_region_dice_equals_the_hand_computed_values(tmp_path):
    image = _write_hand_case(tmp_path / "cases")
    (row,) = evaluate(_model(tmp_path / "models", image), [tmp_path / "cases"])
    # One column of a region = 40 voxels. Predicted: 1 on x 4-7, 2 on x 8-15, 4 on x 16-19.
    # Truth: 1 on x 4-5, 3 on x 6-7, 2 on x 8-11 and 20-21, 4 on x 12-19.
    # WT: predicted x 4-19 (640), truth x 4-21 (720), both x 4-19 (640): 2*640 / 1360
    # TC (1, 3, 4): predicted x 4-7 + 16-19 (320), truth x 4-7 + 12-19 (480), both 320: 640 / 800
    # ET (4): predicted x 16-19 (160), truth x 12-19 (320), both 160: 320 / 480
    assert row["dice_wt"] == pytest.approx(1280 / 1360, abs=1e-4)
    assert row["dice_tc"] == pytest.approx(0.8, abs=1e-4)
    assert row["dice_et"] == pytest.approx(2 / 3, abs=1e-4)
    assert (row["pred_ml"], row["true_ml"]) == (0.64, 0.72)


def test_the_summary_gives_means_per_source_and_the_volume_error(tmp_path):
    import json

    from training.evaluate import main

    image = _write_hand_case(tmp_path / "cases")
    version_dir = _model(tmp_path / "models", image)
    assert main([str(version_dir), str(tmp_path / "cases"), "--json", str(tmp_path / "eval.json")]) == 0
    summary = json.loads((tmp_path / "eval.json").read_text())["summary"]
    assert set(summary) == {"other", "other:brats-standard"}  # one role, one source (layout)
    per_source = summary["other:brats-standard"]
    assert per_source["cases"] == 1
    assert per_source["mean_dice_wt"] == pytest.approx(1280 / 1360, abs=1e-4)
    assert per_source["mean_abs_volume_error_pct"] == pytest.approx((0.72 - 0.64) / 0.72 * 100, abs=0.1)


def test_robustness_runs_every_version_under_every_shift_and_draws_it(tmp_path):
    """``training.robustness``: one version, three conditions; the archived cell is the hand-computed Dice
    and the shifted cells really saw shifted inputs (another grid, other intensities)."""
    import json

    from training.robustness import CONDITIONS, main

    image = _write_hand_case(tmp_path / "cases")
    version_dir = _model(tmp_path / "models", image)
    out = tmp_path / "robustness.json"
    assert main([str(version_dir), str(tmp_path / "cases"), "--out", str(out)]) == 0
    table = json.loads(out.read_text())["table"]["bands/1"]
    assert list(table) == CONDITIONS == ["as archived", "thick", "bias"]
    assert table["as archived"][0]["dice_wt"] == pytest.approx(1280 / 1360, abs=1e-4)
    assert table["thick"][0]["true_ml"] != 0.72, "the label was moved onto the thick grid"
    assert table["bias"][0]["dice_wt"] != table["as archived"][0]["dice_wt"], "the field changed the bands"
    assert out.with_suffix(".png").stat().st_size > 10_000
