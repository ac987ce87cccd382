"""Every bad upload gets a 4xx JSON answer, the server keeps serving, and nothing is left on disk."""

from __future__ import annotations

import gzip
import io
import os
import select
import socket
import struct
import zipfile
from urllib.parse import urlsplit

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import shared_case, wait_empty
from tests.dicom_fixtures import (
    PHI,
    dicom_refusals,
    epi_files,
    mprage_files,
    retagged,
    symlink_zip,
    zip_files,
    zip_of,
)

LIMIT = 16 * 2**20  # SEG_MAX_UPLOAD_MB of the session server


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
    # A small volume whose header names a datatype code that does not exist (999).
    odd_type = bytearray(gzip.decompress(_nifti_bytes(_volume((8, 8, 8)), tmp_path)))
    struct.pack_into("<h", odd_type, 70, 999)
    return [
        ("random-bytes", {"files": {"flair": ("x.nii.gz", os.urandom(5000))}}, 415, "unsupported_file"),
        ("text-file", {"files": {"flair": ("notes.txt", b"just some text, no image")}}, 415, "unsupported_file"),
        ("empty-file", {"files": {"flair": ("empty.nii.gz", b"")}}, 400, "empty_file"),
        ("truncated-gzip", {"files": {"flair": ("t.nii.gz", real[: len(real) // 2])}}, 400, "corrupt_file"),
        ("truncated-gzip-header", {"files": {"flair": ("t.nii.gz", real[:20])}}, 400, "corrupt_file"),
        ("truncated-raw-nifti", {"files": {"flair": ("t.nii", raw_nii[: len(raw_nii) // 3])}}, 400, "corrupt_file"),
        ("gzip-not-nifti", {"files": {"flair": ("x.nii.gz", gzip.compress(b"hello" * 200))}}, 415, "unsupported_file"),
        ("absurd-header", {"files": {"flair": ("big.nii", bytes(header))}}, 422, "image_too_large"),
        ("unknown-voxel-type", {"files": {"flair": ("odd.nii", bytes(odd_type))}}, 422, "wrong_pixel_type"),
        (
            "no-file-parts",
            {"content": b"--zzz--\r\n", "headers": {"content-type": "multipart/form-data; boundary=zzz"}},
            422,
            "no_files",
        ),
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
        *dicom_refusals("t1", "bright-t1"),
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
        ("zip-over-total-size", post({"t1": ("big.zip", _zip_over_total_size())}), 413, "archive_too_large"),
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


def _zip_over_total_size() -> bytes:
    """40 members of 2 MB that each expand only ~20x (under SEG_MAX_COMPRESSION_RATIO = 200) but 80 MB in
    total, over the session server's SEG_MAX_UNZIPPED_MB = 64: only the total-size limit can refuse it."""
    rng = np.random.default_rng(5)
    members = []
    for i in range(40):
        data = np.zeros(2 * 2**20, dtype=np.uint8)
        data[rng.choice(data.size, data.size // 40, replace=False)] = rng.integers(1, 255, data.size // 40)
        members.append((f"{i:03d}.dcm", data.tobytes()))
    archive = zip_of(members)
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        ratios = [i.file_size / i.compress_size for i in zf.infolist()]
        total = sum(i.file_size for i in zf.infolist())
    assert max(ratios) < 100 and total > 64 * 2**20 and len(archive) < LIMIT, (max(ratios), total, len(archive))
    return archive


CASE_IDS = [
    "random-bytes",
    "text-file",
    "empty-file",
    "truncated-gzip",
    "truncated-gzip-header",
    "truncated-raw-nifti",
    "gzip-not-nifti",
    "absurd-header",
    "unknown-voxel-type",
    "no-file-parts",
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
    "zip-over-total-size",
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
    # a synthetic series carrying distinctive patient values (tests.dicom_fixtures.PHI)
    "dicom-mixed-series",
    "dicom-not-mr",
    "dicom-multi-temporal",
    "dicom-missing-slices",
    "dicom-single-slice",
    "dicom-missing-geometry",
    "dicom-inconsistent-orientation",
    "dicom-inconsistent-size",
    "dicom-multiframe",
    "dicom-image-too-large",
    "dicom-zip-with-text",
    "dicom-truncated-pixels",
    "dicom-wrong-field",
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
    for value in PHI.values():
        assert value not in r.text
    assert wait_empty(server.tmp_dir) == []


def _raw_post(url: str, headers: dict[str, str]) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=120)
    head = f"POST /segment HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode())
    return sock


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status code and body of one HTTP/1.1 response (Content-Length framed)."""
    sock.setblocking(True)
    sock.settimeout(120)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before a whole response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = int(next(v for k, _, v in (h.partition(": ") for h in lines[1:]) if k.lower() == "content-length"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed in the middle of the response body"
        body += chunk
    return int(lines[0].split()[1]), body[:length]


def test_a_declared_oversized_body_is_refused_before_any_of_it_is_sent(server):
    """Content-Length over the limit: the 413 comes back while the client has sent only the head."""
    sock = _raw_post(
        server.url, {"Content-Type": "multipart/form-data; boundary=b0undary", "Content-Length": str(LIMIT + 2**20)}
    )
    with sock:
        status, body = _read_response(sock)  # times out (fails) if the server waits for the body
    assert status == 413 and b'"upload_too_large"' in body
    assert wait_empty(server.tmp_dir) == []


def test_a_chunked_upload_is_cut_off_near_the_limit_while_it_streams(server):
    """No Content-Length (chunked): the server must stop reading and answer 413 once it has received the
    limit, not after the whole body. Bytes the server accepted are bounded by what this client managed to
    send; the socket buffers of a loopback connection hold a few MB at most, so more than the limit + 8 MB
    sent before the answer means the server kept reading past the limit."""
    sock = _raw_post(
        server.url, {"Content-Type": "multipart/form-data; boundary=b0undary", "Transfer-Encoding": "chunked"}
    )
    preamble = b'--b0undary\r\nContent-Disposition: form-data; name="flair"; filename="f.nii.gz"\r\n\r\n'
    payload = b"\x1f\x8b" + os.urandom(2**20 - 2)

    def chunk(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    offered, sent, pending, answered = 64 * 2**20, 0, chunk(preamble), False
    with sock:
        sock.setblocking(False)
        while sent < offered:
            readable, writable, _ = select.select([sock], [sock], [], 30)
            if readable:
                answered = True  # the answer arrived while the body was still streaming
                break
            assert writable, f"the server neither read nor answered for 30 s after {sent} bytes"
            if not pending:
                pending = chunk(payload)
            try:
                n = sock.send(pending)
            except (BrokenPipeError, ConnectionResetError):
                answered = True  # closed on us after answering: read what it said
                break
            sent, pending = sent + n, pending[n:]
        status, body = _read_response(sock)
    assert answered, f"all {offered} bytes were accepted before any answer"
    assert status == 413 and b'"upload_too_large"' in body, body
    assert sent <= LIMIT + 8 * 2**20, f"{sent / 2**20:.1f} MB accepted under a {LIMIT / 2**20:.0f} MB limit"
    with server.client() as client:
        assert client.get("/healthz").status_code == 200
    assert wait_empty(server.tmp_dir) == []


def test_server_still_segments_after_all_the_bad_input(server, cases):
    real = shared_case("brats2018_deepvoxnet2", "case_6", "FLAIR.nii.gz").read_bytes()
    with server.client() as client:
        r = client.post("/segment", params={"format": "json"}, files={"flair": ("f.nii.gz", real)})
    assert r.status_code == 200
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_case("brats2018_deepvoxnet2", "case_6", "GT_W.nii.gz"))))
    assert abs(r.json()["tumour_voxels"] - int((truth > 0.5).sum())) < 0.25 * (truth > 0.5).sum()  # a real answer
    for value in PHI.values():  # and none of the refused series' patient values reached the log
        assert value not in server.log()
