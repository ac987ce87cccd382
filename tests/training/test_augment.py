"""Augmentation (training.augment, batchgenerators) and calibration (training.calibrate): what each
transform does is checked on arrays whose answer is known; the bundled configs keep every data source in
their validation split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segcore.metrics import dice
from training.augment import (
    AugmentConfig,
    BiasFieldTransform,
    ThickSliceTransform,
    input_size,
    simulate_thick_slices,
)
from training.calibrate import calibrate
from training.config import TrainConfig
from training.data import CaseArrays, CropSampler
from training.datasets import discover

REPO = Path(__file__).resolve().parents[2]
NOTHING = {f"p_{k}": 0.0 for k in ("rotation", "scale", "elastic", "bias_field", "gamma", "contrast",
                                     "brightness", "noise", "blur", "thick_slices", "thick_through_plane")}


def _bright_tumour_case() -> CaseArrays:
    """A 3D case whose image *is* its label: tumour voxels 4.0, brain 0.0 plus noise, so after any
    spatial transform the bright voxels must still be the tumour voxels."""
    rng = np.random.default_rng(1)
    z, y, x = np.mgrid[:48, :96, :96]
    brain = ((z - 24) / 22) ** 2 + ((y - 48) / 44) ** 2 + ((x - 48) / 44) ** 2 <= 1
    label = (((z - 24) / 8) ** 2 + ((y - 40) / 14) ** 2 + ((x - 56) / 10) ** 2 <= 1).astype(np.uint8)
    image = np.where(label > 0, 4.0, 0.1 * rng.standard_normal(label.shape)) * brain
    return CaseArrays("bright", image[..., None].astype(np.float16), label, brain)


@pytest.mark.parametrize(("dims", "patch"), [(2, 64), (3, 32)])
def test_spatial_augmentation_moves_image_and_label_together(dims, patch):
    spatial = AugmentConfig(enabled=True, **(NOTHING | {"p_rotation": 1.0, "p_scale": 1.0, "p_elastic": 1.0}))
    sampler = CropSampler([_bright_tumour_case()], patch, 1.0, [1], seed=0, dims=dims, augment=spatial)
    assert sampler.crop == input_size(patch, spatial) > patch  # a larger crop feeds the spatial transform
    x, y = sampler.batch(6)
    assert x.shape == (6, *(patch,) * dims, 1) and y.shape == (6, *(patch,) * dims, 1)
    assert y.sum() > 0
    assert dice(x[..., 0] > 2.0, y[..., 0] > 0.5) > 0.9  # interpolation blurs only the boundary
    plain = CropSampler([_bright_tumour_case()], patch, 1.0, [1], seed=0, dims=dims)
    assert plain.crop == patch


def test_augmented_batches_are_reproducible_for_a_seed_and_differ_from_plain_ones():
    def batch(seed: int, enabled: bool = True) -> np.ndarray:
        config = AugmentConfig(enabled=enabled)
        return CropSampler([_bright_tumour_case()], 32, 0.7, [1], seed=seed, dims=3, augment=config).batch(4)[0]

    np.testing.assert_array_equal(batch(3), batch(3))
    assert not np.array_equal(batch(3), batch(4))
    assert not np.array_equal(batch(3), batch(3, enabled=False))


def test_thick_slices_remove_detail_along_one_axis_only():
    rng = np.random.default_rng(0)
    data = rng.standard_normal((1, 1, 48, 48, 48)).astype(np.float32)
    config = AugmentConfig(p_thick_slices=1.0)
    out = ThickSliceTransform(config, axes=[0])(data=data.copy(), seg=None)["data"]

    def roughness(array: np.ndarray, axis: int) -> float:
        return float(np.mean(np.diff(array[0, 0], axis=axis) ** 2))

    # Along z: neighbours are interpolated from samples 3-6 voxels apart, so they barely differ.
    assert roughness(out, 0) < 0.2 * roughness(data, 0)
    # In-plane: untouched detail (each z-slice is a blend of noise slices, so less than 1x, far above z).
    assert roughness(out, 1) > 3 * roughness(out, 0)


def test_a_gaussian_slice_profile_averages_neighbouring_planes_like_a_real_thick_slice():
    column = np.zeros((1, 40), dtype=np.float32)
    column[0, 20] = 1.0  # one bright 1 mm plane: a thin lesion
    for phase in (0.0, 1.7, 3.2):
        out = simulate_thick_slices(column, axis=1, thickness=5.0, phase=phase)
        assert out.shape == column.shape and out.dtype == np.float32
        assert 0.05 < out[0, 20] < 0.5  # partial volume: diluted over the slice, never kept as it was
        assert out[0, 17:24].sum() > 0.6  # and spread to its neighbours, not lost
        assert np.all(out[0, :10] < 1e-3) and np.all(out[0, 31:] < 1e-3)  # nothing far away
    flat = np.full((2, 13, 4), 3.0, dtype=np.float32)
    np.testing.assert_allclose(simulate_thick_slices(flat, axis=1, thickness=6.0, phase=5.9), flat, rtol=1e-6)


@pytest.mark.parametrize(("profile", "least_changed"), [("point", 0.25), ("gaussian", 0.9)])
def test_2d_through_plane_thick_slices_change_the_sampled_slice(profile, least_changed):
    """Crops of a volume whose axial slices are each one random level: a crop from a simulated thick axial
    acquisition blends levels. batchgenerators' point sampling ("point", version 2's recipe) hands back an
    untouched slice for many draws (an odd number of samples puts one on the centre plane); the Gaussian
    slice profile changes (nearly) every one."""
    shape = (40, 48, 48)
    levels = np.random.default_rng(0).uniform(1, 3, shape[0]).astype(np.float16)
    case = CaseArrays("levels", np.broadcast_to(levels[:, None, None, None], (*shape, 1)),
                      np.zeros(shape, np.uint8), np.ones(shape, bool))

    def changed(p: float) -> float:
        config = AugmentConfig(enabled=True, thick_slice_profile=profile, **(NOTHING | {"p_thick_through_plane": p}))
        centres = CropSampler([case], 32, 0.0, [1], seed=0, dims=2, augment=config).batch(32)[0][:, 16, 16, 0]
        nearest = np.abs(centres[:, None] - levels[None, :].astype(np.float32)).min(axis=1)
        return float(np.mean(nearest > 1e-3))

    assert changed(0.0) == 0.0
    assert least_changed <= changed(1.0) <= (0.75 if profile == "point" else 1.0)


def test_the_bias_field_is_smooth_positive_and_leaves_the_background_alone():
    data = np.zeros((1, 1, 32, 32, 32), dtype=np.float32)
    seg = np.zeros((1, 2, 32, 32, 32), dtype=np.float32)
    seg[0, 1, 4:28, 4:28, 4:28] = 1  # brain
    np.random.seed(0)
    out = BiasFieldTransform(max_coefficient=0.5, p_per_sample=1.0)(data=data.copy(), seg=seg)["data"][0, 0]
    inside = seg[0, 1] > 0
    assert np.all(out[~inside] == 0)
    field = (out[inside] + 3.0) / 3.0  # data was 0 (z-score of mean tissue): out = 3 * field - 3
    assert field.min() > 0 and field.std() > 0.02  # a real, multiplicative change
    assert np.abs(np.diff(out[4:28, 4:28, 4:28], axis=2)).max() < 0.2  # smooth: no jump between voxels


def test_calibration_picks_the_threshold_and_removal_that_maximise_validation_dice():
    truth = np.zeros((20, 40, 40), dtype=np.uint8)
    truth[5:15, 10:30, 10:30] = 1
    probs = np.where(truth > 0, 0.42, 0.1).astype(np.float32)[None]  # tumour at 0.42: below 0.5
    probs[0, 17:19, 2:4, 2:4] = 0.9  # an 8-voxel false positive
    chosen = calibrate({"a": probs}, {"a": truth}, {1: "tumour"}, "sigmoid", {}, [0.3, 0.4, 0.5], [0.0, 0.01, 1.0])
    assert (chosen.threshold, chosen.min_component_ml) == (0.4, 0.01)  # 0.3 ties with 0.4: the one nearer 0.5
    assert chosen.scores["a"]["WT"] == 1.0
    assert chosen.volumes_ml["a"] == {"pred_ml": 4.0, "true_ml": 4.0}
    assert len(chosen.table) == 9
    # Where nothing helps, the default is kept: 0.5 and no removal.
    plain = np.where(truth > 0, 0.9, 0.1).astype(np.float32)[None]
    kept = calibrate({"a": plain}, {"a": truth}, {1: "tumour"}, "sigmoid", {}, [0.3, 0.5, 0.7], [0.0, 0.005])
    assert (kept.threshold, kept.min_component_ml) == (0.5, 0.0)


@pytest.mark.parametrize("name", ["brats-wt-flair", "brats-wt-flair-3d", "brats-mc-flair-t1c-3d"])
def test_bundled_configs_augment_calibrate_and_validate_on_every_source(name):
    from tests.conftest import SHARED_DATA, need

    config = TrainConfig.load(REPO / "training" / "configs" / f"{name}.toml")
    assert config.augmentation.enabled and config.calibration.enabled
    need(SHARED_DATA.is_dir(), f"real data not available: {SHARED_DATA}")
    cases = discover([p for p in SHARED_DATA.iterdir() if p.is_dir()], list(config.modalities))
    sources = {c.folder.parent.name for c in cases}
    validation = {c.folder.parent.name for c in cases if c.case_id in config.data.validation}
    trained = {c.case_id for c in cases if c.case_id in config.data.train}
    assert validation == sources, f"validation lacks {sources - validation}"
    assert trained == set(config.data.train)  # every case named exists
    assert {c.case_id for c in cases} == set(config.data.train) | set(config.data.validation)  # all the data


def test_the_card_gets_validation_means_per_source_from_the_shards_index(tmp_path):
    import json

    from training.export import _per_source

    (tmp_path / "index.json").write_text(json.dumps({"cases": [
        {"case_id": "a", "layout": "deepmedic-brats2015"}, {"case_id": "b", "layout": "deepmedic-brats2015"},
        {"case_id": "c", "layout": "brats-standard"}]}))
    config = TrainConfig.model_validate(
        {"name": "x", "modalities": ["flair"], "data": {"shards": tmp_path, "train": ["t"], "validation": ["a"]}}
    )
    wt = _per_source(config, {"a": {"WT": 0.8}, "b": {"WT": 0.9}, "c": {"WT": 0.5}})
    assert wt == {"mean:deepmedic-brats2015": 0.85, "mean:brats-standard": 0.5}
    mc = _per_source(config, {"a": {"WT": 0.8, "ET": 0.6}, "c": {"WT": 0.5, "ET": 0.4}})
    assert mc == {"mean:deepmedic-brats2015:WT": 0.8, "mean:deepmedic-brats2015:ET": 0.6,
                  "mean:brats-standard:WT": 0.5, "mean:brats-standard:ET": 0.4}
    (tmp_path / "index.json").unlink()
    assert _per_source(config, {"a": {"WT": 0.8}}) == {}  # hand-made shards: nothing to group by
