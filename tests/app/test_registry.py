"""The model registry on real (tiny) SavedModels: version policy, failures, removal, unloading.

These drive :class:`app.registry.ModelRegistry` directly; the end-to-end swap under load is in
``test_hot_swap.py``.
"""

from __future__ import annotations

import gc
import logging
import shutil

import numpy as np
import pytest
from prometheus_client import REGISTRY

from app.config import Settings
from app.registry import ModelRegistry, UnknownModel
from segcore.runner import RetryableLoadError, SavedModelRunner
from tests.helpers import FLAWS, make_broken_version, make_threshold_model


def _failures(name: str) -> float:
    return REGISTRY.get_sample_value("seg_model_load_failures_total", {"model": name}) or 0.0


def _states(registry: ModelRegistry, name: str) -> dict[int, str]:
    return {v["version"]: v["state"] for v in registry.describe(name)["versions"]}


@pytest.mark.parametrize("flaw", FLAWS)
def test_a_broken_version_never_replaces_the_served_one(tmp_path, caplog, flaw):
    name = f"broken-{flaw.replace('_', '-')}"
    make_threshold_model(tmp_path, name=name, version=1)
    registry = ModelRegistry(tmp_path, SavedModelRunner)
    registry.refresh()
    assert registry.get(name).version == 1
    before = _failures(name)

    make_broken_version(tmp_path, name, 2, flaw)
    with caplog.at_level(logging.ERROR, logger="app.registry"):
        registry.refresh()
        registry.refresh()  # a failed version is not retried while its directory is unchanged

    assert registry.get(name).version == 1
    with pytest.raises(UnknownModel):
        registry.get(name, 2)
    described = registry.describe(name)
    assert described["served_version"] == 1
    (failed,) = [v for v in described["versions"] if v["version"] == 2]
    cause = {
        "corrupt_saved_model": "saved_model.pb",
        "invalid_card": "ModelCard",
        "wrong_signature": "signature takes ['volume']",
        "wrong_output_channels": "warm-up returned shape",
    }[flaw]
    assert failed["state"] == "failed" and cause in failed["error"]
    assert _failures(name) == before + 1
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model_load_failed")]
    assert len(logged) == 1 and logged[0] == f"model_load_failed model={name} version=2 error={failed['error']}"


def test_latest_versions_stay_loaded_and_a_removed_one_unloads_after_its_last_request(tmp_path, caplog):
    for version in (1, 2, 3):
        make_threshold_model(tmp_path, name="kept", version=version)
    registry = ModelRegistry(tmp_path, SavedModelRunner, keep_versions=2)
    registry.refresh()
    assert registry.get("kept").version == 3
    assert registry.get("kept", 2).version == 2  # version=N works for every loaded version
    with pytest.raises(UnknownModel):
        registry.get("kept", 1)  # outside the policy: on disk but not loaded
    assert _states(registry, "kept") == {1: "available", 2: "loaded", 3: "serving"}

    in_flight = registry.get("kept")  # a request still running on version 3
    shutil.rmtree(tmp_path / "kept" / "3")
    with caplog.at_level(logging.INFO, logger="app.registry"):
        registry.refresh()
        assert registry.get("kept").version == 2
        assert registry.get("kept", 1).version == 1  # now among the newest two on disk
        assert _states(registry, "kept") == {1: "loaded", 2: "serving", 3: "unloading"}
        assert in_flight.runner.predict(_batch()).shape == (1, 16, 16, 1)  # the request can still finish
        assert not any("model_unloaded" in r.getMessage() for r in caplog.records)
        del in_flight
        gc.collect()
    messages = [r.getMessage() for r in caplog.records]
    assert "model_retired model=kept version=3 reason=removed" in messages
    assert "model_unloaded model=kept version=3" in messages
    assert "model_served model=kept version=2 previous=3" in messages
    assert _states(registry, "kept") == {1: "loaded", 2: "serving"}


def test_a_pinned_version_is_served_whatever_is_published(tmp_path, caplog):
    make_threshold_model(tmp_path, name="pinned", version=1)
    make_threshold_model(tmp_path, name="pinned", version=2)
    registry = ModelRegistry(tmp_path, SavedModelRunner, keep_versions=1, pinned={"pinned": 1})
    registry.refresh()
    assert registry.get("pinned").version == 1
    assert registry.get("pinned", 2).version == 2  # the newest stays loaded beside the pin
    make_threshold_model(tmp_path, name="pinned", version=3)
    registry.refresh()
    assert registry.get("pinned").version == 1
    assert _states(registry, "pinned") == {1: "serving", 2: "available", 3: "loaded"}
    assert registry.describe("pinned")["policy"] == {"pinned": 1}

    missing = ModelRegistry(tmp_path, SavedModelRunner, pinned={"pinned": 7})
    with caplog.at_level(logging.ERROR, logger="app.registry"):
        missing.refresh()
    assert not missing.ready()  # a pin is explicit: no silent fallback to another version
    assert "pinned_version_unavailable model=pinned version=7 on_disk=[1, 2, 3]" in caplog.text


def test_a_republished_failed_version_is_loaded(tmp_path):
    make_threshold_model(tmp_path, name="again", version=1)
    make_broken_version(tmp_path, "again", 2, "corrupt_saved_model")
    registry = ModelRegistry(tmp_path, SavedModelRunner)
    registry.refresh()
    assert _states(registry, "again")[2] == "failed"
    shutil.rmtree(tmp_path / "again" / "2")
    make_threshold_model(tmp_path, name="again", version=2)
    registry.refresh()
    assert registry.get("again").version == 2
    assert _states(registry, "again") == {1: "loaded", 2: "serving"}


def test_a_retryable_backend_error_defers_the_version_instead_of_failing_it(tmp_path):
    """TF Serving loads a new version on its own schedule: 'not loaded yet' must not brand it as failed."""

    class NotYet(RetryableLoadError):
        pass

    attempts: list[int] = []

    def factory(path, card):
        attempts.append(card.version)
        if len(attempts) == 1:
            raise NotYet("servable not found (yet)")
        return SavedModelRunner(path, card)

    make_threshold_model(tmp_path, name="later", version=1)
    registry = ModelRegistry(tmp_path, factory)
    registry.refresh()
    assert not registry.ready()
    assert _states(registry, "later") == {1: "available"}
    registry.refresh()
    assert registry.get("later").version == 1
    assert attempts == [1, 1]


def test_pinned_versions_setting_accepts_compose_and_json_forms(monkeypatch):
    monkeypatch.setenv("SEG_PINNED_VERSIONS", "brats-wt-flair=3, other=1")
    assert Settings().pinned_versions == {"brats-wt-flair": 3, "other": 1}
    monkeypatch.setenv("SEG_PINNED_VERSIONS", '{"brats-wt-flair": 2}')
    assert Settings().pinned_versions == {"brats-wt-flair": 2}
    monkeypatch.setenv("SEG_PINNED_VERSIONS", "brats-wt-flair")
    with pytest.raises(ValueError, match='look like "name=3"'):
        Settings()
    monkeypatch.setenv("SEG_PINNED_VERSIONS", "brats-wt-flair=0")
    with pytest.raises(ValueError, match="positive"):
        Settings()


def _batch() -> np.ndarray:
    return np.zeros((1, 16, 16, 1), dtype=np.float32)
