"""DICOM studies the tests make from real BraTS NIfTI cases: each modality written as an MR series with
the series descriptions a Siemens scanner would give, geometry from SimpleITK (no hand-made affines)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from tests.conftest import shared_case

BRAINY = "Brats18_2013_2_1"
#: modality -> (SeriesDescription, file suffix, contrast agent) as on a Siemens brain tumour protocol.
PROTOCOL = {
    "flair": ("t2_tirm_tra_dark-fluid", "flair", ""),
    "t1": ("t1_mprage_tra_p2_iso", "t1", ""),
    "t1c": ("t1_mprage_tra_p2_iso_Gd", "t1ce", "Gadovist"),
    "t2": ("t2_tse_tra_512", "t2", ""),
}
SLICES = slice(50, 110)  # 60 axial slices through the tumour keep the zips small


def brainy_image(modality: str) -> sitk.Image:
    """The BraTS 2018 case's ``modality`` (int16, LPS), cut to :data:`SLICES`."""
    suffix = PROTOCOL[modality][1]
    image = sitk.ReadImage(str(shared_case("brats2018_brainy", BRAINY, f"{BRAINY}_{suffix}.nii.gz")), sitk.sitkInt16)
    return sitk.DICOMOrient(image, "LPS")[:, :, SLICES]


def series_files(image: sitk.Image, description: str, number: int, study: dict[str, str], contrast: str = "") -> list:
    """One MR Image Storage file (bytes) per axial slice of ``image`` (int16, LPS)."""
    series_uid = generate_uid()
    direction = np.array(image.GetDirection()).reshape(3, 3)
    orientation = [*direction[:, 0], *direction[:, 1]]
    pixels = sitk.GetArrayFromImage(image)
    files = []
    for k in range(image.GetSize()[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.FrameOfReferenceUID = study["study"], study["frame"]
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = series_uid, number, k + 1
        ds.Modality, ds.SeriesDescription, ds.ProtocolName = "MR", description, description
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Synthetic^Study", "SYN-0001", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = (
            "20260101", "120000", "1", "", "")
        ds.Manufacturer = "test"
        if contrast:
            ds.ContrastBolusAgent = contrast
        ds.ImagePositionPatient = list(image.TransformIndexToPhysicalPoint((0, 0, k)))
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [float(image.GetSpacing()[1]), float(image.GetSpacing()[0])]
        ds.SliceThickness = float(image.GetSpacing()[2])
        ds.Rows, ds.Columns = pixels.shape[1], pixels.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(pixels[k]).astype("<i2").tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    return files


def study_zip(modalities: list[str], extra: dict[str, str] | None = None, localizer: bool = True) -> tuple[bytes, dict]:
    """A zip of one study holding a series per modality (plus a 3-image localizer and, for ``extra``
    ``{description: modality}``, further series made from that modality). Returns the zip and
    ``{description: SeriesInstanceUID}``."""
    study = {"study": generate_uid(), "frame": generate_uid()}
    entries, uids = [], {}
    plan = [(PROTOCOL[m][0], m, PROTOCOL[m][2]) for m in modalities]
    plan += [(description, m, PROTOCOL[m][2]) for description, m in (extra or {}).items()]
    if localizer:
        plan.append(("localizer", "t1", ""))
    for number, (description, modality, contrast) in enumerate(plan, start=2):
        image = brainy_image(modality)
        if description == "localizer":
            image = image[:, :, 28:31]
        files = series_files(image, description, number, study, contrast)
        uids[description] = str(pydicom.dcmread(io.BytesIO(files[0]), stop_before_pixels=True).SeriesInstanceUID)
        entries += [(f"DICOM/S{number:03d}/IM{i:04d}", data) for i, data in enumerate(files)]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buffer.getvalue(), uids


def write(tmp: Path, content: bytes, name: str = "study.zip") -> Path:
    path = tmp / name
    path.write_bytes(content)
    return path
