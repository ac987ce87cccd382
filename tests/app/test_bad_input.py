"""Every bad upload gets a 4xx JSON answer, the server keeps serving, and nothing is left on disk."""

from __future__ import annotations

import gzip
import os
import struct

import httpx
import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import shared_case, wait_empty
from tests.dicom_fixtures import epi_files, mprage_files, retagged, symlink_zip, zip_files, zip_of


def _nifti_bytes(image: sitk.Image, tmp_path, name="img.nii.gz") -> bytes:
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    data = path.read_bytes()
    path.unlink()
    return data


def _volume(shape_xyz=(32, 32, 16), value=1.0) -> sitk.Image:
    return sitk.GetImageFromArray(np.full(shape_xyz[::-1], value, dtype=np.float32))


def _cases(tmp_path):
    """(id, request kwargs, expected status, expected error code)."""
    real = shared_case("brats2018_deepvoxnet2", "case_6", "FLAIR.nii.gz").read_bytes()
    raw_nii = gzip.decompress(real)
    four_d = sitk.JoinSeries([_volume(), _volume()])
    nan = _volume()
    nan[3, 3, 3] = float("nan")
    inf = _volume()
    inf[1, 2, 3] = float("inf")
    # A NIfTI-1 header claiming 30000^3 voxels: refused from the header, nothing allocated.
    header = bytearray(raw_nii[:352])
    struct.pack_into("<8h", header, 40, 3, 30000, 30000, 30000, 1, 1, 1, 1)
    return [
        ("random-bytes", {"files": {"flair": ("x.nii.gz", os.urandom(5000))}}, 415, "unsupported_file"),
        ("text-file", {"files": {"flair": ("notes.txt", b"just some text, no image")}}, 415, "unsupported_file"),
        ("empty-file", {"files": {"flair": ("empty.nii.gz", b"")}}, 400, "empty_file"),
        ("truncated-gzip", {"files": {"flair": ("t.nii.gz", real[: len(real) // 2])}}, 400, "corrupt_file"),
        ("truncated-gzip-header", {"files": {"flair": ("t.nii.gz", real[:20])}}, 400, "corrupt_file"),
        ("truncated-raw-nifti", {"files": {"flair": ("t.nii", raw_nii[: len(raw_nii) // 3])}}, 400, "corrupt_file"),
        ("gzip-not-nifti", {"files": {"flair": ("x.nii.gz", gzip.compress(b"hello" * 200))}}, 415, "unsupported_file"),
        ("absurd-header", {"files": {"flair": ("big.nii", bytes(header))}}, 422, "image_too_large"),
        (
            "2d-image",
            {"files": {"flair": ("2d.nii.gz", _nifti_bytes(sitk.Image([64, 64], sitk.sitkFloat32), tmp_path))}},
            422,
            "wrong_dimensions",
        ),
        (
            "single-slice",
            {"files": {"flair": ("s.nii.gz", _nifti_bytes(_volume((32, 32, 1)), tmp_path))}},
            422,
            "wrong_dimensions",
        ),
        ("4d-image", {"files": {"flair": ("4d.nii.gz", _nifti_bytes(four_d, tmp_path))}}, 422, "wrong_dimensions"),
        ("nan-values", {"files": {"flair": ("n.nii.gz", _nifti_bytes(nan, tmp_path))}}, 422, "non_finite_values"),
        ("inf-values", {"files": {"flair": ("i.nii.gz", _nifti_bytes(inf, tmp_path))}}, 422, "non_finite_values"),
        ("missing-flair", {"files": {"t1": ("t1.nii.gz", real)}}, 422, "missing_modality"),
        ("unknown-field", {"files": {"pet": ("p.nii.gz", real)}}, 422, "unknown_field"),
        (
            "two-files-one-field",
            {"files": [("flair", ("a.nii.gz", real)), ("flair", ("b.nii.gz", real))]},
            422,
            "too_many_files",
        ),
        ("no-files", {"data": {"flair": "not a file"}, "files": {"dummy": ("", b"")}}, 422, "unexpected_field"),
        (
            "not-multipart",
            {"content": b"\x00" * 100, "headers": {"content-type": "application/octet-stream"}},
            415,
            "unsupported_media_type",
        ),
        (
            "broken-multipart",
            {
                "content": b"--zzz\r\nnot a header line\r\n\r\n",
                "headers": {"content-type": "multipart/form-data; boundary=zzz"},
            },
            400,
            "malformed_multipart",
        ),
        ("unknown-model", {"params": {"model": "nope"}, "files": {"flair": ("f.nii.gz", real)}}, 404, "unknown_model"),
        (
            "unknown-version",
            {"params": {"version": "999"}, "files": {"flair": ("f.nii.gz", real)}},
            404,
            "unknown_model",
        ),
        ("bad-version", {"params": {"version": "abc"}, "files": {"flair": ("f.nii.gz", real)}}, 422, "invalid_request"),
        (
            "unknown-format",
            {"params": {"format": "bmp"}, "files": {"flair": ("f.nii.gz", real)}},
            400,
            "unknown_format",
        ),
        ("too-large", {"files": {"flair": ("big.nii.gz", os.urandom(17 * 2**20))}}, 413, "upload_too_large"),
        *_dicom_cases(real),
    ]


def _dicom_cases(real_nifti: bytes):
    """Archive and DICOM series cases, posted to ``bright-t1`` (a T1 model) under the ``t1`` field."""
    mprage = mprage_files()
    some = mprage[40:60]
    t1 = {"params": {"model": "bright-t1"}}

    def post(files, **extra):
        return {**t1, "files": files, **extra}

    damaged = bytearray(zip_files(some[:3]))
    damaged[40:400] = os.urandom(360)
    truncated = some[5].read_bytes()
    bomb = zip_of([("bomb.dcm", bytes(40 * 2**20))])  # 40 MB of zeros: ~1000x compression
    many = zip_of([(f"f{i}.dcm", b"x") for i in range(600)])
    return [
        ("corrupt-zip", post({"t1": ("s.zip", bytes(damaged))}), 400, "corrupt_file"),
        ("zip-header-only", post({"t1": ("s.zip", b"PK\x03\x04" + os.urandom(200))}), 400, "corrupt_file"),
        ("empty-zip", post({"t1": ("s.zip", zip_of([]))}), 422, "empty_archive"),
        ("zip-bomb", post({"t1": ("bomb.zip", bomb)}), 413, "archive_too_large"),
        ("zip-too-many-members", post({"t1": ("many.zip", many)}), 413, "archive_too_large"),
        (
            "zip-path-traversal",
            post({"t1": ("s.zip", zip_of([("../../evil.dcm", some[0].read_bytes())]))}),
            422,
            "unsafe_archive",
        ),
        (
            "zip-absolute-path",
            post({"t1": ("s.zip", zip_of([("/tmp/evil.dcm", some[0].read_bytes())]))}),
            422,
            "unsafe_archive",
        ),
        ("zip-symlink", post({"t1": ("s.zip", symlink_zip())}), 422, "unsafe_archive"),
        (
            "non-dicom-in-zip",
            post(
                {"t1": ("s.zip", zip_of([(p.name, p.read_bytes()) for p in some[:4]] + [("notes.txt", b"scan notes")]))}
            ),
            422,
            "not_dicom",
        ),
        ("nifti-in-dicom-zip", post({"t1": ("s.zip", zip_of([("vol.nii.gz", real_nifti)]))}), 422, "not_dicom"),
        ("mixed-series", post({"t1": ("s.zip", zip_files(some[:5] + epi_files()[:5]))}), 422, "mixed_series"),
        ("4d-dicom", post({"t1": ("epi.zip", zip_files(epi_files()))}), 422, "multi_temporal"),
        ("missing-slices", post({"t1": ("s.zip", zip_files(some[:8] + some[9:]))}), 422, "missing_slices"),
        ("single-dicom-slice", post({"t1": (some[0].name, some[0].read_bytes())}), 422, "single_slice"),
        (
            "non-mr-modality",
            post({"t1": ("ct.zip", zip_of([(p.name, retagged(p, Modality="CT")) for p in some[:4]]))}),
            422,
            "not_mr",
        ),
        (
            "truncated-dicom-pixels",
            post(
                [("t1", (p.name, p.read_bytes())) for p in some[:5]]
                + [("t1", ("cut.dcm", truncated[: len(truncated) - 40000]))]
            ),
            400,
            "corrupt_file",
        ),
        (
            "dicom-and-nifti-mixed",
            post([("t1", (some[0].name, some[0].read_bytes())), ("t1", ("v.nii.gz", real_nifti))]),
            422,
            "mixed_inputs",
        ),
        (
            "dicom-seg-for-nifti",
            {"params": {"format": "dicom-seg"}, "files": {"flair": ("f.nii.gz", real_nifti)}},
            422,
            "dicom_seg_needs_dicom",
        ),
    ]


CASE_IDS = [
    "random-bytes",
    "text-file",
    "empty-file",
    "truncated-gzip",
    "truncated-gzip-header",
    "truncated-raw-nifti",
    "gzip-not-nifti",
    "absurd-header",
    "2d-image",
    "single-slice",
    "4d-image",
    "nan-values",
    "inf-values",
    "missing-flair",
    "unknown-field",
    "two-files-one-field",
    "no-files",
    "not-multipart",
    "broken-multipart",
    "unknown-model",
    "unknown-version",
    "bad-version",
    "unknown-format",
    "too-large",
    # archives and DICOM series
    "corrupt-zip",
    "zip-header-only",
    "empty-zip",
    "zip-bomb",
    "zip-too-many-members",
    "zip-path-traversal",
    "zip-absolute-path",
    "zip-symlink",
    "non-dicom-in-zip",
    "nifti-in-dicom-zip",
    "mixed-series",
    "4d-dicom",
    "missing-slices",
    "single-dicom-slice",
    "non-mr-modality",
    "truncated-dicom-pixels",
    "dicom-and-nifti-mixed",
    "dicom-seg-for-nifti",
]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    built = {c[0]: c[1:] for c in _cases(tmp_path_factory.mktemp("bad"))}
    assert sorted(built) == sorted(CASE_IDS)
    return built


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bad_upload_is_refused_with_a_json_reason(server, cases, case_id):
    kwargs, status, code = cases[case_id]
    with server.client() as client:
        r = client.post("/segment", **kwargs)
        assert r.status_code == status, r.text
        body = r.json()
        assert body["error"] == code
        assert isinstance(body["detail"], str) and len(body["detail"]) > 10
        assert client.get("/healthz").status_code == 200
    assert wait_empty(server.tmp_dir) == []


def test_oversized_upload_without_content_length_is_cut_off_while_streaming(server):
    """A chunked body has no Content-Length to check up front: the limit applies as bytes arrive."""
    sent = {"bytes": 0}

    def body():
        boundary = b"--b0undary\r\n"
        yield boundary + b'Content-Disposition: form-data; name="flair"; filename="f.nii.gz"\r\n\r\n'
        chunk = b"\x1f\x8b" + os.urandom(2**20 - 2)
        for _ in range(64):  # 64 MB offered, 16 MB allowed
            sent["bytes"] += len(chunk)
            yield chunk

    with httpx.Client(base_url=server.url, timeout=60) as client:
        try:
            r = client.post(
                "/segment", content=body(), headers={"content-type": "multipart/form-data; boundary=b0undary"}
            )
            assert r.status_code == 413 and r.json()["error"] == "upload_too_large"
        except httpx.TransportError:
            pass  # the server may close the connection before the client finished sending
        assert client.get("/healthz").status_code == 200
    assert wait_empty(server.tmp_dir) == []


def test_server_still_segments_after_all_the_bad_input(server, cases):
    real = shared_case("brats2018_deepvoxnet2", "case_6", "FLAIR.nii.gz").read_bytes()
    with server.client() as client:
        r = client.post("/segment", params={"format": "json"}, files={"flair": ("f.nii.gz", real)})
    assert r.status_code == 200 and r.json()["tumour_voxels"] > 0
