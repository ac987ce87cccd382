"""No patient value in any log line or error answer, at DEBUG, on every path a DICOM upload can take:
each refusal, a 503 (queue full), a 500 (the model fails), and the answers that succeed (JSON, PNG, DICOM
SEG — whose own patient module is the point of a SEG and is not an error answer or a log line).

The series carries distinctive values for PatientName, PatientID, PatientBirthDate, AccessionNumber,
InstitutionName, ReferringPhysicianName and OtherPatientIDs (:data:`tests.dicom_fixtures.PHI`), so a
search for them cannot hit by accident."""

from __future__ import annotations

import io
import threading

import pydicom
import pytest

from tests.dicom_fixtures import PHI, dicom_refusals, phi_series, zip_of

REFUSALS = dicom_refusals("flair", "bright")


def _assert_no_phi(text: str, where: str) -> None:
    for key, value in PHI.items():
        assert value not in text, f"{key} ({value}) in {where}"
        # also the parts of a person name (Quillfeather, Zenobia...) and the birth date as 1947-03-12
        for part in value.split("^") if "^" in value else []:
            assert part not in text, f"part of {key} ({part}) in {where}"
    assert "1947-03-12" not in text, f"PatientBirthDate in {where}"


@pytest.fixture(scope="module")
def phi_zip() -> bytes:
    return zip_of([(f"{i:03d}.dcm", f) for i, f in enumerate(phi_series())])


@pytest.mark.parametrize("case", REFUSALS, ids=[c[0] for c in REFUSALS])
def test_refusals_of_a_series_with_patient_values_carry_none_of_them(gated, case):
    _, kwargs, status, code = case
    before = len(gated.server.log())
    with gated.server.client() as client:
        r = client.post("/segment", **kwargs)
    assert r.status_code == status and r.json()["error"] == code, r.text
    _assert_no_phi(r.text, "the answer")
    _assert_no_phi(gated.server.log()[before:], "the server log")


def test_answers_that_succeed_log_no_patient_value_and_json_carries_none(gated, phi_zip):
    before = len(gated.server.log())
    with gated.server.client() as client:
        answers = {
            fmt: client.post(
                "/segment", params={"model": "bright", "format": fmt}, files={"flair": ("s.zip", phi_zip)}
            )
            for fmt in ("json", "png", "dicom-seg", "nifti")
        }
    assert {fmt: r.status_code for fmt, r in answers.items()} == dict.fromkeys(answers, 200)
    _assert_no_phi(answers["json"].text, "the JSON answer")
    assert answers["json"].json()["tumour_voxels"] > 0
    seg = pydicom.dcmread(io.BytesIO(answers["dicom-seg"].content))
    assert str(seg.PatientName) == PHI["PatientName"]  # the SEG carries its patient, as it must
    logged = gated.server.log()[before:]
    assert logged.count("segmented model=bright") == 4  # the log was captured
    _assert_no_phi(logged, "the server log")


def test_a_503_and_a_500_on_a_series_with_patient_values_log_none_of_them(gated, phi_zip):
    before = len(gated.server.log())
    files = {"flair": ("s.zip", phi_zip)}
    results = {}

    def post(key: str) -> None:
        with gated.server.client() as client:
            results[key] = client.post("/segment", params={"format": "json"}, files=files)

    workers = [threading.Thread(target=post, args=(k,)) for k in ("running", "queued")]
    gated.hold()
    try:
        workers[0].start()
        gated.wait_metric("seg_inferences_in_flight", 1)
        workers[1].start()
        gated.wait_metric("seg_queue_depth", 1)
        with gated.server.client() as client:
            busy = client.post("/segment", params={"format": "json"}, files=files)
        gated.poison.touch()  # the two held requests fail inside the model once released
    finally:
        gated.release()
        for worker in workers:
            worker.join(timeout=120)
        gated.poison.unlink(missing_ok=True)
    assert busy.status_code == 503
    assert results["running"].status_code == 500 and results["queued"].status_code == 500
    for r in (busy, *results.values()):
        _assert_no_phi(r.text, f"the {r.status_code} answer")
    logged = gated.server.log()[before:]
    assert "Traceback" in logged or "internal_error" in logged  # the failure was logged
    _assert_no_phi(logged, "the server log")


def test_the_server_really_logs_at_debug(gated):
    assert " DEBUG " in gated.server.log()  # otherwise the checks above prove less than they claim
