"""One source for the training grid: the config's types refuse what a card would refuse, and training
refuses shards converted for another grid (before any epoch)."""

import json
from pathlib import Path

import pytest

from training.config import TrainConfig
from training.convert import main as convert_main
from training.data import check_shards


def _config(shards, **fields) -> TrainConfig:
    return TrainConfig.model_validate(
        {"name": "grid", "modalities": ["flair"], "data": {"shards": shards, "train": ["a"], "validation": ["b"]}}
        | fields
    )


def test_a_config_is_refused_at_load_for_what_its_card_would_refuse(tmp_path):
    with pytest.raises(ValueError, match="orientation must be a 3-letter code"):
        _config(tmp_path, orientation="LPX")
    with pytest.raises(ValueError, match="strictly positive"):
        _config(tmp_path, spacing_mm=[1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="labels must map values 1..255"):
        _config(tmp_path, labels={0: "background"})
    assert _config(tmp_path, orientation="ras").orientation == "RAS"


def test_training_refuses_shards_made_for_another_grid(tmp_path):
    config = _config(tmp_path)
    check_shards(config)  # no index.json: shards made by hand are taken as they are
    index = {**config.shard_spec(), "cases": []}
    (tmp_path / "index.json").write_text(json.dumps(index))
    check_shards(config)  # the same spec
    (tmp_path / "index.json").write_text(json.dumps({**index, "spacing_mm": [2.0, 2.0, 2.0]}))
    with pytest.raises(ValueError, match="another grid.*spacing_mm"):
        check_shards(config)


def test_convert_takes_the_grid_from_the_config_or_the_flags_not_both(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text('name = "g"\nmodalities = ["flair"]\n[data]\nshards = "s"\ntrain = ["a"]\nvalidation = ["b"]\n')
    with pytest.raises(SystemExit):
        convert_main([str(tmp_path), "--config", str(config), "--spacing", "2,2,2"])
    assert "come from --config" in capsys.readouterr().err


def test_command_line_overrides_are_validated_like_the_file(tmp_path, capsys):
    from training.train import main as train_main

    bundled = Path(__file__).resolve().parents[2] / "training" / "configs" / "brats-wt-flair.toml"
    plain = TrainConfig.load(bundled)
    flipped = TrainConfig.load(bundled, ["augmentation.enabled=false", 'augmentation.thick_slice_profile="gaussian"',
                                         "optim.learning_rate = 1e-3", 'data.validation=["case_6"]'])
    assert plain.augmentation.enabled and not flipped.augmentation.enabled
    assert flipped.augmentation.thick_slice_profile == "gaussian"
    assert (flipped.optim.learning_rate, flipped.data.validation) == (1e-3, ["case_6"])
    assert flipped.data.train == plain.data.train  # nothing else moves
    with pytest.raises(ValueError, match="extra_forbidden|Extra inputs"):
        TrainConfig.load(bundled, ["augmentation.p_thik_slices=0.5"])  # a misspelt key, refused as in the file
    with pytest.raises(ValueError, match="1 <= low <= high"):
        TrainConfig.load(bundled, ["augmentation.thick_slice_mm=[0.0, 6.0]"])  # would divide by zero
    with pytest.raises(ValueError, match="not a TOML value"):
        TrainConfig.load(bundled, ["augmentation.thick_slice_profile=gaussian"])  # strings are quoted
    with pytest.raises(ValueError, match="expected dotted.key=value"):
        TrainConfig.load(bundled, ["augmentation.enabled"])
    with pytest.raises(ValueError, match="is a value, not a table"):
        TrainConfig.load(bundled, ["name.x=1"])
    with pytest.raises(SystemExit) as exit_:  # the command says so before TensorFlow starts
        train_main(["--config", str(bundled), "--set", "optim.epochs=0"])
    assert exit_.value.code == 2 and "optim.epochs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # the shorthand goes through the same validation
        train_main(["--config", str(bundled), "--epochs", "0"])
    assert exit_.value.code == 2 and "optim.epochs" in capsys.readouterr().err
