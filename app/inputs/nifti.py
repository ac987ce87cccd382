"""Reading one NIfTI upload (``.nii`` or ``.nii.gz``) as a 3D float32 SimpleITK image, without trusting it.

The header (parsed by nibabel) decides everything before any voxel is read: dimensions, voxel count against
the budget, and how many bytes the data must have. Errors are :class:`~app.errors.ApiError` (415/400/422).
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from app.errors import ApiError
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


def _stage_uncompressed(upload: UploadedFile, kind: str, name: str, max_voxels: int) -> Path:
    """Check the header, then give the voxel data to ITK as a plain ``.nii`` of exactly the size the
    header promises.

    The header decides everything before any voxel is decompressed or read: dimensions and voxel count
    (an absurd header is refused without allocating), and the byte count the data must have. A .nii.gz
    is decompressed once, in chunks, and never past that count (a gzip bomb cannot fill the disk); a
    file shorter than the count is truncated, which ITK would otherwise pad silently.
    """
    opener = gzip.open if kind == "nifti-gz" else open
    with opener(upload.path, "rb") as src:
        header = nifti_header(src.read(540))
    if header is None:
        raise ApiError(400, "corrupt_file", f"the NIfTI header of {name} cannot be read")
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
    try:
        itemsize = header.get_data_dtype().itemsize
    except Exception:
        raise ApiError(422, "wrong_pixel_type", f"{name} has a voxel type this service cannot read") from None
    expected = int(header.get_data_offset()) + voxels * itemsize
    raw = upload.path.with_name(upload.path.name + ".nii")
    written = 0
    try:
        with opener(upload.path, "rb") as src, raw.open("xb") as dst:
            while written < expected and (chunk := src.read(min(1 << 20, expected - written))):
                dst.write(chunk)
                written += len(chunk)
    except (OSError, EOFError, zlib.error):
        written = -1
    if written < expected:
        raise ApiError(
            400, "corrupt_file", f"{name} is truncated or corrupt: its voxel data is shorter than its header says"
        )
    return raw


def read_nifti(upload: UploadedFile, kind: str, max_voxels: int) -> sitk.Image:
    """Read one NIfTI upload as a float32 3D image (SimpleITK), after checking it with nibabel."""
    import nibabel as nib

    name = f'"{upload.filename}" ({upload.field})'
    raw = _stage_uncompressed(upload, kind, name, max_voxels)
    # ITK's NIfTI reader turns NaN into 0 without a word: check the stored values with nibabel first.
    data = nib.load(raw, mmap=True).dataobj
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data.get_unscaled()).all():
        raise ApiError(422, "non_finite_values", f"{name} contains NaN or infinite values")
    reader = sitk.ImageFileReader()
    reader.SetImageIO("NiftiImageIO")
    reader.SetFileName(str(raw))
    try:
        reader.ReadImageInformation()
        if reader.GetNumberOfComponents() != 1:
            raise ApiError(422, "wrong_pixel_type", f"{name} has {reader.GetNumberOfComponents()} components per voxel")
        reader.SetOutputPixelType(sitk.sitkFloat32)
        image = reader.Execute()
    except RuntimeError:
        raise ApiError(400, "corrupt_file", f"{name} is corrupt: SimpleITK cannot read it") from None
    if image.GetDimension() == 4:
        image = sitk.Extract(image, [*image.GetSize()[:3], 0], [0, 0, 0, 0])
    if not np.isfinite(sitk.GetArrayViewFromImage(image)).all():  # e.g. an infinite scale factor
        raise ApiError(422, "non_finite_values", f"{name} contains NaN or infinite values after scaling")
    return image
