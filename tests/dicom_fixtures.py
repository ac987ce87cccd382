"""Zips and file sets built from the real DICOM series in ../shared/data, in memory, for the tests."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

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


#: Patient-identifying values no log line or error answer may carry: distinctive strings that occur
#: nowhere else (a log search for them cannot hit by accident, and cannot miss by truncation).
PHI = {
    "PatientName": "Quillfeather^Zenobia^Marguerite",
    "PatientID": "PID-7Q4X-93821",
    "PatientBirthDate": "19470312",
    "AccessionNumber": "ACC55K2W901",
    "InstitutionName": "Saint Ottoline Vandermeer Infirmary",
    "ReferringPhysicianName": "Drummondsworth^Barnaby",
    "OtherPatientIDs": "OPID-ZX81-44710",
}


def series_from_image(
    image: sitk.Image, *, phi: dict[str, str] | None = None, slope: float = 1.0, intercept: float = 0.0, **tags
) -> list[bytes]:
    """One classic MR single-frame DICOM file per slice of ``image`` (SimpleITK, any direction), written
    with pydicom: position of slice k = ``image.TransformIndexToPhysicalPoint((0, 0, k))``, orientation =
    the direction's first two columns, pixels stored as int16 with ``RescaleSlope``/``RescaleIntercept``.

    The geometry is the image's own, so a test knows the physical place of every pixel without asking the
    code under test. ``phi`` sets patient/study attributes (default: :data:`PHI`); ``tags`` override any
    attribute on every slice.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    array = sitk.GetArrayFromImage(image).astype(np.float64)
    stored = np.round((array - intercept) / slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError(f"values {array.min()}..{array.max()} do not fit int16 with slope {slope}")
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = image.GetSpacing()
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    people = dict(PHI if phi is None else phi)
    files = []
    for k in range(array.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.Manufacturer, ds.SeriesDescription = "MR", "tests", "synthetic head"
        ds.PatientSex, ds.StudyDate, ds.StudyTime, ds.StudyID = "O", "20260101", "120000", "1"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = "", "", ""
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        for key, value in people.items():
            setattr(ds, key, value)
        ds.SeriesNumber, ds.InstanceNumber = 7, k + 1
        ds.ImageOrientationPatient = [float(v) for v in (*direction[:, 0], *direction[:, 1])]
        ds.ImagePositionPatient = [float(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing (y), column spacing (x)
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = array.shape[1], array.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = stored[k].astype("<i2").tobytes()
        for key, value in tags.items():
            setattr(ds, key, value)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    return files


def reencoded(data: bytes, **changes) -> bytes:
    """A DICOM file (bytes) with some attributes changed (``None`` deletes one)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    for key, value in changes.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def phi_series() -> list[bytes]:
    """The synthetic head (tumour on the patient's left) as 40 axial DICOM slices carrying :data:`PHI`."""
    from tests.helpers import synthetic_head

    head, _ = synthetic_head()
    return series_from_image(head)


def dicom_refusals(field: str, model: str) -> list[tuple[str, dict, int, str]]:
    """Requests that must be refused, each built from :func:`phi_series` (so every refusal path carries
    patient values), as ``(id, httpx request kwargs, status, error code)``. ``field`` is the modality the
    model ``model`` reads; the series are single-channel MR."""
    from pydicom.uid import generate_uid

    series = phi_series()
    params = {"model": model}

    def post(files, **extra) -> dict:
        return {"params": {**params, **extra}, "files": files}

    def as_zip(files: list[bytes], name: str = "series.zip") -> dict:
        return post({field: (name, zip_of([(f"{i:03d}.dcm", f) for i, f in enumerate(files)]))})

    middle = len(series) // 2
    other_series = series_from_image(_shifted_head(), SeriesInstanceUID=generate_uid(), SeriesNumber=8)
    repeated = series + [
        reencoded(f, SOPInstanceUID=generate_uid(), InstanceNumber=100 + i) for i, f in enumerate(series)
    ]
    oblique = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    return [
        ("dicom-mixed-series", as_zip(series[:5] + other_series[:5]), 422, "mixed_series"),
        ("dicom-not-mr", as_zip([reencoded(f, Modality="CT") for f in series]), 422, "not_mr"),
        ("dicom-multi-temporal", as_zip(repeated), 422, "multi_temporal"),
        ("dicom-missing-slices", as_zip(series[:middle] + series[middle + 1 :]), 422, "missing_slices"),
        ("dicom-single-slice", post({field: ("one.dcm", series[middle])}), 422, "single_slice"),
        (
            "dicom-missing-geometry",
            as_zip([*series[:middle], reencoded(series[middle], ImagePositionPatient=None), *series[middle + 1 :]]),
            422,
            "missing_geometry",
        ),
        (
            "dicom-inconsistent-orientation",
            as_zip(
                [*series[:middle], reencoded(series[middle], ImageOrientationPatient=oblique), *series[middle + 1 :]]
            ),
            422,
            "inconsistent_orientation",
        ),
        (
            "dicom-inconsistent-size",
            as_zip(
                [
                    *series[:middle],
                    reencoded(series[middle], Rows=96, PixelData=bytes(96 * 64 * 2)),  # pixel data to match
                    *series[middle + 1 :],
                ]
            ),
            422,
            "inconsistent_size",
        ),
        ("dicom-multiframe", as_zip([reencoded(f, NumberOfFrames=2) for f in series]), 422, "multiframe_unsupported"),
        # 4096 x 4096 x 40 voxels claimed by the headers: refused before any pixel is decoded
        (
            "dicom-image-too-large",
            as_zip([reencoded(f, Rows=4096, Columns=4096) for f in series]),
            422,
            "image_too_large",
        ),
        (
            "dicom-zip-with-text",
            post(
                {
                    field: (
                        "s.zip",
                        zip_of([(f"{i}.dcm", f) for i, f in enumerate(series)] + [("notes.txt", b"scan notes")]),
                    )
                }
            ),
            422,
            "not_dicom",
        ),
        (
            "dicom-truncated-pixels",
            post(
                [(field, (f"{i}.dcm", f)) for i, f in enumerate(series[:-1])]
                + [(field, ("cut.dcm", series[-1][:-1500]))]
            ),
            400,
            "corrupt_file",
        ),
        (
            "dicom-wrong-field",
            post({"pet": ("s.zip", zip_of([(f"{i}.dcm", f) for i, f in enumerate(series)]))}),
            422,
            "unknown_field",
        ),
    ]


def _shifted_head():
    from tests.helpers import synthetic_head

    head, _ = synthetic_head()
    head.SetOrigin((-30.0, 12.5, -6.0))  # a second series of the same patient, 1 mm higher
    return head


def labels_from_seg(content: bytes, grid: sitk.Image, value_of_name: dict[str, int]) -> np.ndarray:
    """Decode a DICOM SEG into a label array ``[z, y, x]`` on ``grid``, the image a test wrote the source
    series from (:func:`series_from_image`), using only the SEG's own attributes: each frame's segment
    number -> the segment's label -> ``value_of_name``; each frame's ImagePositionPatient -> the slice of
    ``grid``. The service's own geometry code plays no part, so a flip it made shows up here."""
    seg = pydicom.dcmread(io.BytesIO(content))
    value_of_segment = {int(s.SegmentNumber): value_of_name[s.SegmentLabel] for s in seg.SegmentSequence}
    frames = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    direction = np.array(grid.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(orientation, [*direction[:, 0], *direction[:, 1]], atol=1e-4)
    out = np.zeros(sitk.GetArrayViewFromImage(grid).shape, dtype=np.uint8)
    for i, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        identified = group if "SegmentIdentificationSequence" in group else shared  # shared when one segment
        number = int(identified.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        position = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        index = grid.TransformPhysicalPointToIndex(position)
        assert index[:2] == (0, 0), f"frame {i} does not start at a slice corner of the source grid"
        out[index[2]][frames[i] > 0] = value_of_segment[number]
    return out
