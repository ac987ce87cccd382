"""Backpressure: with one inference slot and no waiting room, a burst gets 503 + Retry-After + a JSON
reason for what cannot be served now, the rest is served, and the server recovers afterwards."""

from __future__ import annotations

import asyncio
import re

import pytest
import SimpleITK as sitk

from app.cli.loadtest import run_load
from tests.conftest import start_server, stop_server
from tests.helpers import synthetic_head


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("busy")
    srv = start_server(tmp, {"SEG_MAX_CONCURRENT_INFERENCES": "1", "SEG_QUEUE_SIZE": "0", "SEG_MAX_UPLOAD_MB": "64"})
    yield srv
    stop_server(srv)


def _gauge(metrics_text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", metrics_text, flags=re.M)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


def test_burst_beyond_one_slot_gets_503_with_retry_after_then_recovers(busy_server, tmp_path):
    # Big enough that one segmentation (~100 brain slices) outlasts the others' upload and read.
    head, _ = synthetic_head(shape_zyx=(110, 192, 192))
    study = tmp_path / "head.nii"  # uncompressed: the burst arrives together
    sitk.WriteImage(head, str(study))
    files = {"flair": ("head.nii", study.read_bytes())}
    samples, _ = asyncio.run(
        run_load(busy_server.url + "/segment?format=json", files, concurrency=4, requests=4, duration_s=240)
    )
    statuses = sorted(s.status for s in samples)
    assert statuses.count(200) >= 1, statuses
    assert statuses.count(503) >= 1, statuses
    assert set(statuses) <= {200, 503}, statuses
    for s in samples:
        if s.status == 503:
            assert s.error == "busy"  # parsed from the JSON body {"error": "busy", "detail": ...}
            assert s.retry_after is not None and int(s.retry_after) > 0
    with busy_server.client() as client:
        assert client.get("/healthz").status_code == 200
        metrics = client.get("/metrics").text
        assert _gauge(metrics, "seg_queue_depth") == 0
        assert _gauge(metrics, "seg_inferences_in_flight") == 0
        assert 'seg_http_requests_total{route="/segment",status="503"}' in metrics
        again = client.post("/segment", params={"format": "json"}, files=files)  # recovered: served alone
    assert again.status_code == 200, again.text
    assert again.json()["timings_ms"]["queue"] < 1000
