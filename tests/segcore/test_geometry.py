"""The mask must land on the same anatomy whatever the input's orientation and spacing."""

import numpy as np
import pytest
import SimpleITK as sitk

from segcore.card import ModelCard
from segcore.geometry import onto_grid, physical_overlap, same_grid, to_model_grid
from segcore.metrics import dice
from segcore.pipeline import segment
from segcore.runner import SavedModelRunner
from tests.conftest import bundled_version_dir, shared_case
from tests.helpers import make_threshold_model, synthetic_head


@pytest.fixture(scope="module")
def bright_runner(tmp_path_factory):
    return SavedModelRunner(make_threshold_model(tmp_path_factory.mktemp("models")))


def _assert_same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def _rotation(degrees: float, axis: int) -> tuple[float, ...]:
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    r = np.eye(3)
    i, j = [k for k in range(3) if k != axis]
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return tuple(r.ravel())


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "ASL", "PIR", "SLA"])
def test_mask_lands_on_the_tumour_in_any_axis_aligned_orientation(bright_runner, orientation):
    image, truth = synthetic_head()
    image, truth = sitk.DICOMOrient(image, orientation), sitk.DICOMOrient(truth, orientation)
    result = segment({"flair": image}, bright_runner)
    _assert_same_geometry(result.mask, image)
    assert result.mask.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(result.mask), sitk.GetArrayViewFromImage(truth))


def test_mask_lands_on_the_tumour_in_an_oblique_acquisition(bright_runner):
    image, truth = synthetic_head()
    for img in (image, truth):
        img.SetDirection(_rotation(17.0, axis=0))
    result = segment({"flair": image}, bright_runner)
    _assert_same_geometry(result.mask, image)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(result.mask), sitk.GetArrayViewFromImage(truth))


def test_mask_of_an_anisotropic_oblique_sagittal_study_overlaps_the_tumour(bright_runner):
    """3 mm slices, sagittal and tilted: the pipeline resamples to the card's 1 mm and back."""
    fine, fine_truth = synthetic_head(shape_zyx=(60, 72, 64))
    fine.SetDirection(_rotation(12.0, axis=2))
    fine_truth.SetDirection(fine.GetDirection())
    oriented = sitk.DICOMOrient(fine, "ASL")
    reference = sitk.Image([oriented.GetSize()[0], oriented.GetSize()[1], oriented.GetSize()[2] // 3], sitk.sitkFloat32)
    reference.SetSpacing((1.0, 1.0, 3.0))
    reference.SetOrigin(oriented.GetOrigin())
    reference.SetDirection(oriented.GetDirection())
    image = onto_grid(oriented, reference, label=False)
    truth = onto_grid(fine_truth, reference, label=True)
    result = segment({"flair": image}, bright_runner)
    _assert_same_geometry(result.mask, image)
    assert dice(sitk.GetArrayViewFromImage(result.mask) > 0, sitk.GetArrayViewFromImage(truth) > 0) > 0.85


def test_to_model_grid_reorients_and_resamples_preserving_physical_extent():
    image, _ = synthetic_head(spacing=(0.8, 0.8, 2.0))
    ras = sitk.DICOMOrient(image, "RAS")
    model = to_model_grid(ras, "LPS", [1.0, 1.0, 1.0])
    np.testing.assert_allclose(model.GetDirection(), np.eye(3).ravel())
    np.testing.assert_allclose(model.GetSpacing(), (1.0, 1.0, 1.0))
    assert physical_overlap(model, image)
    extent_in = np.array(image.GetSize()) * np.array(image.GetSpacing())
    extent_out = np.array(model.GetSize()) * np.array(model.GetSpacing())
    np.testing.assert_allclose(extent_out, extent_in, atol=1.0)
    assert not same_grid(model, image)


def test_images_far_apart_do_not_overlap():
    a, _ = synthetic_head()
    b, _ = synthetic_head()
    b.SetOrigin((500.0, 500.0, 500.0))
    assert not physical_overlap(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("orientation", ["LPS", "RAS", "PIR"])
def test_bundled_model_lands_on_the_real_tumour_in_any_voxel_order(orientation):
    """Real FLAIR, real model, voxels reordered (with matching geometry): the mask is scored against the
    expert label reordered the same way by SimpleITK, not against another answer of the pipeline, so a
    left-right flip common to every orientation fails too (the label mirrored scores far lower)."""
    case = shared_case("brats2018_deepvoxnet2", "case_6")  # a validation case, never trained on
    flair = sitk.ReadImage(str(case / "FLAIR.nii.gz"), sitk.sitkFloat32)
    truth = sitk.ReadImage(str(case / "GT_W.nii.gz"), sitk.sitkFloat32) > 0.5
    assert flair.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)  # stored LPS: x runs to the patient's left
    moved, moved_truth = sitk.DICOMOrient(flair, orientation), sitk.DICOMOrient(truth, orientation)
    mask = segment({"flair": moved}, SavedModelRunner(bundled_version_dir())).mask
    _assert_same_geometry(mask, moved)
    predicted = sitk.GetArrayViewFromImage(mask) > 0
    recorded = ModelCard.load(bundled_version_dir()).validation_dice["case_6"]
    assert dice(predicted, sitk.GetArrayViewFromImage(moved_truth) > 0) >= recorded - 0.02
    mirror = sitk.GetImageFromArray(sitk.GetArrayFromImage(truth)[:, :, ::-1])  # x runs left: left <-> right
    mirror.CopyInformation(truth)
    mirrored = sitk.DICOMOrient(mirror, orientation)
    assert dice(predicted, sitk.GetArrayViewFromImage(mirrored) > 0) < 0.5
