"""``python -m app.predict``: the folder command gives exactly the server's answers for the same files,
finds cases the way training does, and goes on past a bad case but says so in its exit code."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from app.cli.predict import discover
from tests.conftest import BUNDLED_MODEL, MODELS_DIR, REPO, Server, shared_case

CASES = ("case_5", "case_6")  # two real cases keep the run short; discovery of all seven is checked below


def test_discover_finds_every_case_of_a_real_archive_by_the_layout_table():
    root = shared_case("brats2018_deepvoxnet2")
    cases = discover([root], ["flair"])
    assert [c.case_id for c in cases] == [f"case_{i}" for i in range(7)]
    assert all(c.problem is None and c.files == [("flair", root / c.case_id / "FLAIR.nii.gz")] for c in cases)
    two = discover([root / "case_0"], ["flair", "t1"])  # a case folder itself, two modalities
    assert two[0].files == [("flair", root / "case_0" / "FLAIR.nii.gz"), ("t1", root / "case_0" / "T1.nii.gz")]
    missing = discover([root], ["flair", "t1c"])  # this archive has no T1c: every case says so
    assert all(c.problem and "t1c" in c.problem for c in missing)


def test_discover_takes_a_dicom_series_folder_as_one_case():
    series = shared_case("dicom", "siemens_t1_mprage_sagittal", "t1_MPRAGEcr_noGRAPPA_19")
    (case,) = discover([series.parent], ["t1"])
    assert case.case_id == "siemens_t1_mprage_sagittal" and len(case.files) == 176
    assert {field for field, _ in case.files} == {"t1"}


@pytest.fixture(scope="module")
def predicted(
    tmp_path_factory: pytest.TempPathFactory, server: Server
) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """The command over a folder holding two real cases (linked in place, never copied), a case whose
    FLAIR is cut short, and a folder with nothing to segment; on the backend the server's ``auto`` chose
    (the choice is timed, so two processes may pick differently on a busy machine)."""
    with server.client() as client:
        described = client.get(f"/models/{BUNDLED_MODEL}").json()
    (served,) = [v for v in described["versions"] if v["state"] == "serving"]
    root = shared_case("brats2018_deepvoxnet2")
    tmp = tmp_path_factory.mktemp("predict")
    inputs = tmp / "cases"
    inputs.mkdir()
    for case in CASES:
        (inputs / case).symlink_to(root / case, target_is_directory=True)
    (inputs / "broken").mkdir()
    (inputs / "broken" / "FLAIR.nii.gz").write_bytes((root / "case_6" / "FLAIR.nii.gz").read_bytes()[:150_000])
    (inputs / "notes").mkdir()
    (inputs / "notes" / "readme.txt").write_text("not a case")
    out = tmp / "out"
    env = {
        **os.environ,
        "SEG_MODELS_DIR": str(MODELS_DIR),
        "SEG_TMP_DIR": str(tmp / "staging"),
        "SEG_INTRA_OP_THREADS": "2",  # as the test server, so both run the same arithmetic
        "SEG_INTER_OP_THREADS": "1",
        "SEG_BACKEND": served["backend"],
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    (tmp / "staging").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "app.predict", "-i", str(inputs), "-o", str(out), "-m", BUNDLED_MODEL],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return done, out, tmp / "staging"


def _post(server: Server, flair: Path, fmt: str):
    with server.client() as client, flair.open("rb") as fh:
        return client.post("/segment", params={"model": BUNDLED_MODEL, "format": fmt}, files={"flair": fh})


def test_predict_writes_the_masks_and_volumes_the_server_answers(predicted, server: Server, tmp_path: Path):
    done, out, staging = predicted
    rows = list(csv.DictReader((out / "volumes.csv").open()))
    for case in CASES:
        flair = shared_case("brats2018_deepvoxnet2", case, "FLAIR.nii.gz")
        answers = {fmt: _post(server, flair, fmt) for fmt in ("nifti", "json")}
        assert all(a.status_code == 200 for a in answers.values()), {f: a.text[:200] for f, a in answers.items()}
        (tmp_path / f"{case}.nii.gz").write_bytes(answers["nifti"].content)
        served, ours = (sitk.ReadImage(str(p)) for p in (tmp_path / f"{case}.nii.gz", out / f"{case}.nii.gz"))
        assert np.array_equal(sitk.GetArrayViewFromImage(ours), sitk.GetArrayViewFromImage(served)), case
        for attribute in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
            assert getattr(ours, attribute)() == getattr(served, attribute)(), (case, attribute)
        served_json, our_json = answers["json"].json(), json.loads((out / f"{case}.json").read_text())
        assert our_json["labels"] == served_json["labels"] and our_json["model"] == served_json["model"]
        (row,) = [r for r in rows if r["case"] == case and r["kind"] == "label"]
        assert int(row["voxels"]) == served_json["labels"][0]["voxels"] > 1000
        assert float(row["volume_ml"]) == served_json["labels"][0]["volume_ml"]
    assert {r["case"] for r in rows} == set(CASES)  # failed cases have no volume rows
    assert not list(staging.iterdir()), "the command left staging files behind"


def test_predict_goes_on_past_bad_cases_and_fails_at_the_end(predicted, server: Server):
    done, out, _ = predicted
    assert done.returncode == 1, done.stderr[-2000:]
    for case in CASES:
        assert (out / f"{case}.nii.gz").is_file() and (out / f"{case}.json").is_file()
    broken = json.loads((out / "broken.error.json").read_text())
    answer = _post(server, out.parent / "cases" / "broken" / "FLAIR.nii.gz", "json")
    assert answer.status_code == 400 and broken == answer.json()  # the API's own error, word for word
    assert json.loads((out / "notes.error.json").read_text())["error"] == "no_case"
    assert "2 of 4 cases segmented" in done.stderr
    assert f"failed broken: {broken['detail']}" in done.stderr
    assert "segmenting: 100%" in done.stderr  # the tqdm bar went over every case
