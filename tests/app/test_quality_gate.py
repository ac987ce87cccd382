"""The quality gate: a published version worse than the served one is loaded but not served, listed as
refused with the reason, until an operator promotes it; the decision survives a restart.

The gate's rules are checked on cards directly; the behaviour on a real server (uvicorn on loopback,
polling every 0.5 s) with real SavedModels (``tests.helpers.make_threshold_model``, whose two versions
give measurably different masks), under load from concurrent clients, with zero failed requests.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import SimpleITK as sitk

from app.quality_gate import PROMOTIONS_FILE, compare, verdicts
from segcore.card import ModelCard
from tests.conftest import REPO, start_server, stop_server
from tests.helpers import make_threshold_model, synthetic_head


def _card(version: int, dice: dict[str, float]) -> ModelCard:
    return ModelCard(
        name="m", version=version, dims=2, modalities=["flair"], spacing_mm=[1, 1, 1], labels={1: "t"},
        validation_dice=dice,
    )  # fmt: skip


def test_the_gate_compares_on_the_validation_cases_both_versions_report():
    served = _card(1, {"a": 0.90, "b": 0.80, "c": 0.70, "mean": 0.80})
    # Only case b in common: 0.79 vs 0.80 is worse, although its own mean (0.85) is higher.
    worse = compare(_card(2, {"b": 0.79, "d": 0.91, "mean": 0.85}), served, tolerance=0.0)
    assert not worse.promoted and "b" in worse.reason and "0.7900 vs 0.8000" in worse.reason
    assert compare(_card(2, {"b": 0.79, "d": 0.91, "mean": 0.85}), served, tolerance=0.02).promoted
    assert compare(_card(2, {"a": 0.9, "b": 0.8, "c": 0.7}), served, tolerance=0.0).promoted  # equal is enough
    # No case in common: the means.
    assert not compare(_card(2, {"x": 0.5, "mean": 0.5}), served, 0.0).promoted
    assert compare(_card(2, {"x": 0.81, "mean": 0.81}), served, 0.0).promoted
    # No validation results: refused against a version that has some, promoted when neither has.
    refused = compare(_card(2, {}), served, 0.0)
    assert not refused.promoted and "no validation results" in refused.reason
    assert compare(_card(2, {}), _card(1, {}), 0.0).promoted


def test_each_version_is_judged_against_the_newest_promoted_one_before_it():
    cards = {1: _card(1, {"a": 0.8}), 2: _card(2, {"a": 0.5}), 3: _card(3, {"a": 0.79}), 4: _card(4, {"a": 0.81})}
    judged = verdicts(cards, operator=set(), tolerance=0.0)
    assert {v: d.promoted for v, d in judged.items()} == {1: True, 2: False, 3: False, 4: True}
    assert judged[1].by == "first" and "version 1" in judged[3].reason
    # An operator's promotion of 2 makes it the incumbent: 3 (0.79 > 0.5) passes, and so does 4.
    judged = verdicts(cards, operator={2}, tolerance=0.0)
    assert {v: d.promoted for v, d in judged.items()} == {1: True, 2: True, 3: True, 4: True}
    assert judged[2].by == "operator"
    # A version that failed to load is nobody's incumbent.
    assert 1 not in verdicts(cards, set(), 0.0, skip={1}) and verdicts(cards, set(), 0.0, skip={1})[2].by == "first"


def test_a_recorded_promotion_says_why_the_gate_was_overruled(tmp_path):
    """The bundled 2D model ships a promotion of version 2 with its reason: the verdict repeats it, and
    the bundled file itself promotes version 2 over the gate's refusal."""
    from app.quality_gate import read_operator_promotions

    (tmp_path / PROMOTIONS_FILE).write_text(json.dumps({"promoted": {"2": {"at": "t", "reason": "robust"}}}))
    cards = {1: _card(1, {"a": 0.8}), 2: _card(2, {"a": 0.7})}
    judged = verdicts(cards, read_operator_promotions(tmp_path), 0.0)
    assert judged[2].promoted and judged[2].by == "operator" and judged[2].reason.endswith(": robust")
    assert verdicts(cards, {2}, 0.0)[2].reason == "promoted explicitly by an operator"

    bundled = REPO / "models" / "brats-wt-flair"
    bundled_cards = {int(p.name): ModelCard.load(p) for p in bundled.iterdir() if p.name.isdigit()}
    recorded = read_operator_promotions(bundled)
    assert not verdicts(bundled_cards, set(), 0.0)[2].promoted, "the gate alone refuses version 2"
    served = verdicts(bundled_cards, recorded, 0.0)[2]
    assert served.promoted and "TCIA05" in served.reason


def _client_loop(url: str, payload: bytes, stop: threading.Event, out: list[tuple[int, str | None]]) -> None:
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.is_set():
            try:
                r = client.post(
                    "/segment", params={"format": "json"}, files={"flair": ("h.nii.gz", io.BytesIO(payload))}
                )
                out.append((r.status_code, r.headers.get("x-model-version")))
            except httpx.HTTPError as exc:
                out.append((0, repr(exc)))


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def _states(client: httpx.Client) -> dict[int, dict]:
    return {v["version"]: v for v in client.get("/models/gate").json()["versions"]}


def test_a_worse_version_is_refused_under_load_then_promoted_by_an_operator(tmp_path):
    models = tmp_path / "models"
    make_threshold_model(models, name="gate", version=1, offset=2.0, warmup=True, validation_dice={"case_6": 0.91})
    head, _ = synthetic_head()
    sitk.WriteImage(head, str(tmp_path / "head.nii.gz"))
    payload = (tmp_path / "head.nii.gz").read_bytes()
    env = {"SEG_MODELS_DIR": str(models), "SEG_DEFAULT_MODEL": "gate", "SEG_POLL_SECONDS": "0.5"}
    server = start_server(tmp_path / "run1", env)
    outcomes: list[tuple[int, str | None]] = []
    stop = threading.Event()
    clients = [threading.Thread(target=_client_loop, args=(server.url, payload, stop, outcomes)) for _ in range(3)]
    try:
        for thread in clients:
            thread.start()
        # Version 1 is answering before version 2 appears (on a loaded machine the first answers can take
        # longer than publishing and refusing version 2 does).
        _wait_for(lambda: len(outcomes) >= 3, 120, "answers from version 1")
        # Version 2 answers differently (lower threshold) and validated worse: published, loaded, refused.
        make_threshold_model(models, name="gate", version=2, offset=0.0, warmup=True, validation_dice={"case_6": 0.40})
        with server.client() as client:
            _wait_for(lambda: _states(client).get(2, {}).get("state") == "refused", 30, "version 2 to be refused")
            refused_at = len(outcomes)
            time.sleep(3)  # load continues on version 1
            v2 = _states(client)[2]
            assert v2["loaded"] and v2["promotion"] == {"promoted": False, "by": "gate", "reason": v2["reason"]}
            assert "worse than version 1" in v2["reason"] and "0.4000 vs 0.9100" in v2["reason"], v2
            assert client.get("/models/gate").json()["served_version"] == 1
            # Loaded, so an operator can try it before deciding.
            r = client.post("/segment", params={"version": 2, "format": "json"}, files={"flair": ("h.nii.gz", payload)})
            assert r.status_code == 200 and r.headers["x-model-version"] == "2"

            # The operator's CLI: promoted, served at once, recorded next to the model.
            cli = subprocess.run(
                [sys.executable, "-m", "app.cli.promote", "gate", "2", "--url", server.url],
                capture_output=True, text=True, timeout=120, cwd=REPO,
            )  # fmt: skip
            assert cli.returncode == 0, cli.stderr
            assert "served_version 2" in cli.stdout and "version 1: loaded" in cli.stdout, cli.stdout
            promoted_at = len(outcomes)
            _wait_for(lambda: len(outcomes) >= promoted_at + 6, 60, "answers after the promotion")
            assert json.loads((models / "gate" / PROMOTIONS_FILE).read_text())["promoted"].keys() == {"2"}
            # Unknown versions are a JSON 404, and the CLI says so with a non-zero status.
            r = client.post("/models/gate/versions/9/promote")
            assert r.status_code == 404 and r.json()["error"] == "unknown_version"
            bad = subprocess.run(
                [sys.executable, "-m", "app.cli.promote", "gate", "9", "--url", server.url],
                capture_output=True, text=True, timeout=60, cwd=REPO,
            )  # fmt: skip
            assert bad.returncode == 1 and "unknown_version" in bad.stderr
            metrics = client.get("/metrics").text
            assert 'seg_model_refused_versions_total{model="gate"} 1.0' in metrics
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=60)
        stop_server(server)

    assert [o for o in outcomes if o[0] != 200] == [], "a request failed during refusal or promotion"
    assert {v for _, v in outcomes[:refused_at]} == {"1"}
    assert {v for _, v in outcomes[refused_at:promoted_at]} <= {"1"}, "a refused version answered by default"
    assert {v for _, v in outcomes[promoted_at + 3 :]} == {"2"}
    log = server.log()
    assert "model_refused model=gate version=2" in log and "model_promoted model=gate version=2 by=operator" in log

    # After a restart, the operator's decision stands (and is not re-judged by the gate).
    server = start_server(tmp_path / "run2", env)
    try:
        with server.client() as client:
            described = client.get("/models/gate").json()
            assert described["served_version"] == 2
            assert _states(client)[2]["promotion"]["by"] == "operator"
    finally:
        stop_server(server)
    assert Path(models / "gate" / "2").is_dir()


def test_a_deferred_new_version_leaves_the_served_one_serving(tmp_path):
    """TF Serving loads a new version on its own schedule: until it has, the gate's newest promoted
    version is not loadable yet, and the one already served must keep serving (not nothing)."""
    from app.registry import ModelRegistry
    from segcore.runner import RetryableLoadError, SavedModelRunner

    class NotYet(RetryableLoadError):
        pass

    ready = {1}

    def factory(path, card):
        if card.version not in ready:
            raise NotYet(f"version {card.version} not loaded by the backend yet")
        return SavedModelRunner(path, card)

    make_threshold_model(tmp_path, name="m", version=1, validation_dice={"a": 0.8})
    registry = ModelRegistry(tmp_path, factory)
    registry.refresh()
    assert registry.get("m").version == 1
    make_threshold_model(tmp_path, name="m", version=2, validation_dice={"a": 0.9})
    registry.refresh()
    assert registry.get("m").version == 1  # deferred: still serving 1
    ready.add(2)
    registry.refresh()
    assert registry.get("m").version == 2
    described = registry.describe("m")
    assert {v["version"]: v["promotion"]["by"] for v in described["versions"]} == {1: "first", 2: "gate"}
