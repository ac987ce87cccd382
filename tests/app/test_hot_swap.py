"""Publishing versions into a server under load: zero failed requests, answers move 1 -> 2, never to 3.

A real server (uvicorn on loopback, polling every 0.5 s) serves a tiny real SavedModel, ``swap`` v1, to
several concurrent clients. Mid-run the test publishes v2 (same graph, lower threshold: it marks ~125x
more voxels) and then a corrupt v3, both atomically, as ``training.export`` publishes. Each answer's
voxel count is compared with what its ``X-Model-Version`` computes in this process, so the header is
checked against the content, not trusted.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import SimpleITK as sitk

from segcore.pipeline import segment
from segcore.runner import SavedModelRunner
from tests.conftest import start_server, stop_server
from tests.helpers import make_broken_version, make_threshold_model, synthetic_head

CLIENTS = 4
PHASE_SECONDS = 6.0  # load kept on v1, then on v2, then after the corrupt v3: ~20 s in all
OFFSETS = {1: 2.0, 2: 0.0}  # threshold offsets of v1 and v2 (see tests.helpers.make_threshold_model)

logger = logging.getLogger(__name__)  # what the run measured, shown with pytest --log-cli-level=INFO


@dataclass
class Outcome:
    started: float
    finished: float
    status: int | None  # None: the request raised (connection reset, timeout)
    version: int | None = None
    voxels: int | None = None
    error: str = ""


def _nifti_bytes(image: sitk.Image, tmp: Path) -> bytes:
    path = tmp / "head.nii.gz"
    sitk.WriteImage(image, str(path))
    return path.read_bytes()


def _client_loop(url: str, payload: bytes, stop: threading.Event, out: list[Outcome]) -> None:
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.is_set():
            started = time.monotonic()
            try:
                r = client.post(
                    "/segment", params={"format": "json"}, files={"flair": ("head.nii.gz", io.BytesIO(payload))}
                )
            except httpx.HTTPError as exc:
                out.append(Outcome(started, time.monotonic(), None, error=repr(exc)))
                continue
            outcome = Outcome(started, time.monotonic(), r.status_code)
            if r.status_code == 200:
                outcome.version = int(r.headers["x-model-version"])
                outcome.voxels = r.json()["tumour_voxels"]
            else:
                outcome.error = r.text[:300]
            out.append(outcome)


def _wait_for(predicate, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_publishing_under_load_swaps_without_a_failed_request(tmp_path):
    models = tmp_path / "models"
    make_threshold_model(models, name="swap", version=1, offset=OFFSETS[1], warmup=True)
    head, _ = synthetic_head()
    payload = _nifti_bytes(head, tmp_path)

    # What each version computes, independently of the server: the content check behind the header.
    expected: dict[int, int] = {}
    scratch = tmp_path / "expected"
    for version, offset in OFFSETS.items():
        runner = SavedModelRunner(make_threshold_model(scratch, name="swap", version=version, offset=offset))
        expected[version] = int(sitk.GetArrayFromImage(segment({"flair": head}, runner).mask).sum())
    assert expected[1] > 0 and expected[2] > 10 * expected[1]

    server = start_server(
        tmp_path,
        {
            "SEG_MODELS_DIR": str(models),
            "SEG_DEFAULT_MODEL": "swap",
            "SEG_POLL_SECONDS": "0.5",
            "SEG_KEEP_VERSIONS": "2",
            "SEG_QUEUE_SIZE": str(2 * CLIENTS),
        },
    )
    outcomes: list[Outcome] = []
    stop = threading.Event()
    clients = [
        threading.Thread(target=_client_loop, args=(server.url, payload, stop, outcomes), daemon=True)
        for _ in range(CLIENTS)
    ]
    try:
        load_started = time.monotonic()
        for thread in clients:
            thread.start()
        _wait_for(lambda: sum(o.version == 1 for o in outcomes) >= 2 * CLIENTS, 30, "answers from v1")
        time.sleep(max(0.0, PHASE_SECONDS - (time.monotonic() - load_started)))

        make_threshold_model(models, name="swap", version=2, offset=OFFSETS[2], warmup=True)
        _wait_for(lambda: any(o.version == 2 for o in outcomes), 30, "the first answer from v2")
        first_v2 = min(o.finished for o in outcomes if o.version == 2)
        time.sleep(PHASE_SECONDS)

        make_broken_version(models, "swap", 3, "corrupt_saved_model")
        with server.client() as client:
            v3_failed = _wait_for(
                lambda: any(
                    v["version"] == 3 and v["state"] == "failed" for v in client.get("/models/swap").json()["versions"]
                ),
                30,
                "version 3 to be reported as failed",
            )
        time.sleep(PHASE_SECONDS)  # keep the load on after the failure: answers must stay on v2
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=60)
    load_seconds = time.monotonic() - load_started

    try:
        failures = [o for o in outcomes if o.status != 200]
        assert failures == [], failures[:5]
        assert {o.version for o in outcomes} == {1, 2}
        wrong = [o for o in outcomes if o.voxels != expected[o.version]]
        assert wrong == [], f"X-Model-Version disagrees with the content: {wrong[:5]} expected {expected}"
        # Resolved after the swap (they started once a v2 answer had come back): all v2.
        assert {o.version for o in outcomes if o.started > first_v2} == {2}
        assert sum(o.started > v3_failed for o in outcomes) >= CLIENTS
        logger.info(
            f"hot swap: {len(outcomes)} requests in {load_seconds:.1f} s from {CLIENTS} clients, "
            f"{sum(o.version == 1 for o in outcomes)} on v1, {sum(o.version == 2 for o in outcomes)} on v2, "
            f"0 failed"
        )

        with server.client() as client:
            described = client.get("/models/swap").json()
            assert described["served_version"] == 2
            states = {v["version"]: v for v in described["versions"]}
            assert {v: s["state"] for v, s in states.items()} == {1: "loaded", 2: "serving", 3: "failed"}
            assert "saved_model.pb" in states[3]["error"]
            logger.info(f"v2 load_ms={states[2]['load_ms']} warmup_ms={states[2]['warmup_ms']}")

            # The previous version is still loaded (SEG_KEEP_VERSIONS=2) and answers when asked for.
            r = client.post(
                "/segment", params={"format": "json", "version": 1}, files={"flair": ("head.nii.gz", payload)}
            )
            assert r.status_code == 200, r.text
            assert r.headers["x-model-version"] == "1" and r.json()["tumour_voxels"] == expected[1]

            # Removing its directory unloads it; asking for it is then a 404, not a 500.
            shutil.rmtree(models / "swap" / "1")
            assert client.post("/models/swap/reload").status_code == 200
            r = client.post(
                "/segment", params={"format": "json", "version": 1}, files={"flair": ("head.nii.gz", payload)}
            )
            assert r.status_code == 404 and r.json()["error"] == "unknown_model"
            assert {v["version"]: v["state"] for v in client.get("/models/swap").json()["versions"]} == {
                2: "serving",
                3: "failed",
            }

            text = client.get("/metrics").text
            assert re.search(r'^seg_model_load_failures_total\{model="swap"\} 1\.0$', text, re.M), text
            assert re.search(r'^seg_model_served_version\{model="swap"\} 2\.0$', text, re.M)
    finally:
        stop_server(server)
    log = server.log()
    assert "model_served model=swap version=2 previous=1" in log
    assert re.search(r"model_load_failed model=swap version=3 error=\S+", log)
    assert "model_served model=swap version=3" not in log
    assert "model_retired model=swap version=1 reason=removed" in log
    assert "model_unloaded model=swap version=1" in log
