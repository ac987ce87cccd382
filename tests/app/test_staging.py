"""Uploads are staged in a private directory that is removed in every case: after a 500, and when the
client goes away while uploading, while its study is being segmented, or while the answer is being sent.
(4xx answers: ``test_bad_input.py``; 503 busy: ``test_backpressure.py``; 502/503/504 from TF Serving:
``test_tfserving.py``.) The ``gated`` model lets the test hold inference and make it fail on demand."""

from __future__ import annotations

import os
import socket
import time
from urllib.parse import urlsplit

import numpy as np
import SimpleITK as sitk

from tests.conftest import wait_empty
from tests.dicom_fixtures import series_from_image, zip_of
from tests.helpers import synthetic_head

BOUNDARY = b"st4g1ngb0undary"


def _study(tmp_path, shape_zyx=(40, 72, 64)) -> bytes:
    head, _ = synthetic_head(shape_zyx=shape_zyx)
    sitk.WriteImage(head, str(tmp_path / "head.nii.gz"))
    return (tmp_path / "head.nii.gz").read_bytes()


def _request(url: str, body_length: int, query: str = "", rcvbuf: int | None = None) -> tuple[socket.socket, bytes]:
    """An open loopback connection and the request head + multipart preamble of a ``flair`` upload of
    ``body_length`` bytes of file content (sent by the caller)."""
    parts = urlsplit(url)
    preamble = b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="flair"; filename="h.nii.gz"\r\n\r\n'
    epilogue = b"\r\n--" + BOUNDARY + b"--\r\n"
    head = (
        f"POST /segment{query} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY.decode()}\r\n"
        f"Content-Length: {len(preamble) + body_length + len(epilogue)}\r\n\r\n"
    ).encode()
    # The answer starts only after the study was read, segmented and written: minutes on a loaded machine.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connecting, so the advertised window (and its scale) stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(600)
    sock.connect((parts.hostname, parts.port))
    return sock, head + preamble


def _epilogue() -> bytes:
    return b"\r\n--" + BOUNDARY + b"--\r\n"


def _wait_for(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def _staged_bytes(directory) -> int:
    return sum(f.stat().st_size for d in directory.iterdir() if d.is_dir() for f in d.iterdir() if f.is_file())


def test_a_500_leaves_nothing_staged(gated, tmp_path):
    study = _study(tmp_path)
    gated.poison.touch()  # the model fails at inference
    try:
        with gated.server.client() as client:
            r = client.post("/segment", files={"flair": ("h.nii.gz", study)})
            assert r.status_code == 500, r.text
            assert r.json()["error"] == "internal_error" and len(r.json()["detail"]) > 10
            assert client.get("/healthz").status_code == 200
    finally:
        gated.poison.unlink()
    assert wait_empty(gated.server.tmp_dir) == []
    with gated.server.client() as client:  # and the next study is served
        assert client.post("/segment", files={"flair": ("h.nii.gz", study)}).status_code == 200


def test_a_client_that_disconnects_mid_upload_leaves_nothing_staged(gated):
    sock, start = _request(gated.server.url, 8 * 2**20)
    with sock:
        sock.sendall(start + b"\x1f\x8b" + os.urandom(2**20))  # 1 MB of the promised 8
        _wait_for(lambda: _staged_bytes(gated.server.tmp_dir) > 0, "the server staging the upload")
    assert wait_empty(gated.server.tmp_dir, timeout=20) == []


def test_a_client_that_disconnects_during_inference_leaves_nothing_staged(gated, tmp_path):
    study = _study(tmp_path)
    gated.hold()
    try:
        sock, start = _request(gated.server.url, len(study))
        with sock:
            sock.sendall(start + study + _epilogue())
            gated.wait_metric("seg_inferences_in_flight", 1)
        assert len(os.listdir(gated.server.tmp_dir)) == 1  # staged, and held
    finally:
        gated.release()
    gated.wait_metric("seg_inferences_in_flight", 0)
    assert wait_empty(gated.server.tmp_dir, timeout=20) == []


def _large_series() -> bytes:
    """200 axial 512x512 DICOM slices of a smooth head with a bright lesion through ~190 of them: a small
    zip whose DICOM SEG answer (one bit per voxel of every frame with lesion; empty frames are left out)
    is about 6 MB, more than loopback socket buffers (up to 4 MB sent, 4 KB received) hold for a client
    that does not read."""
    z, y, x = np.ogrid[:200, :512, :512]
    head = ((z - 100) / 98.0) ** 2 + ((y - 256) / 230.0) ** 2 + ((x - 256) / 200.0) ** 2 <= 1
    lesion = ((z - 100) / 97.0) ** 2 + ((y - 200) / 50.0) ** 2 + ((x - 330) / 50.0) ** 2 <= 1
    volume = np.where(head, np.where(lesion, 300, 100), 0).astype(np.float32)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.6, 0.6, 1.0))
    return zip_of([(f"{i:03d}.dcm", f) for i, f in enumerate(series_from_image(image))])


def test_a_client_that_disconnects_mid_download_leaves_nothing_staged(gated):
    """The answer (a DICOM SEG streamed from the staging directory) is cut off after its first bytes: the
    client reads the status line, stops reading (the server blocks on a full socket, the staging directory
    still there), then goes away."""
    study = _large_series()
    sock, start = _request(gated.server.url, len(study), query="?format=dicom-seg", rcvbuf=4096)
    with sock:
        sock.sendall(start + study + _epilogue())
        first = sock.recv(256)
        assert first.startswith(b"HTTP/1.1 200"), first
        assert b"application/dicom" in first or len(first) == 256
        time.sleep(1.0)  # the server cannot finish: the answer does not fit in the buffers of a stalled client
        assert len(os.listdir(gated.server.tmp_dir)) == 1, "the whole answer was sent: not a mid-download test"
    assert wait_empty(gated.server.tmp_dir, timeout=20) == []
