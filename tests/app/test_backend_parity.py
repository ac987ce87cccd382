"""Every bundled 3D model answers like TensorFlow on every other backend, on a real study.

brats_2013_pat0003_1 (BraTS 2013 via DeepMedic, FLAIR + T1c; a validation case of both 3D models) is
segmented through the whole pipeline (brain crop, 64^3 sliding window, stitching) by TensorFlow in this
process, by OpenVINO (its default precision: bfloat16 on AVX-512 BF16 CPUs, which may move a boundary
voxel) and through the TF Serving gRPC double (``tests/app/tfserving_fake.py``, which checks our request
and response encoding end to end). Masks must be equal, or agree with Dice >= 0.999 per label. The 2D
model's OpenVINO parity is in ``test_openvino.py``. One case per model: a 3D study takes ~10 s per backend.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import numpy as np
import pytest
import SimpleITK as sitk

from app.config import Settings
from app.runners.backends import runner_factory
from app.runners.tfserving import TFServingClient
from segcore.card import ModelCard
from segcore.metrics import dice
from segcore.model_folder import latest_version_dir
from segcore.pipeline import segment
from segcore.runner import Runner, SavedModelRunner
from tests.app.tfserving_fake import FakeTFServing, serve
from tests.conftest import MODELS_DIR, need, shared_case

CASE = ("brats2015_deepmedic", "brats_2013_pat0003_1")
FILES = {"flair": "Flair_subtrMeanDivStd.nii.gz", "t1c": "T1c_subtrMeanDivStd.nii.gz"}
MODELS = ["brats-wt-flair-3d", "brats-mc-flair-t1c-3d"]
MIN_DICE = 0.999


@pytest.fixture(scope="module")
def tfserving_target() -> Iterator[str]:
    fake = FakeTFServing(MODELS_DIR)
    fake.loaded.set()
    server, port = serve(fake)
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


@pytest.fixture(scope="module", params=MODELS)
def reference(request) -> tuple[str, dict[str, sitk.Image], np.ndarray]:
    """(model name, the study's images the card asks for, TensorFlow's label mask)."""
    name = request.param
    version_dir = latest_version_dir(MODELS_DIR / name)
    card = ModelCard.load(version_dir)
    case = shared_case(*CASE)
    images = {m: sitk.ReadImage(str(case / FILES[m]), sitk.sitkFloat32) for m in card.modalities}
    mask = sitk.GetArrayFromImage(segment(images, SavedModelRunner(version_dir, card)).mask)
    assert np.count_nonzero(mask) > 1000, "TensorFlow finds the tumour (else parity would be trivial)"
    return name, images, mask


def _runner(backend: str, name: str, target: str) -> Runner:
    version_dir = latest_version_dir(MODELS_DIR / name)
    card = ModelCard.load(version_dir)
    if backend == "tfserving":
        return TFServingClient(target, timeout_seconds=120)(version_dir, card)
    need(importlib.util.find_spec("openvino") is not None, "OpenVINO is not installed (openvino/dev extras)")
    return runner_factory(Settings(backend="openvino", intra_op_threads=2, inter_op_threads=1))(version_dir, card)


@pytest.mark.parametrize("backend", ["openvino", "tfserving"])
def test_3d_masks_match_tensorflow(reference, backend, tfserving_target):
    name, images, expected = reference
    got = sitk.GetArrayFromImage(segment(images, _runner(backend, name, tfserving_target)).mask)
    assert got.shape == expected.shape
    if backend == "tfserving":  # the same TensorFlow behind gRPC: only encoding could differ, and must not
        np.testing.assert_array_equal(got, expected)
        return
    for label in np.unique(expected[expected > 0]):
        score = dice(got == label, expected == label)
        assert score >= MIN_DICE, f"{name} label {label} on {backend}: Dice {score:.5f} against TensorFlow"
    assert set(np.unique(got)) == set(np.unique(expected))
