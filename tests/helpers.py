"""Test data the tests make themselves: synthetic heads with known geometry, and a real (tiny,
hand-written) SavedModel that marks bright voxels, so geometry can be checked independently of how
well a trained network segments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from segcore.card import ModelCard, Tiling


def synthetic_head(shape_zyx=(40, 72, 64), spacing=(1.0, 1.0, 1.0)) -> tuple[sitk.Image, sitk.Image]:
    """An LPS image of a head (intensity ~100) with an off-centre bright 'tumour' (300), and the tumour
    mask. The tumour sits in the left-anterior-superior quadrant so any flip moves it."""
    z, y, x = np.mgrid[: shape_zyx[0], : shape_zyx[1], : shape_zyx[2]]
    cz, cy, cx = (s / 2 for s in shape_zyx)
    head = ((z - cz) / (0.42 * shape_zyx[0])) ** 2 + ((y - cy) / (0.42 * shape_zyx[1])) ** 2 + (
        (x - cx) / (0.42 * shape_zyx[2])
    ) ** 2 <= 1
    tumour = ((z - 0.62 * shape_zyx[0]) / 5) ** 2 + ((y - 0.35 * shape_zyx[1]) / 7) ** 2 + (
        (x - 0.66 * shape_zyx[2]) / 6
    ) ** 2 <= 1
    rng = np.random.default_rng(3)
    volume = np.where(head, 100 + 5 * rng.standard_normal(head.shape), 0).astype(np.float32)
    volume[tumour & head] = 300
    image = sitk.GetImageFromArray(volume)
    mask = sitk.GetImageFromArray((tumour & head).astype(np.uint8))
    for img in (image, mask):
        img.SetSpacing(spacing)
        img.SetOrigin((-30.0, 12.5, -7.0))
    return image, mask


def make_threshold_model(
    models_dir: Path, name: str = "bright", version: int = 1, divisor: int = 8, modality: str = "flair"
) -> Path:
    """Publish a SavedModel whose ``probabilities`` are sigmoid(8 * (image - 2)): after the brain
    z-score, the bright tumour (z >> 2) is foreground and normal tissue is not."""
    import tensorflow as tf

    class Threshold(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, None, None, 1], tf.float32, name="image")])
        def serve(self, image):
            return {"probabilities": tf.sigmoid(8.0 * (image - 2.0))}

    path = Path(models_dir) / name / str(version)
    module = Threshold()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    ModelCard(
        name=name,
        version=version,
        dims=2,
        modalities=[modality],
        spacing_mm=[1.0, 1.0, 1.0],
        tiling=Tiling(divisor=divisor, margin=4),
        labels={1: "bright"},
    ).write(path)
    return path
