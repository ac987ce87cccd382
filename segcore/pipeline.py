"""The segmentation pipeline: input images in, a label mask on the input's own grid out.

Serving and evaluation both call :func:`segment`, so a Dice measured by ``training.evaluate`` is a Dice
of exactly what the service returns.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from segcore.card import ModelCard
from segcore.geometry import onto_grid, to_model_grid
from segcore.normalization import zscore_brain
from segcore.runner import Runner
from segcore.tiling import predict_slices_2d, predict_sliding_window_3d, probabilities_to_labels


@dataclass
class Segmentation:
    """A label mask (uint8, on the first modality's input grid) and where the time went (ms)."""

    mask: sitk.Image
    timings_ms: dict[str, float] = field(default_factory=dict)


def prepare(images: Mapping[str, sitk.Image], card: ModelCard) -> tuple[np.ndarray, np.ndarray, sitk.Image]:
    """Bring the card's modalities onto the model grid and normalize them.

    Returns ``(channels float32 [C, Z, Y, X], brain bool [Z, Y, X], model-grid reference image)``. The
    first modality defines the grid; the others are resampled onto it (linear) if they differ.
    """
    missing = [m for m in card.modalities if m not in images]
    if missing:
        raise KeyError(f"missing modalities: {', '.join(missing)}")
    reference = to_model_grid(images[card.modalities[0]], card.orientation, card.spacing_mm)
    arrays = []
    for name in card.modalities:
        image = to_model_grid(images[name], card.orientation, card.spacing_mm)
        if name != card.modalities[0]:
            image = onto_grid(image, reference, label=False)
        arrays.append(sitk.GetArrayFromImage(image).astype(np.float32, copy=False))  # a copy: image is rebound
    channels, brain = zscore_brain(np.stack(arrays), clip=card.normalization.clip)
    return channels, brain, reference


def segment(images: Mapping[str, sitk.Image], runner: Runner, *, mirror: bool | None = None) -> Segmentation:
    """Segment one study. ``images`` maps the card's modality names to 3D SimpleITK images.

    ``mirror`` turns flip test-time augmentation of 3D models on or off (default: the card's
    ``tiling.mirror``); 2D models ignore it.
    """
    card = runner.card
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    channels, brain, model_grid = prepare(images, card)
    t1 = time.perf_counter()
    timings["preprocess"] = (t1 - t0) * 1000
    if card.dims == 3:
        probs = predict_sliding_window_3d(
            channels,
            brain,
            runner.predict,
            card.output_channels,
            patch_size=tuple(card.tiling.patch_size),  # type: ignore[arg-type]  # validated by the card
            overlap=card.tiling.overlap,
            margin=card.tiling.margin,
            crop_to_brain=card.tiling.crop_to_brain,
            mirror=card.tiling.mirror if mirror is None else mirror,
        )
    else:
        probs = predict_slices_2d(
            channels,
            brain,
            runner.predict,
            card.output_channels,
            divisor=card.tiling.divisor,
            margin=card.tiling.margin,
            crop_to_brain=card.tiling.crop_to_brain,
        )
    t2 = time.perf_counter()
    timings["infer"] = (t2 - t1) * 1000
    labels = probabilities_to_labels(probs, card.labels, card.activation, card.threshold)
    del probs
    model_mask = sitk.GetImageFromArray(labels)
    model_mask.CopyInformation(model_grid)
    mask = onto_grid(model_mask, images[card.modalities[0]], label=True)
    timings["postprocess"] = (time.perf_counter() - t2) * 1000
    return Segmentation(mask=mask, timings_ms=timings)
