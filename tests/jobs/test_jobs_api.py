"""POST /jobs does asynchronously exactly what /segment does: same answer, same errors, same limits."""

from __future__ import annotations

import io
import time

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from app.api.schemas import JobRecord
from tests.dicom_fixtures import mprage_files, zip_files


@pytest.fixture(scope="module")
def mprage_zip() -> bytes:
    """60 contiguous slices of the real T1 series: a real DICOM input, cheap enough to segment often."""
    return zip_files(mprage_files()[60:120], prefix="t1_MPRAGE/")


def wait(client, location: str, timeout: float = 240.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        record = client.get(location).json()
        if record["state"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return record
        time.sleep(0.1)


def _image(content: bytes, tmp_path) -> np.ndarray:
    path = tmp_path / f"m{time.monotonic_ns()}.nii.gz"
    path.write_bytes(content)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_a_job_answers_what_segment_answers(server, mprage_zip, tmp_path):
    with server.client() as client:
        r = client.post("/jobs", params={"model": "bright-t1"}, files={"t1": ("s.zip", mprage_zip)})
        assert r.status_code == 202, r.text
        location = r.headers["location"]
        assert location == f"/jobs/{r.json()['id']}" and r.json()["state"] in ("queued", "running")
        job = wait(client, location)
        assert job["state"] == "succeeded", job
        assert job["formats"] == ["dicom-seg", "json", "nifti", "png"]
        JobRecord.model_validate(job)  # the documented contract (app/api/schemas.py)
        names = [s["name"] for s in job["stages"]]
        assert names == ["read", "queue", "segment", "write"], names
        assert job["timings_ms"]["segment"] > 0 and job["timings_ms"]["running"] >= job["timings_ms"]["segment"]
        nifti = client.get(f"{location}/result")  # nifti by default, as /segment
        summary = client.get(f"{location}/result", params={"format": "json"}).json()
        png = client.get(f"{location}/result", params={"format": "png"})
        seg = client.get(f"{location}/result", params={"format": "dicom-seg"})
        sync = client.post("/segment", params={"model": "bright-t1"}, files={"t1": ("s.zip", mprage_zip)})
        sync_json = client.post(
            "/segment", params={"model": "bright-t1", "format": "json"}, files={"t1": ("s.zip", mprage_zip)}
        ).json()
    assert nifti.status_code == 200 and nifti.headers["x-model-name"] == "bright-t1"
    np.testing.assert_array_equal(_image(nifti.content, tmp_path), _image(sync.content, tmp_path))
    assert summary["labels"] == sync_json["labels"] and summary["geometry"] == sync_json["geometry"]
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert pydicom.dcmread(io.BytesIO(seg.content)).Modality == "SEG"


def test_a_nifti_job_has_no_dicom_seg_and_says_so(server, tmp_path):
    from tests.helpers import synthetic_head

    image, _ = synthetic_head()
    path = tmp_path / "t1.nii.gz"
    sitk.WriteImage(image, str(path))
    with server.client() as client:
        r = client.post("/jobs", params={"model": "bright-t1"}, files={"t1": ("t1.nii.gz", path.read_bytes())})
        job = wait(client, r.headers["location"])
        assert job["state"] == "succeeded" and "dicom-seg" not in job["formats"]
        missing = client.get(f"/jobs/{job['id']}/result", params={"format": "dicom-seg"})
        unknown = client.get(f"/jobs/{job['id']}/result", params={"format": "tiff"})
    assert missing.status_code == 404 and missing.json()["error"] == "result_not_available"
    assert unknown.status_code == 400 and unknown.json()["error"] == "unknown_format"


def test_a_bad_upload_fails_the_job_with_the_error_segment_gives(server):
    junk = {"t1": ("notes.txt", b"this is not an image" * 10)}
    with server.client() as client:
        sync = client.post("/segment", params={"model": "bright-t1"}, files=junk)
        r = client.post("/jobs", params={"model": "bright-t1"}, files=junk)
        job = wait(client, r.headers["location"])
        result = client.get(f"/jobs/{job['id']}/result")
    assert sync.status_code == 415
    assert job["state"] == "failed" and job["error"] == sync.json()
    assert result.status_code == 409 and result.json()["error"] == "job_failed"


def test_what_segment_refuses_before_reading_is_refused_at_submission(server):
    with server.client() as client:
        unknown_model = client.post("/jobs", params={"model": "nope"}, files={"t1": ("a.nii", b"x")})
        no_files = client.post("/jobs", params={"model": "bright-t1"}, data={"x": "1"})
        too_large = client.post("/jobs", params={"model": "bright-t1"}, files={"t1": ("big.nii", b"\0" * (17 * 2**20))})
        unknown_job = client.get("/jobs/0123456789abcdef0123456789abcdef")
    assert unknown_model.status_code == 404 and unknown_model.json()["error"] == "unknown_model"
    assert no_files.status_code in (415, 422)
    assert too_large.status_code == 413 and too_large.json()["error"] == "upload_too_large"
    assert unknown_job.status_code == 404 and unknown_job.json()["error"] == "job_not_found"


def test_delete_cancels_a_waiting_job_and_then_removes_a_finished_one(server, mprage_zip):
    with server.client() as client:
        first = client.post("/jobs", params={"model": "bright-t1"}, files={"t1": ("s.zip", mprage_zip)})
        second = client.post("/jobs", params={"model": "bright-t1"}, files={"t1": ("s.zip", mprage_zip)})
        cancelled = client.delete(second.headers["location"])
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["state"] == "cancelled" and cancelled.json()["error"]["error"] == "cancelled"
        assert client.get(f"{second.headers['location']}/result").status_code == 409
        done = wait(client, first.headers["location"])
        assert done["state"] == "succeeded"
        assert client.delete(first.headers["location"]).status_code == 204
        assert client.get(first.headers["location"]).status_code == 404
        listed = client.get("/jobs").json()["jobs"]
    assert second.json()["id"] in {j["id"] for j in listed}
    assert first.json()["id"] not in {j["id"] for j in listed}
