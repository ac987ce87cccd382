"""The mask as a DICOM Segmentation object (``format=dicom-seg``; DICOM inputs only), written by highdicom."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from app.errors import ApiError
from segcore.card import ModelCard

log = logging.getLogger("app.outputs.dicom_seg")


# Segment codes (SNOMED CT via pydicom's code dictionary) by label name; anything else is a neoplasm.
def _property_codes(label_name: str):
    from pydicom.sr.codedict import codes

    name = label_name.lower()
    category = codes.SCT.MorphologicallyAbnormalStructure
    if "necro" in name:
        return category, codes.SCT.Necrosis
    if "oedema" in name or "edema" in name:
        return category, codes.SCT.Edema
    return category, codes.SCT.Neoplasm


def write_dicom_seg(
    mask: sitk.Image,
    datasets: list[Dataset],
    card: ModelCard,
    directory: Path,
    software_version: str,
    other_series: Sequence[list[Dataset]] = (),
) -> Path:
    """A DICOM Segmentation (highdicom) referencing the source series it was computed on.

    ``other_series``: the headers of the further modalities' series the model also read (a FLAIR + T1c
    model); each is added to the Common Instance Reference module's ReferencedSeriesSequence, so a
    reader sees every series the result depends on, while the frames are derived from ``datasets``.

    ``mask`` must be on the series' own grid (it is: the pipeline maps masks back onto the input), and
    its z index order is the order of ``datasets`` (the series' headers, as
    :class:`app.inputs.dicom.DicomSeries` keeps them). Label values are mapped to segment numbers
    1..n in ascending order. Patient and study attributes are copied from the source by highdicom
    (after :func:`prepare_sources` made them copyable).
    """
    array = sitk.GetArrayFromImage(mask)
    values = sorted(card.labels)
    segments = np.zeros_like(array, dtype=np.uint8)
    for number, value in enumerate(values, start=1):
        segments[array == value] = number
    seg = _segmentation(datasets, segments, card, software_version)
    _reference_series(seg, datasets, other_series)
    path = directory / "mask.seg.dcm"
    seg.save_as(path)
    return path


def _reference_series(seg: Dataset, datasets: list[Dataset], other_series: Sequence[list[Dataset]]) -> None:
    """Append every further series of the same study to ``seg.ReferencedSeriesSequence``."""
    known = {str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])}
    study_uid = str(datasets[0].StudyInstanceUID) if datasets else None
    for series in other_series:
        if not series or str(series[0].SeriesInstanceUID) in known or str(series[0].StudyInstanceUID) != study_uid:
            continue
        item = Dataset()
        item.SeriesInstanceUID = series[0].SeriesInstanceUID
        instances = []
        for ds in series:
            ref = Dataset()
            ref.ReferencedSOPClassUID = ds.SOPClassUID
            ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
            instances.append(ref)
        item.ReferencedInstanceSequence = instances
        seg.ReferencedSeriesSequence.append(item)
        known.add(str(item.SeriesInstanceUID))



def _segmentation(datasets: list[Dataset], segments: np.ndarray, card: ModelCard, software_version: str):
    """The highdicom object for ``segments`` (uint8 ``[frames, rows, columns]``, segment numbers)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    values = sorted(card.labels)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=card.name, version=str(card.version), family=codes.DCM.ArtificialIntelligence
    )
    descriptions = []
    for number, value in enumerate(values, start=1):
        category, prop = _property_codes(card.labels[value])
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=card.labels[value][:64],
                segmented_property_category=category,
                segmented_property_type=prop,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                anatomic_regions=[codes.SCT.Brain],
            )
        )
    return hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=segments if len(values) > 1 else (segments > 0).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=9900 + card.version % 100,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="brats-serve",
        manufacturer_model_name=card.name,
        software_versions=software_version,
        device_serial_number="0",
        series_description=f"{card.name} v{card.version} tumour segmentation"[:64],
        omit_empty_frames=False,
    )


REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
"""Type 1 attributes a SEG copies or references: without them no valid SEG exists."""
TYPE_2 = {
    "PatientName": "PN",
    "PatientID": "LO",
    "PatientBirthDate": "DA",
    "PatientSex": "CS",
    "StudyID": "SH",
    "AccessionNumber": "SH",
    "StudyDate": "DA",
    "StudyTime": "TM",
    "ReferringPhysicianName": "PN",
}
"""Type 2 attributes the SEG copies from the source: present but possibly empty. A missing one or a
malformed date/time (common in exports) is written empty rather than refused."""


def _parses(value: object, vr: str) -> bool:
    from pydicom.valuerep import DA, DT, TM

    if vr not in ("DA", "TM", "DT") or value in (None, ""):
        return True
    try:
        {"DA": DA, "TM": TM, "DT": DT}[vr](str(value))
    except (ValueError, TypeError, OverflowError):
        return False
    return True


def prepare_sources(datasets: list[Dataset] | None, card: ModelCard) -> None:
    """Make sure a SEG can be written for ``datasets`` *before* the model runs: refuse (422) a series
    lacking a type 1 attribute, blank missing or malformed type 2 ones (in place), then build a
    one-frame SEG as a dry run. Messages name attributes, never values."""
    if not datasets:
        return
    missing = sorted({k for ds in datasets for k in REQUIRED if not str(ds.get(k, "") or "").strip()})
    if missing:
        raise ApiError(
            422,
            "dicom_seg_prerequisites",
            f"format=dicom-seg needs {', '.join(missing)} in every image of the series; it is missing. "
            "Ask for format=nifti or json instead",
        )
    repaired: set[str] = set()
    for ds in datasets:
        for keyword, vr in TYPE_2.items():
            if keyword not in ds or not _parses(ds.get(keyword), vr):
                setattr(ds, keyword, "")
                repaired.add(keyword)
    if repaired:
        log.info("dicom_seg_sources_repaired blanked=%s", ",".join(sorted(repaired)))
    rows, columns = int(datasets[0].Rows), int(datasets[0].Columns)
    try:
        _segmentation(datasets[:1], np.zeros((1, rows, columns), dtype=np.uint8), card, "dry-run")
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise ApiError(
            422,
            "dicom_seg_prerequisites",
            f"the series' headers cannot make a DICOM SEG (highdicom: {type(exc).__name__}); "
            "ask for format=nifti or json instead",
        ) from None
