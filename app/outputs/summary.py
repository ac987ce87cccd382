"""The JSON answer (``format=json``): volumes per label and BraTS region, bounding box, geometry, timings."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from segcore.card import ModelCard
from segcore.geometry import voxel_volume_ml
from segcore.metrics import bounding_box, label_counts


def summary(mask: sitk.Image, card: ModelCard, timings_ms: dict[str, float]) -> dict:
    """Per-label voxel counts and volumes (mL), BraTS region volumes for a multi-class model (``regions``:
    whole tumour WT, tumour core TC, enhancing tumour ET, each the sum of its label values), bounding box,
    geometry and timings."""
    array = sitk.GetArrayViewFromImage(mask)
    counts = label_counts(np.asarray(array), card.labels)
    per_voxel = voxel_volume_ml(mask)
    box = bounding_box(np.asarray(array))
    regions = {
        name: {
            "labels": values,
            "voxels": sum(counts[v] for v in values),
            "volume_ml": round(sum(counts[v] for v in values) * per_voxel, 3),
        }
        for name, values in card.regions.items()
    }
    return {
        "model": {"name": card.name, "version": card.version},
        "labels": [
            {"value": value, "name": name, "voxels": counts[value], "volume_ml": round(counts[value] * per_voxel, 3)}
            for value, name in sorted(card.labels.items())
        ],
        "regions": regions,
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
