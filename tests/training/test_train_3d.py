"""Train a tiny multi-class 3D U-Net on real BraTS 2015 patches, publish it, and score it with the same
pipeline the service runs (sliding window on the original files, per-region Dice)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segcore.card import ModelCard
from segcore.runner import SavedModelRunner
from tests.conftest import shared_case
from training.config import TrainConfig
from training.convert import convert_case
from training.data import CropSampler, load_cases
from training.datasets import find_case
from training.evaluate import evaluate
from training.loop import train
from training.losses import dice_ce_loss
from training.unet import build_unet

LABELS = {1: "core", 2: "oedema", 4: "enhancing"}


@pytest.fixture(scope="module")
def tiny_3d_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train3d")
    shards = tmp / "shards"
    shards.mkdir()
    for name in ("brats_2013_pat0004_1", "brats_2013_pat0006_1"):
        case = find_case(shared_case("brats2015_deepmedic", name), ["flair", "t1c"])
        shard = convert_case(case, ["flair", "t1c"], "LPS", [1.0, 1.0, 1.0], "brats")
        np.savez(shards / f"{name}.npz", **shard)
    config = TrainConfig.model_validate(
        {
            "name": "tiny-mc-3d",
            "dims": 3,
            "modalities": ["flair", "t1c"],
            "labels": LABELS,
            "activation": "softmax",
            "target": "brats",
            "data": {
                "shards": shards,
                "train": ["brats_2013_pat0006_1"],
                "validation": ["brats_2013_pat0004_1"],
                "patch": 32,
                "tumour_fraction": 0.9,
            },
            "network": {"depth": 2, "base_filters": 4, "normalization": "instance"},
            "inference": {"patch": 64, "overlap": 0.25},
            "optim": {"epochs": 2, "steps_per_epoch": 8, "batch_size": 2, "learning_rate": 5e-3},
            "threads": {"intra_op": 2, "inter_op": 1},
            "models_dir": tmp / "models",
            "run_dir": tmp / "runs",
        }
    )
    return config, train(config, quiet=True)


def test_patch_sampler_oversamples_tumour_and_one_hot_encodes_softmax_targets(tiny_3d_run):
    config, _ = tiny_3d_run
    cases = load_cases(config.data.shards, ["brats_2013_pat0006_1"])
    sampler = CropSampler(cases, 32, 1.0, [1, 2, 4], seed=0, dims=3, softmax=True)
    x, y = sampler.batch(4)
    assert x.shape == (4, 32, 32, 32, 2) and x.dtype == np.float32
    assert y.shape == (4, 32, 32, 32, 4)
    np.testing.assert_array_equal(y.sum(axis=-1), 1.0)  # exactly one class per voxel
    assert all(y[i, ..., 1:].any() for i in range(4))  # tumour_fraction 1: every patch holds tumour


def test_dice_ce_loss_prefers_the_right_answer():
    truth = np.zeros((1, 4, 4, 4, 3), dtype=np.float32)
    truth[..., 0] = 1
    truth[0, :2, :, :, 0], truth[0, :2, :, :, 2] = 0, 1
    wrong = np.roll(truth, 1, axis=-1) * 0.9 + 0.1 / 3
    right = truth * 0.9 + 0.1 / 3
    assert float(dice_ce_loss(truth, right)) < float(dice_ce_loss(truth, wrong))


def test_3d_builder_is_fully_convolutional_and_counts_its_parameters():
    model = build_unet(3, 2, 4, depth=2, base_filters=4, normalization="instance", activation="softmax")
    out = model(np.zeros((1, 16, 24, 32, 2), dtype=np.float32))
    assert tuple(out.shape) == (1, 16, 24, 32, 4)
    np.testing.assert_allclose(np.asarray(out).sum(axis=-1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="normalization"):
        build_unet(3, 1, 1, normalization="layer")  # type: ignore[arg-type]


def test_3d_multiclass_export_and_per_region_evaluation_on_the_real_case(tiny_3d_run):
    config, summary = tiny_3d_run
    history = json.loads((config.run_dir / "tiny-mc-3d" / "history.json").read_text())
    assert history[-1]["loss"] < history[0]["first_loss"]
    assert set(summary["val_dice_per_region"]) == {"WT", "TC", "ET"}
    version_dir = config.models_dir / "tiny-mc-3d" / "1"
    card = ModelCard.load(version_dir)
    assert (card.dims, card.activation, card.output_channels) == (3, "softmax", 4)
    assert card.tiling.patch_size == [64, 64, 64] and card.tiling.overlap == 0.25
    assert card.regions == {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}
    assert {"mean:WT", "mean:TC", "mean:ET", "mean"} <= set(card.validation_dice)
    out = SavedModelRunner(version_dir).predict(np.zeros((1, 32, 48, 64, 2), dtype=np.float32))
    assert out.shape == (1, 32, 48, 64, 4)  # unknown spatial sizes: any multiple of 2**depth
    (row,) = evaluate(version_dir, [shared_case("brats2015_deepmedic")], ["brats_2013_pat0004_1"])
    assert row["role"] == "validation"
    # training.evaluate on the original files agrees with the validation the training loop recorded in
    # the card (same pipeline; the loop reads the converted shard): a region mix-up in either shows here.
    for region in ("WT", "TC", "ET"):
        recorded = card.validation_dice[f"brats_2013_pat0004_1:{region}"]
        assert row[f"dice_{region.lower()}"] == pytest.approx(recorded, abs=0.02), region
    assert row["true_ml"] == pytest.approx(120.674, abs=0.01)  # labels 1-4 of this case (data README)


def test_service_json_reports_label_and_region_volumes_for_the_multiclass_card(tiny_3d_run):
    import SimpleITK as sitk

    from app.outputs.summary import summary

    config, _ = tiny_3d_run
    card = ModelCard.load(config.models_dir / "tiny-mc-3d" / "1")
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[0, :5], labels[1], labels[2, :2] = 1, 2, 4  # 50 core, 100 oedema, 20 enhancing voxels
    mask = sitk.GetImageFromArray(labels)
    mask.SetSpacing((2.0, 1.0, 1.0))  # 2 uL per voxel
    body = summary(mask, card, {"infer": 1.0})
    assert [(entry["value"], entry["voxels"]) for entry in body["labels"]] == [(1, 50), (2, 100), (4, 20)]
    assert {k: v["voxels"] for k, v in body["regions"].items()} == {"WT": 170, "TC": 70, "ET": 20}
    assert body["regions"]["WT"]["volume_ml"] == pytest.approx(0.34)
