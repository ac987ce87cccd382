"""A whole DICOM study in one zip (the ``study`` field): split into series, map them onto the card's
modalities with the rule table (:mod:`app.inputs.series_selection`), inspect each chosen series.

The zip is checked (members, sizes, paths) before extraction like any other archive; headers are read
without pixels to group and select; only the chosen series' pixels are read, later, inside the
admission slot (:meth:`app.inputs.dicom.InspectedSeries.load`), like every other upload. An ambiguous or incomplete
study is a 422 that names the candidate series (number, description, SeriesInstanceUID), never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.errors import ApiError
from app.inputs.archives import ArchiveLimits, extract_zip
from app.inputs.dicom import InspectedSeries, inspect_series
from app.inputs.series_selection import Selection, describe_files, select_series
from app.inputs.uploads import UploadedFile


@dataclass
class StudySeries:
    """The series chosen for each modality, checked from headers, and the selection that chose them."""

    series: dict[str, InspectedSeries]
    selection: Selection

    def describe(self) -> dict[str, dict]:
        """For the JSON answer: per modality the chosen series' number, description and UID."""
        return {
            modality: {"series_uid": info.uid, "series_number": info.number, "description": info.description}
            for modality, info in self.selection.chosen.items()
        }


def inspect_study_archive(
    upload: UploadedFile, modalities: list[str], archive_limits: ArchiveLimits, max_voxels: int
) -> StudySeries:
    """Extract the zip in ``upload``, select one series per modality in ``modalities``, check each from
    its headers (no voxels are read here)."""
    extracted = extract_zip(
        upload.path, upload.path.with_name(upload.path.name + ".unzipped"), f'the study zip "{upload.filename}"',
        archive_limits,
    )
    names = {path: name for name, path in extracted}
    described = describe_files([path for _, path in extracted])
    if not described:
        raise ApiError(422, "not_dicom", f'the study zip "{upload.filename}" holds no DICOM series')
    infos = [info for info, _ in described.values()]
    selection = select_series(infos, modalities, refuse_ambiguous=True)
    series = {}
    for modality, info in selection.chosen.items():
        files = [(names[path], path) for path in described[info.uid][1]]
        series[modality] = inspect_series(files, f"{info.label()} ({modality}) of the study", max_voxels)
    return StudySeries(series, selection)


def is_study_field(field: str) -> bool:
    return field.strip().lower() == "study"


def study_upload(files: list[UploadedFile]) -> UploadedFile | None:
    """The one ``study`` upload of a request, or None; refuses a study mixed with per-modality fields."""
    studies = [f for f in files if is_study_field(f.field)]
    if not studies:
        return None
    if len(studies) > 1 or len(files) > 1:
        raise ApiError(
            422,
            "mixed_study_fields",
            'send either one zip under "study" or one field per modality (flair, t1, t1c, t2), not both',
        )
    return studies[0]
