"""Building one 3D image from a DICOM series, refusing what is not one.

Two steps, so that memory is planned before it is spent. :func:`inspect_series` reads headers only
(pydicom, pixel data deferred) and checks what a technologist would check first: one series, MR, a plain
stack of single-frame slices with one position each, even spacing, no shear, orthonormal orientation,
and pixel data as long as Rows x Columns say. :meth:`InspectedSeries.load` then reads the voxels with
SimpleITK (GDCM) in the order sorted along the slice normal, so origin, spacing and direction are exactly
what its series reader gives. The headers are kept, in the same order, for writing a DICOM SEG that
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
from app.inputs.geometry import HeaderGrid, header_int, repeated_positions, slice_geometry, stack_order

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR: an index, not an image
_UNDEFINED_LENGTH = 0xFFFFFFFF  # encapsulated (compressed) pixel data
_DEFER_BYTES = 4096  # values larger than this (pixel data) are not read with the header


@dataclass
class DicomSeries:
    image: sitk.Image
    datasets: list[Dataset]  # headers only, in the image's slice order (z index 0 first)
    description: str


def _describe(ds: Dataset) -> str:
    number = ds.get("SeriesNumber", "?")
    return f'series {number} "{ds.get("SeriesDescription", "no description")}"'


def _is_directory(ds: Dataset) -> bool:
    """A DICOMDIR (a CD/DVD export's index) declares itself in its file meta, not its dataset."""
    meta = getattr(ds, "file_meta", None)
    sop_class = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    return MEDIA_STORAGE_DIRECTORY in (sop_class, str(ds.get("SOPClassUID", ""))) or "DirectoryRecordSequence" in ds


def _pixel_data_check(ds: Dataset, path: Path, name: str, label: str) -> ApiError | None:
    """The refusal (before decoding) of pixel data shorter than Rows x Columns x samples x bytes declare,
    or than the file holds (a decoder would pad the difference with zeros), or None. Returned, not raised:
    a series whose headers declare too many voxels is refused as too large first (see inspect_series)."""
    element = ds.get_item("PixelData", keep_deferred=True) if "PixelData" in ds else None
    if element is None:
        return ApiError(400, "corrupt_file", f'"{name}" in {label} has no pixel data')
    samples = header_int(ds, "SamplesPerPixel", 1, label)
    bits = header_int(ds, "BitsAllocated", 16, label)
    if samples != 1 or bits not in (8, 16, 32):
        raise ApiError(
            422,
            "wrong_pixel_type",
            f"{label} has {samples} samples of {bits} bits per pixel; grey-level MR is required",
        )
    length = getattr(element, "length", None)
    offset = getattr(element, "value_tell", None)
    if length is None or length == _UNDEFINED_LENGTH:
        return None  # compressed: the decoder checks the frame; its size is within the planned budget
    expected = header_int(ds, "Rows", 0, label) * header_int(ds, "Columns", 0, label) * bits // 8
    if length < expected:
        return ApiError(
            400,
            "corrupt_file",
            f'"{name}" in {label} holds {length} bytes of pixel data where its Rows x Columns declare {expected}',
        )
    if offset is not None and offset + length > path.stat().st_size:
        return ApiError(400, "corrupt_file", f'"{name}" in {label} is truncated: its pixel data ends early')
    return None


def read_headers(
    files: list[tuple[str, Path]], label: str, pixel_problems: list[ApiError]
) -> list[tuple[str, Path, Dataset]]:
    """Parse every file's header (pixel data deferred, then checked and dropped); refuse files that are
    not DICOM. DICOMDIR indexes are skipped; an instance sent twice (same SOP Instance UID) counts once."""
    headers = []
    seen: set[str] = set()
    for name, path in files:
        try:
            ds = pydicom.dcmread(path, defer_size=_DEFER_BYTES)
        except (InvalidDicomError, EOFError, ValueError, OSError, KeyError, TypeError, AttributeError) as exc:
            detail = type(exc).__name__  # messages may quote header values
            raise ApiError(422, "not_dicom", f'"{name}" in {label} is not a DICOM file ({detail})') from None
        if _is_directory(ds):
            continue
        uid = str(ds.get("SOPInstanceUID", "") or "")
        if uid and uid in seen:
            continue
        seen.add(uid)
        problem = _pixel_data_check(ds, path, name, label)
        if problem is not None:
            pixel_problems.append(problem)
        if "PixelData" in ds:
            del ds["PixelData"]  # kept headers must not pin pixel buffers (nor re-read them)
        headers.append((name, path, ds))
    if not headers:
        raise ApiError(422, "not_dicom", f"{label} holds no DICOM images")
    return headers


@dataclass
class InspectedSeries:
    """A series whose headers passed every check: files and headers in slice order, and its grid."""

    paths: list[Path]
    datasets: list[Dataset]
    grid: HeaderGrid
    description: str
    label: str

    def load(self) -> DicomSeries:
        return _read_voxels(self)


def _one_mr_series(headers: list[tuple[str, Path, Dataset]], label: str) -> None:
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


def inspect_series(files: list[tuple[str, Path]], label: str, max_voxels: int) -> InspectedSeries:
    """Validate one DICOM series given as ``(client name, path)`` pairs, from headers only."""
    pixel_problems: list[ApiError] = []
    headers = read_headers(files, label, pixel_problems)
    _one_mr_series(headers, label)
    if any(header_int(ds, "NumberOfFrames", 1, label) > 1 for _, _, ds in headers):
        raise ApiError(
            422, "multiframe_unsupported", f"{label} is an enhanced (multi-frame) object; send classic MR images"
        )
    temporal = header_int(headers[0][2], "NumberOfTemporalPositions", 1, label)
    geometries = [slice_geometry(ds, name, label) for name, _, ds in headers]
    repeated_positions(geometries, temporal, label)
    if len(headers) < 2:
        raise ApiError(422, "single_slice", f"{label} has a single slice; a 3D volume is required")
    order, grid = stack_order(geometries, label)
    if grid.voxels > max_voxels:
        raise ApiError(422, "image_too_large", f"{label} has {grid.voxels} voxels; the limit is {max_voxels}")
    if pixel_problems:  # after the size check: headers declaring a huge image are refused as too large
        raise pixel_problems[0]
    ordered = [headers[i] for i in order]
    return InspectedSeries(
        paths=[path for _, path, _ in ordered],
        datasets=[ds for _, _, ds in ordered],
        grid=grid,
        description=_describe(headers[0][2]),
        label=label,
    )


def _read_voxels(series: InspectedSeries) -> DicomSeries:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path in series.paths])
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError:
        raise ApiError(
            400, "corrupt_file", f"the pixel data of {series.label} cannot be read (truncated or corrupt)"
        ) from None
    if image.GetDimension() != 3 or image.GetSize() != series.grid.size:
        raise ApiError(422, "wrong_dimensions", f"{series.label} did not read as one 3D volume")
    if not np.isfinite(sitk.GetArrayViewFromImage(image)).all():
        raise ApiError(422, "non_finite_values", f"{series.label} contains NaN or infinite values")
    return DicomSeries(image=image, datasets=series.datasets, description=series.description)
