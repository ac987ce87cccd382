"""Hostile and malformed requests (issue 11), one case per class, against a real server with a small
per-request memory budget and short HTTP timeouts.

Every case asserts the status, the JSON body, that ``/healthz`` still answers and that staging is empty;
where memory is the point, the server's peak RSS during the request (``VmHWM`` after resetting it through
``/proc/<pid>/clear_refs``) stays within a bound. The log is checked at the end for tracebacks and for
any patient-identifying value the inputs carried.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pydicom
import pytest

from tests.conftest import BUNDLED_MODEL, MODELS_DIR, Server, start_server, stop_server, wait_empty
from tests.dicom_fixtures import mprage_files, zip_of
from tests.helpers import make_threshold_model
from tests.hostile_fixtures import (
    INVALID_BIRTH_DATE,
    OTHER_PATIENT_ID,
    cd_export_zip,
    duplicated_slice,
    edited_series,
    make_failing_model,
    make_pair_model,
    multipart,
    nifti,
    nifti_bytes,
    nifti_with_header,
    perturbed_orientation,
    raw_connection,
    raw_value,
    read_response,
    remove,
    request_head,
    retag_all,
    sheared,
    sheared_sform,
)

BUDGET_MB = 768
HEADER_TIMEOUT_S = 2
BODY_TIMEOUT_S = 2
MB = 2**20
STALE = "seg-4194999-stale"  # a staging directory of a process that cannot exist (pid above pid_max)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("hostile")
    models = tmp / "models"
    models.mkdir()
    (models / BUNDLED_MODEL).symlink_to(MODELS_DIR / BUNDLED_MODEL, target_is_directory=True)
    make_threshold_model(models, name="bright-t1", modality="t1")
    make_pair_model(models)
    make_failing_model(models)
    staging = tmp / "staging"
    staging.mkdir()
    (staging / STALE / "00000-f.nii.gz").parent.mkdir()
    (staging / STALE / "00000-f.nii.gz").write_bytes(b"left by a killed request")
    live = staging / f"seg-{os.getpid()}-live"  # owned by a running process (this one): must be kept
    live.mkdir()
    srv = start_server(
        tmp,
        {
            "SEG_MODELS_DIR": str(models),
            # TensorFlow, not auto: the failing model's assertion op is TensorFlow's (OpenVINO's conversion
            # drops it, and auto would pick OpenVINO); this server tests the exception boundary.
            "SEG_BACKEND": "inprocess",
            "SEG_MAX_UPLOAD_MB": "32",
            "SEG_MEMORY_BUDGET_MB": str(BUDGET_MB),
            "SEG_MAX_CONCURRENT_INFERENCES": "1",
            "SEG_QUEUE_SIZE": "1",
            "SEG_MAX_CONCURRENT_UPLOADS": "2",
            "SEG_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT_S),
            "SEG_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT_S),
        },
    )
    srv.stale_survived = (staging / STALE).exists()  # type: ignore[attr-defined]
    srv.live_survived = live.exists()  # type: ignore[attr-defined]
    shutil.rmtree(live, ignore_errors=True)
    yield srv
    stop_server(srv)


# --- helpers ---------------------------------------------------------------------------------------


def _proc_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_rss_delta_mb(server: Server, action: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    """Run ``action`` and return its response and the server's peak RSS above its RSS before (MB).

    Writing 5 to ``/proc/<pid>/clear_refs`` resets the peak (VmHWM) to the current RSS (Linux >= 4.0)."""
    pid = server.process.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = _proc_kb(pid, "VmRSS")
    response = action()
    peak = _proc_kb(pid, "VmHWM")
    return response, (peak - before) / 1024


def assert_refused(server: Server, response: httpx.Response, status: int, code: str) -> dict:
    """The shape every refusal has, the server still alive and nothing left on disk."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code, body
    assert isinstance(body["detail"], str) and len(body["detail"]) > 10
    with server.client() as client:
        assert client.get("/healthz").status_code == 200
    assert wait_empty(server.tmp_dir) == []
    return body


def post(server: Server, files, **params) -> httpx.Response:
    with server.client() as client:
        return client.post("/segment", params=params, files=files)


def t1_series(files: list[tuple[str, bytes]], **params) -> tuple[list, dict]:
    return [("t1", (name, data)) for name, data in files], {"model": "bright-t1", **params}


def _metric(server: Server, name: str) -> float:
    with server.client() as client:
        text = client.get("/metrics").text
    return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, flags=re.M))


def _phi() -> list[str]:
    header = pydicom.dcmread(mprage_files()[0], stop_before_pixels=True)
    values = [str(header.PatientName), str(header.PatientID), str(header.PatientBirthDate)]
    return [v for v in values if len(v) >= 4] + [INVALID_BIRTH_DATE, OTHER_PATIENT_ID]


# --- staging at start ------------------------------------------------------------------------------


def test_stale_staging_of_a_dead_process_is_removed_at_start(hostile):
    assert not hostile.stale_survived, "a staging directory left by a dead process survived the start"
    assert hostile.live_survived, "a staging directory of a live process was removed"


# --- 1. memory bounded before it is spent ----------------------------------------------------------


def test_nifti_with_8mm_voxels_is_refused_before_resampling(hostile):
    """64 x 64 x 40 voxels of 8 mm: 2.7 KB compressed, 84 M voxels on the model's 1 mm grid."""
    data = nifti_bytes(nifti(spacing=(8.0, 8.0, 8.0), shape_xyz=(64, 64, 40)))
    assert len(data) < 100_000
    r, delta = peak_rss_delta_mb(hostile, lambda: post(hostile, {"flair": ("big.nii.gz", data)}))
    body = assert_refused(hostile, r, 413, "over_memory_budget")
    assert "SEG_MEMORY_BUDGET_MB" in body["detail"]
    assert delta < 150, f"peak RSS rose {delta:.0f} MB for a refused request"


def test_dicom_series_with_40mm_pixel_spacing_is_refused_before_resampling(hostile):
    files = edited_series(retag_all(PixelSpacing=[40, 40]))
    kwargs, params = t1_series(files)
    r, delta = peak_rss_delta_mb(hostile, lambda: post(hostile, kwargs, **params))
    assert_refused(hostile, r, 413, "over_memory_budget")
    assert delta < 150, f"peak RSS rose {delta:.0f} MB for a refused request"


@pytest.mark.parametrize("declared", [512, 8192])
def test_dicom_rows_columns_larger_than_the_pixel_data_are_refused(hostile, declared):
    files = edited_series(retag_all(Rows=declared, Columns=declared))
    kwargs, params = t1_series(files)
    r, delta = peak_rss_delta_mb(hostile, lambda: post(hostile, kwargs, **params))
    assert r.status_code in (400, 413, 422), r.text
    body = assert_refused(hostile, r, r.status_code, r.json()["error"])
    assert body["error"] in ("corrupt_file", "over_memory_budget", "image_too_large")
    if declared == 512:  # within every size limit: only the pixel data's length gives it away
        assert body["error"] == "corrupt_file" and "Rows" in body["detail"]
    assert delta < 150, f"peak RSS rose {delta:.0f} MB for a refused request"


def test_extreme_anisotropy_gives_a_png_preview_of_bounded_size(hostile):
    """0.05 mm x 20 mm pixels drawn at their physical aspect would be a picture 200 000 pixels tall."""
    data = nifti_bytes(nifti(spacing=(0.05, 20.0, 1.0), shape_xyz=(32, 32, 16)))
    r, delta = peak_rss_delta_mb(hostile, lambda: post(hostile, {"flair": ("thin.nii.gz", data)}, format="png"))
    if r.status_code == 200:
        from PIL import Image

        picture = Image.open(io.BytesIO(r.content))
        assert picture.width <= 1024 and picture.height <= 1024, picture.size
    else:
        assert_refused(hostile, r, r.status_code, r.json()["error"])
        assert r.status_code in (413, 422)
    assert delta < 300, f"peak RSS rose {delta:.0f} MB for a 2 KB upload"
    assert wait_empty(hostile.tmp_dir) == []


def test_peak_rss_stays_within_the_budget_over_all_hostile_headers(hostile):
    """All the memory classes above once more, back to back: the peak over all of them stays within
    SEG_MEMORY_BUDGET_MB of where the server started."""
    uploads = [
        ({"flair": ("a.nii.gz", nifti_bytes(nifti(spacing=(8.0, 8.0, 8.0), shape_xyz=(64, 64, 40))))}, {}),
        (
            {"flair": ("b.nii.gz", nifti_bytes(nifti(spacing=(0.05, 20.0, 1.0), shape_xyz=(32, 32, 16))))},
            {"format": "png"},
        ),
        t1_series(edited_series(retag_all(PixelSpacing=[40, 40]))),
        t1_series(edited_series(retag_all(Rows=8192, Columns=8192))),
        ({"flair": ("c.nii.gz", nifti_bytes(nifti(spacing=(0.2, 0.2, 0.2), shape_xyz=(200, 200, 160))))}, {}),
    ]

    def all_of_them() -> httpx.Response:
        last = None
        for files, params in uploads:
            last = post(hostile, files, **params)
            assert last.status_code < 500, last.text
        return last

    _, delta = peak_rss_delta_mb(hostile, all_of_them)
    assert delta < BUDGET_MB, f"peak RSS rose {delta:.0f} MB, budget {BUDGET_MB} MB"
    assert wait_empty(hostile.tmp_dir) == []


# --- 2. one exception boundary ---------------------------------------------------------------------


def test_an_internal_error_is_a_json_500_with_a_request_id_and_no_patient_values(hostile):
    before = len(hostile.log())
    kwargs, _ = t1_series(edited_series(lambda i, ds: None))
    r = post(hostile, kwargs, model="fails-t1")
    body = assert_refused(hostile, r, 500, "internal_error")
    request_id = body["request_id"]
    assert re.fullmatch(r"[0-9a-f]{12,32}", request_id)
    assert r.headers["x-request-id"] == request_id
    logged = hostile.log()[before:]
    assert request_id in logged  # the operator can find it
    assert "Traceback" not in logged
    for value in _phi():
        assert value not in logged and value not in r.text


def test_dicom_seg_with_a_malformed_birth_date_is_tolerated_and_never_logged(hostile):
    before = len(hostile.log())
    files = edited_series(raw_value("PatientBirthDate", INVALID_BIRTH_DATE.encode()))
    kwargs, params = t1_series(files, format="dicom-seg")
    r = post(hostile, kwargs, **params)
    assert r.status_code == 200, r.text
    seg = pydicom.dcmread(io.BytesIO(r.content))
    assert seg.Modality == "SEG" and seg.PatientBirthDate == ""  # type 2: present, empty
    logged = hostile.log()[before:]
    assert INVALID_BIRTH_DATE not in logged and "Traceback" not in logged
    assert wait_empty(hostile.tmp_dir) == []


@pytest.mark.parametrize("missing", ["FrameOfReferenceUID", "StudyInstanceUID", "SOPClassUID"])
def test_dicom_seg_prerequisites_are_checked_before_inference(hostile, missing):
    inferences = _metric(hostile, "seg_inference_seconds_count")
    kwargs, params = t1_series(edited_series(remove(missing)), format="dicom-seg")
    body = assert_refused(hostile, post(hostile, kwargs, **params), 422, "dicom_seg_prerequisites")
    assert missing in body["detail"]
    assert _metric(hostile, "seg_inference_seconds_count") == inferences  # refused before the model ran


def test_dicom_seg_without_patient_id_is_written_with_an_empty_one(hostile):
    kwargs, params = t1_series(edited_series(remove("PatientID")), format="dicom-seg")
    r = post(hostile, kwargs, **params)
    assert r.status_code == 200, r.text
    assert pydicom.dcmread(io.BytesIO(r.content)).PatientID == ""
    assert wait_empty(hostile.tmp_dir) == []


@pytest.mark.parametrize("keyword", ["NumberOfFrames", "NumberOfTemporalPositions"])
def test_non_numeric_counts_are_refused_with_4xx(hostile, keyword):
    kwargs, params = t1_series(edited_series(raw_value(keyword, b"abc")))
    body = assert_refused(hostile, post(hostile, kwargs, **params), 422, "malformed_header")
    assert keyword in body["detail"]


def test_nifti_with_nan_intercept_is_refused(hostile):
    data = nifti_with_header(scl_slope=1.0, scl_inter=float("nan"))
    assert_refused(hostile, post(hostile, {"flair": ("n.nii.gz", data)}), 422, "invalid_scaling")


def test_a_very_long_multipart_boundary_is_a_400(hostile):
    boundary = "b" * 5000
    body, content_type = multipart([("flair", "f.nii.gz", b"x" * 100)], boundary=boundary)
    with hostile.client() as client:
        r = client.post("/segment", content=body, headers={"content-type": content_type})
    assert_refused(hostile, r, 400, "malformed_multipart")


# --- 3. geometry -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "edit", "code"),
    [
        ("nan-position", raw_value("ImagePositionPatient", b"nan\\0\\0", only=5), "invalid_geometry"),
        ("nan-pixel-spacing", raw_value("PixelSpacing", b"nan\\nan"), "invalid_geometry"),
        ("zero-pixel-spacing", raw_value("PixelSpacing", b"0\\0"), "invalid_geometry"),
        ("sheared-stack", sheared(0.5), "sheared_geometry"),
        ("mixed-pixel-spacing", raw_value("PixelSpacing", b"1.2\\1.2", only=7), "inconsistent_spacing"),
        ("non-orthogonal-orientation", retag_all(ImageOrientationPatient=[0, 1, 0, 0, 0.3, -1]), "invalid_orientation"),
        ("unit-length-broken", retag_all(ImageOrientationPatient=[0, 1.2, 0, 0, 0, -1]), "invalid_orientation"),
    ],
)
def test_inconsistent_dicom_geometry_is_refused(hostile, case, edit, code):
    kwargs, params = t1_series(edited_series(edit))
    assert_refused(hostile, post(hostile, kwargs, **params), 422, code)


def test_orientation_with_a_tiny_numerical_error_is_accepted(hostile):
    kwargs, params = t1_series(edited_series(perturbed_orientation(2e-6)))
    r = post(hostile, kwargs, **params)
    assert r.status_code == 200, r.text
    assert wait_empty(hostile.tmp_dir) == []


def test_a_duplicated_slice_is_named_as_such_not_4d(hostile):
    kwargs, params = t1_series(duplicated_slice())
    body = assert_refused(hostile, post(hostile, kwargs, **params), 422, "duplicate_slices")
    assert "4D" not in body["detail"]


def test_a_cd_style_export_with_dicomdir_is_read(hostile, tmp_path):
    r = post(hostile, {"t1": ("cd.zip", cd_export_zip(tmp_path))}, model="bright-t1", format="json")
    assert r.status_code == 200, r.text
    assert r.json()["geometry"]["size"] == [256, 256, 20]
    assert wait_empty(hostile.tmp_dir) == []


def _mask_affines(content: bytes) -> tuple[np.ndarray, np.ndarray]:
    image = nib.Nifti1Image.from_bytes(gzip.decompress(content))
    return image.header.get_qform(), image.header.get_sform()


def test_sform_is_preferred_over_qform_and_written_back_consistently(hostile):
    """nibabel and FSL use the sform when its code is set; the mask must sit where they put the input."""
    qform = np.diag([1.0, 1.0, 1.0, 1.0])
    sform = qform.copy()
    sform[:3, 3] = [50.0, -20.0, 10.0]
    image = nifti(sform=sform, qform=qform)
    r = post(hostile, {"flair": ("f.nii.gz", nifti_bytes(image))})
    assert r.status_code == 200, r.text
    out_qform, out_sform = _mask_affines(r.content)
    np.testing.assert_allclose(out_sform, sform, atol=1e-4)
    np.testing.assert_allclose(out_qform, sform, atol=1e-4)  # one geometry, whatever a reader prefers


def test_nifti2_is_accepted(hostile):
    affine = np.diag([1.0, 1.0, 1.2, 1.0])
    affine[:3, 3] = [-20.0, 5.0, 3.0]
    image = nifti(version=2, sform=affine, qform=affine)
    data = nifti_bytes(image)
    r = post(hostile, {"flair": ("f2.nii.gz", data)}, format="json")
    assert r.status_code == 200, r.text
    geometry = r.json()["geometry"]
    assert geometry["size"] == [48, 56, 40]
    np.testing.assert_allclose(geometry["spacing"], [1.0, 1.0, 1.2], atol=1e-5)
    np.testing.assert_allclose(geometry["origin"], [20.0, -5.0, 3.0], atol=1e-4)  # RAS -> LPS


def test_a_sheared_sform_is_refused_as_sheared_not_corrupt(hostile):
    data = nifti_bytes(nifti(sform=sheared_sform(0.3)))
    assert_refused(hostile, post(hostile, {"flair": ("s.nii.gz", data)}), 422, "sheared_geometry")


@pytest.mark.parametrize("pixdim", [[1, float("nan"), 1, 1, 1, 0, 0, 0], [1, 1, 0, 1, 1, 0, 0, 0]])
def test_nifti_with_non_finite_or_zero_spacing_is_refused(hostile, pixdim):
    data = nifti_with_header(pixdim=pixdim, sform_code=0)
    assert_refused(hostile, post(hostile, {"flair": ("p.nii.gz", data)}), 422, "invalid_geometry")


# --- 4. multi-modal consistency --------------------------------------------------------------------


def test_a_modality_overlapping_in_one_corner_is_refused(hostile):
    flair = nifti()
    shifted = np.diag([1.0, 1.0, 1.0, 1.0])
    shifted[:3, 3] = [47.0, 55.0, 39.0]  # the far corner voxel of the FLAIR is the origin of the T1c
    t1c = nifti(sform=shifted, qform=shifted)
    files = {"flair": ("f.nii.gz", nifti_bytes(flair)), "t1c": ("c.nii.gz", nifti_bytes(t1c))}
    assert_refused(hostile, post(hostile, files, model="bright-pair"), 422, "modalities_do_not_overlap")


def test_the_same_study_under_two_fields_is_accepted(hostile):
    series = zip_of(edited_series(lambda i, ds: None))
    files = {"flair": ("f.zip", series), "t1c": ("c.zip", series)}
    r = post(hostile, files, model="bright-pair", format="json")
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("keyword", "value", "code"),
    [("PatientID", OTHER_PATIENT_ID, "different_patients"), ("StudyInstanceUID", "1.2.3.4.5.6.7", "different_studies")],
)
def test_modalities_from_another_patient_or_study_are_refused_without_naming_them(hostile, keyword, value, code):
    before = len(hostile.log())
    flair = zip_of(edited_series(lambda i, ds: None))
    other = zip_of(edited_series(retag_all(**{keyword: value})))
    r = post(hostile, {"flair": ("f.zip", flair), "t1c": ("c.zip", other)}, model="bright-pair")
    assert_refused(hostile, r, 422, code)
    logged = hostile.log()[before:]
    for phi in _phi():
        assert phi not in r.text and phi not in logged


# --- 5. capacity -----------------------------------------------------------------------------------


def test_unterminated_headers_are_cut_at_the_header_timeout(hostile):
    with raw_connection(hostile.url) as sock:
        sock.sendall(b"POST /segment HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        status, headers, body = read_response(sock, timeout=HEADER_TIMEOUT_S + 10)
    assert status == 408 and headers["content-type"].startswith("application/json")
    assert b"header_timeout" in body
    assert wait_empty(hostile.tmp_dir) == []


def test_oversized_headers_are_refused_with_431(hostile):
    with raw_connection(hostile.url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (200 * 1024))
        status, headers, body = read_response(sock, timeout=10)
    assert status == 431 and b"headers_too_large" in body
    with hostile.client() as client:
        assert client.get("/healthz").status_code == 200


def test_a_body_shorter_than_its_content_length_is_answered_at_the_body_timeout(hostile):
    body, content_type = multipart([("flair", "f.nii.gz", nifti_bytes(nifti()))])
    with raw_connection(hostile.url) as sock:
        sock.sendall(request_head("/segment", content_type, len(body) + 10_000) + body)
        status, _, answer = read_response(sock, timeout=BODY_TIMEOUT_S + 10)
    assert status == 408 and b"upload_timeout" in answer
    assert wait_empty(hostile.tmp_dir) == []


def test_a_full_service_answers_503_before_reading_the_upload(hostile):
    """Two stalled uploads fill the upload slots; a third request gets 503 without sending its body."""
    body, content_type = multipart([("flair", "f.nii.gz", nifti_bytes(nifti()))])
    stalled = [raw_connection(hostile.url) for _ in range(2)]
    try:
        for sock in stalled:
            sock.sendall(request_head("/segment", content_type, len(body)) + body[:100])
        time.sleep(0.5)
        with raw_connection(hostile.url) as third:
            third.sendall(request_head("/segment", content_type, 10 * MB))  # headers only: no body at all
            status, headers, answer = read_response(third, timeout=5)
        assert status == 503 and int(headers["retry-after"]) > 0
        assert b'"error"' in answer
    finally:
        for sock in stalled:
            sock.close()
    assert wait_empty(hostile.tmp_dir, timeout=10) == []
    r = post(hostile, {"flair": ("f.nii.gz", nifti_bytes(nifti()))}, format="json")  # capacity is back
    assert r.status_code == 200, r.text


def test_a_queued_request_whose_client_left_is_cancelled_and_its_staging_removed(hostile):
    """One slot, one queue place: while a big study is segmented, a queued client disconnects. Its work
    is dropped (the model runs once, not twice) and its staging directory goes at once."""
    before = len(hostile.log())
    inferences = _metric(hostile, "seg_inference_seconds_count")
    big = nifti_bytes(nifti(shape_xyz=(200, 200, 150)), compress=True)
    result: dict = {}

    def run_big() -> None:
        result["status"] = post(hostile, {"flair": ("big.nii.gz", big)}, format="json").status_code

    worker = threading.Thread(target=run_big)
    worker.start()
    deadline = time.monotonic() + 60
    while _metric(hostile, "seg_inferences_in_flight") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    body, content_type = multipart([("flair", "f.nii.gz", nifti_bytes(nifti()))])
    sock = raw_connection(hostile.url)
    sock.sendall(request_head("/segment", content_type, len(body)) + body)
    while _metric(hostile, "seg_queue_depth") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    queued = _metric(hostile, "seg_queue_depth") == 1 and _metric(hostile, "seg_inferences_in_flight") == 1
    sock.close()
    worker.join(timeout=300)
    assert queued, "the second request was never seen waiting behind the first"
    assert result["status"] == 200
    assert _metric(hostile, "seg_inference_seconds_count") == inferences + 1
    assert _metric(hostile, "seg_queue_depth") == 0
    logged = hostile.log()[before:]
    assert "client_disconnected" in logged and "Traceback" not in logged
    assert wait_empty(hostile.tmp_dir) == []


def test_a_client_dropping_its_upload_is_one_info_line(hostile):
    before = len(hostile.log())
    body, content_type = multipart([("flair", "f.nii.gz", os.urandom(200_000))])
    with raw_connection(hostile.url) as sock:
        sock.sendall(request_head("/segment", content_type, len(body)) + body[:50_000])
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while "client_disconnected" not in hostile.log()[before:] and time.monotonic() < deadline:
        time.sleep(0.1)
    logged = hostile.log()[before:]
    lines = [line for line in logged.splitlines() if "client_disconnected" in line]
    assert len(lines) == 1 and " INFO " in lines[0], logged
    assert "Traceback" not in logged and " ERROR " not in logged
    assert wait_empty(hostile.tmp_dir) == []


# --- 6. model names --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["%2E%2E", ".hidden", "%2E", "bright-t1%00"])
def test_only_real_model_names_are_described_or_reloaded(hostile, name):
    with hostile.client() as client:
        for r in (client.get(f"/models/{name}"), client.post(f"/models/{name}/reload")):
            assert r.status_code == 404, (name, r.status_code, r.text)
            assert r.json()["error"] == "unknown_model"
        assert client.get("/models/bright-t1").status_code == 200


# --- 7. a short soak -------------------------------------------------------------------------------


def test_soak_mixing_good_and_hostile_requests(hostile):
    """40 requests, 2 at a time (the server admits 1 running + 1 queued), a third of them good: every
    good one is served, nothing answers 5xx, and the server is clean afterwards."""
    good = ({"flair": ("g.nii.gz", nifti_bytes(nifti()))}, {"format": "json"})
    header = bytearray(nifti(shape_xyz=(8, 8, 8)).to_bytes())
    header[42:48] = (30000).to_bytes(2, "little") * 3  # dims 30000^3
    hostile_requests = [
        ({"flair": ("r.nii.gz", os.urandom(3000))}, {}),
        ({"flair": ("h.nii", bytes(header))}, {}),
        ({"flair": ("e.nii.gz", nifti_bytes(nifti(spacing=(8.0, 8.0, 8.0), shape_xyz=(64, 64, 40))))}, {}),
        ({"flair": ("n.nii.gz", nifti_with_header(scl_slope=1.0, scl_inter=float("nan")))}, {}),
        ({"flair": ("s.nii.gz", nifti_bytes(nifti(sform=sheared_sform(0.3))))}, {}),
        ({"t1": ("x.zip", zip_of([("a.dcm", b"DICM" * 10)]))}, {"model": "bright-t1"}),
    ]
    plan = [("good", *good) if i % 3 == 0 else ("bad", *hostile_requests[i % len(hostile_requests)]) for i in range(40)]

    def send(item):
        kind, files, params = item
        try:
            with hostile.client(timeout=300) as client:
                return kind, client.post("/segment", params=params, files=files).status_code
        except httpx.TransportError as exc:
            return kind, f"transport: {type(exc).__name__}"

    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(send, plan))
    assert [s for k, s in outcomes if k == "good"] == [200] * 14, outcomes
    assert not [s for _, s in outcomes if isinstance(s, int) and s >= 500], outcomes
    assert not [s for _, s in outcomes if not isinstance(s, int)], outcomes
    with hostile.client() as client:
        assert client.get("/healthz").status_code == 200
    assert wait_empty(hostile.tmp_dir) == []


def test_the_log_has_no_traceback_and_no_patient_value(hostile):
    logged = hostile.log()
    assert "segmented model=" in logged  # the log was captured
    assert "Traceback" not in logged
    for value in _phi():
        assert value not in logged
