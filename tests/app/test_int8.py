"""The INT8 variant (``benchmarks/quantize_int8.py``): served only if its validation Dice is within 0.005 of
the float model's, and the bundled one reproduces the Dice its card records on a real validation case."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import SimpleITK as sitk

from app.runners.openvino import INT8_VARIANT, MAX_INT8_DICE_LOSS, int8_model_path
from segcore.card import ModelCard, Variant
from segcore.metrics import dice
from segcore.pipeline import segment
from segcore.runner import NotApplicable
from tests.conftest import bundled_version_dir, need, shared_case


def _with_variant(card: ModelCard, mean: float) -> ModelCard:
    variant = Variant(
        path="assets.extra/openvino-int8/model.xml",
        method="test",
        calibration_cases=list(card.provenance.train_cases),
        validation_dice={"mean": mean},
    )
    return card.model_copy(update={"variants": {INT8_VARIANT: variant}})


def test_the_int8_variant_is_refused_when_its_dice_lost_more_than_the_limit():
    version_dir = bundled_version_dir()
    card = ModelCard.load(version_dir).model_copy(update={"variants": {}})
    with pytest.raises(NotApplicable):
        int8_model_path(version_dir, card)
    floor = card.validation_dice["mean"]
    assert int8_model_path(version_dir, _with_variant(card, floor - MAX_INT8_DICE_LOSS + 1e-4)).name == "model.xml"
    with pytest.raises(ValueError, match="not served"):
        int8_model_path(version_dir, _with_variant(card, floor - MAX_INT8_DICE_LOSS - 1e-3))


def test_the_bundled_int8_variant_reproduces_its_recorded_validation_dice():
    version_dir = bundled_version_dir()
    card = ModelCard.load(version_dir)
    need(INT8_VARIANT in card.variants, f"{card.name} v{card.version} has no {INT8_VARIANT} variant")
    need(importlib.util.find_spec("openvino") is not None, "OpenVINO is not installed (openvino/dev extras)")
    from app.runners.openvino import OpenVINORunner

    variant = card.variants[INT8_VARIANT]
    assert not set(variant.calibration_cases) & set(card.provenance.validation_cases)  # calibrated on training only
    assert card.validation_dice["mean"] - variant.validation_dice["mean"] <= MAX_INT8_DICE_LOSS
    case = shared_case("brats2018_deepvoxnet2", "case_6")
    flair = sitk.ReadImage(str(case / "FLAIR.nii.gz"), sitk.sitkFloat32)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "GT_W.nii.gz"))) > 0.5
    runner = OpenVINORunner(version_dir, card, threads=2, precision="int8")
    mask = sitk.GetArrayFromImage(segment({"flair": flair}, runner).mask) > 0
    assert np.count_nonzero(mask) > 0
    assert abs(dice(mask, truth) - variant.validation_dice["case_6"]) < 0.002
