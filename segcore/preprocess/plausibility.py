"""The plausibility guard: what to doubt in an input or a result, and what cannot be answered at all.

A wrong answer must never leave with a plain 200. Each check here yields an :class:`InputWarning` (a
stable ``code`` that scripts match on, and a sentence for people), or raises :class:`Untrustworthy`
when no answer should be given; the service turns that into a 422 whose sentence says what to send.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

#: Slices thicker than this blur tumour boundaries in the slice direction (BraTS models saw 1 mm).
THICK_SLICE_MM = 3.0
#: Intensity profile of a modality inside the brain: fraction of brain voxels brighter than twice the
#: brain median. CSF is dark in T1/T1c/FLAIR and bright in T2 (ventricles, sulci): a "T2" with hardly
#: any bright voxels, or a "T1" with many, was probably sent under the wrong field. Measured on the 11
#: BraTS 2018 cases in ../shared/data: T1 0.0-0.04 %, T1c 0.1-1.4 %, FLAIR 0.1-6.5 %, T2 2.8-7.2 %. So a
#: T1/T2 swap is caught; FLAIR and T2 overlap and are not told apart by this measure.
BRIGHT_FRACTION_LIMITS: dict[str, tuple[float, float]] = {
    "t2": (0.01, 1.0),
    "flair": (0.0, 0.15),
    "t1": (0.0, 0.01),
    "t1c": (0.0, 0.05),
}


@dataclass(frozen=True)
class InputWarning:
    """One reason to doubt the answer. ``code`` is stable; ``detail`` is a sentence."""

    code: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "detail": self.detail}


class Untrustworthy(ValueError):
    """No answer can be trusted for this input; ``detail`` says what to send instead."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


def slice_thickness_warnings(images: dict[str, sitk.Image]) -> list[InputWarning]:
    """A warning per modality whose coarsest voxel edge exceeds :data:`THICK_SLICE_MM`."""
    out = []
    for name, image in images.items():
        coarsest = max(image.GetSpacing())
        if coarsest > THICK_SLICE_MM:
            out.append(
                InputWarning(
                    "thick_slices",
                    f"{name} has {coarsest:.1f} mm slices (more than {THICK_SLICE_MM:g} mm): boundaries in the slice "
                    "direction are interpolated and small lesions can be missed; a 3D or thin-slice series is better",
                )
            )
    return out


def brain_volume_warnings(brain_ml: float, low_ml: float, high_ml: float) -> list[InputWarning]:
    """A warning when the brain volume is outside ``[low_ml, high_ml]`` (a plausible adult range)."""
    if low_ml <= brain_ml <= high_ml:
        return []
    return [
        InputWarning(
            "brain_volume_implausible",
            f"the brain measures {brain_ml:.0f} mL, outside the plausible adult range {low_ml:.0f}-{high_ml:.0f} mL: "
            "the field of view may be partial, the brain mask wrong, or the image not a head",
        )
    ]


def modality_intensity_warnings(images: dict[str, sitk.Image], brain: dict[str, np.ndarray]) -> list[InputWarning]:
    """A warning per modality whose brain intensity profile does not look like its name.

    ``brain``: boolean ``[Z, Y, X]`` per modality on that modality's grid. Images with negative values in
    the brain (already z-scored) are not judged: their median is not a tissue level.
    """
    out = []
    for name, image in images.items():
        limits = BRIGHT_FRACTION_LIMITS.get(name)
        mask = brain.get(name)
        if limits is None or mask is None or not mask.any():
            continue
        values = sitk.GetArrayViewFromImage(image)[mask]
        median = float(np.median(values))
        if median <= 0 or float(values.min()) < 0:
            continue
        bright = float(np.mean(values > 2 * median))
        if not limits[0] <= bright <= limits[1]:
            out.append(
                InputWarning(
                    "intensities_unlike_modality",
                    f'the image sent as "{name}" does not look like {name}: {bright:.1%} of the brain is brighter '
                    f"than twice its median (expected {limits[0]:.0%}-{limits[1]:.0%}); check the series was sent "
                    "under the right field",
                )
            )
    return out


def result_warnings(tumour_ml: float, brain_ml: float | None) -> list[InputWarning]:
    """Checks on the answer itself: a "tumour" over half the brain is more likely a failure."""
    if brain_ml and tumour_ml > 0.5 * brain_ml:
        return [
            InputWarning(
                "tumour_over_half_brain",
                f"the segmented tumour ({tumour_ml:.0f} mL) is more than half the brain ({brain_ml:.0f} mL): "
                "the input is probably not what the model expects (skull, wrong modality, other anatomy)",
            )
        ]
    return []
