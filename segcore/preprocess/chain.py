"""The input stage of :func:`segcore.preprocess.preprocess`: what a study needs before the model grid.

Order, and why: the first modality (the card's reference) is looked at and, if the card wants a stripped
brain and the input has a skull, stripped first; its brain mask then confines the registration metric
of every other modality to the brain (skull and neck differ between series, the brain does not); the
mask is applied to every registered modality; N4 runs last, inside the brain, where the card asks.
Every step is timed and reported, and the guard's warnings are collected on the way.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from segcore.card import Preprocessing
from segcore.geometry import onto_grid, same_grid, voxel_volume_ml
from segcore.preprocess import plausibility
from segcore.preprocess.bias import n4_correct
from segcore.preprocess.detection import (
    MIN_BRAIN_CONTRAST,
    StripFinding,
    background_mask,
    brain_contrast,
    looks_skull_stripped,
)
from segcore.preprocess.plausibility import InputWarning, Untrustworthy
from segcore.preprocess.registration import already_aligned, register_rigid
from segcore.preprocess.skullstrip import BrainExtractorUnavailable, Networks, extract_brain
from segcore.preprocess.spec import PreprocessMode

#: Below this a brain extraction found no brain (a phantom, a non-head image, a failed extraction).
MIN_BRAIN_FOUND_ML = 200.0


@dataclass
class Report:
    """What was done to the input and what to doubt; the JSON answer's ``preprocessing`` and ``warnings``."""

    mode: str
    steps: list[dict] = field(default_factory=list)
    registration: dict[str, dict] = field(default_factory=dict)
    brain_volume_ml: float | None = None
    skull_stripped_input: dict[str, bool] = field(default_factory=dict)
    warnings: list[InputWarning] = field(default_factory=list)

    def step(self, name: str, started: float, **detail: object) -> None:
        self.steps.append({"step": name, "ms": round((time.perf_counter() - started) * 1000, 1), **detail})

    def as_dict(self) -> dict:
        return {
            "mode": self.mode,
            "steps": self.steps,
            "registration": self.registration,
            "brain_volume_ml": None if self.brain_volume_ml is None else round(self.brain_volume_ml, 1),
            "skull_stripped_input": self.skull_stripped_input,
        }


@dataclass
class PreparedInput:
    """The card's modalities ready for the model grid, and the brain they were reduced to.

    ``images``: by modality; after registration or stripping every one is on the reference modality's
    input grid (float32), otherwise each is the input itself. ``brain``: uint8 mask on the reference's
    input grid when a brain was extracted here (it then replaces the outer-face heuristic for
    normalization and cropping), else None (the heuristic applies, exactly as before this stage).
    """

    images: dict[str, sitk.Image]
    brain: sitk.Image | None
    report: Report


def _brain_ml(mask: np.ndarray, image: sitk.Image) -> float:
    return float(np.count_nonzero(mask)) * voxel_volume_ml(image)


def _refuse_skull(spec: Preprocessing, findings: dict[str, StripFinding], card_name: str) -> None:
    skulled = [m for m, f in findings.items() if not f.stripped]
    if spec.skull_strip and skulled:
        reason = findings[skulled[0]].reason()
        raise Untrustworthy(
            "skull_not_stripped",
            f"model {card_name} expects a skull-stripped brain, but {', '.join(skulled)} has a skull ({reason}); "
            "send it with preprocess=auto to have the skull removed here, or send a skull-stripped image",
        )


def _strip(reference: sitk.Image, networks: Networks | None, report: Report) -> sitk.Image:
    t0 = time.perf_counter()
    try:
        brain = extract_brain(reference, networks)
    except BrainExtractorUnavailable as missing:
        raise Untrustworthy(
            "skull_stripper_unavailable",
            f"the image has a skull and this server cannot remove it ({missing}); send a skull-stripped image",
        ) from None
    volume = _brain_ml(sitk.GetArrayViewFromImage(brain), brain)
    contrast = brain_contrast(reference, brain) if volume > 0 else 0.0
    report.step("skull_strip", t0, brain_ml=round(volume, 1), contrast=round(contrast, 3))
    if volume < MIN_BRAIN_FOUND_ML or contrast < MIN_BRAIN_CONTRAST:
        raise Untrustworthy(
            "no_brain_found",
            f"no brain was found in the image ({volume:.0f} mL extracted, contrast to its surroundings "
            f"{contrast:.2f}): send a head MRI that covers the brain, in one of the modalities the model names",
        )
    report.warnings.append(
        InputWarning("skull_stripped", f"a skull was detected and removed before segmentation (brain {volume:.0f} mL)")
    )
    return brain


def _register(
    images: dict[str, sitk.Image], modalities: list[str], brain: sitk.Image | None, report: Report
) -> dict[str, sitk.Image]:
    reference = images[modalities[0]]
    ref_brain = sitk.GetArrayViewFromImage(brain) > 0 if brain is not None else None
    out = {modalities[0]: reference}
    for name in modalities[1:]:
        t0 = time.perf_counter()
        moving = images[name]
        if ref_brain is None:
            fixed_outline = sitk.GetArrayFromImage(background_mask(reference)) > 0
        else:
            fixed_outline = ref_brain
        if already_aligned(reference, moving, fixed_outline, sitk.GetArrayFromImage(background_mask(moving)) > 0):
            out[name] = moving
            report.registration[name] = {"left_alone": True, "reason": "same grid and same brain outline"}
            report.step("registration", t0, modality=name, left_alone=True)
            continue
        result = register_rigid(reference, moving, brain)
        out[name] = result.image
        report.registration[name] = result.summary()
        report.step("registration", t0, modality=name, left_alone=result.left_alone)
        if not result.converged:
            report.warnings.append(
                InputWarning(
                    "registration_not_converged",
                    f"registering {name} to {modalities[0]} did not converge ({result.stop_condition[:80]}): "
                    "the modalities may not line up",
                )
            )
        elif result.poor:
            report.warnings.append(
                InputWarning(
                    "poor_registration",
                    f"{name} matches {modalities[0]} poorly after registration (Mattes MI {result.metric:.3f}): "
                    "check that both series are of the same patient and session",
                )
            )
    return out


def prepare_input(
    images: Mapping[str, sitk.Image],
    spec: Preprocessing,
    modalities: list[str],
    mode: PreprocessMode = "auto",
    *,
    card_name: str = "the model",
    networks: Networks | None = None,
) -> PreparedInput:
    """Do what the card (``spec``) needs and the input lacks; report it. ``images`` maps the card's
    ``modalities`` (first = reference) to 3D images on their input grids.

    ``mode="none"`` changes nothing, but refuses a head with a skull for a model that expects a stripped
    brain. Raises :class:`Untrustworthy` when no answer can be trusted (the caller answers 422).
    """
    report = Report(mode=mode)
    images = {m: images[m] for m in modalities}
    t0 = time.perf_counter()
    findings = {m: looks_skull_stripped(images[m]) for m in modalities}
    report.skull_stripped_input = {m: f.stripped for m, f in findings.items()}
    report.step("detect", t0)
    report.warnings.extend(plausibility.slice_thickness_warnings(images))
    reference = images[modalities[0]]
    brain: sitk.Image | None = None
    if mode == "none":
        _refuse_skull(spec, findings, card_name)
    else:
        if spec.skull_strip and not all(f.stripped for f in findings.values()):
            # A stripped reference already says where the brain is; only a skull needs the network.
            stripped_reference = findings[modalities[0]].stripped
            brain = background_mask(reference) if stripped_reference else _strip(reference, networks, report)
        if spec.registration == "rigid" and len(modalities) > 1:
            images = _register(images, modalities, brain, report)
        if brain is not None:
            images = _apply_brain(images, modalities, brain, report)
        if spec.bias_correction == "n4":
            images = _bias_correct(images, modalities, brain, report)
    brain_view = sitk.GetArrayViewFromImage(brain) > 0 if brain is not None else None
    if brain_view is None:
        brain_view = sitk.GetArrayFromImage(background_mask(reference)) > 0
    report.brain_volume_ml = _brain_ml(brain_view, reference)
    if brain is not None or findings[modalities[0]].stripped:
        report.warnings.extend(
            plausibility.brain_volume_warnings(report.brain_volume_ml, spec.min_brain_ml, spec.max_brain_ml)
        )
        masks = {m: _brain_on(images[m], brain, reference) for m in modalities}
        report.warnings.extend(plausibility.modality_intensity_warnings(images, masks))
    return PreparedInput(images=images, brain=brain, report=report)


def _brain_on(image: sitk.Image, brain: sitk.Image | None, reference: sitk.Image) -> np.ndarray:
    """The brain as a boolean array on ``image``'s grid (its own non-background if no mask was made)."""
    if brain is None:
        return sitk.GetArrayFromImage(background_mask(image)) > 0
    if not same_grid(image, reference):
        brain = onto_grid(brain, image, label=True)
    return sitk.GetArrayFromImage(brain) > 0


def _apply_brain(
    images: dict[str, sitk.Image], modalities: list[str], brain: sitk.Image, report: Report
) -> dict[str, sitk.Image]:
    """Zero everything outside the brain, every modality on the reference grid (as BraTS does)."""
    t0 = time.perf_counter()
    reference = images[modalities[0]]
    out = {}
    for name in modalities:
        image = sitk.Cast(images[name], sitk.sitkFloat32)
        if not same_grid(image, reference):
            image = onto_grid(image, reference, label=False)
        out[name] = sitk.Mask(image, brain, outsideValue=0.0)
    report.step("apply_brain_mask", t0)
    return out


def _bias_correct(
    images: dict[str, sitk.Image], modalities: list[str], brain: sitk.Image | None, report: Report
) -> dict[str, sitk.Image]:
    out = {}
    for name in modalities:
        t0 = time.perf_counter()
        mask = brain if brain is not None and same_grid(brain, images[name]) else background_mask(images[name])
        out[name] = n4_correct(images[name], mask)
        report.step("bias_correction", t0, modality=name)
    return out
