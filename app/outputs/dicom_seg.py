"""The mask as a DICOM Segmentation object (``format=dicom-seg``; DICOM inputs only), written by highdicom."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from segcore.card import ModelCard


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
    1..n in ascending order. Patient and study attributes are copied from the source by highdicom.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    array = sitk.GetArrayFromImage(mask)
    values = sorted(card.labels)
    segments = np.zeros_like(array, dtype=np.uint8)
    for number, value in enumerate(values, start=1):
        segments[array == value] = number
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
    seg = hd.seg.Segmentation(
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
