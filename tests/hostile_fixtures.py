"""Hostile inputs the tests make themselves: NIfTI files with lying or pathological headers, DICOM series
(from the real MPRAGE in ../shared/data) with broken geometry or identifiers, raw HTTP requests, and two
tiny real SavedModels (a two-channel threshold model and one that fails at inference time).

Every builder returns bytes or publishes a model; nothing here talks to a server.
"""

from __future__ import annotations

import gzip
import io
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from segcore.card import ModelCard, Tiling
from segcore.model_folder import SIGNATURE_NAME, publish_atomically
from tests.dicom_fixtures import mprage_files, zip_of

# Values a hostile series carries that must never reach a log line or an answer.
INVALID_BIRTH_DATE = "1970-11-12"
OTHER_PATIENT_ID = "OTHER-PATIENT-4711"


# --- NIfTI -----------------------------------------------------------------------------------------


def head_array(shape_xyz=(48, 56, 40)) -> np.ndarray:
    """A float32 ellipsoid 'head' (100) with a bright off-centre 'tumour' (300), indexed [x, y, z]."""
    x, y, z = np.meshgrid(*(np.arange(s) for s in shape_xyz), indexing="ij")
    centre = [s / 2 for s in shape_xyz]
    head = sum(((a - c) / (0.42 * s)) ** 2 for a, c, s in zip((x, y, z), centre, shape_xyz, strict=True)) <= 1
    tumour = sum(((a - 0.65 * s) / 5) ** 2 for a, s in zip((x, y, z), shape_xyz, strict=True)) <= 1
    volume = np.where(head, 100.0, 0.0).astype(np.float32)
    volume[tumour & head] = 300.0
    return volume


def nifti_bytes(image: nib.Nifti1Image | nib.Nifti2Image, compress: bool = True) -> bytes:
    data = image.to_bytes()
    return gzip.compress(data, compresslevel=1) if compress else data


def nifti(
    spacing=(1.0, 1.0, 1.0),
    shape_xyz=(48, 56, 40),
    sform: np.ndarray | None = None,
    qform: np.ndarray | None = None,
    version: int = 1,
) -> nib.Nifti1Image:
    """A synthetic head; by default qform = sform = a scaled identity with ``spacing``."""
    affine = np.diag([*spacing, 1.0])
    cls = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    image = cls(head_array(shape_xyz), affine)
    image.set_qform(affine if qform is None else qform, code=1)
    image.set_sform(affine if sform is None else sform, code=1 if sform is not None else 0)
    return image


def nifti_with_header(**fields: object) -> bytes:
    """A synthetic head whose raw header fields (``scl_inter``, ``pixdim``...) are then overwritten."""
    image = nifti()
    raw = bytearray(image.to_bytes())
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw[:348])))
    for key, value in fields.items():
        header[key] = value
    raw[:348] = header.binaryblock
    return gzip.compress(bytes(raw), compresslevel=1)


def sheared_sform(shear: float = 0.3) -> np.ndarray:
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[0, 1] = shear
    return affine


# --- DICOM -----------------------------------------------------------------------------------------


def series_slice(count: int = 20, start: int = 40) -> list[Path]:
    """``count`` contiguous slices of the real sagittal MPRAGE (1 mm, 256 x 256)."""
    return mprage_files()[start : start + count]


def _set_raw(ds: Dataset, keyword: str, value: bytes) -> None:
    """Store ``value`` as is, even when it is not valid for the attribute's VR (what broken exporters do)."""
    tag = Tag(tag_for_keyword(keyword))
    if len(value) % 2:
        value += b" "
    ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False, True)


def dicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def edited_series(edit: Callable[[int, Dataset], None], paths: list[Path] | None = None) -> list[tuple[str, bytes]]:
    """Each slice read in full, ``edit(index, dataset)`` applied, written back: ``(name, bytes)`` pairs."""
    out = []
    for index, path in enumerate(paths or series_slice()):
        ds = pydicom.dcmread(path)
        edit(index, ds)
        out.append((path.name, dicom_bytes(ds)))
    return out


def raw_value(keyword: str, value: bytes, only: int | None = None) -> Callable[[int, Dataset], None]:
    def edit(index: int, ds: Dataset) -> None:
        if only is None or index == only:
            _set_raw(ds, keyword, value)

    return edit


def remove(*keywords: str) -> Callable[[int, Dataset], None]:
    def edit(_: int, ds: Dataset) -> None:
        for keyword in keywords:
            if keyword in ds:
                delattr(ds, keyword)

    return edit


def sheared(step_mm: float = 0.5) -> Callable[[int, Dataset], None]:
    """Each slice shifted in-plane (along the row direction) by ``index * step_mm``: a sheared stack."""

    def edit(index: int, ds: Dataset) -> None:
        row = np.array([float(v) for v in ds.ImageOrientationPatient[:3]])
        position = np.array([float(v) for v in ds.ImagePositionPatient]) + index * step_mm * row
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]

    return edit


def perturbed_orientation(error: float) -> Callable[[int, Dataset], None]:
    """The series' own orientation cosines, each moved by ``error`` (rounding-sized or not)."""

    def edit(_: int, ds: Dataset) -> None:
        ds.ImageOrientationPatient = [f"{float(v) + error:.9f}" for v in ds.ImageOrientationPatient]

    return edit


def retag_all(**changes: object) -> Callable[[int, Dataset], None]:
    def edit(_: int, ds: Dataset) -> None:
        for key, value in changes.items():
            setattr(ds, key, value)

    return edit


def duplicated_slice(index: int = 7) -> list[tuple[str, bytes]]:
    """The series with one slice present twice under a new SOP Instance UID (a re-sent image)."""
    files = edited_series(lambda i, ds: None)
    ds = pydicom.dcmread(series_slice()[index])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return [*files, ("copy.dcm", dicom_bytes(ds))]


def cd_export_zip(tmp: Path) -> bytes:
    """A CD-style export: DICOMDIR plus the images in ISO 9660 folder names, zipped (pydicom FileSet)."""
    from pydicom.fileset import FileSet

    fs = FileSet()
    for path in series_slice():
        fs.add(pydicom.dcmread(path))
    root = tmp / "cd"
    fs.write(root)
    entries = [(str(p.relative_to(root)), p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()]
    assert any(name == "DICOMDIR" for name, _ in entries)
    return zip_of(entries)


# --- models ----------------------------------------------------------------------------------------


def make_pair_model(models_dir: Path, name: str = "bright-pair") -> Path:
    """A 2D threshold model on two modalities (flair, t1c): marks bright FLAIR voxels. Enough to
    exercise multi-modal input checks without a trained network."""

    def build(tmp: Path) -> None:
        import tensorflow as tf

        class Pair(tf.Module):
            @tf.function(input_signature=[tf.TensorSpec([1, None, None, 2], tf.float32, name="image")])
            def serve(self, image):
                return {"probabilities": tf.sigmoid(8.0 * (image[..., :1] - 2.0))}

        module = Pair()
        tf.saved_model.save(module, str(tmp), signatures={SIGNATURE_NAME: module.serve})
        ModelCard(
            name=name,
            version=1,
            dims=2,
            modalities=["flair", "t1c"],
            spacing_mm=[1.0, 1.0, 1.0],
            tiling=Tiling(divisor=8, margin=4),
            labels={1: "bright"},
        ).write(tmp)

    return publish_atomically(models_dir / name / "1", build)


def make_failing_model(models_dir: Path, name: str = "fails-t1") -> Path:
    """A real SavedModel that loads and warms up (on zeros) but fails on every real image with a
    TensorFlow error: a genuinely internal failure, for the exception boundary."""

    def build(tmp: Path) -> None:
        import tensorflow as tf

        class Fails(tf.Module):
            @tf.function(input_signature=[tf.TensorSpec([1, None, None, 1], tf.float32, name="image")])
            def serve(self, image):
                # the warm-up's zeros pass; any real (z-scored) image fails inside TensorFlow
                tf.debugging.assert_less_equal(tf.reduce_max(image), 1.0, message="internal failure")
                return {"probabilities": tf.sigmoid(image)}

        module = Fails()
        tf.saved_model.save(module, str(tmp), signatures={SIGNATURE_NAME: module.serve})
        ModelCard(
            name=name,
            version=1,
            dims=2,
            modalities=["t1"],
            spacing_mm=[1.0, 1.0, 1.0],
            tiling=Tiling(divisor=8, margin=4),
            labels={1: "bright"},
        ).write(tmp)

    return publish_atomically(models_dir / name / "1", build)


# --- raw HTTP --------------------------------------------------------------------------------------


def multipart(files: list[tuple[str, str, bytes]], boundary: str = "hostile0boundary") -> tuple[bytes, str]:
    """A multipart/form-data body and its content type, built by hand (for raw sockets)."""
    parts = []
    for field, filename, data in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def raw_connection(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    return sock


def request_head(path: str, content_type: str, content_length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()


def read_response(sock: socket.socket, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response (status, lower-case headers, body) or raise ``TimeoutError``."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in data:
        if time.monotonic() > deadline:
            raise TimeoutError("no response head")
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} bytes")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def random_bytes(n: int) -> bytes:
    return os.urandom(n)
