"""Train a tiny U-Net on a few real slices, export it, and load it back as the service would."""

import json

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from segcore.card import ModelCard
from segcore.model_folder import WARMUP_RELPATH
from segcore.runner import SavedModelRunner
from tests.conftest import shared_case
from training.config import TrainConfig
from training.convert import convert_case
from training.datasets import find_case
from training.export import export_version
from training.loop import train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    shards = tmp / "shards"
    shards.mkdir()
    for folder in (("brats2018_deepvoxnet2", "case_1"), ("brats2018_deepvoxnet2", "case_2")):
        case = find_case(shared_case(*folder), ["flair"])
        shard = convert_case(case, ["flair"], "LPS", [1.0, 1.0, 1.0], "whole_tumour")
        keep = slice(60, 90)  # a few real slices through the tumours keep this fast
        sliced = {k: (v[keep] if k in ("image", "label", "brain", "slices") else v) for k, v in shard.items()}
        np.savez(shards / f"{case.case_id}.npz", **sliced)
    config = TrainConfig.model_validate(
        {
            "name": "tiny-wt",
            "modalities": ["flair"],
            "data": {"shards": shards, "train": ["case_1"], "validation": ["case_2"], "patch": 64},
            "network": {"depth": 2, "base_filters": 4},
            "optim": {"epochs": 3, "steps_per_epoch": 12, "batch_size": 4, "learning_rate": 3e-3},
            "threads": {"intra_op": 2, "inter_op": 1},
            "models_dir": tmp / "models",
            "run_dir": tmp / "runs",
        }
    )
    summary = train(config, quiet=True)
    return config, summary


def test_loss_goes_down_and_curves_are_written(tiny_run):
    config, summary = tiny_run
    history = json.loads((config.run_dir / "tiny-wt" / "history.json").read_text())
    assert len(history) == 3
    assert history[-1]["loss"] < history[0]["first_loss"]
    validated = [h["val_dice"] for h in history if h["val_dice"] is not None]
    assert validated and summary["best_val_dice"] == max(validated)  # the best epoch is the one kept
    png = (config.run_dir / "tiny-wt" / "training_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (config.run_dir / "tiny-wt" / "checkpoints" / "best.weights.h5").is_file()


def test_export_is_a_loadable_savedmodel_with_a_valid_card_and_warmup(tiny_run):
    config, summary = tiny_run
    version_dir = config.models_dir / "tiny-wt" / "1"
    assert summary["exported"] == str(version_dir)
    assert not [p for p in version_dir.parent.iterdir() if p.name.startswith(".tmp")]
    card = ModelCard.load(version_dir)
    assert (card.name, card.version, card.dims, card.modalities) == ("tiny-wt", 1, 2, ["flair"])
    assert card.provenance.validation_cases == ["case_2"]
    # The card records the kept (best) epoch's validation, not a later or an invented one.
    assert card.validation_dice["mean"] == round(summary["best_val_dice"], 4)
    assert card.validation_dice["case_2"] == round(summary["val_dice_per_case"]["case_2"]["WT"], 4)
    runner = SavedModelRunner(version_dir)
    for h, w in ((64, 64), (96, 128)):  # unknown spatial sizes: any multiple of 2**depth
        out = runner.predict(np.zeros((1, h, w, 1), dtype=np.float32))
        assert out.shape == (1, h, w, 1) and out.dtype == np.float32
        assert np.all((out >= 0) & (out <= 1))
    records = list(tf.data.TFRecordDataset(str(version_dir / WARMUP_RELPATH)))
    assert records
    request = prediction_log_pb2.PredictionLog.FromString(records[0].numpy()).predict_log.request
    assert request.model_spec.name == "tiny-wt"
    assert tf.make_ndarray(request.inputs["image"]).shape[-1] == 1


def test_published_versions_are_immutable(tiny_run):
    config, _ = tiny_run
    card = ModelCard.load(config.models_dir / "tiny-wt" / "1")
    from training.unet import build_unet

    with pytest.raises(FileExistsError):
        export_version(build_unet(2, 1, 1, depth=2, base_filters=2), card, config.models_dir)
    assert not [p for p in (config.models_dir / "tiny-wt").iterdir() if p.name.startswith(".tmp")]


def test_augmented_calibrated_warm_started_run_publishes_its_calibration_in_the_card(tiny_run, tmp_path):
    """A second tiny run, warm-started from the first one's export, with ``[augmentation]`` and
    ``[calibration]`` on: the card carries the chosen threshold and removal and the Dice they give, and
    calibration scored the very probabilities the last validation produced (its 0.5 / no-removal
    candidate equals that validation's Dice)."""
    config, _ = tiny_run
    calibrated = config.model_copy(
        update={
            "name": "tiny-wt",
            "init_from": config.models_dir / "tiny-wt" / "1",
            "models_dir": tmp_path / "models",
            "run_dir": tmp_path / "runs",
            "optim": config.optim.model_copy(update={"epochs": 1, "steps_per_epoch": 3}),
            "augmentation": config.augmentation.model_copy(update={"enabled": True}),
            "calibration": config.calibration.model_copy(
                update={"enabled": True, "thresholds": [0.3, 0.5, 0.7], "min_component_ml": [0.0, 0.05]}
            ),
        }
    )
    summary = train(calibrated, quiet=True)
    chosen = summary["calibration"]
    assert len(chosen["table"]) == 6
    (plain,) = [t for t in chosen["table"] if (t["threshold"], t["min_component_ml"]) == (0.5, 0.0)]
    assert plain["mean_dice"] == round(summary["best_val_dice"], 4)
    assert round(chosen["val_dice"], 4) == max(t["mean_dice"] for t in chosen["table"])  # the best candidate
    card = ModelCard.load(tmp_path / "models" / "tiny-wt" / "1")
    assert card.threshold == chosen["threshold"]
    assert card.postprocessing.min_component_ml == chosen["min_component_ml"]
    assert card.postprocessing.calibrated_on == ["case_2"]
    assert card.validation_dice["case_2"] == round(chosen["val_dice_per_case"]["case_2"]["WT"], 4)
    assert set(chosen["volumes_ml"]["case_2"]) == {"pred_ml", "true_ml"}


def test_a_warm_start_from_another_network_is_refused(tiny_run):
    from training.loop import load_published_weights
    from training.unet import build_unet

    config, _ = tiny_run
    same = build_unet(2, 1, 1, depth=2, base_filters=4)
    assert load_published_weights(same, config.models_dir / "tiny-wt" / "1") == len(same.variables)
    with pytest.raises(ValueError, match="not the same network"):
        load_published_weights(build_unet(2, 1, 1, depth=2, base_filters=8), config.models_dir / "tiny-wt" / "1")
