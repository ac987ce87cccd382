"""The answer formats of ``POST /segment``: one table, read by the route (which names are valid, the media
type, whether the body is a file download) and by the service (which writer runs, what it needs).

A new format is a writer module in this folder and one row in :data:`FORMATS`; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import SimpleITK as sitk
from pydicom.dataset import Dataset

from app.outputs.dicom_seg import prepare_sources, write_dicom_seg
from app.outputs.nifti import write_nifti
from app.outputs.preview import overlay_png
from app.outputs.summary import summary
from segcore.card import ModelCard

FormatName = Literal["nifti", "json", "png", "dicom-seg"]


@dataclass(frozen=True)
class Rendering:
    """Everything a writer may use. ``mask`` is uint8 on ``image``'s grid (the first modality's input grid);
    ``datasets`` are that modality's DICOM headers in slice order, or None when it came as NIfTI."""

    mask: sitk.Image
    image: sitk.Image
    datasets: list[Dataset] | None
    card: ModelCard
    timings_ms: dict[str, float]
    directory: Path
    software_version: str
    other_datasets: list[list[Dataset]] = field(default_factory=list)  # further modalities' DICOM series


Payload = Path | bytes | dict
"""A written file (streamed, then its directory removed), bytes, or a JSON-able dict."""


@dataclass(frozen=True)
class OutputFormat:
    name: FormatName
    description: str
    media_type: str
    write: Callable[[Rendering], Payload]
    filename: str | None = None  # set: the writer returns a file, sent as a download under this name
    needs_dicom: bool = False  # the output references the source DICOM series of the first modality
    reports_timings: bool = False  # written after the "write" time is known, because it reports it
    # Run on the first modality's DICOM headers (or None) before the model: refuse or repair what the
    # writer would fail on, so a request never waits for inference to learn it cannot be answered.
    precheck: Callable[[list[Dataset] | None, ModelCard], None] | None = None


FORMATS: dict[str, OutputFormat] = {
    f.name: f
    for f in (
        OutputFormat(
            "nifti",
            "the label mask as .nii.gz on the input's grid",
            "application/gzip",
            lambda r: write_nifti(r.mask, r.directory),
            filename="mask.nii.gz",
        ),
        OutputFormat(
            "json",
            "volumes per label and region, bounding box, geometry, timings",
            "application/json",
            lambda r: summary(r.mask, r.card, r.timings_ms),
            reports_timings=True,
        ),
        OutputFormat(
            "png",
            "an overlay preview of the mask over the image",
            "image/png",
            lambda r: overlay_png(r.image, r.mask, r.card),
        ),
        OutputFormat(
            "dicom-seg",
            "a DICOM Segmentation referencing the source series (DICOM inputs only)",
            "application/dicom",
            lambda r: write_dicom_seg(
                r.mask, r.datasets or [], r.card, r.directory, r.software_version, r.other_datasets
            ),
            filename="mask.seg.dcm",
            needs_dicom=True,
            precheck=prepare_sources,
        ),
    )
}
if tuple(FORMATS) != get_args(FormatName):  # the OpenAPI enum and the table must not drift apart
    raise RuntimeError(f"FormatName {get_args(FormatName)} and FORMATS {tuple(FORMATS)} differ")
