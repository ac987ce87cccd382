"""What a model sees: the one preprocessing entry point shared by training conversion and serving.

:func:`preprocess` takes a study's images (SimpleITK, any orientation and spacing) and a
:class:`PreprocessSpec` (from the model card when serving, from the training config when converting) and
returns the channels on the model grid, normalized. ``training.convert`` writes shards with it and
``segcore.pipeline`` serves with it, so the preprocessing that trained a model is, by construction, the
preprocessing that serves it. New steps (co-registration, skull stripping, bias correction) belong here,
as fields of the spec and stages of this function, so both sides get them at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from pydantic import BaseModel, ConfigDict

from segcore.card import Modality, ModelCard, Normalization, Orientation, Spacing
from segcore.geometry import onto_grid, to_model_grid
from segcore.normalization import zscore_brain


class PreprocessSpec(BaseModel):
    """The model grid and intensity normalization: the part of a model card (or a training config) that
    decides what the network sees. ``modalities`` are in channel order; the first defines the grid."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    modalities: list[Modality]
    orientation: Orientation = "LPS"
    spacing_mm: Spacing
    normalization: Normalization = Normalization()

    @classmethod
    def of(cls, card: ModelCard) -> PreprocessSpec:
        return cls(
            modalities=card.modalities,
            orientation=card.orientation,
            spacing_mm=card.spacing_mm,
            normalization=card.normalization,
        )


@dataclass
class Preprocessed:
    """``channels`` float32 ``[C, Z, Y, X]`` (normalized, background 0), ``brain`` bool ``[Z, Y, X]``, and
    ``reference``: the first modality on the model grid (its geometry is the model grid's)."""

    channels: np.ndarray
    brain: np.ndarray
    reference: sitk.Image


def preprocess(images: Mapping[str, sitk.Image], spec: PreprocessSpec) -> Preprocessed:
    """Bring ``spec.modalities`` of ``images`` onto the model grid and normalize them.

    Each image is reoriented to ``spec.orientation`` and resampled (linear) to ``spec.spacing_mm``; the
    first modality defines the grid and the others are resampled onto it if they differ. Then every channel
    is z-scored over the union brain mask (:func:`segcore.normalization.zscore_brain`) and clipped.
    Raises ``KeyError`` naming the modalities missing from ``images``.
    """
    missing = [m for m in spec.modalities if m not in images]
    if missing:
        raise KeyError(f"missing modalities: {', '.join(missing)}")
    first = spec.modalities[0]
    reference = to_model_grid(images[first], spec.orientation, spec.spacing_mm)
    arrays = []
    for name in spec.modalities:
        image = to_model_grid(images[name], spec.orientation, spec.spacing_mm)
        if name != first:
            image = onto_grid(image, reference, label=False)
        arrays.append(sitk.GetArrayFromImage(image).astype(np.float32, copy=False))  # a copy: image is rebound
    channels, brain = zscore_brain(np.stack(arrays), clip=spec.normalization.clip)
    return Preprocessed(channels, brain, reference)
