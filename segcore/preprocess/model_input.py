"""What a model sees: the one preprocessing entry point shared by training conversion and serving.

:func:`preprocess` takes a study's images (SimpleITK, any orientation and spacing) and a
:class:`PreprocessSpec` (from the model card when serving, from the training config when converting) and
returns the channels on the model grid, normalized. ``training.convert`` writes shards with it and
``segcore.pipeline`` serves with it, so the preprocessing that trained a model is, by construction, the
preprocessing that serves it. Its first stage is the input chain (:func:`segcore.preprocess.chain.
prepare_input`: skull detection and stripping, co-registration, bias correction, as the spec's
``preprocessing`` asks), then the grid and the normalization over the brain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from pydantic import BaseModel, ConfigDict

from segcore.card import Modality, ModelCard, Normalization, Orientation, Preprocessing, Spacing
from segcore.geometry import onto_grid, to_model_grid
from segcore.normalization import zscore_brain
from segcore.preprocess.chain import Report, prepare_input
from segcore.preprocess.skullstrip import Networks
from segcore.preprocess.spec import PreprocessMode


class PreprocessSpec(BaseModel):
    """The model grid and intensity normalization: the part of a model card (or a training config) that
    decides what the network sees. ``modalities`` are in channel order; the first defines the grid."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    modalities: list[Modality]
    orientation: Orientation = "LPS"
    spacing_mm: Spacing
    normalization: Normalization = Normalization()
    preprocessing: Preprocessing = Preprocessing()

    @classmethod
    def of(cls, card: ModelCard) -> PreprocessSpec:
        return cls(
            modalities=card.modalities,
            orientation=card.orientation,
            spacing_mm=card.spacing_mm,
            normalization=card.normalization,
            preprocessing=card.preprocessing,
        )


@dataclass
class Preprocessed:
    """``channels`` float32 ``[C, Z, Y, X]`` (normalized, background 0), ``brain`` bool ``[Z, Y, X]``,
    ``reference``: the first modality on the model grid (its geometry is the model grid's), and
    ``report``: what the input stage did and what to doubt (steps, registration, brain mL, warnings)."""

    channels: np.ndarray
    brain: np.ndarray
    reference: sitk.Image
    report: Report


def preprocess(
    images: Mapping[str, sitk.Image],
    spec: PreprocessSpec,
    mode: PreprocessMode = "auto",
    *,
    card_name: str = "the model",
    networks: Networks | None = None,
) -> Preprocessed:
    """Bring ``spec.modalities`` of ``images`` onto the model grid and normalize them.

    First the input stage (``spec.preprocessing`` under ``mode``; raises
    :class:`segcore.preprocess.Untrustworthy` when no answer can be trusted). Then each image is
    reoriented to ``spec.orientation`` and resampled (linear) to ``spec.spacing_mm``; the first modality
    defines the grid and the others are resampled onto it if they differ. Every channel is z-scored over
    the brain (the extracted brain when the input stage made one, else the union of the outer-face
    heuristic masks, :func:`segcore.normalization.zscore_brain`) and clipped. Raises ``KeyError`` naming
    the modalities missing from ``images``.
    """
    missing = [m for m in spec.modalities if m not in images]
    if missing:
        raise KeyError(f"missing modalities: {', '.join(missing)}")
    first = spec.modalities[0]
    prepared = prepare_input(
        images, spec.preprocessing, list(spec.modalities), mode, card_name=card_name, networks=networks
    )
    reference = to_model_grid(prepared.images[first], spec.orientation, spec.spacing_mm)
    arrays = []
    for name in spec.modalities:
        image = to_model_grid(prepared.images[name], spec.orientation, spec.spacing_mm)
        if name != first:
            image = onto_grid(image, reference, label=False)
        arrays.append(sitk.GetArrayFromImage(image).astype(np.float32, copy=False))  # a copy: image is rebound
    mask = None
    if prepared.brain is not None:
        oriented = sitk.DICOMOrient(prepared.brain, spec.orientation)
        mask = sitk.GetArrayFromImage(onto_grid(oriented, reference, label=True)) > 0
    channels, brain = zscore_brain(np.stack(arrays), clip=spec.normalization.clip, brain=mask)
    return Preprocessed(channels, brain, reference, prepared.report)
