"""preprocess=auto|none over HTTP with the bundled model: the guard, the report, unchanged BraTS answers."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from segcore.metrics import dice
from tests.conftest import shared_case
from tests.dicom_fixtures import mprage_files, zip_files
from tests.jobs.test_jobs_api import wait


@pytest.fixture(scope="module")
def mprage_zip() -> bytes:
    return zip_files(mprage_files(), prefix="t1_MPRAGE/")


def _mask(content: bytes, tmp_path, name: str) -> np.ndarray:
    path = tmp_path / name
    path.write_bytes(content)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_a_head_with_its_skull_under_preprocess_none_is_refused_saying_what_to_send(server, mprage_zip):
    with server.client() as client:
        r = client.post("/segment", params={"preprocess": "none"}, files={"flair": ("head.zip", mprage_zip)})
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "skull_not_stripped"
        assert "preprocess=auto" in r.json()["detail"]
        bad = client.post("/segment", params={"preprocess": "maybe"}, files={"flair": ("head.zip", mprage_zip)})
        assert bad.status_code == 400 and bad.json()["error"] == "unknown_preprocess"
    assert "Rorden" not in server.log()


def test_a_job_takes_the_preprocess_parameter_of_segment(server, mprage_zip):
    """POST /jobs accepts exactly what /segment accepts: preprocess=none on a head with its skull fails
    the job with the sentence /segment gives; an unknown mode is refused at submission."""
    with server.client() as client:
        sync = client.post("/segment", params={"preprocess": "none"}, files={"flair": ("head.zip", mprage_zip)})
        r = client.post("/jobs", params={"preprocess": "none"}, files={"flair": ("head.zip", mprage_zip)})
        assert r.status_code == 202, r.text
        job = wait(client, r.headers["location"])
        bad = client.post("/jobs", params={"preprocess": "maybe"}, files={"flair": ("head.zip", mprage_zip)})
    assert sync.status_code == 422
    assert job["state"] == "failed" and job["error"] == sync.json()
    assert bad.status_code == 400 and bad.json()["error"] == "unknown_preprocess"


def test_a_head_with_its_skull_under_auto_is_stripped_and_says_so(server, mprage_zip):
    with server.client(timeout=600) as client:
        r = client.post("/segment", params={"format": "json"}, files={"flair": ("head.zip", mprage_zip)})
        assert r.status_code == 200, r.text
        body = r.json()
        steps = [s["step"] for s in body["preprocessing"]["steps"]]
        assert "skull_strip" in steps and body["preprocessing"]["skull_stripped_input"] == {"flair": False}
        assert 1000 <= body["preprocessing"]["brain_volume_ml"] <= 1800
        codes = r.headers["X-Input-Warnings"].split(",")
        assert "skull_stripped" in codes and codes == [w["code"] for w in body["warnings"]]
        # the MPRAGE is a T1 sent as "flair": its series description says so, and the answer must too
        assert "series_named_for_other_modality" in codes
        # the tumour, if any, is inside the brain, not the scalp: far below the brain volume
        assert body["tumour_volume_ml"] < 0.5 * body["preprocessing"]["brain_volume_ml"]
        metrics = client.get("/metrics").text
        assert 'seg_preprocess_step_seconds_count{step="skull_strip"}' in metrics
        assert 'seg_input_warnings_total{code="skull_stripped"}' in metrics


@pytest.mark.parametrize(
    "parts",
    [("brats2015_deepmedic", "brats_2013_pat0004_1", "Flair_subtrMeanDivStd.nii.gz"),
     ("brats2018_deepvoxnet2", "case_6", "FLAIR.nii.gz")],
)
def test_a_stripped_brats_case_gets_the_same_mask_under_auto_as_under_none(server, tmp_path, parts):
    content = shared_case(*parts).read_bytes()
    masks = {}
    with server.client() as client:
        for mode in ("auto", "none"):
            r = client.post("/segment", params={"preprocess": mode}, files={"flair": ("flair.nii.gz", content)})
            assert r.status_code == 200, r.text
            assert r.headers["X-Input-Warnings"] == "none"
            masks[mode] = _mask(r.content, tmp_path, f"{mode}.nii.gz")
    assert masks["auto"].any()
    assert dice(masks["auto"] > 0, masks["none"] > 0) >= 0.99
