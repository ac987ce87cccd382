"""The segmentation pipeline: input images in, a label mask on the input's own grid out.

Serving and evaluation both call :func:`segment`, so a Dice measured by ``training.evaluate`` is a Dice
of exactly what the service returns; its first stage is :func:`segcore.preprocess.preprocess`, the function
``training.convert`` made the training shards with.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from segcore.card import ModelCard
from segcore.geometry import onto_grid, voxel_volume_ml
from segcore.postprocess import min_component_voxels, remove_small_components
from segcore.preprocess import InputWarning, PreprocessMode, PreprocessSpec, Report, preprocess, result_warnings
from segcore.preprocess.skullstrip import FULL_SHAPE
from segcore.runner import Runner
from segcore.tiling import predict_slices_2d, predict_sliding_window_3d, probabilities_to_labels


@dataclass
class Segmentation:
    """A label mask (uint8, on the first modality's input grid), where the time went (ms), what was done
    before the network (``preprocessing``) and what to doubt (``warnings``)."""

    mask: sitk.Image
    timings_ms: dict[str, float] = field(default_factory=dict)
    preprocessing: Report | None = None
    warnings: list[InputWarning] = field(default_factory=list)

    @property
    def warning_codes(self) -> list[str]:
        return [w.code for w in self.warnings]


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
    return on_inputs + input_stage_bytes(input_voxels, card) + on_model_grid + on_output


def input_stage_bytes(input_voxels: Sequence[int], card: ModelCard) -> int:
    """An upper estimate of what the input stage (:func:`segcore.preprocess.prepare_input`) adds.

    Zero when the card asks for no step. Otherwise it is planned as if every step the card names runs
    (``preprocess=none`` and already-stripped/aligned inputs need less; the plan is made from headers,
    before anyone knows). Per voxel of the reference input grid: each modality's float32 copy on that
    grid plus a registration working copy (8 bytes per channel); the skull strip's RAS copy, its
    [X, Y, Z] float32 array, the cleaned copy, the probability and the uint8 masks (24 bytes); N4's
    float image, bias field and corrected output (12 bytes). Fixed: the skull stripper's network
    tensors at its ``FULL_SHAPE`` (float32 input and two-channel output). Not counted, and left to the
    budget's margin: OpenVINO's internal activations and registration's multi-resolution pyramid
    (shrunk copies, a fraction of a full-resolution copy).
    """
    spec = card.preprocessing
    if not spec.anything or not input_voxels:
        return 0
    reference = int(input_voxels[0])
    per_voxel = 8 * len(card.modalities)
    fixed = 0
    if spec.skull_strip:
        per_voxel += 24
        fixed += 3 * 4 * int(np.prod(FULL_SHAPE))
    if spec.bias_correction != "none":
        per_voxel += 12
    return reference * per_voxel + fixed




def segment(
    images: Mapping[str, sitk.Image],
    runner: Runner,
    *,
    mirror: bool | None = None,
    preprocess_mode: PreprocessMode = "auto",
) -> Segmentation:
    """Segment one study. ``images`` maps the card's modality names to 3D SimpleITK images.

    ``mirror`` turns flip test-time augmentation of 3D models on or off (default: the card's
    ``tiling.mirror``); 2D models ignore it. ``preprocess_mode``: ``auto`` does what the card's
    ``preprocessing`` needs and the input lacks; ``none`` sends the input as it is (and refuses a skull
    for a model that expects a stripped brain). Raises :class:`segcore.preprocess.Untrustworthy` when
    no answer can be trusted.
    """
    card = runner.card
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    prepared = preprocess(images, PreprocessSpec.of(card), preprocess_mode, card_name=card.name)
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
    voxel_ml = voxel_volume_ml(model_grid)
    labels = remove_small_components(labels, min_component_voxels(card.postprocessing.min_component_ml, voxel_ml))
    model_mask = sitk.GetImageFromArray(labels)
    model_mask.CopyInformation(model_grid)
    mask = onto_grid(model_mask, images[card.modalities[0]], label=True)
    timings["postprocess"] = (time.perf_counter() - t2) * 1000
    tumour_ml = float(np.count_nonzero(labels)) * voxel_ml
    report = prepared.report
    warnings = [*report.warnings, *result_warnings(tumour_ml, report.brain_volume_ml)]
    return Segmentation(mask=mask, timings_ms=timings, preprocessing=report, warnings=warnings)
