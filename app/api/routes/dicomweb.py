"""``POST /dicomweb/studies/{StudyInstanceUID}/segment``: segment a study that is in the configured PACS
and store the DICOM SEG back into it, as a job (202 + ``Location``; see :mod:`app.jobs.work`)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import JobsDep, PacsDep, ServiceDep, SettingsDep
from app.api.routes.jobs import ACCEPTED, accepted
from app.api.schemas import ErrorBody
from app.errors import ApiError
from app.jobs.work import dicomweb_work

router = APIRouter(tags=["dicomweb"])

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def _check_uid(uid: str, what: str) -> None:
    if len(uid) > 64 or not _UID.match(uid):
        raise ApiError(422, "invalid_uid", f'"{uid[:80]}" is not a DICOM UID ({what}: digits and dots, at most 64)')


@router.post(
    "/dicomweb/studies/{study_uid}/segment",
    status_code=202,
    responses={**ACCEPTED, **{status: {"model": ErrorBody} for status in (404, 422, 503)}},
)
async def segment_pacs_study(
    study_uid: str,
    service: ServiceDep,
    settings: SettingsDep,
    jobs: JobsDep,
    pacs: PacsDep,
    series: Annotated[
        list[str] | None, Query(description="SeriesInstanceUIDs to use (default: chosen by the rule table)")
    ] = None,
    model: str | None = Query(None, description="model name (default: SEG_DEFAULT_MODEL)"),
    version: int | None = Query(None, ge=1, description="model version (default: the served one)"),
):
    """Pull the study (QIDO-RS, WADO-RS), segment it, push the SEG into the same study (STOW-RS)."""
    series = series or []
    _check_uid(study_uid, "StudyInstanceUID")
    for uid in series:
        _check_uid(uid, "SeriesInstanceUID")
    if pacs is None:
        raise ApiError(503, "pacs_not_configured", "no PACS is configured; set SEG_PACS_URL to its DICOMweb root")
    loaded = service.resolve(model or settings.default_model, version)
    source = {"study_uid": study_uid, "series": series, "pacs": pacs.url}
    job = jobs.create("dicomweb", loaded.name, loaded.version, source)
    max_bytes = int(settings.max_unzipped_mb * 2**20)
    jobs.run(job, dicomweb_work(service, pacs, loaded, study_uid, series, max_bytes))
    return accepted(job)
