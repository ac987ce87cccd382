"""Reading one NIfTI upload (``.nii`` or ``.nii.gz``) as a 3D float32 SimpleITK image, without trusting it.

Two steps, so that memory is planned before it is spent: :func:`inspect_nifti` reads only the header
(nibabel) and checks dimensions, voxel count, voxel type, scaling and geometry; :meth:`InspectedNifti.load`
then reads the voxels. Errors are :class:`~app.errors.ApiError` (415/400/422).
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from app.errors import ApiError
from app.inputs.geometry import HeaderGrid, affine_grid
from app.inputs.uploads import UploadedFile


def nifti_header(header: bytes):
    """The NIfTI-1 or NIfTI-2 header (nibabel) at the start of ``header``, or None."""
    import nibabel as nib

    for size, cls in ((348, nib.Nifti1Header), (540, nib.Nifti2Header)):
        if len(header) < size:
            continue
        for order in "<>":
            if struct.unpack(f"{order}i", header[:4])[0] != size:
                continue
            try:
                parsed = cls.from_fileobj(io.BytesIO(header[:size]), check=False)
            except Exception:  # nibabel raises several types for garbage
                return None
            if parsed["magic"].item() in (b"n+1", b"ni1", b"n+2"):
                return parsed
    return None


def _header_of(upload: UploadedFile, kind: str, name: str):
    opener = gzip.open if kind == "nifti-gz" else open
    try:
        with opener(upload.path, "rb") as src:
            header = nifti_header(src.read(540))
    except (OSError, EOFError, zlib.error):
        header = None
    if header is None:
        raise ApiError(400, "corrupt_file", f"the NIfTI header of {name} cannot be read")
    return header


def _checked_shape(header, name: str, max_voxels: int) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in header.get_data_shape())
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        described = "x".join(str(s) for s in shape)
        raise ApiError(
            422, "wrong_dimensions", f"{name} is a {len(shape)}D image ({described}); a 3D volume is required"
        )
    if min(shape) < 2:
        raise ApiError(422, "wrong_dimensions", f"{name} has a single slice ({shape}); a 3D volume is required")
    voxels = int(np.prod(shape, dtype=np.int64))
    if voxels > max_voxels:
        raise ApiError(
            422, "image_too_large", f"{name} has {voxels} voxels; the limit is {max_voxels} (SEG_MAX_VOXELS)"
        )
    return shape  # type: ignore[return-value]


def _checked_scaling(header, name: str) -> None:
    from nibabel.spatialimages import HeaderDataError

    try:
        header.get_slope_inter()
    except HeaderDataError:
        raise ApiError(
            422, "invalid_scaling", f"{name} has a valid scl_slope but a scl_inter that is not a finite number"
        ) from None


def _grid(header, shape: tuple[int, int, int], name: str) -> HeaderGrid:
    """The grid nibabel and FSL would use: sform when its code is set, else qform, else pixdim."""
    from nibabel.spatialimages import HeaderDataError

    try:
        affine = np.asarray(header.get_best_affine(), dtype=float)
    except (HeaderDataError, ValueError, ZeroDivisionError, FloatingPointError):
        raise ApiError(422, "invalid_geometry", f"{name} has a voxel-to-world transform that cannot be read") from None
    return affine_grid(affine, shape, name)


@dataclass
class InspectedNifti:
    """A NIfTI upload whose header passed every check: its grid, and how to read its voxels."""

    upload: UploadedFile
    kind: str
    name: str
    header: object  # nibabel Nifti1Header or Nifti2Header
    grid: HeaderGrid

    def load(self) -> sitk.Image:
        return _read_voxels(self)


def inspect_nifti(upload: UploadedFile, kind: str, max_voxels: int) -> InspectedNifti:
    """Check a NIfTI-1 or NIfTI-2 header (dimensions, voxel count, voxel type, scaling, geometry)
    without reading voxels."""
    name = f'"{upload.filename}" ({upload.field})'
    header = _header_of(upload, kind, name)
    shape = _checked_shape(header, name, max_voxels)
    try:
        dtype = header.get_data_dtype()
    except Exception:
        raise ApiError(422, "wrong_pixel_type", f"{name} has a voxel type this service cannot read") from None
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise ApiError(422, "wrong_pixel_type", f"{name} has {dtype} voxels; a scalar (grey-level) image is required")
    _checked_scaling(header, name)
    return InspectedNifti(upload, kind, name, header, _grid(header, shape, name))


def _stage_uncompressed(item: InspectedNifti) -> Path:
    """The voxel data as a plain ``.nii`` of exactly the size the header promises.

    A .nii.gz is decompressed once, in chunks, and never past that count (a gzip bomb cannot fill the
    disk); a file shorter than the count is truncated or corrupt.
    """
    opener = gzip.open if item.kind == "nifti-gz" else open
    voxels = int(np.prod(item.header.get_data_shape(), dtype=np.int64))
    expected = int(item.header.get_data_offset()) + voxels * item.header.get_data_dtype().itemsize
    raw = item.upload.path.with_name(item.upload.path.name + ".nii")
    written = 0
    try:
        with opener(item.upload.path, "rb") as src, raw.open("xb") as dst:
            while written < expected and (chunk := src.read(min(1 << 20, expected - written))):
                dst.write(chunk)
                written += len(chunk)
    except (OSError, EOFError, zlib.error):
        written = -1
    if written < expected:
        raise ApiError(
            400, "corrupt_file", f"{item.name} is truncated or corrupt: its voxel data is shorter than its header says"
        )
    return raw


def _read_voxels(item: InspectedNifti) -> sitk.Image:
    """Voxels through nibabel (NIfTI-1 and -2, scaling applied in float32), onto the checked grid.

    nibabel, not ITK, reads them: ITK silently turns NaN into 0, cannot read every valid NIfTI-2, and
    prefers the qform where nibabel and FSL use the sform.
    """
    import nibabel as nib

    raw = _stage_uncompressed(item)
    try:
        data = nib.load(raw, mmap=True).get_fdata(dtype=np.float32)
    except Exception:  # nibabel raises several types for data it cannot map
        raise ApiError(400, "corrupt_file", f"{item.name} is corrupt: its voxel data cannot be read") from None
    if data.ndim == 4:
        data = data[..., 0]
    if not np.isfinite(data).all():
        raise ApiError(422, "non_finite_values", f"{item.name} contains NaN or infinite values")
    # nibabel's array is [x, y, z] (Fortran order on disk); SimpleITK's is [z, y, x].
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.T))
    del data
    image.SetSpacing(item.grid.spacing)
    image.SetOrigin(item.grid.origin)
    image.SetDirection([float(v) for v in item.grid.direction.flatten()])
    return image
