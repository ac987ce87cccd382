"""DICOMweb to and from a real Orthanc: the study is pulled (QIDO/WADO-RS), segmented by a job, and the
DICOM SEG pushed back (STOW-RS); read back from Orthanc it equals what /segment answers for the same
series, and dciodvfy finds no error in it."""

from __future__ import annotations

import io

import pydicom
import pytest

from tests.dicom_fixtures import mprage_files
from tests.pacs.conftest import dciodvfy_errors, wait_job
from tests.pacs.seg_compare import assert_same_segmentation


@pytest.fixture(scope="module")
def reference_seg(pacs_server, mprage_zip_bytes) -> pydicom.Dataset:
    """What the synchronous /segment answers for the same series uploaded as a zip."""
    with pacs_server.client() as client:
        r = client.post(
            "/segment", params={"model": "bright-t1", "format": "dicom-seg"}, files={"t1": ("s.zip", mprage_zip_bytes)}
        )
    assert r.status_code == 200, r.text
    return pydicom.dcmread(io.BytesIO(r.content))


def test_a_study_in_the_pacs_is_segmented_and_the_seg_stored_back(
    pacs_server, orthanc, mprage_in_orthanc, reference_seg, tmp_path
):
    study = mprage_in_orthanc
    with pacs_server.client() as client:
        r = client.post(f"/dicomweb/studies/{study.study_uid}/segment")
        assert r.status_code == 202, r.text
        location = r.headers["location"]
        assert location == f"/jobs/{r.json()['id']}"
        job = wait_job(client, location)
        assert job["state"] == "succeeded", job
        assert job["kind"] == "dicomweb" and job["model"] == {"name": "bright-t1", "version": 1}
        stages = [s["name"] for s in job["stages"]]
        assert stages == ["query", "retrieve", "read", "queue", "segment", "write", "store"]
        assert all(s["state"] == "done" and s["ms"] >= 0 for s in job["stages"])
        chosen = job["outcome"]["selection"]["chosen"]["t1"]
        assert chosen["series_uid"] == study.series_uid and chosen["instances"] == 176
        stored = job["outcome"]["stored"]
        job_seg = client.get(f"{location}/result", params={"format": "dicom-seg"})
        assert job_seg.status_code == 200 and job_seg.headers["content-type"] == "application/dicom"
    # Read back from Orthanc over DICOMweb, as a viewer would.
    pacs = orthanc.dicomweb_client()
    series = pacs.search_for_series(study_instance_uid=study.study_uid, search_filters={"Modality": "SEG"})
    assert stored["series_uid"] in {s["0020000E"]["Value"][0] for s in series}
    seg = pacs.retrieve_instance(study.study_uid, stored["series_uid"], stored["sop_instance_uid"])
    assert seg.SOPInstanceUID == pydicom.dcmread(io.BytesIO(job_seg.content)).SOPInstanceUID
    assert_same_segmentation(seg, reference_seg, study.sop_uids)
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []


def test_naming_a_series_that_is_not_in_the_study_fails_the_job_clearly(pacs_server, mprage_in_orthanc):
    with pacs_server.client() as client:
        r = client.post(f"/dicomweb/studies/{mprage_in_orthanc.study_uid}/segment", params={"series": "1.2.3.4.5"})
        assert r.status_code == 202
        job = wait_job(client, r.headers["location"])
    assert job["state"] == "failed"
    assert job["error"]["error"] == "series_not_found" and "1.2.3.4.5" in job["error"]["detail"]


def test_a_study_the_pacs_does_not_have_fails_the_job_with_study_not_found(pacs_server, orthanc):
    with pacs_server.client() as client:
        r = client.post("/dicomweb/studies/1.2.826.0.1.3680043.99999.1/segment")
        job = wait_job(client, r.headers["location"])
    assert job["state"] == "failed" and job["error"]["error"] == "study_not_found"
    assert orthanc.dicomweb in job["error"]["detail"]


def test_a_malformed_study_uid_is_refused_at_once(pacs_server):
    with pacs_server.client() as client:
        r = client.post("/dicomweb/studies/not-a-uid/segment")
    assert r.status_code == 422 and r.json()["error"] == "invalid_uid"


def test_logs_carry_no_patient_values(pacs_server):
    header = pydicom.dcmread(mprage_files()[0], stop_before_pixels=True)
    values = [v for v in (str(header.PatientName), str(header.PatientID), str(header.StudyInstanceUID)) if len(v) >= 4]
    assert len(values) == 3
    logged = pacs_server.log()
    assert "job_succeeded" in logged
    assert "/dicomweb/studies/uid:" in logged  # the access line names the study by its digest
    for value in values:
        assert value not in logged


def test_the_pacs_client_authenticates_and_names_a_refusal(orthanc, mprage_in_orthanc, tmp_path):
    """The client the jobs use, in process, against the real Orthanc: basic auth right and wrong."""
    from app.pacs.dicomweb import PacsClient, PacsConfig, PacsError
    from tests.pacs.conftest import PASSWORD, USER

    good = PacsClient(PacsConfig(url=orthanc.dicomweb, auth="basic", username=USER, password=PASSWORD))
    # The MR series (a SEG stored by another test may sit beside it in the study)
    (series,) = [s for s in good.list_series(mprage_in_orthanc.study_uid) if s.modality == "MR"]
    assert series.uid == mprage_in_orthanc.series_uid and series.instances == 176
    assert series.image_type[0] == "ORIGINAL" and series.description == "t1_MPRAGEcr_noGRAPPA"
    with pytest.raises(PacsError) as err:
        good.retrieve_series(mprage_in_orthanc.study_uid, series.uid, tmp_path / "small", max_bytes=2**20)
    assert err.value.code == "study_too_large"
    bad = PacsClient(PacsConfig(url=orthanc.dicomweb, auth="basic", username=USER, password="wrong", retries=0))
    with pytest.raises(PacsError) as err:
        bad.list_series(mprage_in_orthanc.study_uid)
    assert err.value.code == "pacs_unauthorized" and "SEG_PACS_AUTH" in err.value.detail
    assert "wrong" not in err.value.detail
