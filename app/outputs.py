"""Writing answers: the mask as NIfTI, and a JSON summary with volumes per label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from segcore.card import ModelCard
from segcore.geometry import voxel_volume_ml
from segcore.metrics import bounding_box, label_counts


def write_nifti(mask: sitk.Image, directory: Path) -> Path:
    """Write ``mask`` (uint8) as ``.nii.gz``; SimpleITK writes its own origin/spacing/direction into
    the qform and sform, so any viewer puts it where the input was."""
    path = directory / "mask.nii.gz"
    sitk.WriteImage(mask, str(path), useCompression=True)
    return path


def summary(mask: sitk.Image, card: ModelCard, timings_ms: dict[str, float]) -> dict:
    """Per-label voxel counts and volumes (mL), bounding box, geometry and timings."""
    array = sitk.GetArrayViewFromImage(mask)
    counts = label_counts(np.asarray(array), card.labels)
    per_voxel = voxel_volume_ml(mask)
    box = bounding_box(np.asarray(array))
    return {
        "model": {"name": card.name, "version": card.version},
        "labels": [
            {"value": value, "name": name, "voxels": counts[value], "volume_ml": round(counts[value] * per_voxel, 3)}
            for value, name in sorted(card.labels.items())
        ],
        "tumour_volume_ml": round(sum(counts.values()) * per_voxel, 3),
        "tumour_voxels": int(sum(counts.values())),
        # bounding box in ITK index order (x, y, z), inclusive
        "bounding_box": None if box is None else [list(b) for b in reversed(box)],
        "geometry": {
            "size": list(mask.GetSize()),
            "spacing": list(mask.GetSpacing()),
            "origin": list(mask.GetOrigin()),
            "direction": list(mask.GetDirection()),
        },
        "timings_ms": {k: round(v, 1) for k, v in timings_ms.items()},
    }
