"""The thread tuner: a real (tiny) grid in fresh subprocesses writes a file the service's Settings read."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from app.config import Settings
from tests.conftest import MODELS_DIR, REPO


def test_tuner_measures_each_setting_in_a_fresh_process_and_settings_read_the_best(tmp_path, monkeypatch):
    out = tmp_path / "tuning.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.tune",
            "--models-dir",
            str(MODELS_DIR),
            "--intra",
            "1,2",
            "--inter",
            "1",
            "--calls",
            "2",
            "--reps",
            "1",
            "--skip-openmp-check",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr + run.stdout
    report = json.loads(out.read_text())
    trials = report["trials"]
    assert [(t["intra"], t["inter"]) for t in trials] == [(1, 1), (2, 1)]
    for t in trials:
        # Each trial ran in its own interpreter, so TensorFlow's pools are exactly what was asked for.
        assert t["tf_pools_in_effect"] == [t["intra"], t["inter"]]
        assert t["ms_per_call_median"] > 0 and t["model"].startswith("brats-wt-flair/")
    best = report["best"]
    fastest = min(trials, key=lambda t: t["ms_per_call_median"])
    assert (best["intra_op_threads"], best["inter_op_threads"]) == (fastest["intra"], fastest["inter"])
    assert f"SEG_INTRA_OP_THREADS={best['intra_op_threads']}" in run.stdout
    assert f"SEG_TUNING_FILE={out.resolve()}" in run.stdout

    for name in ("SEG_INTRA_OP_THREADS", "SEG_INTER_OP_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SEG_TUNING_FILE", str(out))
    settings = Settings()
    assert (settings.intra_op_threads, settings.inter_op_threads) == (best["intra_op_threads"], 1)
    monkeypatch.setenv("SEG_INTRA_OP_THREADS", "7")  # an explicit setting wins over the file
    assert Settings().intra_op_threads == 7


def test_a_named_tuning_file_that_is_missing_or_wrong_stops_the_service(tmp_path):
    with pytest.raises(ValidationError, match="not a tuning file"):
        Settings(tuning_file=tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"best": {"intra_op_threads": 0}}))
    with pytest.raises(ValidationError, match="positive integer"):
        Settings(tuning_file=bad)
