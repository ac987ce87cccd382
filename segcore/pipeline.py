"""The segmentation pipeline: input images in, a label mask on the input's own grid out.

Serving and evaluation both call :func:`segment`, so a Dice measured by ``training.evaluate`` is a Dice
of exactly what the service returns; its first stage is :func:`segcore.preprocess.preprocess`, the function
``training.convert`` made the training shards with.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import SimpleITK as sitk

from segcore.card import ModelCard
from segcore.geometry import onto_grid
from segcore.preprocess import PreprocessSpec, preprocess
from segcore.runner import Runner
from segcore.tiling import predict_slices_2d, predict_sliding_window_3d, probabilities_to_labels


@dataclass
class Segmentation:
    """A label mask (uint8, on the first modality's input grid) and where the time went (ms)."""

    mask: sitk.Image
    timings_ms: dict[str, float] = field(default_factory=dict)


def peak_bytes(input_voxels: Sequence[int], model_voxels: int, card: ModelCard) -> int:
    """An upper estimate of the bytes one :func:`segment` call and its answer allocate, from sizes alone.

    ``input_voxels``: voxels of each modality's input grid (the first is the reference the mask is
    mapped back onto); ``model_voxels``: voxels of the model grid after reorientation and resampling
    (:func:`segcore.geometry.model_grid_size`). Counted per voxel: the inputs as float32 plus one
    transient copy while they are read (8 bytes); on the model grid, per channel the resampled image,
    its array, the stacked and the normalized copies (12 bytes), the reference grid and the
    normalization's temporaries (24 bytes), per output channel the probabilities and the 3D
    accumulator or the softmax arg-max (8 bytes); on the reference input grid the uint8 mask and the
    output writers' per-label frames (labels + 3 bytes).
    """
    channels, outputs = len(card.modalities), card.output_channels
    on_inputs = 8 * sum(int(v) for v in input_voxels)
    on_model_grid = int(model_voxels) * (12 * channels + 8 * outputs + 24)
    on_output = int(input_voxels[0]) * (len(card.labels) + 3) if input_voxels else 0
    return on_inputs + on_model_grid + on_output


def segment(images: Mapping[str, sitk.Image], runner: Runner, *, mirror: bool | None = None) -> Segmentation:
    """Segment one study. ``images`` maps the card's modality names to 3D SimpleITK images.

    ``mirror`` turns flip test-time augmentation of 3D models on or off (default: the card's
    ``tiling.mirror``); 2D models ignore it.
    """
    card = runner.card
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    prepared = preprocess(images, PreprocessSpec.of(card))
    channels, brain, model_grid = prepared.channels, prepared.brain, prepared.reference
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
