"""Post-processing of a label map on the model grid, as the card's ``postprocessing`` asks: removal of
small connected tumour components (the spurious specks a network leaves in bright normal tissue).

Shared by serving (:func:`segcore.pipeline.segment`) and training's calibration
(``training.calibrate``), which chooses ``min_component_ml`` on the validation cases, so the setting
measured there is the one served. SimpleITK's connected components (already a serving dependency).
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk


def remove_small_components(labels: np.ndarray, min_voxels: int) -> np.ndarray:
    """``labels`` (uint8 ``[Z, Y, X]``, 0 = background) with every connected tumour component (all
    non-zero labels together, face+edge+corner connectivity) of fewer than ``min_voxels`` voxels set to 0.
    Sub-region labels inside a kept component are kept as they are. ``min_voxels <= 1`` returns
    ``labels`` unchanged (the same array)."""
    if min_voxels <= 1 or not labels.any():
        return labels
    tumour = sitk.GetImageFromArray((labels > 0).astype(np.uint8))
    components = sitk.ConnectedComponent(tumour, True)  # fully connected: 26-neighbourhood
    kept = sitk.RelabelComponent(components, minimumObjectSize=int(min_voxels))
    keep = sitk.GetArrayViewFromImage(kept) > 0
    return np.where(keep, labels, np.uint8(0)).astype(labels.dtype, copy=False)


def min_component_voxels(min_component_ml: float, voxel_ml: float) -> int:
    """``min_component_ml`` (mL) as a voxel count on a grid of ``voxel_ml`` mL per voxel (rounded up);
    0 when the setting is 0 (keep everything)."""
    if min_component_ml <= 0:
        return 0
    return math.ceil(min_component_ml / voxel_ml - 1e-9)
