"""The preprocessing chain on real data: skull detection and stripping, registration, N4, the guard."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from segcore.card import Preprocessing
from segcore.preprocess import Untrustworthy, prepare_input
from segcore.preprocess.bias import n4_correct
from segcore.preprocess.detection import looks_skull_stripped
from segcore.preprocess.plausibility import modality_intensity_warnings, slice_thickness_warnings
from segcore.preprocess.registration import register_rigid
from tests.conftest import SHARED_DATA, need, shared_case
from tests.dicom_fixtures import mprage_files

STRIPPED_MODEL = Preprocessing(registration="rigid", skull_strip=True)


def _networks():
    from segcore.preprocess import skullstrip

    try:
        return skullstrip.default_networks()
    except (skullstrip.BrainExtractorUnavailable, ImportError) as exc:
        need(False, f"the skull stripper is not installed ({exc}); scripts/bootstrap.sh ...,brain installs it")


@pytest.fixture(scope="module")
def mprage() -> sitk.Image:
    """The real sagittal Siemens MPRAGE: a head with its skull, scalp and neck."""
    files = mprage_files()
    return sitk.ReadImage([str(p) for p in sorted(files, key=lambda p: p.name)], sitk.sitkFloat32)


def brats_cases() -> list[dict[str, str]]:
    """Every already skull-stripped BraTS case in ../shared/data, as modality -> file (FLAIR first)."""
    need(SHARED_DATA.exists(), f"real data not available: {SHARED_DATA}")
    cases = []
    for folder in sorted((SHARED_DATA / "brats2015_deepmedic").glob("brats_*")):
        cases.append({"flair": folder / "Flair_subtrMeanDivStd.nii.gz", "t1c": folder / "T1c_subtrMeanDivStd.nii.gz"})
    for folder in sorted((SHARED_DATA / "brats2018_deepvoxnet2").glob("case_*")):
        cases.append({"flair": folder / "FLAIR.nii.gz", "t1": folder / "T1.nii.gz"})
    for folder in sorted((SHARED_DATA / "brats2018_brainy").glob("Brats18_*")):
        cases.append({m: folder / f"{folder.name}_{s}.nii.gz" for m, s in
                      (("flair", "flair"), ("t1", "t1"), ("t1c", "t1ce"), ("t2", "t2"))})
    assert len(cases) == 13
    return cases


def test_a_head_with_its_skull_is_detected_and_stripped_to_a_plausible_brain(mprage):
    assert not looks_skull_stripped(mprage).stripped
    spec = Preprocessing(skull_strip=True)
    result = prepare_input({"t1": mprage}, spec, ["t1"], "auto", networks=_networks())
    assert result.brain is not None and result.brain.GetSize() == mprage.GetSize()
    assert 1000 <= result.report.brain_volume_ml <= 1800, result.report.brain_volume_ml
    codes = [w.code for w in result.report.warnings]
    assert "skull_stripped" in codes and "brain_volume_implausible" not in codes
    # The stripped image is zero outside the brain and keeps the input's grid and values inside it.
    stripped = sitk.GetArrayViewFromImage(result.images["t1"])
    brain = sitk.GetArrayViewFromImage(result.brain) > 0
    assert stripped[~brain].max() == 0
    np.testing.assert_array_equal(stripped[brain], sitk.GetArrayViewFromImage(mprage)[brain])
    # And the brain is a brain: inside the head, far smaller than it, the result now detected as stripped.
    head = sitk.GetArrayViewFromImage(mprage) > np.percentile(sitk.GetArrayViewFromImage(mprage), 60)
    assert brain.sum() < 0.6 * head.sum()
    assert looks_skull_stripped(result.images["t1"]).stripped


def test_the_guard_refuses_a_skull_under_preprocess_none_with_what_to_send(mprage):
    with pytest.raises(Untrustworthy) as refused:
        prepare_input({"t1": mprage}, STRIPPED_MODEL, ["t1"], "none", card_name="brats-x")
    assert refused.value.code == "skull_not_stripped"
    assert "preprocess=auto" in refused.value.detail and "brats-x" in refused.value.detail
    # A card that asks for nothing (an old card) is served as before, skull or not.
    kept = prepare_input({"t1": mprage}, Preprocessing(), ["t1"], "none")
    assert kept.images["t1"] is not None and kept.brain is None


def test_no_brain_found_is_refused():
    rng = np.random.default_rng(0)
    noise = sitk.GetImageFromArray(rng.normal(100, 30, (64, 128, 128)).astype(np.float32))
    noise.SetSpacing((1.5, 1.5, 2.0))
    with pytest.raises(Untrustworthy) as refused:
        prepare_input({"flair": noise}, Preprocessing(skull_strip=True), ["flair"], "auto", networks=_networks())
    assert refused.value.code == "no_brain_found"


def test_every_stripped_brats_case_comes_through_unchanged():
    """Detection says stripped and aligned, so auto does nothing: the network sees today's input and the
    brain mask is today's (the outer-face heuristic). 13 real cases from three sources."""
    for case in brats_cases():
        modalities = list(case)
        images = {m: sitk.ReadImage(str(p), sitk.sitkFloat32) for m, p in case.items()}
        result = prepare_input(images, STRIPPED_MODEL, modalities, "auto", networks=None)
        assert result.brain is None, case
        for m in modalities:
            assert result.images[m] is images[m], (case, m)
        assert all(r.get("left_alone") for r in result.report.registration.values()), case
        assert [w.code for w in result.report.warnings] == [], (case, result.report.warnings)
        assert 1000 <= result.report.brain_volume_ml <= 1800


def test_a_known_misalignment_of_t1c_to_flair_is_recovered_within_2_mm():
    folder = shared_case("brats2018_brainy", "Brats18_2013_2_1")
    flair = sitk.ReadImage(str(folder / "Brats18_2013_2_1_flair.nii.gz"), sitk.sitkFloat32)
    t1c = sitk.ReadImage(str(folder / "Brats18_2013_2_1_t1ce.nii.gz"), sitk.sitkFloat32)
    centre = flair.TransformContinuousIndexToPhysicalPoint([s / 2 for s in flair.GetSize()])
    # 10 degrees about an oblique axis and 15 mm: the T1c as if the patient had moved between series.
    axis = np.array([0.3, 0.4, 0.866])
    truth = sitk.VersorRigid3DTransform()
    truth.SetCenter(centre)
    truth.SetRotation(tuple(axis / np.linalg.norm(axis)), math.radians(10))
    truth.SetTranslation((9.0, -10.0, 6.7))  # 15.0 mm
    moved = sitk.Resample(t1c, flair, truth.GetInverse(), sitk.sitkLinear, 0.0)
    brain = sitk.Cast(flair != 0, sitk.sitkUInt8)
    result = register_rigid(flair, moved, brain)
    assert result.converged and not result.poor
    points = np.argwhere(sitk.GetArrayViewFromImage(brain))[::97][:, ::-1]  # a spread of brain voxels (x, y, z)
    errors = []
    for index in points:
        p = flair.TransformIndexToPhysicalPoint([int(i) for i in index])
        errors.append(np.linalg.norm(np.subtract(result.transform.TransformPoint(p), truth.TransformPoint(p))))
    assert float(np.sqrt(np.mean(np.square(errors)))) < 2.0, np.sqrt(np.mean(np.square(errors)))
    # And the chain reports it, with the registered image on the FLAIR grid.
    chained = prepare_input({"flair": flair, "t1c": moved}, STRIPPED_MODEL, ["flair", "t1c"], "auto")
    report = chained.report.registration["t1c"]
    assert report["left_alone"] is False and report["displacement_mm"] > 15 and report["value"] < -0.2
    aligned = sitk.GetArrayViewFromImage(chained.images["t1c"])[sitk.GetArrayViewFromImage(brain) > 0]
    original = sitk.GetArrayViewFromImage(t1c)[sitk.GetArrayViewFromImage(brain) > 0]
    assert np.corrcoef(aligned, original)[0, 1] > 0.9


def test_n4_keeps_the_grid_the_background_and_the_anatomy():
    path = shared_case("brats2018_brainy", "Brats18_TCIA05_396_1", "Brats18_TCIA05_396_1_t1.nii.gz")
    t1 = sitk.ReadImage(str(path), sitk.sitkFloat32)
    brain = sitk.Cast(t1 != 0, sitk.sitkUInt8)
    corrected = n4_correct(t1, brain)
    assert corrected.GetSize() == t1.GetSize() and corrected.GetOrigin() == t1.GetOrigin()
    before, after = sitk.GetArrayViewFromImage(t1), sitk.GetArrayViewFromImage(corrected)
    inside = before != 0
    assert np.isfinite(after).all() and np.all(after[~inside] == 0)
    assert np.corrcoef(before[inside], after[inside])[0, 1] > 0.9
    assert not np.allclose(before[inside], after[inside])  # it did something


def test_thick_slices_and_a_t1_sent_as_t2_are_warned():
    path = shared_case("brats2018_brainy", "Brats18_2013_2_1", "Brats18_2013_2_1_t1.nii.gz")
    t1 = sitk.ReadImage(str(path), sitk.sitkFloat32)
    thick = sitk.Resample(t1, [240, 240, 31], sitk.Transform(), sitk.sitkLinear, t1.GetOrigin(), (1.0, 1.0, 5.0),
                          t1.GetDirection(), 0.0, sitk.sitkFloat32)
    assert [w.code for w in slice_thickness_warnings({"flair": thick})] == ["thick_slices"]
    assert slice_thickness_warnings({"flair": t1}) == []
    brain = {"t2": sitk.GetArrayFromImage(t1) != 0}
    assert [w.code for w in modality_intensity_warnings({"t2": t1}, brain)] == ["intensities_unlike_modality"]
    real_t2 = sitk.ReadImage(str(path).replace("_t1.", "_t2."), sitk.sitkFloat32)
    assert modality_intensity_warnings({"t2": real_t2}, brain) == []
