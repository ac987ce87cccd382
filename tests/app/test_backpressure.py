"""Backpressure, checked on the server's state rather than on timing: with the one inference slot held
(the ``gated`` model waits for the test) and the one waiting place taken, the next request gets 503 +
Retry-After + a JSON reason at once, the held ones finish when released, and the gauges return to zero."""

from __future__ import annotations

import os
import threading

import httpx
import SimpleITK as sitk

from tests.conftest import wait_empty
from tests.helpers import synthetic_head


def _study(tmp_path) -> bytes:
    head, _ = synthetic_head()
    sitk.WriteImage(head, str(tmp_path / "head.nii.gz"))
    return (tmp_path / "head.nii.gz").read_bytes()


def test_full_queue_gets_503_with_retry_after_and_the_held_requests_finish(gated, tmp_path):
    study = _study(tmp_path)
    results: dict[str, httpx.Response] = {}

    def post(key: str) -> None:
        with gated.server.client() as client:
            results[key] = client.post("/segment", params={"format": "json"}, files={"flair": ("h.nii.gz", study)})

    workers = {key: threading.Thread(target=post, args=(key,)) for key in ("running", "queued")}
    gated.hold()
    try:
        workers["running"].start()
        gated.wait_metric("seg_inferences_in_flight", 1)  # holds the slot
        workers["queued"].start()
        gated.wait_metric("seg_queue_depth", 1)  # holds the waiting place
        assert len(os.listdir(gated.server.tmp_dir)) == 2  # both staged, nothing else
        with gated.server.client() as client:
            refused = client.post("/segment", params={"format": "json"}, files={"flair": ("h.nii.gz", study)})
            assert client.get("/healthz").status_code == 200  # the event loop answers while both wait
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "busy" and len(refused.json()["detail"]) > 10
        assert int(refused.headers["retry-after"]) > 0
        assert len(os.listdir(gated.server.tmp_dir)) == 2  # the refused request's staging is gone already
        assert gated.metric("seg_queue_depth") == 1 and gated.metric("seg_inferences_in_flight") == 1
    finally:
        gated.release()
        for worker in workers.values():
            worker.join(timeout=120)
    assert results["running"].status_code == 200 and results["queued"].status_code == 200
    assert results["running"].json()["tumour_voxels"] > 0
    assert gated.metric("seg_queue_depth") == 0 and gated.metric("seg_inferences_in_flight") == 0
    metrics = httpx.get(gated.server.url + "/metrics").text
    assert 'seg_http_requests_total{route="/segment",status="503"}' in metrics
    assert wait_empty(gated.server.tmp_dir) == []


def test_health_answers_while_a_study_holds_the_inference_slot(gated, tmp_path):
    """Replaces "count /healthz answers during a real inference": the slot is held until released, so the
    answers are given during inference by construction."""
    study = _study(tmp_path)
    result = {}

    def post() -> None:
        with gated.server.client() as client:
            result["r"] = client.post("/segment", files={"flair": ("h.nii.gz", study)})

    worker = threading.Thread(target=post)
    gated.hold()
    try:
        worker.start()
        gated.wait_metric("seg_inferences_in_flight", 1)
        with httpx.Client(base_url=gated.server.url, timeout=10) as client:
            for _ in range(3):
                assert client.get("/healthz").json() == {"status": "ok"}
            assert client.get("/readyz").status_code == 200
        assert worker.is_alive() and "r" not in result  # still segmenting
    finally:
        gated.release()
        worker.join(timeout=120)
    assert result["r"].status_code == 200
    assert wait_empty(gated.server.tmp_dir) == []
