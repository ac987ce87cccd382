"""SEG_BACKEND=openvino: the same SavedModel through OpenVINO agrees with TensorFlow, and a real server
on that backend segments a real validation case as well as the validation Dice says."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import SimpleITK as sitk

from app.config import Settings
from app.registry import warm_up
from app.runners.backends import runner_factory
from segcore.card import ModelCard
from segcore.metrics import dice
from segcore.pipeline import segment
from segcore.runner import SavedModelRunner
from tests.conftest import bundled_version_dir, need, shared_case, start_server, stop_server
from tests.helpers import synthetic_head


@pytest.fixture(scope="module", autouse=True)
def _openvino_installed() -> None:
    """OpenVINO comes with the openvino/bench/dev extras (``make test`` installs dev)."""
    need(importlib.util.find_spec("openvino") is not None, "OpenVINO is not installed (openvino/bench/dev extras)")


@pytest.fixture(scope="module")
def tf_runner() -> SavedModelRunner:
    return SavedModelRunner(bundled_version_dir())


def _validation_case():
    case = shared_case("brats2018_deepvoxnet2", "case_6")  # validation case, never trained on
    flair = sitk.ReadImage(str(case / "FLAIR.nii.gz"), sitk.sitkFloat32)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "GT_W.nii.gz"))) > 0.5
    return case, flair, truth


@pytest.mark.parametrize("precision", ["f32", "default"])
def test_openvino_runner_matches_tensorflow(tf_runner, precision):
    from app.runners.openvino import OpenVINORunner

    version_dir = bundled_version_dir()
    card = ModelCard.load(version_dir)
    runner = runner_factory(Settings(backend="openvino", openvino_precision=precision, intra_op_threads=2))(
        version_dir, card
    )
    assert isinstance(runner, OpenVINORunner)
    assert warm_up(runner, version_dir) >= 1  # the registry's own checks pass on this backend
    batch = np.random.default_rng(1).standard_normal((1, 176, 144, 1)).astype(np.float32)
    diff = np.abs(runner.predict(batch) - tf_runner.predict(batch)).max()
    # float32 agrees to rounding; bfloat16 (the default on AVX-512 BF16 CPUs) to a few 1e-3 in probability.
    assert diff < (1e-4 if runner.precision == "f32" else 0.05), (runner.precision, diff)
    if precision == "f32":
        return  # identical to rounding: the whole-volume check below is for the faster, approximate default
    _, flair, truth = _validation_case()
    ov_mask = sitk.GetArrayFromImage(segment({"flair": flair}, runner).mask) > 0
    tf_mask = sitk.GetArrayFromImage(segment({"flair": flair}, tf_runner).mask) > 0
    assert dice(ov_mask, tf_mask) >= 0.99
    assert abs(dice(ov_mask, truth) - dice(tf_mask, truth)) < 0.005  # validation Dice unchanged


def test_server_on_the_openvino_backend_answers_like_the_tensorflow_one(tmp_path, tf_runner):
    head, _ = synthetic_head()
    study = tmp_path / "head.nii.gz"
    sitk.WriteImage(head, str(study))
    srv = start_server(tmp_path, {"SEG_BACKEND": "openvino"})
    try:
        with srv.client() as client:
            r = client.post("/segment", files={"flair": ("head.nii.gz", study.read_bytes())})
            models = client.get("/models/brats-wt-flair").json()
    finally:
        stop_server(srv)
    assert r.status_code == 200, r.text
    assert r.headers["x-model-name"] == "brats-wt-flair" and float(r.headers["x-inference-ms"]) > 0
    assert models["served_version"] == int(r.headers["x-model-version"])
    path = tmp_path / "mask.nii.gz"
    path.write_bytes(r.content)
    served = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    expected = sitk.GetArrayFromImage(segment({"flair": sitk.Cast(head, sitk.sitkFloat32)}, tf_runner).mask)
    assert served.shape == expected.shape
    assert dice(served > 0, expected > 0) >= 0.99


def test_the_converted_model_is_cached_by_content_and_read_back_identically(tmp_path, tf_runner):
    """SEG_CACHE_DIR: the first runner converts and writes the IR (miss), the next reads it (hit) and answers
    exactly as the in-memory conversion does; a version with other weights gets its own entry; a cache that
    cannot be written is skipped (off), not fatal."""
    import shutil

    from app.runners.openvino import OpenVINORunner, savedmodel_digest

    version_dir = bundled_version_dir()
    cache = tmp_path / "cache"
    batch = np.random.default_rng(2).standard_normal((1, 176, 144, 1)).astype(np.float32)
    runners = [OpenVINORunner(version_dir, threads=2, cache_dir=c) for c in (None, cache, cache)]
    assert [r.cache for r in runners] == ["off", "miss", "hit"]
    answers = [r.predict(batch) for r in runners]
    assert np.array_equal(answers[0], answers[1]) and np.array_equal(answers[0], answers[2])
    (entry,) = (cache / "openvino-ir").iterdir()  # one network, one entry; no temporary folder left
    assert entry.name.startswith(savedmodel_digest(version_dir)[:32]) and (entry / "model.bin").stat().st_size > 0

    # The same network under another name and number shares the entry; a changed weight file does not.
    copy = tmp_path / "models" / "renamed" / "7"
    shutil.copytree(version_dir, copy)
    assert savedmodel_digest(copy) == savedmodel_digest(version_dir)
    assert OpenVINORunner(copy, threads=2, cache_dir=cache).cache == "hit"
    (weights,) = (copy / "variables").glob("variables.data-*")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert savedmodel_digest(copy) != savedmodel_digest(version_dir)

    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the cache folder should be")
    fallback = OpenVINORunner(version_dir, threads=2, cache_dir=blocked)
    assert fallback.cache == "off" and np.array_equal(fallback.predict(batch), answers[0])


def test_prepare_converts_every_version_once(tmp_path):
    """``python -m app.cli.prepare_openvino`` (the image's build step): every version of every model, then
    nothing left to convert; two versions that differ only in a constant get two entries."""
    from app.cli.prepare_openvino import main
    from tests.helpers import make_threshold_model

    models = tmp_path / "models"
    make_threshold_model(models, version=1, offset=2.0)
    make_threshold_model(models, version=2, offset=1.0)
    env = {"SEG_CACHE_DIR": str(tmp_path / "cache"), "SEG_MODELS_DIR": str(models)}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        from app.runners.openvino import prepare

        assert main([]) == 0
        assert prepare(models, tmp_path / "cache") == [("bright/1", "hit"), ("bright/2", "hit")]
    assert len(list((tmp_path / "cache" / "openvino-ir").iterdir())) == 2
