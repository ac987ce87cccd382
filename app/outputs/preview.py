"""An overlay picture for people (``format=png``): the mask over the image, radiological convention."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from segcore.card import ModelCard
from segcore.geometry import voxel_volume_ml

_COLOURS = ((230, 40, 40), (250, 200, 30), (40, 140, 250), (40, 220, 120), (200, 60, 220))
HEADER, MAIN_BOX, THUMB_BOX = 40, 512, 128
MAX_SIZE = (MAIN_BOX, HEADER + MAIN_BOX + 2 * THUMB_BOX)
"""The picture is always this size (width, height): a 512 x 512 box for the main slice and eight 128 x 128
boxes, whatever the input's size or voxel aspect, so no header can make the preview large."""


def fit_in_box(height_mm: float, width_mm: float, box: int) -> tuple[int, int]:
    """(width, height) in pixels of a picture of that physical aspect, fitted inside ``box`` x ``box``."""
    aspect = height_mm / width_mm
    if aspect >= 1:
        return max(round(box / aspect), 1), box
    return box, max(round(box * aspect), 1)


def overlay_png(image: sitk.Image, mask: sitk.Image, card: ModelCard) -> bytes:
    """A preview for people: the axial slice with the largest tumour area, large, above a montage of
    eight slices across the tumour. Radiological convention (patient's left on the right of the
    picture, anterior at the top) after reorienting to LPS; pixels are drawn at their physical aspect,
    inside boxes of fixed size (:data:`MAX_SIZE`)."""
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

    def render(z: int, box: int) -> Image.Image:
        grey = np.clip((volume[z] - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
        rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
        for value, colour in colour_of.items():
            where = labels[z] == value
            rgb[where] = 0.55 * rgb[where] + 0.45 * np.array(colour, dtype=np.float32)
        tile = Image.fromarray(rgb.astype(np.uint8))
        return tile.resize(fit_in_box(grey.shape[0] * sy, grey.shape[1] * sx, box), Image.Resampling.BILINEAR)

    main = render(best, MAIN_BOX)
    picks = np.linspace(span[0], span[1], 8).round().astype(int)
    thumbs = [render(int(z), THUMB_BOX) for z in picks]
    canvas = Image.new("RGB", MAX_SIZE, (0, 0, 0))
    canvas.paste(main, ((MAIN_BOX - main.width) // 2, HEADER))
    for i, thumb in enumerate(thumbs):
        x0, y0 = (i % 4) * THUMB_BOX, HEADER + MAIN_BOX + (i // 4) * THUMB_BOX
        canvas.paste(thumb, (x0 + (THUMB_BOX - thumb.width) // 2, y0 + (THUMB_BOX - thumb.height) // 2))
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
