"""Real data-parallel training: two Horovod processes (Gloo, CPU) on a few real slices."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, need, shared_case
from training.config import TrainConfig
from training.convert import convert_case
from training.datasets import find_case
from training.distributed import plan_world

CONFIG = """
name = "hvd-tiny"
modalities = ["flair"]
[data]
shards = "{shards}"
train = ["case_1", "case_2"]
validation = ["case_6"]
patch = 64
[network]
depth = 2
base_filters = 4
[optim]
epochs = 2
steps_per_epoch = 6
batch_size = 4
learning_rate = 3e-3
"""


def _config(**optim) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "name": "plan",
            "modalities": ["flair"],
            "data": {"shards": "x", "train": ["a", "b", "c"], "validation": ["v"]},
            "optim": {"learning_rate": 1e-3, **optim},
            "threads": {"intra_op": 2, "inter_op": 1},
        }
    )


def test_one_process_plan_is_the_single_node_plan():
    config = _config()
    plan = plan_world(config, rank=0, size=1, local_size=1, cores=2)
    assert plan.train_cases == ["a", "b", "c"] and plan.seed == config.optim.seed
    assert plan.learning_rate == config.optim.learning_rate and plan.warmup_epochs == config.optim.warmup_epochs
    assert (plan.intra_op, plan.inter_op) == (2, 1)


def test_ranks_get_disjoint_shards_scaled_learning_rate_warmup_and_their_share_of_cores():
    config = _config()
    plans = [plan_world(config, rank=r, size=2, local_size=2, cores=8) for r in (0, 1)]
    assert plans[0].train_cases == ["a", "c"] and plans[1].train_cases == ["b"]
    assert {p.seed for p in plans} == {0, 1}  # distinct random streams
    assert all(p.learning_rate == pytest.approx(2e-3) and p.warmup_epochs >= 1 for p in plans)
    assert all(p.intra_op == 2 and p.inter_op == 1 for p in plans)  # min(config 2, 8 cores / 2 ranks)
    wide = plan_world(_config(), rank=1, size=4, local_size=2, cores=32)
    assert wide.intra_op == 2  # the config's intra_op stays an upper bound
    with pytest.raises(ValueError, match="bad world"):
        plan_world(config, rank=2, size=2)


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory) -> Path:
    """A few real slices of three BraTS 2018 cases (two to train, one to validate)."""
    shards = tmp_path_factory.mktemp("hvd-shards")
    for name in ("case_1", "case_2", "case_6"):
        case = find_case(shared_case("brats2018_deepvoxnet2", name), ["flair"])
        shard = convert_case(case, ["flair"], "LPS", [1.0, 1.0, 1.0], "whole_tumour")
        keep = slice(60, 90)  # a few real slices through the tumours keep this fast
        np.savez(shards / f"{name}.npz", **{k: (v[keep] if v.ndim >= 3 else v) for k, v in shard.items()})
    return shards


def _run(command: list[str], cwd: Path) -> str:
    bindir = Path(sys.executable).parent
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PATH": f"{bindir}:{os.environ['PATH']}"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output


def _need_horovod() -> None:
    """Horovod's TensorFlow ops load (``make test`` builds them): otherwise skip, or fail under CI."""
    try:
        import horovod.tensorflow  # noqa: F401

        built = True
    except ImportError:
        built = False
    need(built, "Horovod is not built: scripts/install_horovod.sh (make test)")


def test_two_horovod_processes_train_identical_replicas_and_rank0_alone_publishes(tmp_path, tiny_shards):
    _need_horovod()
    config = tmp_path / "hvd.toml"
    config.write_text(CONFIG.format(shards=tiny_shards))
    horovodrun = Path(sys.executable).parent / "horovodrun"
    output = _run(
        [
            str(horovodrun), "-np", "2", "-H", "localhost:2", "--gloo",
            sys.executable, "-m", "training.train", "--config", str(config), "--horovod", "--quiet",
            "--models-dir", str(tmp_path / "models"), "--run-dir", str(tmp_path / "runs"),
        ],  # fmt: skip
        REPO,
    )
    digests = dict(re.findall(r"horovod rank (\d)/2 weights sha256 ([0-9a-f]{64})", output))
    assert set(digests) == {"0", "1"}, output[-4000:]
    assert digests["0"] == digests["1"]  # averaged gradients + synced statistics: identical replicas
    shards_seen = dict(re.findall(r"horovod rank (\d)/2 trained on (\S+)", output))
    assert shards_seen == {"0": "case_1", "1": "case_2"}  # each rank its own shard of the data
    history = json.loads((tmp_path / "runs" / "hvd-tiny" / "history.json").read_text())
    assert len(history) == 2 and history[-1]["loss"] < history[0]["first_loss"]  # the averaged loss
    summary = json.loads((tmp_path / "runs" / "hvd-tiny" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["rank"] == 0
    versions = sorted(p.name for p in (tmp_path / "models" / "hvd-tiny").iterdir())
    assert versions == ["1"]  # only rank 0 exported, once, with no temporary directory left


def test_one_horovod_process_is_the_single_node_run(tmp_path, tiny_shards):
    """Same config, same seed: ``horovodrun -np 1 ... --horovod`` and a plain run give the same losses."""
    _need_horovod()
    config = tmp_path / "one.toml"
    config.write_text(CONFIG.format(shards=tiny_shards).replace("epochs = 2", "epochs = 1"))
    train = [sys.executable, "-m", "training.train", "--config", str(config), "--no-export", "--quiet"]
    _run([*train, "--run-dir", str(tmp_path / "plain")], REPO)
    horovodrun = [str(Path(sys.executable).parent / "horovodrun"), "-np", "1", "-H", "localhost:1", "--gloo"]
    output = _run([*horovodrun, *train, "--horovod", "--run-dir", str(tmp_path / "hvd")], REPO)
    assert "horovod rank 0/1" in output  # it really ran under Horovod
    plain, hvd = (json.loads((tmp_path / d / "hvd-tiny" / "history.json").read_text())[0] for d in ("plain", "hvd"))
    for key in ("first_loss", "loss", "val_dice"):
        assert hvd[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-5), key
