"""What an upload is, from its first bytes (never from its name): NIfTI, gzipped NIfTI, DICOM or zip."""

from __future__ import annotations

import gzip
import zlib
from typing import Literal, get_args

from app.errors import ApiError
from app.inputs.nifti import nifti_header
from app.inputs.uploads import UploadedFile

UploadKind = Literal["nifti", "nifti-gz", "dicom", "zip"]
"""The kinds of file ``sniff`` recognises; anything else is refused with 415."""
UPLOAD_KINDS: tuple[str, ...] = get_args(UploadKind)


def sniff(upload: UploadedFile) -> UploadKind:
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
        if nifti_header(inner) is not None:
            return "nifti-gz"
        raise ApiError(415, "unsupported_file", f'"{upload.filename}" is gzip-compressed but not a NIfTI image')
    if nifti_header(head) is not None:
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
