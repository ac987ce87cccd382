"""Building one 3D image from a DICOM series, refusing what is not one.

pydicom reads headers (no pixels) to check what a technologist would check first: one series, MR, a
plain stack of single-frame slices with one position each and even spacing. SimpleITK (GDCM) then reads
the slices in the order sorted along the slice normal, so origin, spacing and direction are exactly what
its series reader gives. The headers are kept, in the same order, for writing a DICOM SEG that
references them. Nothing patient-identifying is logged or put in an error message.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from app.errors import ApiError

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR: an index, not an image
_SPACING_TOLERANCE = 0.1  # relative deviation of slice gaps tolerated before calling slices missing


@dataclass
class DicomSeries:
    image: sitk.Image
    datasets: list[Dataset]  # headers only, in the image's slice order (z index 0 first)
    description: str


def _describe(ds: Dataset) -> str:
    number = ds.get("SeriesNumber", "?")
    return f'series {number} "{ds.get("SeriesDescription", "no description")}"'


def _geometry(ds: Dataset, name: str, label: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        orientation = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=float)
        position = np.array([float(v) for v in ds.ImagePositionPatient], dtype=float)
        _ = ds.PixelSpacing, ds.Rows, ds.Columns
    except (AttributeError, ValueError, TypeError):
        raise ApiError(
            422, "missing_geometry", f'"{name}" in {label} lacks image position, orientation or pixel spacing'
        ) from None
    if orientation.shape != (6,) or position.shape != (3,):
        raise ApiError(422, "missing_geometry", f'"{name}" in {label} has malformed position/orientation')
    return orientation, position


def read_headers(files: list[tuple[str, Path]], label: str) -> list[tuple[str, Path, Dataset]]:
    """Parse every file's header; refuse files that are not DICOM. DICOMDIR indexes are skipped."""
    headers = []
    for name, path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, ValueError, OSError, KeyError, TypeError) as exc:
            detail = str(exc).split("\n")[0][:120]
            raise ApiError(422, "not_dicom", f'"{name}" in {label} is not a DICOM file ({detail})') from None
        if ds.get("SOPClassUID") == MEDIA_STORAGE_DIRECTORY:
            continue
        headers.append((name, path, ds))
    if not headers:
        raise ApiError(422, "not_dicom", f"{label} holds no DICOM images")
    return headers


def _check_one_mr_series(headers: list[tuple[str, Path, Dataset]], label: str) -> None:
    """One series, MR, classic single-frame images: what a technologist checks first."""
    by_series: dict[str, list[tuple[str, Path, Dataset]]] = defaultdict(list)
    for entry in headers:
        by_series[str(entry[2].get("SeriesInstanceUID", "missing"))].append(entry)
    if len(by_series) > 1:
        found = "; ".join(f"{_describe(e[0][2])} ({len(e)} files)" for e in by_series.values())
        raise ApiError(
            422, "mixed_series", f"{label} holds {len(by_series)} series; send one series per field. Found: {found}"
        )
    modalities = {str(e[2].get("Modality", "missing")) for e in headers}
    if modalities != {"MR"}:
        raise ApiError(
            422, "not_mr", f"{label} is {'/'.join(sorted(modalities))}, not MR; this service segments brain MRI"
        )
    if any(int(e[2].get("NumberOfFrames", 1) or 1) > 1 for e in headers):
        raise ApiError(
            422, "multiframe_unsupported", f"{label} is an enhanced (multi-frame) object; send classic MR images"
        )


def _slice_order(headers: list[tuple[str, Path, Dataset]], label: str) -> np.ndarray:
    """Indices of ``headers`` sorted along the slice normal, after checking that the slices form one regular
    3D stack: one orientation, one position per slice (not 4D), at least two slices, even gaps."""
    temporal = int(headers[0][2].get("NumberOfTemporalPositions", 1) or 1)
    geometry = [_geometry(ds, name, label) for name, _, ds in headers]
    orientations = np.array([g[0] for g in geometry])
    if not np.allclose(orientations, orientations[0], atol=1e-3):
        raise ApiError(422, "inconsistent_orientation", f"the slices of {label} have different orientations")
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    distances = np.array([float(np.dot(g[1], normal)) for g in geometry])
    rounded = np.round(distances, 3)
    if temporal > 1 or len(np.unique(rounded)) < len(rounded):
        raise ApiError(
            422,
            "multi_temporal",
            f"{label} repeats slice positions ({len(rounded)} images at {len(np.unique(rounded))} positions"
            + (f", {temporal} time points" if temporal > 1 else "")
            + "): it is a 4D/multi-temporal series; send a single 3D volume",
        )
    if len(headers) < 2:
        raise ApiError(422, "single_slice", f"{label} has a single slice; a 3D volume is required")
    order = np.argsort(distances)
    gaps = np.diff(distances[order])
    median = float(np.median(gaps))
    if median <= 0 or np.max(np.abs(gaps - median)) > _SPACING_TOLERANCE * median:
        raise ApiError(
            422,
            "missing_slices",
            f"{label} has uneven slice spacing (gaps {gaps.min():.2f}-{gaps.max():.2f} mm, typically {median:.2f} mm):"
            " slices are missing or the series is not a regular stack",
        )
    return order


def _read_pixels(ordered: list[tuple[str, Path, Dataset]], label: str, max_voxels: int) -> sitk.Image:
    """The voxels of slices already in order, as one float32 3D image (GDCM), after the size checks."""
    shapes = {(int(e[2].Rows), int(e[2].Columns)) for e in ordered}
    if len(shapes) != 1:
        raise ApiError(422, "inconsistent_size", f"the slices of {label} have different sizes: {sorted(shapes)}")
    rows, cols = shapes.pop()
    voxels = rows * cols * len(ordered)
    if voxels > max_voxels:
        raise ApiError(422, "image_too_large", f"{label} has {voxels} voxels; the limit is {max_voxels}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for _, path, _ in ordered])
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError:
        raise ApiError(
            400, "corrupt_file", f"the pixel data of {label} cannot be read (truncated or corrupt)"
        ) from None
    if image.GetDimension() != 3 or image.GetSize()[2] != len(ordered):
        raise ApiError(422, "wrong_dimensions", f"{label} did not read as one 3D volume")
    if not np.isfinite(sitk.GetArrayViewFromImage(image)).all():
        raise ApiError(422, "non_finite_values", f"{label} contains NaN or infinite values")
    return image


def read_series(files: list[tuple[str, Path]], label: str, max_voxels: int) -> DicomSeries:
    """Validate and read one DICOM series given as ``(client name, path)`` pairs."""
    headers = read_headers(files, label)
    _check_one_mr_series(headers, label)
    ordered = [headers[i] for i in _slice_order(headers, label)]
    image = _read_pixels(ordered, label, max_voxels)
    return DicomSeries(image=image, datasets=[ds for _, _, ds in ordered], description=_describe(headers[0][2]))
