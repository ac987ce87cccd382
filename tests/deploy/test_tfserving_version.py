"""The TF Serving release in docker-compose.yml can load and run every SavedModel the image ships.

TF Serving ``X.Y.Z`` is built on TensorFlow ``X.Y.Z``; our models are exported by the TensorFlow in
pyproject.toml (2.21), which may use ops or op attributes an older release does not know. The check runs
``deploy/tfserving/check_savedmodels.py`` under ``tensorflow-cpu==X.Y.Z`` (installed into .venv-tfserving
by ``scripts/install_tfserving_check.sh``, which ``make test`` runs): it lists every op and attribute of
each model against that release's registry, then loads it with the graph-mode loader TF Serving uses and
runs its signature once. Changing the compose file's ``TFSERVING_TAG`` default reinstalls and rechecks.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MODELS_DIR, REPO, need

VENV_PYTHON = REPO / ".venv-tfserving" / "bin" / "python"
CHECK = REPO / "deploy" / "tfserving" / "check_savedmodels.py"


def _compose_tag() -> str:
    (tag,) = re.findall(r"tensorflow/serving:\$\{TFSERVING_TAG:-([0-9.]+)\}", (REPO / "docker-compose.yml").read_text())
    return tag


def _shipped_versions() -> list[str]:
    return sorted(str(p) for p in MODELS_DIR.glob("*/[0-9]*") if p.is_dir())


@pytest.mark.slow
def test_every_bundled_model_loads_and_runs_in_the_tf_serving_release_of_the_compose_file():
    tag = _compose_tag()
    stamp = REPO / ".venv-tfserving" / f".installed-tensorflow-cpu-{tag}"
    need(
        VENV_PYTHON.is_file() and stamp.is_file(),
        f"TensorFlow {tag} (TF Serving {tag}'s) is not installed: run scripts/install_tfserving_check.sh",
    )
    versions = _shipped_versions()
    # every version of every bundled model: at least one per model folder
    assert {Path(v).parent.name for v in versions} == {p.name for p in MODELS_DIR.iterdir() if p.is_dir()}
    result = subprocess.run(
        [str(VENV_PYTHON), str(CHECK), *versions],
        capture_output=True,
        text=True,
        timeout=600,
        env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"},
    )
    report = json.loads(result.stdout)
    assert report["tensorflow"] == tag
    failed = [m for m in report["models"] if not m["ok"]]
    assert result.returncode == 0 and not failed, json.dumps(failed, indent=2) + result.stderr[-2000:]
    assert all(m["ops"] > 10 for m in report["models"])


def test_the_check_refuses_a_model_with_an_op_the_release_lacks(tmp_path):
    """The check can fail: a graph naming an op no TensorFlow registers is reported, not loaded."""
    need(VENV_PYTHON.is_file(), "run scripts/install_tfserving_check.sh")
    import shutil

    from tensorflow.core.protobuf import saved_model_pb2

    version = tmp_path / "brats-wt-flair" / "1"
    shutil.copytree(MODELS_DIR / "brats-wt-flair" / "1", version)
    saved = saved_model_pb2.SavedModel.FromString((version / "saved_model.pb").read_bytes())
    node = next(n for f in saved.meta_graphs[0].graph_def.library.function for n in f.node_def if n.op == "Conv2D")
    node.op = "Conv2DFromTheFuture"
    (version / "saved_model.pb").write_bytes(saved.SerializeToString())
    result = subprocess.run(
        [str(VENV_PYTHON), str(CHECK), str(version)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    (model,) = json.loads(result.stdout)["models"]
    assert not model["ok"] and "Conv2DFromTheFuture" in json.dumps(model)
    assert sys.executable  # the project's own venv ran the mutation; the release's venv ran the check
