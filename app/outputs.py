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


# Segment codes (SNOMED CT via pydicom's code dictionary) by label name; anything else is a neoplasm.
def _property_codes(label_name: str):
    from pydicom.sr.codedict import codes

    name = label_name.lower()
    category = codes.SCT.MorphologicallyAbnormalStructure
    if "necro" in name:
        return category, codes.SCT.Necrosis
    if "oedema" in name or "edema" in name:
        return category, codes.SCT.Edema
    return category, codes.SCT.Neoplasm


def write_dicom_seg(mask: sitk.Image, series, card: ModelCard, directory: Path, software_version: str) -> Path:
    """A DICOM Segmentation (highdicom) referencing the source series it was computed on.

    ``mask`` must be on the series' own grid (it is: the pipeline maps masks back onto the input), and
    its z index order is the order of ``series.datasets``. Label values are mapped to segment numbers
    1..n in ascending order. Patient and study attributes are copied from the source by highdicom.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    array = sitk.GetArrayFromImage(mask)
    values = sorted(card.labels)
    segments = np.zeros_like(array, dtype=np.uint8)
    for number, value in enumerate(values, start=1):
        segments[array == value] = number
    algorithm = hd.AlgorithmIdentificationSequence(
        name=card.name, version=str(card.version), family=codes.DCM.ArtificialIntelligence
    )
    descriptions = []
    for number, value in enumerate(values, start=1):
        category, prop = _property_codes(card.labels[value])
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=card.labels[value][:64],
                segmented_property_category=category,
                segmented_property_type=prop,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                anatomic_regions=[codes.SCT.Brain],
            )
        )
    seg = hd.seg.Segmentation(
        source_images=series.datasets,
        pixel_array=segments if len(values) > 1 else (segments > 0).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=9900 + card.version % 100,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="brats-serve",
        manufacturer_model_name=card.name,
        software_versions=software_version,
        device_serial_number="0",
        series_description=f"{card.name} v{card.version} tumour segmentation"[:64],
        omit_empty_frames=False,
    )
    path = directory / "mask.seg.dcm"
    seg.save_as(path)
    return path


_COLOURS = ((230, 40, 40), (250, 200, 30), (40, 140, 250), (40, 220, 120), (200, 60, 220))


def overlay_png(image: sitk.Image, mask: sitk.Image, card: ModelCard) -> bytes:
    """A preview for people: the axial slice with the largest tumour area, large, above a montage of
    eight slices across the tumour. Radiological convention (patient's left on the right of the
    picture, anterior at the top) after reorienting to LPS; pixels are drawn at their physical aspect."""
    import io

    from PIL import Image, ImageDraw

    image = sitk.DICOMOrient(image, "LPS")
    mask = sitk.DICOMOrient(mask, "LPS")
    volume = sitk.GetArrayViewFromImage(image)
    labels = sitk.GetArrayViewFromImage(mask)
    sx, sy = image.GetSpacing()[:2]
    lo, hi = np.percentile(volume[volume != volume.flat[0]], [1, 99]) if (volume != volume.flat[0]).any() else (0, 1)
    area = labels.reshape(labels.shape[0], -1).astype(bool).sum(axis=1)
    tumour_z = np.flatnonzero(area)
    best = int(np.argmax(area)) if tumour_z.size else labels.shape[0] // 2
    span = (tumour_z[0], tumour_z[-1]) if tumour_z.size else (0, labels.shape[0] - 1)
    colour_of = {v: _COLOURS[i % len(_COLOURS)] for i, v in enumerate(sorted(card.labels))}

    def render(z: int, width: int) -> Image.Image:
        grey = np.clip((volume[z] - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
        rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
        for value, colour in colour_of.items():
            where = labels[z] == value
            rgb[where] = 0.55 * rgb[where] + 0.45 * np.array(colour, dtype=np.float32)
        tile = Image.fromarray(rgb.astype(np.uint8))
        height = round(width * (grey.shape[0] * sy) / (grey.shape[1] * sx))
        return tile.resize((width, max(height, 1)), Image.Resampling.BILINEAR)

    main = render(best, 512)
    picks = np.linspace(span[0], span[1], 8).round().astype(int)
    thumbs = [render(int(z), 128) for z in picks]
    header = 40
    canvas = Image.new("RGB", (512, header + main.height + 2 * thumbs[0].height), (0, 0, 0))
    canvas.paste(main, (0, header))
    for i, thumb in enumerate(thumbs):
        canvas.paste(thumb, ((i % 4) * 128, header + main.height + (i // 4) * thumb.height))
    volume_ml = float(labels.astype(bool).sum()) * voxel_volume_ml(mask)
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 4), f"{card.name} v{card.version}   tumour {volume_ml:.1f} mL", fill=(255, 255, 255))
    draw.text(
        (6, 20),
        f"axial slice {best} (largest tumour area), montage {span[0]}-{span[1]}; patient left on the right",
        fill=(200, 200, 200),
    )
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
