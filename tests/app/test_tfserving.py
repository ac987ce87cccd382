"""``SEG_BACKEND=tfserving``: the real server sends every tile to a gRPC ``PredictionService``.

The gRPC server is :mod:`tests.app.tfserving_fake` (the real service definition from the
``tensorflow-serving-api`` protos, running the bundled SavedModel), since no TF Serving binary exists
here. The app runs as ``python -m app`` on loopback, exactly as in production but for the target.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import SimpleITK as sitk
import tensorflow as tf

from app.runners.tfserving import TFServingClient, TFServingError, from_tensor_proto, to_tensor_proto
from segcore.card import ModelCard
from segcore.pipeline import segment
from segcore.runner import SavedModelRunner
from tests.app.tfserving_fake import FakeTFServing, serve
from tests.conftest import (
    BUNDLED_MODEL,
    Server,
    bundled_version_dir,
    shared_case,
    start_server,
    stop_server,
    wait_empty,
)
from tests.helpers import make_threshold_model, synthetic_head

DEADLINE_SECONDS = 4.0


@dataclass
class Deployment:
    app: Server
    fake: FakeTFServing
    grpc_server: grpc.Server
    version: int


def _deploy(tmp: Path) -> Deployment:
    """The app on the gRPC backend, started while 'TF Serving' has not loaded the model yet."""
    models = tmp / "models"
    models.mkdir()
    bundled = bundled_version_dir()
    (models / BUNDLED_MODEL).symlink_to(bundled.parent, target_is_directory=True)
    fake = FakeTFServing(models)
    grpc_server, port = serve(fake)
    app = start_server(
        tmp,
        {
            "SEG_MODELS_DIR": str(models),
            "SEG_DEFAULT_MODEL": BUNDLED_MODEL,
            "SEG_BACKEND": "tfserving",
            "SEG_TFSERVING_TARGET": f"127.0.0.1:{port}",
            "SEG_TFSERVING_TIMEOUT_SECONDS": str(DEADLINE_SECONDS),
            "SEG_POLL_SECONDS": "0.5",
        },
        wait_ready=False,
    )
    return Deployment(app, fake, grpc_server, int(bundled.name))


def _teardown(deployment: Deployment) -> None:
    deployment.fake.released.set()
    stop_server(deployment.app)
    deployment.grpc_server.stop(grace=None)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A deployment whose 'TF Serving' has loaded the model; each test leaves it as it found it."""
    deployed = _deploy(tmp_path_factory.mktemp("tfserving"))
    yield deployed
    _teardown(deployed)


def _ready(deployment: Deployment) -> httpx.Client:
    """Let 'TF Serving' finish loading, then wait for the app's next poll to pick the version up."""
    deployment.fake.loaded.set()
    deadline = time.monotonic() + 120
    while httpx.get(deployment.app.url + "/readyz", timeout=10).status_code != 200:
        if time.monotonic() > deadline:
            raise AssertionError(f"the app never became ready:\n{deployment.app.log()}")
        time.sleep(0.2)
    return deployment.app.client()


def _head(tmp_path) -> bytes:
    head, _ = synthetic_head()
    sitk.WriteImage(head, str(tmp_path / "head.nii.gz"))
    return (tmp_path / "head.nii.gz").read_bytes()


def test_deferred_until_tf_serving_loads_then_ready_then_503_when_it_goes_away(tmp_path):
    """A deployment of its own (independent of test order): a version TF Serving has not loaded yet is
    deferred, not failed; once loaded it is served; when TF Serving goes away the answer is 503 with
    Retry-After, the version stays registered and nothing is left staged."""
    deployment = _deploy(tmp_path)
    try:
        with deployment.app.client() as client:
            deadline = time.monotonic() + 120
            while "model_load_deferred" not in deployment.app.log():
                assert time.monotonic() < deadline, deployment.app.log()
                time.sleep(0.2)
            not_ready = client.get("/readyz")
            assert not_ready.status_code == 503
            assert BUNDLED_MODEL in not_ready.json()["not_ready"]
            states = {v["version"]: v["state"] for v in client.get(f"/models/{BUNDLED_MODEL}").json()["versions"]}
            assert states[deployment.version] == "available"  # not "failed": TF Serving was only not ready
        with _ready(deployment) as client:
            assert client.get("/readyz").json()["models"][BUNDLED_MODEL] == deployment.version
            # The registry warmed the version through gRPC with the exporter's warm-up requests.
            assert any(c.name == BUNDLED_MODEL and c.version == deployment.version for c in deployment.fake.calls)
            deployment.grpc_server.stop(grace=None).wait()
            r = client.post("/segment", files={"flair": ("head.nii.gz", _head(tmp_path))})
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "tfserving_unavailable"
            assert int(r.headers["retry-after"]) > 0
            assert client.get("/readyz").status_code == 200  # the version stays registered; TF Serving may return
        assert wait_empty(deployment.app.tmp_dir) == []
    finally:
        _teardown(deployment)


def test_tfserving_and_inprocess_backends_give_identical_masks(deployment, tmp_path):
    flair_path = shared_case("brats2018_deepvoxnet2", "case_6", "FLAIR.nii.gz")
    flair = sitk.ReadImage(str(flair_path))
    local = SavedModelRunner(bundled_version_dir())
    local_calls = 0
    local_predict = local.predict

    def counted(batch: np.ndarray) -> np.ndarray:
        nonlocal local_calls
        local_calls += 1
        return local_predict(batch)

    local.predict = counted  # type: ignore[method-assign]
    expected = sitk.GetArrayFromImage(segment({"flair": flair}, local).mask)

    with _ready(deployment) as client:
        before = len(deployment.fake.calls)
        r = client.post("/segment", files={"flair": ("FLAIR.nii.gz", flair_path.read_bytes())}, timeout=300)
    assert r.status_code == 200, r.text
    assert r.headers["x-model-version"] == str(deployment.version)
    calls = deployment.fake.calls[before:]
    (tmp_path / "mask.nii.gz").write_bytes(r.content)
    served = sitk.ReadImage(str(tmp_path / "mask.nii.gz"))
    assert served.GetSize() == flair.GetSize()
    assert expected.sum() > 1000  # a real tumour, not two empty masks agreeing
    np.testing.assert_array_equal(sitk.GetArrayFromImage(served), expected)
    # Every tile went over gRPC, to the version the header names, through the default signature.
    assert len(calls) == local_calls > 0
    assert {(c.name, c.version, c.signature) for c in calls} == {(BUNDLED_MODEL, deployment.version, "serving_default")}


def test_deadline_exceeded_is_a_504_and_leaves_nothing_staged(deployment, tmp_path):
    study = _head(tmp_path)
    with _ready(deployment) as client:
        deployment.fake.released.clear()
        deployment.fake.stalled.set()
        try:
            r = client.post("/segment", files={"flair": ("head.nii.gz", study)})
        finally:
            deployment.fake.stalled.clear()
            deployment.fake.released.set()
        assert r.status_code == 504, r.text
        assert r.json()["error"] == "tfserving_timeout"
        assert f"within {DEADLINE_SECONDS:g} s" in r.json()["detail"]
        assert client.get("/healthz").status_code == 200
    assert wait_empty(deployment.app.tmp_dir) == []


def test_an_error_tf_serving_answers_is_a_502_and_leaves_nothing_staged(deployment, tmp_path):
    study = _head(tmp_path)
    with _ready(deployment) as client:
        deployment.fake.error = grpc.StatusCode.INTERNAL
        try:
            r = client.post("/segment", files={"flair": ("head.nii.gz", study)})
        finally:
            deployment.fake.error = None
        assert r.status_code == 502, r.text
        assert r.json()["error"] == "tfserving_error"
        assert client.post("/segment", files={"flair": ("head.nii.gz", study)}).status_code == 200  # recovered
    assert wait_empty(deployment.app.tmp_dir) == []


def test_tf_serving_errors_map_to_502_503_and_retryability(tmp_path):
    """Straight on the runner: an error TF Serving answers is a 502 and a verdict on the version; a model
    it has not loaded is a retryable 503."""
    version_dir = make_threshold_model(tmp_path, name="bright", version=1)
    fake = FakeTFServing(tmp_path)
    fake.loaded.set()
    grpc_server, port = serve(fake)
    client = TFServingClient(f"127.0.0.1:{port}", timeout_seconds=10)
    try:
        card = ModelCard.load(version_dir)
        batch = np.random.default_rng(0).standard_normal((1, 32, 24, 1)).astype(np.float32)
        out = client(version_dir, card).predict(batch)
        np.testing.assert_array_equal(out, SavedModelRunner(version_dir).predict(batch))

        wrong_input = card.model_copy(update={"input_name": "volume"})
        with pytest.raises(TFServingError) as bad:
            client(version_dir, wrong_input).predict(batch)
        assert (bad.value.status, bad.value.code, bad.value.retryable) == (502, "tfserving_error", False)
        assert "INVALID_ARGUMENT" in bad.value.detail

        missing = card.model_copy(update={"version": 9})
        with pytest.raises(TFServingError) as absent:
            client(Path(tmp_path / "bright" / "9"), missing).predict(batch)
        assert (absent.value.status, absent.value.retryable) == (503, True)
        assert absent.value.headers == {"Retry-After": "5"}
    finally:
        client.close()
        grpc_server.stop(grace=None)


def test_tensor_codec_agrees_with_tensorflow():
    array = np.random.default_rng(1).standard_normal((1, 7, 5, 3)).astype(np.float32)
    proto = to_tensor_proto(array)
    np.testing.assert_array_equal(tf.make_ndarray(proto), array)
    np.testing.assert_array_equal(from_tensor_proto(tf.make_tensor_proto(array)), array)
    repeated = tf.make_tensor_proto([0.25] * 6, shape=[1, 2, 3], dtype=tf.float32)  # float_val form
    np.testing.assert_array_equal(from_tensor_proto(repeated), np.full((1, 2, 3), 0.25, np.float32))
    with pytest.raises(ValueError, match="float32"):
        from_tensor_proto(tf.make_tensor_proto(np.zeros((2,), np.int32)))
