"""The load tester: its arithmetic on known samples, and a real run against the real server."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from app.cli.loadtest import Sample, aggregate, is_loopback, segment_url
from tests.conftest import REPO
from tests.helpers import synthetic_head


def test_aggregate_counts_backpressure_apart_and_takes_percentiles_of_successes():
    ok = [
        Sample(start_s=i, latency_s=float(i + 1), status=200, timings_ms={"infer": 10.0 * (i + 1)}) for i in range(10)
    ]
    busy = [Sample(start_s=0.5, latency_s=0.01, status=503, error="busy", retry_after="2")] * 3
    bad = [Sample(start_s=1.0, latency_s=0.02, status=422, error="bad"), Sample(2.0, 30.0, None, "ReadTimeout")]
    summary = aggregate(ok + busy + bad, wall_s=20.0)
    assert summary["requests"] == 15 and summary["ok"] == 10
    assert summary["by_status"] == {"200": 10, "422": 1, "503": 3, "transport_error": 1}
    assert summary["backpressure_503"] == 3
    assert summary["errors"] == {"422": 1, "transport_error": 1} and summary["error_count"] == 2
    assert summary["retry_after_on_503"] == ["2"]
    lat = summary["latency"]  # of the ten 200s only: 1..10 s (the 30 s timeout is not a latency)
    assert lat["p50_s"] == pytest.approx(np.percentile(np.arange(1, 11), 50))
    assert lat["p99_s"] == pytest.approx(np.percentile(np.arange(1, 11), 99))
    assert lat["max_s"] == 10.0 and lat["min_s"] == 1.0
    assert summary["throughput_rps"] == pytest.approx(0.5)
    assert summary["server_timings_ms_median"] == {"infer": pytest.approx(55.0)}


def test_urls_default_to_segment_and_only_loopback_is_accepted():
    assert segment_url("http://127.0.0.1:8000", "json") == "http://127.0.0.1:8000/segment?format=json"
    assert segment_url("http://localhost:8000/segment?format=png", "json") == "http://localhost:8000/segment?format=png"
    assert is_loopback("http://127.0.0.2:1") and is_loopback("http://[::1]:8000") and is_loopback("http://localhost")
    assert not is_loopback("http://10.0.0.5:8000") and not is_loopback("http://example.org")
    refused = subprocess.run(
        [sys.executable, "-m", "app.loadtest", "http://192.168.1.20:8000", "--modality", f"flair={__file__}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert refused.returncode == 2 and "not a loopback address" in refused.stderr


def test_cli_against_the_real_server_writes_consistent_json_and_png(server, tmp_path):
    head, _ = synthetic_head()
    study = tmp_path / "head.nii.gz"
    sitk.WriteImage(head, str(study))
    out = tmp_path / "load.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.loadtest",
            server.url,
            "--modality",
            f"flair={study}",
            "--concurrency",
            "2",
            "--requests",
            "5",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr + run.stdout
    report = json.loads(out.read_text())
    assert report["url"].endswith("/segment?format=json") and report["concurrency"] == 2
    assert report["requests"] == len(report["samples"]) == 5
    statuses = [s["status"] for s in report["samples"]]
    assert report["by_status"] == {"200": 5} and statuses == [200] * 5
    lat = report["latency"]
    assert 0 < lat["min_s"] <= lat["p50_s"] <= lat["p95_s"] <= lat["p99_s"] <= lat["max_s"]
    assert lat["max_s"] == pytest.approx(max(s["latency_s"] for s in report["samples"]), abs=1e-4)
    assert report["throughput_rps"] == pytest.approx(5 / report["wall_s"], rel=1e-3)
    # The service's own stage timings came back in every JSON answer, including the wait for a slot.
    assert set(report["server_timings_ms_median"]) >= {"read", "queue", "preprocess", "infer", "postprocess"}
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "5 requests, 5 ok, 0 x 503" in run.stdout
