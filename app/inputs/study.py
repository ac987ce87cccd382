"""Study assembly: uploaded files grouped by modality field, each checked from its headers, the memory the
request will need planned against the budget, then each read as one validated 3D image (a NIfTI file, a
DICOM series, or a zip of one), and the modalities checked to be one study.

Two steps, so that nothing is allocated for a request that will be refused: :func:`inspect_study` reads
headers only (an absurd header costs nothing), :meth:`InspectedStudy.load` reads voxels. Errors are
:class:`~app.errors.ApiError` with a sentence a technologist understands; the status follows DESIGN §3
(413 too large, 415 unsupported file, 400 corrupt file, 422 readable but unusable). Identifiers compared
across modalities (PatientID, StudyInstanceUID) are never put in a message or a log line.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from app.errors import ApiError
from app.inputs.archives import ArchiveLimits, extract_zip
from app.inputs.dicom import DicomSeries, InspectedSeries, inspect_series
from app.inputs.geometry import HeaderGrid
from app.inputs.nifti import InspectedNifti, inspect_nifti
from app.inputs.series_selection import SeriesInfo, modalities_of
from app.inputs.sniff import sniff
from app.inputs.study_archive import inspect_study_archive, study_upload
from app.inputs.uploads import UploadedFile
from segcore.card import MODALITY_ALIASES, MODALITY_NAMES, ModelCard, canonical_modality
from segcore.geometry import model_grid_size, onto_grid
from segcore.normalization import brain_mask
from segcore.pipeline import peak_bytes
from segcore.preprocess.plausibility import InputWarning


@dataclass
class Study:
    """The images the model needs, by modality, and the DICOM headers of modalities sent as DICOM."""

    images: dict[str, sitk.Image]
    dicom: dict[str, DicomSeries] = field(default_factory=dict)
    series: dict[str, dict] | None = None  # a study upload: the series chosen per modality (no patient data)


@dataclass(frozen=True)
class StudyLimits:
    max_voxels: int = 512 * 512 * 512
    memory_budget_bytes: int = 6 << 30  # SEG_MEMORY_BUDGET_MB's default
    min_overlap: float = 0.5  # fraction of the reference brain another modality must cover
    archive: ArchiveLimits = ArchiveLimits()


Inspected = InspectedNifti | InspectedSeries


def _inspect_modality(modality: str, uploads: list[UploadedFile], limits: StudyLimits) -> Inspected:
    kinds = [sniff(u) for u in uploads]
    label = f'"{modality}"'
    if set(kinds) <= {"nifti", "nifti-gz"}:
        if len(uploads) != 1:
            raise ApiError(422, "too_many_files", f"{label} has {len(uploads)} NIfTI files; send one volume")
        return inspect_nifti(uploads[0], kinds[0], limits.max_voxels)
    if kinds == ["zip"]:
        upload = uploads[0]
        extracted = extract_zip(
            upload.path,
            upload.path.with_name(upload.path.name + ".unzipped"),
            f'the zip "{upload.filename}" for {label}',
            limits.archive,
        )
        return inspect_series(extracted, f'the DICOM series in "{upload.filename}" ({modality})', limits.max_voxels)
    if set(kinds) == {"dicom"}:
        files = [(u.filename, u.path) for u in uploads]
        return inspect_series(files, f"the DICOM series for {label}", limits.max_voxels)
    raise ApiError(
        422,
        "mixed_inputs",
        f"{label} mixes file kinds ({', '.join(sorted(set(kinds)))}); send one NIfTI, one zip, or DICOM files",
    )


def _check_memory(grids: dict[str, HeaderGrid], card: ModelCard, limits: StudyLimits) -> None:
    """Refuse, from headers, a request whose pipeline would allocate more than the budget or whose model
    grid (after resampling to the card's spacing) is beyond the voxel limit."""
    first = grids[card.modalities[0]]
    model = model_grid_size(first.size, first.spacing, first.direction, card.orientation, card.spacing_mm)
    model_voxels = int(np.prod(model, dtype=np.int64))
    needed = peak_bytes([grids[m].voxels for m in card.modalities], model_voxels, card)
    if needed > limits.memory_budget_bytes:
        raise ApiError(
            413,
            "over_memory_budget",
            f"this study needs about {needed / 2**20:.0f} MB to segment ({'x'.join(map(str, first.size))} voxels of "
            f"{'x'.join(f'{s:.3g}' for s in first.spacing)} mm, {'x'.join(map(str, model))} on the model's "
            f"{'x'.join(f'{s:g}' for s in card.spacing_mm)} mm grid); the limit is "
            f"{limits.memory_budget_bytes / 2**20:.0f} MB per request (SEG_MEMORY_BUDGET_MB)",
        )
    if model_voxels > limits.max_voxels:
        raise ApiError(
            422,
            "image_too_large",
            f"resampled to the model's grid this study has {model_voxels} voxels; the limit is {limits.max_voxels}",
        )


def _check_same_patient(inspected: dict[str, Inspected], card: ModelCard) -> None:
    """DICOM modalities must come from one patient and one study. Compared, never quoted."""
    series = {m: i for m, i in inspected.items() if isinstance(i, InspectedSeries)}
    for keyword, code, what in (
        ("PatientID", "different_patients", "patients"),
        ("StudyInstanceUID", "different_studies", "studies"),
    ):
        values = {m: str(s.datasets[0].get(keyword, "") or "").strip() for m, s in series.items()}
        present = {m: v for m, v in values.items() if v}
        if len(set(present.values())) > 1:
            raise ApiError(
                422,
                code,
                f"the DICOM series for {', '.join(sorted(present))} come from different {what} ({keyword} differs); "
                "send the modalities of one study",
            )


@dataclass
class InspectedStudy:
    """Every modality checked from its headers and the memory planned; :meth:`load` reads the voxels."""

    card: ModelCard
    modalities: dict[str, Inspected]
    limits: StudyLimits
    series: dict[str, dict] | None = None  # a study upload: the series chosen per modality

    def datasets(self, modality: str):
        item = self.modalities[modality]
        return item.datasets if isinstance(item, InspectedSeries) else None

    def header_warnings(self) -> list[InputWarning]:
        """A ``series_named_for_other_modality`` warning per DICOM modality whose SeriesDescription or
        ProtocolName names other modalities and not this one (by the study rule table,
        :func:`~app.inputs.series_selection.modalities_of`): a T1 MPRAGE sent as "flair" gives the FLAIR
        model a contrast it never saw, and a confident-looking mask (300 mL of "tumour" in a healthy head,
        measured). A description that names nothing, or names this modality, is not doubted; NIfTI files
        carry no description and are judged by intensities only (:mod:`segcore.preprocess.plausibility`)."""
        out = []
        for modality, item in self.modalities.items():
            if not isinstance(item, InspectedSeries):
                continue
            header = item.datasets[0]
            info = SeriesInfo(
                uid="",
                description=str(header.get("SeriesDescription", "") or ""),
                protocol=str(header.get("ProtocolName", "") or ""),
            )
            named = modalities_of(info)
            if named and modality not in named:
                out.append(
                    InputWarning(
                        "series_named_for_other_modality",
                        f'the DICOM series sent as "{modality}" is described as {" or ".join(named)} '
                        f'("{info.description or info.protocol}"): the model expects {modality}; check the series '
                        "was sent under the right field",
                    )
                )
        return out

    def load(self) -> Study:
        study = Study(images={}, series=self.series)
        for modality in self.card.modalities:
            item = self.modalities[modality]
            if isinstance(item, InspectedSeries):
                series = item.load()
                study.dicom[modality], study.images[modality] = series, series.image
            else:
                study.images[modality] = item.load()
        _check_overlap(study, self.card, self.limits.min_overlap)
        return study


def inspect_study(files: list[UploadedFile], card: ModelCard, limits: StudyLimits) -> InspectedStudy:
    """Group uploads by modality field, check each from its headers, check the card's modalities are
    all there and from one patient and study, and plan the memory the request needs. A single zip
    under ``study`` is split into series and mapped onto the modalities by the rule table instead."""
    archive = study_upload(files)
    if archive is not None:
        if sniff(archive) != "zip":
            raise ApiError(415, "unsupported_file", f'"{archive.filename}" under "study" is not a zip of a DICOM study')
        chosen = inspect_study_archive(archive, list(card.modalities), limits.archive, limits.max_voxels)
        inspected: dict[str, Inspected] = dict(chosen.series)
        _check_same_patient(inspected, card)
        _check_memory({m: i.grid for m, i in inspected.items()}, card, limits)
        return InspectedStudy(card, inspected, limits, series=chosen.describe())
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
    inspected = {m: _inspect_modality(m, by_field[m], limits) for m in card.modalities}
    _check_same_patient(inspected, card)
    _check_memory({m: i.grid for m, i in inspected.items()}, card, limits)
    return InspectedStudy(card, inspected, limits)


def brain_overlap(reference: sitk.Image, other: sitk.Image) -> float:
    """Fraction of the reference's brain (voxels that differ from its background) on which ``other`` has
    brain too, through physical space (``other``'s brain mask resampled onto the reference grid)."""
    ref_brain = brain_mask(sitk.GetArrayViewFromImage(reference))
    total = int(ref_brain.sum())
    if total == 0:
        return 0.0
    other_brain = sitk.GetImageFromArray(brain_mask(sitk.GetArrayViewFromImage(other)).astype(np.uint8))
    other_brain.CopyInformation(other)
    # A copy, not a view: a view of the temporary resampled image would outlive it (freed memory, read as
    # garbage: a 0% overlap that refused a good study under load).
    on_reference = sitk.GetArrayFromImage(onto_grid(other_brain, reference, label=True))
    return float(np.count_nonzero(ref_brain & (on_reference > 0))) / total


def _check_overlap(study: Study, card: ModelCard, min_overlap: float) -> None:
    """Further modalities are resampled onto the first one's grid: they must cover most of its brain,
    or the model sees one modality over empty space (a different patient, a slab, a wrong header)."""
    reference_name = card.modalities[0]
    for modality in card.modalities[1:]:
        fraction = brain_overlap(study.images[reference_name], study.images[modality])
        if fraction < min_overlap:
            raise ApiError(
                422,
                "modalities_do_not_overlap",
                f'"{modality}" covers {fraction:.0%} of the brain in "{reference_name}" (at least {min_overlap:.0%} '
                "is required): they are not the same study, or one is not registered to the other",
            )


def read_study(files: list[UploadedFile], card: ModelCard, limits: StudyLimits) -> Study:
    """:func:`inspect_study` then :meth:`InspectedStudy.load`, for callers with no slot to wait for."""
    return inspect_study(files, card, limits).load()
