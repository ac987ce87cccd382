"""Training-time augmentation for scanner and protocol variety, built from ``batchgenerators`` (nnU-Net's
numpy augmentation library, DKFZ) transforms: rotation / scaling / elastic deformation, gamma, contrast,
brightness, Gaussian noise and blur, and simulated thick slices (one axis down-sampled to 3-6 mm and
interpolated back, ``augment_linear_downsampling_scipy``). Two things the library lacks are written here: a
smooth multiplicative bias field (as in TorchIO's ``RandomBiasField``), :class:`BiasFieldTransform`, and
thick slices with a slice profile (partial volume), :func:`simulate_thick_slices`, chosen by
``thick_slice_profile = "gaussian"``.

Arrays follow batchgenerators' layout: ``data`` float32 ``[B, C, *spatial]`` (z-scored inside the brain,
0 outside, as in the shards), ``seg`` ``[B, 2, *spatial]`` holding the label map (channel 0) and the brain
mask (channel 1), so both follow the same spatial transform (nearest neighbour). The spatial transform
reads a crop larger than the patch (:func:`input_size`) and returns the centred patch, so rotations and
down-scaling do not pull in empty corners. Randomness comes from numpy's global generator, which is how
batchgenerators draws; :class:`training.data.CropSampler` seeds it.

Why not TorchIO or MONAI: both need torch in the training image; batchgenerators needs only numpy, scipy
and scikit-image (plus light pure-Python requirements), and it is what nnU-Net trains BraTS with.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator


class AugmentConfig(BaseModel):
    """``[augmentation]`` in a training config; off by default (the v1 recipe: flips and intensity jitter)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    p_rotation: float = Field(0.2, ge=0, le=1)
    max_rotation_deg: float = Field(15.0, ge=0, le=180)
    p_scale: float = Field(0.2, ge=0, le=1)
    scale: tuple[float, float] = (0.85, 1.25)
    p_elastic: float = Field(0.2, ge=0, le=1)
    p_bias_field: float = Field(0.3, ge=0, le=1)
    bias_coefficients: float = Field(0.5, ge=0, description="max |coefficient| of the log-field polynomial")
    p_gamma: float = Field(0.3, ge=0, le=1)
    gamma: tuple[float, float] = (0.7, 1.5)
    p_contrast: float = Field(0.15, ge=0, le=1)
    p_brightness: float = Field(0.15, ge=0, le=1)
    p_noise: float = Field(0.15, ge=0, le=1)
    p_blur: float = Field(0.2, ge=0, le=1)
    p_thick_slices: float = Field(0.25, ge=0, le=1, description="per crop, along one axis of the crop")
    p_thick_through_plane: float = Field(
        0.125, ge=0, le=1,
        description="2D only, per crop: the slice taken from a simulated thick axial acquisition (through "
        "the slab of neighbouring slices, training.data.CropSampler), what a thick axial scan resampled to "
        "1 mm gives the model; version 2 was trained with 0.125",
    )
    thick_slice_mm: tuple[float, float] = (3.0, 6.0)
    thick_slice_profile: Literal["point", "gaussian"] = Field(
        "point",
        description="point: batchgenerators' linear down-sampling (point samples, no partial volume; version 2's "
        "recipe); gaussian: a Gaussian slice profile (FWHM = the slice thickness) at a random slice phase, "
        "see simulate_thick_slices",
    )

    @field_validator("thick_slice_mm")
    @classmethod
    def _thicker_than_a_voxel(cls, value: tuple[float, float]) -> tuple[float, float]:
        """Thick slices are simulated on 1 mm voxels: a range below 1 mm or reversed simulates nothing."""
        if not 1.0 <= value[0] <= value[1]:
            raise ValueError(f"thick_slice_mm must be (low, high) with 1 <= low <= high mm, not {value}")
        return value


def input_size(patch: int, config: AugmentConfig) -> int:
    """Edge of the crop read before the spatial transform: large enough that the centred ``patch`` after a
    rotation by ``max_rotation_deg`` and a zoom-out to ``1 / scale[0]`` still lies inside the crop."""
    if not config.enabled:
        return patch
    angle = math.radians(min(config.max_rotation_deg, 45.0))
    extent = patch * (math.cos(angle) + math.sin(angle)) / min(config.scale[0], 1.0)
    return int(math.ceil(extent / 2.0)) * 2


class BiasFieldTransform:
    """A smooth multiplicative field ``exp(sum c_ijk x^i y^j z^k)`` (polynomial order 3, coordinates in
    [-1, 1] over the patch), the MRI bias field model of TorchIO's ``RandomBiasField`` (Sudre et al. 2017).

    The shards are z-scored, so the field is applied to ``z + offset`` (offset 3: about the mean / SD ratio
    of brain tissue in raw MRI, which keeps dark tissue dark) and the offset removed again. Only voxels
    inside the brain (``seg`` channel 1) are changed."""

    def __init__(self, max_coefficient: float = 0.5, order: int = 3, p_per_sample: float = 0.3, offset: float = 3.0):
        self.max_coefficient, self.order, self.p, self.offset = max_coefficient, order, p_per_sample, offset

    def __call__(self, **batch):
        data = batch["data"]
        spatial = data.shape[2:]
        axes = np.meshgrid(*[np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in spatial], indexing="ij")
        for b in range(data.shape[0]):
            if np.random.uniform() >= self.p:
                continue
            log_field = np.zeros(spatial, dtype=np.float32)
            for powers in np.ndindex(*(self.order + 1,) * len(spatial)):
                if sum(powers) > self.order:
                    continue
                term = np.random.uniform(-self.max_coefficient, self.max_coefficient) / (1 + sum(powers))
                for axis, power in zip(axes, powers, strict=True):
                    if power:
                        term = term * axis**power
                log_field += term
            field = np.exp(log_field)
            inside = batch["seg"][b, 1] > 0
            data[b] = np.where(inside, (data[b] + self.offset) * field - self.offset, data[b])
        return batch


def _lerp(array: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    """``array`` linearly interpolated at fractional ``positions`` (in ``[0, n - 1]``) along ``axis``."""
    low = np.clip(np.floor(positions).astype(int), 0, array.shape[axis] - 1)
    high = np.minimum(low + 1, array.shape[axis] - 1)
    shape = [1] * array.ndim
    shape[axis] = len(positions)
    weight = (positions - low).reshape(shape).astype(array.dtype)
    return np.take(array, low, axis=axis) * (1 - weight) + np.take(array, high, axis=axis) * weight


def simulate_thick_slices(array: np.ndarray, axis: int, thickness: float, phase: float) -> np.ndarray:
    """``array`` (float32, 1 mm voxels along ``axis``) as a scan with ``thickness``-mm slices resampled back
    to 1 mm: each slice integrates a Gaussian slice profile (FWHM = ``thickness``, the partial-volume
    averaging of a real slice), slices are centred at ``phase + k * thickness`` (``phase`` in
    ``[0, thickness)``), and every 1 mm plane is linearly interpolated between the two nearest slice
    centres (edge planes take the nearest slice). Same shape and dtype as ``array``.

    Why not batchgenerators' ``augment_linear_downsampling_scipy``: it point-samples (no slice profile,
    so no partial volume), and with an odd number of samples over a slab the centre plane is a sample
    and comes back unchanged, so a 2D model trained on it sees many "thick" slices that are not.
    ``training.shifts.thick_slices`` (the evaluation shift) has a Gaussian slice profile too."""
    from scipy.ndimage import gaussian_filter1d

    n = array.shape[axis]
    profiled = gaussian_filter1d(array, sigma=thickness / 2.3548, axis=axis, mode="nearest")
    centres = np.arange(phase, n - 1 + 1e-6, thickness)
    if len(centres) < 2:  # shorter than two slices: one slice fills the extent
        one = _lerp(profiled, np.array([min(phase, n - 1.0)]), axis)
        return np.repeat(one, n, axis=axis).astype(array.dtype)
    slices = _lerp(profiled, centres, axis)
    back = np.clip((np.arange(n) - phase) / thickness, 0, len(centres) - 1)
    return _lerp(slices, back, axis).astype(array.dtype)


def thick_slice_resample(array: np.ndarray, axis: int, config: AugmentConfig) -> np.ndarray:
    """One random thick-slice draw along ``axis`` of ``array`` (float32 ``[C, *spatial]``, spatial ``axis``
    counted from 0), thickness uniform in ``config.thick_slice_mm``, by ``config.thick_slice_profile``.
    Draws from numpy's global generator, as batchgenerators does."""
    from batchgenerators.augmentations.resample_augmentations import augment_linear_downsampling_scipy

    low, high = config.thick_slice_mm
    if config.thick_slice_profile == "point":
        zoom = [(1.0, 1.0)] * (array.ndim - 1)
        zoom[axis] = (1.0 / high, 1.0 / low)
        return augment_linear_downsampling_scipy(
            array, zoom_range=zoom, per_channel=False, order_downsample=1, order_upsample=1
        )
    thickness = np.random.uniform(low, high)
    return simulate_thick_slices(array, axis + 1, thickness, np.random.uniform(0.0, thickness))


class ThickSliceTransform:
    """Simulated thick slices (:func:`thick_slice_resample`): one spatial axis (2D: either in-plane axis;
    3D: any) of a sample, with probability ``config.p_thick_slices``. ``axes`` restricts which axes may
    be chosen."""

    def __init__(self, config: AugmentConfig, axes=None):
        self.config, self.axes = config, axes

    def __call__(self, **batch):
        data = batch["data"]
        dims = data.ndim - 2
        for b in range(data.shape[0]):
            if np.random.uniform() >= self.config.p_thick_slices:
                continue
            axis = int(np.random.choice(self.axes if self.axes is not None else range(dims)))
            data[b] = thick_slice_resample(data[b], axis, self.config)
        return batch


def build_transforms(dims: int, patch: int, config: AugmentConfig):
    """The batchgenerators pipeline for ``dims``-D patches of edge ``patch`` (input crops of
    :func:`input_size`): spatial first (it crops), then bias field, thick slices, blur, noise, and the
    intensity curve changes."""
    from batchgenerators.transforms.abstract_transforms import Compose
    from batchgenerators.transforms.color_transforms import (
        BrightnessMultiplicativeTransform,
        ContrastAugmentationTransform,
        GammaTransform,
    )
    from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
    from batchgenerators.transforms.spatial_transforms import SpatialTransform

    angle = math.radians(config.max_rotation_deg)
    small = math.radians(min(config.max_rotation_deg, 5.0))  # 3D: mostly in-plane, a little out of plane
    return Compose(
        [
            SpatialTransform(
                (patch,) * dims,
                patch_center_dist_from_border=None,
                do_elastic_deform=config.p_elastic > 0,
                alpha=(0.0, 200.0),
                sigma=(9.0, 13.0),
                do_rotation=config.p_rotation > 0,
                angle_x=(-angle, angle) if dims == 2 else (-small, small),
                angle_y=(-small, small),
                angle_z=(-angle, angle),
                do_scale=config.p_scale > 0,
                scale=config.scale,
                border_mode_data="constant",
                border_cval_data=0.0,
                order_data=1,  # linear: cubic costs 3x on CPU for no visible gain on 1 mm patches
                border_mode_seg="constant",
                border_cval_seg=0,
                order_seg=0,
                random_crop=False,
                p_el_per_sample=config.p_elastic,
                p_scale_per_sample=config.p_scale,
                p_rot_per_sample=config.p_rotation,
            ),
            BiasFieldTransform(config.bias_coefficients, p_per_sample=config.p_bias_field),
            ThickSliceTransform(config),
            GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_sample=config.p_blur,
                                  p_per_channel=0.5),
            GaussianNoiseTransform(noise_variance=(0.0, 0.1), p_per_sample=config.p_noise),
            BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=config.p_brightness),
            ContrastAugmentationTransform(contrast_range=(0.75, 1.25), p_per_sample=config.p_contrast),
            GammaTransform(config.gamma, invert_image=False, per_channel=True, retain_stats=True,
                           p_per_sample=config.p_gamma),
        ]
    )
