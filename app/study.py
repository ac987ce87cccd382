"""Turning uploaded files into validated 3D images, one per modality.

Every check that can be made from a header is made before voxels are read, so an absurd header cannot
make the service allocate gigabytes. Errors are :class:`~app.errors.ApiError` with a sentence a
technologist understands; the status follows DESIGN §3 (415 unsupported file, 400 corrupt file,
422 readable but unusable).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from app.archives import ArchiveLimits, extract_zip
from app.dicom import DicomSeries, read_series
from app.errors import ApiError
from app.uploads import UploadedFile
from segcore.card import MODALITY_ALIASES, ModelCard, canonical_modality
from segcore.geometry import physical_overlap, same_grid

KNOWN_MODALITIES = ("t1", "t1c", "t2", "flair")


def _nifti_header_ok(header: bytes) -> bool:
    """True if ``header`` starts like a NIfTI-1 or NIfTI-2 header (either byte order)."""
    if len(header) >= 348:
        for order in "<>":
            if struct.unpack(f"{order}i", header[:4])[0] == 348 and header[344:348] in (b"n+1\0", b"ni1\0"):
                return True
    if len(header) >= 540:
        for order in "<>":
            if struct.unpack(f"{order}i", header[:4])[0] == 540 and header[4:8] == b"n+2\0":
                return True
    return False


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
        if _nifti_header_ok(inner):
            return "nifti-gz"
        raise ApiError(415, "unsupported_file", f'"{upload.filename}" is gzip-compressed but not a NIfTI image')
    if _nifti_header_ok(head):
        return "nifti"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    raise ApiError(
        415,
        "unsupported_file",
        f'"{upload.filename}" for "{upload.field}" is not a NIfTI (.nii, .nii.gz) file or a DICOM series',
    )


def read_nifti(upload: UploadedFile, kind: str, max_voxels: int) -> sitk.Image:
    """Read one NIfTI upload as a float32 3D image after checking its header."""
    # ITK picks its reader by extension; give the staged file the one its content has.
    path = upload.path.with_name(upload.path.name + (".nii.gz" if kind == "nifti-gz" else ".nii"))
    upload.path.rename(path)
    upload.path = path
    reader = sitk.ImageFileReader()
    reader.SetImageIO("NiftiImageIO")
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise ApiError(400, "corrupt_file", f'the NIfTI header of "{upload.filename}" cannot be read') from None
    size = reader.GetSize()
    name = f'"{upload.filename}" ({upload.field})'
    if len(size) == 4 and size[3] == 1:
        size = size[:3]
    if len(size) != 3:
        shape = "x".join(str(s) for s in reader.GetSize())
        raise ApiError(
            422, "wrong_dimensions", f"{name} is a {len(reader.GetSize())}D image ({shape}); a 3D volume is required"
        )
    if min(size) < 2:
        raise ApiError(422, "wrong_dimensions", f"{name} has a single slice ({size}); a 3D volume is required")
    voxels = int(np.prod(size, dtype=np.int64))
    if voxels > max_voxels:
        raise ApiError(
            422, "image_too_large", f"{name} has {voxels} voxels; the limit is {max_voxels} (SEG_MAX_VOXELS)"
        )
    if reader.GetNumberOfComponents() != 1:
        raise ApiError(422, "wrong_pixel_type", f"{name} has {reader.GetNumberOfComponents()} components per voxel")
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError:
        raise ApiError(400, "corrupt_file", f"{name} is truncated or corrupt: its voxel data cannot be read") from None
    if image.GetDimension() == 4:
        image = sitk.Extract(image, [*image.GetSize()[:3], 0], [0, 0, 0, 0])
    if not np.isfinite(sitk.GetArrayViewFromImage(image)).all():
        raise ApiError(422, "non_finite_values", f"{name} contains NaN or infinite values")
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
