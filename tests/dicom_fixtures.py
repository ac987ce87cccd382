"""Zips and file sets built from the real DICOM series in ../shared/data, in memory, for the tests."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pydicom

from tests.conftest import shared_case


def mprage_files() -> list[Path]:
    folder = shared_case("dicom", "siemens_t1_mprage_sagittal", "t1_MPRAGEcr_noGRAPPA_19")
    return sorted(folder.glob("*.dcm"))


def epi_files() -> list[Path]:
    return sorted(shared_case("dicom", "ge_epi_4d", "mr_0004").glob("*.dcm"))


def zip_of(entries: list[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buffer.getvalue()


def zip_files(paths: list[Path], prefix: str = "") -> bytes:
    return zip_of([(prefix + p.name, p.read_bytes()) for p in paths])


def symlink_zip(target: str = "/etc/passwd") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        info = zipfile.ZipInfo("link.dcm")
        info.external_attr = 0o120777 << 16  # S_IFLNK
        zf.writestr(info, target)
    return buffer.getvalue()


def retagged(path: Path, **changes) -> bytes:
    """A copy of a real DICOM file with some attributes changed."""
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        setattr(ds, key, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
