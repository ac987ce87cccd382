"""Unpacking a zip of DICOM files without trusting it.

Checked before anything is written: member count, absolute paths, ``..`` components, symlinks and
encryption. Checked while bytes are written: the total uncompressed size and each member's compression
ratio, counted on the bytes actually produced (headers can lie). Members are written under generated
names (``00000.dcm``...), never under their archive names, so nothing can land outside the directory.
"""

from __future__ import annotations

import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from app.errors import ApiError

_CHUNK = 1 << 20
_IGNORED = ("__MACOSX/",)
_IGNORED_NAMES = {".DS_Store", "Thumbs.db"}


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 4096
    max_total_bytes: int = 2 << 30
    max_ratio: float = 200.0  # DICOM compresses ~3-10x; zip bombs ~1000x


def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return f'absolute path "{info.filename}"'
    if ".." in PurePosixPath(name).parts:
        return f'path traversal in "{info.filename}"'
    if stat.S_ISLNK(info.external_attr >> 16):
        return f'symbolic link "{info.filename}"'
    if info.flag_bits & 0x1:
        return f'encrypted member "{info.filename}"'
    return None


def _checked_members(zf: zipfile.ZipFile, label: str, limits: ArchiveLimits) -> list[zipfile.ZipInfo]:
    """The members worth extracting (no directories, no macOS/Windows litter), after the checks that need
    no decompression: member count, absolute paths, ``..``, symlinks, encryption, emptiness."""
    infos = [
        i
        for i in zf.infolist()
        if not i.is_dir()
        and not i.filename.startswith(_IGNORED)
        and PurePosixPath(i.filename).name not in _IGNORED_NAMES
    ]
    if len(zf.infolist()) > limits.max_members:
        raise ApiError(
            413,
            "archive_too_large",
            f"{label} holds {len(zf.infolist())} entries; at most {limits.max_members} are accepted",
        )
    for info in infos:
        reason = _unsafe_reason(info)
        if reason:
            raise ApiError(422, "unsafe_archive", f"{label} contains an {reason}; refusing the archive")
    if not infos:
        raise ApiError(422, "empty_archive", f"{label} contains no files")
    return infos


def _copy_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, label: str, limits: ArchiveLimits, total: int
) -> int:
    """Decompress one member to ``target`` in chunks, counting the bytes actually produced against the
    archive's total (``total`` so far) and the member's compression ratio; returns the new total."""
    written = 0
    try:
        with zf.open(info) as src, target.open("xb") as dst:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                total += len(chunk)
                if total > limits.max_total_bytes:
                    raise ApiError(
                        413,
                        "archive_too_large",
                        f"{label} unpacks to more than {limits.max_total_bytes >> 20} MB; refusing it",
                    )
                if written > _CHUNK and written > limits.max_ratio * max(info.compress_size, 1):
                    raise ApiError(
                        413,
                        "archive_too_large",
                        f'"{info.filename}" in {label} expands more than {limits.max_ratio:.0f}x '
                        "(a zip bomb?); refusing the archive",
                    )
                dst.write(chunk)
    except ApiError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError, NotImplementedError) as exc:
        raise ApiError(400, "corrupt_file", f'"{info.filename}" in {label} cannot be unpacked ({exc})') from None
    return total


def extract_zip(archive: Path, destination: Path, label: str, limits: ArchiveLimits) -> list[tuple[str, Path]]:
    """Extract ``archive`` into ``destination``; returns ``(name in archive, extracted path)`` pairs."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ApiError(400, "corrupt_file", f"{label} is not a readable zip archive ({exc})") from None
    with zf:
        infos = _checked_members(zf, label, limits)
        destination.mkdir(parents=True, exist_ok=True)
        total = 0
        extracted = []
        for index, info in enumerate(infos):
            target = destination / f"{index:05d}.dcm"
            total = _copy_member(zf, info, target, label, limits, total)
            extracted.append((info.filename, target))
        return extracted
