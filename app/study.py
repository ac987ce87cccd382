"""Turning uploaded files into validated 3D images, one per modality.

Every check that can be made from a header is made before voxels are read, so an absurd header cannot
make the service allocate gigabytes. Errors are :class:`~app.errors.ApiError` with a sentence a
technologist understands; the status follows DESIGN §3 (415 unsupported file, 400 corrupt file,
422 readable but unusable).
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from app.archives import ArchiveLimits, extract_zip
from app.dicom import DicomSeries, read_series
from app.errors import ApiError
from app.uploads import UploadedFile
from segcore.card import MODALITY_ALIASES, ModelCard, canonical_modality
from segcore.geometry import physical_overlap, same_grid

KNOWN_MODALITIES = ("t1", "t1c", "t2", "flair")


def _nifti_header(header: bytes):
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


def sniff(upload: UploadedFile) -> str:
    """Classify an upload by content, not by name: ``nifti``, ``nifti-gz``, ``dicom``, ``zip``."""
    if upload.size == 0:
        raise ApiError(400, "empty_file", f'the file "{upload.filename}" for "{upload.field}" is empty')
    with upload.path.open("rb") as fh:
        head = fh.read(1024)
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(upload.path, "rb") as gz:
                inner = gz.read(540)
        except (OSError, EOFError, zlib.error) as exc:
            raise ApiError(
                400, "corrupt_file", f'"{upload.filename}" is a damaged gzip file ({exc}); upload it again'
            ) from None
        if _nifti_header(inner) is not None:
            return "nifti-gz"
        raise ApiError(415, "unsupported_file", f'"{upload.filename}" is gzip-compressed but not a NIfTI image')
    if _nifti_header(head) is not None:
        return "nifti"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip, or an empty zip
        return "zip"
    raise ApiError(
        415,
        "unsupported_file",
        f'"{upload.filename}" for "{upload.field}" is not a NIfTI (.nii, .nii.gz) file or a DICOM series',
    )


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
        header = _nifti_header(src.read(540))
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


@dataclass
class Study:
    """The images the model needs, by modality, and the DICOM headers of modalities sent as DICOM."""

    images: dict[str, sitk.Image]
    dicom: dict[str, DicomSeries] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyLimits:
    max_voxels: int = 512 * 512 * 512
    archive: ArchiveLimits = ArchiveLimits()


def _read_modality(modality: str, uploads: list[UploadedFile], limits: StudyLimits) -> sitk.Image | DicomSeries:
    kinds = [sniff(u) for u in uploads]
    label = f'"{modality}"'
    if set(kinds) <= {"nifti", "nifti-gz"}:
        if len(uploads) != 1:
            raise ApiError(422, "too_many_files", f"{label} has {len(uploads)} NIfTI files; send one volume")
        return read_nifti(uploads[0], kinds[0], limits.max_voxels)
    if kinds == ["zip"]:
        upload = uploads[0]
        extracted = extract_zip(
            upload.path,
            upload.path.with_name(upload.path.name + ".unzipped"),
            f'the zip "{upload.filename}" for {label}',
            limits.archive,
        )
        return read_series(extracted, f'the DICOM series in "{upload.filename}" ({modality})', limits.max_voxels)
    if set(kinds) == {"dicom"}:
        return read_series([(u.filename, u.path) for u in uploads], f"the DICOM series for {label}", limits.max_voxels)
    raise ApiError(
        422,
        "mixed_inputs",
        f"{label} mixes file kinds ({', '.join(sorted(set(kinds)))}); send one NIfTI, one zip, or DICOM files",
    )


def read_study(files: list[UploadedFile], card: ModelCard, limits: StudyLimits) -> Study:
    """Group uploads by modality field, read each, and check the card's modalities are all there.

    Images of further modalities must overlap the first one physically; the pipeline resamples them
    onto the first one's grid.
    """
    by_field: dict[str, list[UploadedFile]] = defaultdict(list)
    for upload in files:
        modality = canonical_modality(upload.field)
        if modality not in KNOWN_MODALITIES:
            accepted = ", ".join([*KNOWN_MODALITIES, *MODALITY_ALIASES])
            raise ApiError(422, "unknown_field", f'unknown field "{upload.field}"; use one of: {accepted}')
        by_field[modality].append(upload)
    missing = [m for m in card.modalities if m not in by_field]
    if missing:
        raise ApiError(
            422,
            "missing_modality",
            f"model {card.name} v{card.version} needs {', '.join(card.modalities)}; missing: {', '.join(missing)}",
        )
    study = Study(images={})
    for modality in card.modalities:
        result = _read_modality(modality, by_field[modality], limits)
        if isinstance(result, DicomSeries):
            study.dicom[modality] = result
            study.images[modality] = result.image
        else:
            study.images[modality] = result
    first = study.images[card.modalities[0]]
    for modality in card.modalities[1:]:
        other = study.images[modality]
        if not same_grid(first, other) and not physical_overlap(first, other):
            raise ApiError(
                422,
                "modalities_do_not_overlap",
                f'"{modality}" does not overlap "{card.modalities[0]}" in space; they are not the same study',
            )
    return study
