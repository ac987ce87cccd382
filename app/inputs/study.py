"""Study assembly: uploaded files grouped by modality field, each read as one validated 3D image (a NIfTI
file, a DICOM series, or a zip of one), and the modalities checked to be one study.

Every check that can be made from a header is made before voxels are read, so an absurd header cannot
make the service allocate gigabytes. Errors are :class:`~app.errors.ApiError` with a sentence a
technologist understands; the status follows DESIGN §3 (415 unsupported file, 400 corrupt file,
422 readable but unusable).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import SimpleITK as sitk

from app.errors import ApiError
from app.inputs.archives import ArchiveLimits, extract_zip
from app.inputs.dicom import DicomSeries, read_series
from app.inputs.nifti import read_nifti
from app.inputs.sniff import sniff
from app.inputs.study_archive import read_study_archive, study_upload
from app.inputs.uploads import UploadedFile
from segcore.card import MODALITY_ALIASES, MODALITY_NAMES, ModelCard, canonical_modality
from segcore.geometry import physical_overlap, same_grid


@dataclass
class Study:
    """The images the model needs, by modality, and the DICOM headers of modalities sent as DICOM."""

    images: dict[str, sitk.Image]
    dicom: dict[str, DicomSeries] = field(default_factory=dict)
    series: dict[str, dict] | None = None  # a study upload: the series chosen per modality (no patient data)


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
    """Group uploads by modality field, read each, and check the card's modalities are all there. A
    single zip under ``study`` is split into series and mapped onto the modalities by the rule table.

    Images of further modalities must overlap the first one physically; the pipeline resamples them
    onto the first one's grid.
    """
    archive = study_upload(files)
    if archive is not None:
        if sniff(archive) != "zip":
            raise ApiError(415, "unsupported_file", f'"{archive.filename}" under "study" is not a zip of a DICOM study')
        chosen = read_study_archive(archive, list(card.modalities), limits.archive, limits.max_voxels)
        study = Study(
            images={m: s.image for m, s in chosen.series.items()}, dicom=chosen.series, series=chosen.describe()
        )
        _check_overlap(study, card)
        return study
    by_field: dict[str, list[UploadedFile]] = defaultdict(list)
    for upload in files:
        modality = canonical_modality(upload.field)
        if modality not in MODALITY_NAMES:
            accepted = ", ".join([*MODALITY_NAMES, *MODALITY_ALIASES])
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
    _check_overlap(study, card)
    return study


def _check_overlap(study: Study, card: ModelCard) -> None:
    first = study.images[card.modalities[0]]
    for modality in card.modalities[1:]:
        other = study.images[modality]
        if not same_grid(first, other) and not physical_overlap(first, other):
            raise ApiError(
                422,
                "modalities_do_not_overlap",
                f'"{modality}" does not overlap "{card.modalities[0]}" in space; they are not the same study',
            )
