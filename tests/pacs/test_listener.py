"""The DICOM listener: Orthanc C-STOREs the real series to the service, which segments it once the study
is quiet and C-STOREs the SEG back to Orthanc; the SEG equals /segment's. Unknown calling AE titles are
rejected, and a study over the size limit is refused (real pynetdicom on both ends)."""

from __future__ import annotations

import io
import time

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage, Verification

from app.pacs.listener import DicomListener, ListenerConfig, ReceivedStudy
from benchmarks.common import free_port
from tests.dicom_fixtures import mprage_files
from tests.pacs.conftest import LISTENER_AET, dciodvfy_errors
from tests.pacs.seg_compare import assert_same_segmentation


def _wait_listener_job(client, timeout: float = 240.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = client.get("/jobs", params={"kind": "listener"}).json()["jobs"]
        final = [j for j in jobs if j["state"] in ("succeeded", "failed", "cancelled")]
        if final:
            return final[0]
        time.sleep(0.3)
    pytest.fail(f"no listener job finished within {timeout:.0f} s")


def test_a_study_sent_by_the_pacs_comes_back_as_a_seg(
    pacs_server, orthanc, mprage_in_orthanc, mprage_zip_bytes, tmp_path
):
    study = mprage_in_orthanc
    with orthanc.client() as pacs:  # Orthanc C-STOREs the study to our listener
        # (the study may already hold a SEG stored by the DICOMweb tests: the rule table must pass it over)
        sent = len(pacs.get(f"/studies/{study.orthanc_study_id}/instances").json())
        r = pacs.post(f"/modalities/{LISTENER_AET.lower()}/store", json={"Resources": [study.orthanc_study_id]})
        assert r.status_code == 200, r.text
    with pacs_server.client() as client:
        job = _wait_listener_job(client)
        assert job["state"] == "succeeded", job
        assert job["source"]["instances"] == sent >= 176 and job["source"]["calling_aet"] == orthanc.aet
        chosen = job["outcome"]["selection"]["chosen"]["t1"]
        assert chosen["series_uid"] == study.series_uid and chosen["instances"] == 176
        assert [s["name"] for s in job["stages"]] == ["select", "read", "queue", "segment", "write", "send"]
        stored = job["outcome"]["stored"]
        assert stored["to"] == f"C-STORE {orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
        reference = client.post(
            "/segment", params={"model": "bright-t1", "format": "dicom-seg"}, files={"t1": ("s.zip", mprage_zip_bytes)}
        )
    assert reference.status_code == 200
    seg = orthanc.dicomweb_client().retrieve_instance(study.study_uid, stored["series_uid"], stored["sop_instance_uid"])
    assert_same_segmentation(seg, pydicom.dcmread(io.BytesIO(reference.content)), study.sop_uids)
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    header = pydicom.dcmread(mprage_files()[0], stop_before_pixels=True)
    logged = pacs_server.log()
    assert "dicom_study_received" in logged
    for value in (str(header.PatientName), str(header.PatientID)):
        assert value not in logged
    # Every line names a study by a digest, uvicorn's access lines (/dicomweb/ URLs) included.
    assert "dicom_study_received study=" in logged and str(header.StudyInstanceUID) not in logged


def test_an_unknown_calling_ae_title_is_rejected(pacs_server, orthanc):
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", orthanc.listener_port, ae_title=LISTENER_AET)
    assert not assoc.is_established and assoc.is_rejected
    ae = AE(ae_title=orthanc.aet)  # the allowed one is accepted
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", orthanc.listener_port, ae_title=LISTENER_AET)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()


def test_a_study_over_the_size_limit_is_refused_and_reported(tmp_path):
    """In process: the listener with a 2 MB per-study limit, fed by a real C-STORE SCU."""
    received: list[ReceivedStudy] = []
    port = free_port()
    listener = DicomListener(
        ListenerConfig(
            ae_title="LIMITED",
            port=port,
            allowed_calling_aets=("SENDER",),
            quiet_seconds=0.5,
            max_study_bytes=2 * 2**20,
        ),
        tmp_path / "staging",
        received.append,
    )
    listener.start()
    try:
        ae = AE(ae_title="SENDER")
        ae.add_requested_context(MRImageStorage, pydicom.uid.ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="LIMITED")
        assert assoc.is_established
        statuses = [int(assoc.send_c_store(pydicom.dcmread(p)).Status) for p in mprage_files()[:30]]
        assoc.release()
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        listener.stop()
    each = mprage_files()[0].stat().st_size
    accepted = statuses.count(0)
    assert 0 < accepted <= 2 * 2**20 // each + 1 and statuses[accepted:] == [0xA700] * (30 - accepted)
    (study,) = received
    assert study.instances == accepted and study.refused and "size limit" in study.refused
    assert len(list(study.folder.iterdir())) == accepted
