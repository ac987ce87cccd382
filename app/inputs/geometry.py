"""Validating an input's geometry from its headers, before any voxel is read.

Both readers end here: a DICOM series as a stack of slice headers, a NIfTI file as nibabel's header. The
result is a :class:`HeaderGrid` (size, spacing, direction and origin in LPS, as SimpleITK will describe
the image), from which the memory a request needs is planned before it is spent.

What is refused, and why: a geometry that is not finite or not positive (ITK would carry NaN through
resampling, and different runs give different answers); orientation vectors that are not orthonormal
beyond numerical rounding (ITK silently replaces them); slices with different pixel spacing or a stack
whose slices drift sideways (a sheared volume, which ITK's series reader flattens into a wrong grid);
repeated positions, named as duplicates or as 4D depending on how they repeat. Messages name files and
attributes, never DICOM values.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from app.errors import ApiError

ORTHONORMAL_TOLERANCE = 1e-3
"""Largest deviation of orientation cosines from unit length / orthogonality accepted as rounding (a
DICOM decimal string or a float32 sform is good to ~1e-6; 1e-3 is 0.06 degrees)."""
SPACING_TOLERANCE = 1e-3  # relative difference of pixel spacings still called equal
SHEAR_TOLERANCE = 0.01  # sideways drift of the stack tolerated, as a fraction of its length along the normal
POSITION_DECIMALS = 3  # slice positions closer than 1 micrometre are the same position


@dataclass(frozen=True)
class HeaderGrid:
    """An image grid as SimpleITK will see it: ``size`` (x, y, z) voxels, ``spacing`` (x, y, z) mm,
    ``direction`` a 3x3 matrix whose columns are the LPS directions of the x, y, z axes, ``origin`` in
    LPS mm."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    direction: np.ndarray
    origin: tuple[float, float, float]

    @property
    def voxels(self) -> int:
        return int(np.prod(self.size, dtype=np.int64))


@dataclass(frozen=True)
class SliceGeometry:
    """One DICOM slice's plane: unit row and column cosines, position (LPS mm), pixel spacing (row, col)."""

    row: np.ndarray
    col: np.ndarray
    position: np.ndarray
    pixel_spacing: np.ndarray
    rows: int
    columns: int


def _floats(ds: Dataset, keyword: str, count: int) -> np.ndarray | None:
    try:
        values = np.array([float(v) for v in ds[keyword].value], dtype=float)
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    return values if values.shape == (count,) else None


def header_int(ds: Dataset, keyword: str, default: int, label: str) -> int:
    """An integer attribute (IS/US) or ``default`` when absent or empty; a non-numeric value is a 422
    naming the attribute (never its value)."""
    try:
        value = ds.get(keyword)
        return default if value is None or value == "" else int(value)
    except (TypeError, ValueError, OverflowError):
        raise ApiError(422, "malformed_header", f"{label} has a non-numeric {keyword}") from None


def slice_geometry(ds: Dataset, name: str, label: str) -> SliceGeometry:
    """Parse and check one slice's plane; orientation cosines with rounding error are normalized."""
    orientation = _floats(ds, "ImageOrientationPatient", 6)
    position = _floats(ds, "ImagePositionPatient", 3)
    spacing = _floats(ds, "PixelSpacing", 2)
    rows = header_int(ds, "Rows", 0, label)
    columns = header_int(ds, "Columns", 0, label)
    if orientation is None or position is None or spacing is None or rows < 1 or columns < 1:
        raise ApiError(
            422, "missing_geometry", f'"{name}" in {label} lacks image position, orientation, pixel spacing or size'
        )
    if not (np.isfinite(orientation).all() and np.isfinite(position).all() and np.isfinite(spacing).all()):
        raise ApiError(
            422, "invalid_geometry", f'"{name}" in {label} has a non-finite position, orientation or spacing'
        )
    if (spacing <= 0).any():
        raise ApiError(422, "invalid_geometry", f'"{name}" in {label} has a pixel spacing that is not positive')
    row, col = orientation[:3], orientation[3:]
    lengths = np.array([np.linalg.norm(row), np.linalg.norm(col)])
    if np.abs(lengths - 1).max() > ORTHONORMAL_TOLERANCE or abs(float(row @ col)) > ORTHONORMAL_TOLERANCE:
        raise ApiError(
            422,
            "invalid_orientation",
            f'the orientation of "{name}" in {label} is not two orthogonal unit vectors '
            f"(lengths {lengths[0]:.4f}, {lengths[1]:.4f}; cosine between them {float(row @ col):.4f})",
        )
    return SliceGeometry(row / lengths[0], col / lengths[1], position, spacing, rows, columns)


def stack_order(geometries: list[SliceGeometry], label: str) -> tuple[np.ndarray, HeaderGrid]:
    """Check that slices form one regular, unsheared stack; return the slice order along the normal
    and the grid. Positions must already be unique (see :func:`repeated_positions`)."""
    first = geometries[0]
    planes = np.array([np.r_[g.row, g.col] for g in geometries])
    if not np.allclose(planes, planes[0], atol=ORTHONORMAL_TOLERANCE):
        raise ApiError(422, "inconsistent_orientation", f"the slices of {label} have different orientations")
    if any(not np.allclose(g.pixel_spacing, first.pixel_spacing, rtol=SPACING_TOLERANCE) for g in geometries):
        spacings = sorted({tuple(np.round(g.pixel_spacing, 4)) for g in geometries})
        raise ApiError(
            422, "inconsistent_spacing", f"the slices of {label} have different pixel spacings: {spacings[:4]} mm"
        )
    if len({(g.rows, g.columns) for g in geometries}) != 1:
        sizes = sorted({(g.rows, g.columns) for g in geometries})
        raise ApiError(422, "inconsistent_size", f"the slices of {label} have different sizes: {sizes[:4]}")
    normal = np.cross(first.row, first.col)
    positions = np.array([g.position for g in geometries])
    distances = positions @ normal
    order = np.argsort(distances)
    gaps = np.diff(distances[order])
    median = float(np.median(gaps)) if len(gaps) else 0.0
    if median <= 0 or np.max(np.abs(gaps - median)) > 0.1 * median:
        raise ApiError(
            422,
            "missing_slices",
            f"{label} has uneven slice spacing (gaps {gaps.min():.2f}-{gaps.max():.2f} mm, typically {median:.2f} mm):"
            " slices are missing or the series is not a regular stack",
        )
    sideways = positions[order] - positions[order[0]] - np.outer(distances[order] - distances[order[0]], normal)
    drift = float(np.linalg.norm(sideways, axis=1).max())
    if drift > max(SHEAR_TOLERANCE * (distances[order[-1]] - distances[order[0]]), 0.01):
        raise ApiError(
            422,
            "sheared_geometry",
            f"the slices of {label} drift {drift:.1f} mm sideways over the stack (a sheared or gantry-tilted volume); "
            "resample it to an orthogonal grid first",
        )
    grid = HeaderGrid(
        size=(first.columns, first.rows, len(geometries)),
        spacing=(float(first.pixel_spacing[1]), float(first.pixel_spacing[0]), median),
        direction=np.column_stack([first.row, first.col, normal]),
        origin=tuple(float(v) for v in positions[order[0]]),
    )
    return order, grid


def repeated_positions(geometries: list[SliceGeometry], temporal: int, label: str) -> None:
    """Refuse repeated slice positions: the same count at every position (or NumberOfTemporalPositions
    above 1) is a 4D series; a few repeats are duplicated slices, named as such."""
    normal = np.cross(geometries[0].row, geometries[0].col)
    keys = [round(float(g.position @ normal), POSITION_DECIMALS) for g in geometries]
    counts = Counter(keys)
    repeats = set(counts.values())
    if temporal > 1 or (len(repeats) == 1 and repeats != {1}):
        raise ApiError(
            422,
            "multi_temporal",
            f"{label} repeats slice positions ({len(keys)} images at {len(counts)} positions"
            + (f", {temporal} time points" if temporal > 1 else "")
            + "): it is a 4D/multi-temporal series; send a single 3D volume",
        )
    duplicated = sum(1 for c in counts.values() if c > 1)
    if duplicated:
        raise ApiError(
            422,
            "duplicate_slices",
            f"{label} has {duplicated} slice position(s) with more than one image ({len(keys)} images at "
            f"{len(counts)} positions): remove the duplicated images",
        )


def affine_grid(affine: np.ndarray, shape: tuple[int, int, int], name: str) -> HeaderGrid:
    """The LPS grid of a NIfTI voxel-to-RAS ``affine`` (the one nibabel chose: sform when its code is
    set, else qform, else pixdim), checked: finite, positive spacing, orthonormal directions within
    rounding (then made exactly orthonormal), no shear."""
    if not np.isfinite(affine).all():
        raise ApiError(422, "invalid_geometry", f"{name} has a non-finite voxel-to-world transform (qform/sform)")
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :4]  # NIfTI world is RAS; ITK's is LPS
    linear = lps[:, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if (spacing <= 1e-6).any() or not np.isfinite(spacing).all():
        raise ApiError(422, "invalid_geometry", f"{name} has a voxel spacing that is not positive ({spacing} mm)")
    direction = linear / spacing
    error = np.abs(direction.T @ direction - np.eye(3)).max()
    if error > ORTHONORMAL_TOLERANCE:
        raise ApiError(
            422,
            "sheared_geometry",
            f"{name} has a sheared or non-orthogonal voxel-to-world transform (axes off orthogonal by "
            f"{float(np.degrees(np.arcsin(min(error, 1.0)))):.1f} degrees); resample it to an orthogonal grid first",
        )
    u, _, vt = np.linalg.svd(direction)  # the nearest rotation: removes float32 rounding, nothing more
    return HeaderGrid(
        size=tuple(int(s) for s in shape),  # type: ignore[arg-type]
        spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        direction=u @ vt,
        origin=tuple(float(v) for v in lps[:, 3]),  # type: ignore[arg-type]
    )
