import numpy as np
import pytest
import SimpleITK as sitk

from segcore.metrics import dice
from segcore.normalization import background_value, brain_mask, zscore_brain
from tests.conftest import shared_case


def _head(background: float) -> np.ndarray:
    """A synthetic 'skull-stripped head': an ellipsoid of varied intensity on a constant background."""
    z, y, x = np.mgrid[:40, :64, :64]
    inside = ((z - 20) / 15) ** 2 + ((y - 32) / 25) ** 2 + ((x - 32) / 22) ** 2 <= 1
    rng = np.random.default_rng(1)
    volume = np.full(inside.shape, background, dtype=np.float32)
    volume[inside] = 300 + 50 * rng.standard_normal(int(inside.sum()))
    return volume, inside


@pytest.mark.parametrize("background", [0.0, -1.7])
def test_brain_mask_finds_the_head_whatever_the_background(background):
    volume, inside = _head(background)
    assert background_value(volume) == pytest.approx(background)
    assert dice(brain_mask(volume), inside) > 0.999


def test_zscore_is_zero_mean_unit_std_inside_the_brain_and_zero_outside():
    volume, inside = _head(-1.7)
    out, mask = zscore_brain(volume[None], clip=50)
    assert out.dtype == np.float32
    assert abs(float(out[0][mask].mean())) < 1e-3
    assert float(out[0][mask].std()) == pytest.approx(1.0, abs=1e-3)
    assert np.all(out[0][~mask] == 0)


def test_zscore_clips_outliers():
    volume, inside = _head(0.0)
    volume[20, 32, 32] = 1e6
    out, _ = zscore_brain(volume[None], clip=5.0)
    assert out.max() == pytest.approx(5.0)


def test_zscore_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\[C, Z, Y, X\]"):
        zscore_brain(np.zeros((4, 4, 4), dtype=np.float32))


def test_brain_mask_matches_the_real_brain_mask_of_a_pre_normalized_case():
    """DeepMedic's FLAIR is already z-scored with a negative constant background: "nonzero" would call
    the whole head box brain; our estimate must match the shipped brain mask."""
    folder = shared_case("brats2015_deepmedic", "brats_2013_pat0004_1")
    flair = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "Flair_subtrMeanDivStd.nii.gz")))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "brainmask.nii.gz"), sitk.sitkFloat32)) > 0.5
    assert background_value(flair) < -1  # the trap: background is not zero
    assert dice(flair != 0, truth) < 0.6
    assert dice(brain_mask(flair), truth) > 0.99
