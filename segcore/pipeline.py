"""The segmentation pipeline: input images in, a label mask on the input's own grid out.

Serving and evaluation both call :func:`segment`, so a Dice measured by ``training.evaluate`` is a Dice
of exactly what the service returns; its first stage is :func:`segcore.preprocess.preprocess`, the function
``training.convert`` made the training shards with.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from segcore.geometry import onto_grid, voxel_volume_ml
from segcore.preprocess import InputWarning, PreprocessMode, PreprocessSpec, Report, preprocess, result_warnings
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
    model_mask = sitk.GetImageFromArray(labels)
    model_mask.CopyInformation(model_grid)
    mask = onto_grid(model_mask, images[card.modalities[0]], label=True)
    timings["postprocess"] = (time.perf_counter() - t2) * 1000
    tumour_ml = float(np.count_nonzero(labels)) * voxel_volume_ml(model_mask)
    report = prepared.report
    warnings = [*report.warnings, *result_warnings(tumour_ml, report.brain_volume_ml)]
    return Segmentation(mask=mask, timings_ms=timings, preprocessing=report, warnings=warnings)
