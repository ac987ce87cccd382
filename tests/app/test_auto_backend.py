"""SEG_BACKEND=auto (the default): every available backend runs the warm-up requests, one that answers
differently from TensorFlow is refused, the fastest of the rest serves, and GET /models/{name} says so.

The wrong answers come from test-only runners registered as backends through
``app.runners.backends.register`` (the same table the service uses); nothing the service ships is mocked.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from app.config import Settings
from app.registry import ModelRegistry
from app.runners.auto import Tolerance, choose
from app.runners.backends import BACKENDS, Backend, register, runner_factory
from segcore.card import ModelCard
from segcore.runner import Runner, SavedModelRunner
from tests.conftest import BUNDLED_MODEL, bundled_version_dir, start_server, stop_server
from tests.helpers import synthetic_head


class ShiftedRunner(Runner):
    """TensorFlow's answer moved by ``shift`` in probability (clipped to [0, 1])."""

    def __init__(self, version_dir: Path, card: ModelCard, shift: float) -> None:
        self.card = card
        self._tf = SavedModelRunner(version_dir, card)
        self._shift = shift

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.clip(self._tf.predict(batch) + self._shift, 0.0, 1.0).astype(np.float32)


class InstantWrongRunner(Runner):
    """The fastest backend imaginable, and wrong: certain of tumour everywhere."""

    def __init__(self, version_dir: Path, card: ModelCard) -> None:
        self.card = card

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.ones((*batch.shape[:-1], self.card.output_channels), dtype=np.float32)


def _shifted(shift: float):
    return lambda settings: lambda version_dir, card: ShiftedRunner(version_dir, card, shift)


@pytest.fixture
def test_backends() -> Iterator[list[str]]:
    rows = [
        Backend("nudged", "TensorFlow + 1e-4 (inside the tolerance)", "dev", _shifted(1e-4)),
        Backend("shifted", "TensorFlow + 0.3 (outside the tolerance)", "dev", _shifted(0.3)),
        Backend("instant", "answers 1.0 at once", "dev", lambda settings: InstantWrongRunner),
    ]
    for row in rows:
        register(row)
    try:
        yield [row.name for row in rows]
    finally:
        for row in rows:
            BACKENDS.pop(row.name, None)


def _models_dir(tmp_path: Path) -> Path:
    """A models directory holding only the bundled model's newest version (one version, one selection)."""
    newest = bundled_version_dir()
    (tmp_path / "models" / BUNDLED_MODEL).mkdir(parents=True)
    (tmp_path / "models" / BUNDLED_MODEL / newest.name).symlink_to(newest, target_is_directory=True)
    return tmp_path / "models"


def test_auto_refuses_answers_outside_the_tolerance_and_serves_the_fastest_of_the_rest(tmp_path, test_backends):
    settings = Settings(backend="auto", intra_op_threads=2, inter_op_threads=1, cache_dir=tmp_path / "cache")
    factory = runner_factory(settings)
    registry = ModelRegistry(_models_dir(tmp_path), factory)
    registry.refresh()
    (version,) = registry.describe(BUNDLED_MODEL)["versions"]
    assert version["state"] == "serving", version
    trials = {t["backend"]: t for t in version["backend_selection"]}
    openvino = {"openvino", "openvino-int8"} if importlib.util.find_spec("openvino") else set()
    expected = {"inprocess", *test_backends} | openvino
    assert set(trials) == expected  # tfserving is not tried: no SEG_TFSERVING_TARGET

    tol = Tolerance()
    for name in ("shifted", "instant"):
        assert trials[name]["verdict"] == "refused", trials[name]
        assert trials[name]["max_abs_diff"] > tol.max_abs_probability
        assert "differs from TensorFlow" in trials[name]["reason"]
        assert "warmup_ms" not in trials[name]  # a refused backend is never timed, so never chosen
    assert trials["nudged"]["verdict"] in ("accepted", "chosen") and trials["nudged"]["max_abs_diff"] < 1e-3
    assert trials["inprocess"]["max_abs_diff"] == 0.0

    contenders = {n: t for n, t in trials.items() if t["verdict"] in ("accepted", "chosen")}
    (chosen,) = [n for n, t in contenders.items() if t["verdict"] == "chosen"]
    assert all(t["warmup_ms"] > 0 and t["load_ms"] > 0 for t in contenders.values())
    for t in contenders.values():  # every timed round is reported; the fastest is the pass time
        assert len(t["rounds_ms"]) == 3 and t["warmup_ms"] == min(t["rounds_ms"]), t
    # The served one is what the stated rule picks from the reported numbers (a 10 % margin by default).
    assert chosen == choose({n: (t["load_ms"], t["warmup_ms"]) for n, t in contenders.items()}, margin=0.1)
    served = registry.get(BUNDLED_MODEL)
    assert version["backend"] == chosen == served.runner.backend
    if openvino:  # a fresh cache: converted and written now; the INT8 IR is read from the version itself
        assert trials["openvino"]["cache"] == "miss" and trials["openvino-int8"]["cache"] == "hit"
        assert "cache" not in trials["inprocess"]
    factory.close()


def test_a_backend_slower_to_start_must_pass_faster_by_the_margin():
    """The choice rule on its own: timing noise within the margin never flips it to the costlier start."""
    timings = {"inprocess": (900.0, 20.0), "openvino": (1500.0, 19.0), "openvino-int8": (1200.0, 30.0)}
    assert choose(timings, margin=0.1) == "inprocess"  # 5 % faster, 600 ms slower to start: not worth it
    assert choose(timings, margin=0.0) == "openvino"  # no margin: simply the fastest pass
    assert choose(timings | {"openvino": (1500.0, 8.0)}, margin=0.1) == "openvino"  # 2.5x faster: chosen
    assert choose(timings | {"openvino": (500.0, 19.0)}, margin=0.1) == "openvino"  # quicker to start too
    with pytest.raises(ValueError):
        choose({}, margin=0.1)


def test_auto_fails_the_version_when_tensorflow_itself_cannot_run_it(tmp_path):
    """No reference, no trust: a version whose SavedModel TensorFlow cannot load is failed, not served by
    another runtime."""
    from tests.helpers import make_broken_version

    models = tmp_path / "models"
    make_broken_version(models, "broken", 1, "wrong_signature")
    registry = ModelRegistry(models, runner_factory(Settings(backend="auto", intra_op_threads=2)))
    registry.refresh()
    (version,) = registry.describe("broken")["versions"]
    assert version["state"] == "failed" and "reference backend inprocess failed" in version["error"], version


def test_the_default_server_chooses_a_backend_and_reports_its_timings(tmp_path):
    assert Settings.model_fields["backend"].default == "auto"
    head, _ = synthetic_head()
    study = tmp_path / "head.nii.gz"
    sitk.WriteImage(head, str(study))
    srv = start_server(tmp_path, {"SEG_MODELS_DIR": str(_models_dir(tmp_path))})  # no SEG_BACKEND: the default
    try:
        with srv.client() as client:
            described = client.get(f"/models/{BUNDLED_MODEL}").json()
            started = time.perf_counter()
            r = client.post("/segment", files={"flair": ("head.nii.gz", study.read_bytes())})
            assert r.status_code == 200, r.text or (time.perf_counter() - started)
    finally:
        stop_server(srv)
    (version,) = described["versions"]
    trials = {t["backend"]: t for t in version["backend_selection"]}
    assert "inprocess" in trials and version["backend"] in trials
    assert trials[version["backend"]]["verdict"] == "chosen"
    assert all(t["warmup_ms"] > 0 for t in trials.values() if t["verdict"] in ("accepted", "chosen"))
    if "openvino" in trials:  # SEG_CACHE_DIR's default: converted on this machine's first start only
        assert trials["openvino"]["cache"] in ("hit", "miss"), trials["openvino"]
    assert f"auto_backend model={BUNDLED_MODEL} version={version['version']} chosen={version['backend']}" in srv.log()
