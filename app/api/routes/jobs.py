"""``/jobs``: the work of ``/segment``, asynchronously, with records that survive a restart.

``POST /jobs`` takes exactly the form ``/segment`` takes (and the same ``model``/``version``), receives
the upload with the same size limit, and answers 202 with ``Location: /jobs/{id}`` before any voxel is
read. Errors ``/segment`` gives before reading (unknown model, too large, not multipart) are given here
at once; errors found while reading or segmenting become the job's ``error``, with the same code and
sentence. A job's answer exists in every format its input allows (``formats`` in its record).
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from app.api.deps import JobsDep, ServiceDep, SettingsDep
from app.api.routes.segment import _BODY as SEGMENT_FORM  # the same multipart form as /segment
from app.api.routes.segment import PreprocessDep
from app.api.schemas import ErrorBody, JobAccepted, JobList, JobRecord
from app.errors import ApiError
from app.inputs.uploads import receive_files
from app.jobs.store import ACTIVE_STATES, Job
from app.jobs.work import upload_work
from app.outputs.formats import FORMATS

router = APIRouter(tags=["jobs"])

ACCEPTED = {202: {"model": JobAccepted, "description": "started; follow Location"}}
_ERRORS = {status: {"model": ErrorBody} for status in (404, 413, 415, 422, 503)}
_UNKNOWN = {404: {"model": ErrorBody, "description": "no such job"}}

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def accepted(job: Job) -> JSONResponse:
    """202 with the job's address, as every route that starts a job answers."""
    location = f"/jobs/{job.id}"
    return JSONResponse(
        {"id": job.id, "state": job.state, "location": location}, status_code=202, headers={"Location": location}
    )


def _job(jobs, job_id: str) -> Job:
    job = jobs.store.get(job_id) if _JOB_ID.match(job_id) else None
    if job is None:
        raise ApiError(404, "job_not_found", f'there is no job "{job_id[:64]}" (finished jobs are kept for a while)')
    return job


@router.post("/jobs", status_code=202, responses={**ACCEPTED, **_ERRORS}, openapi_extra={"requestBody": SEGMENT_FORM})
async def submit_job(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    jobs: JobsDep,
    preprocess: PreprocessDep,
    model: str | None = Query(None, description="model name (default: SEG_DEFAULT_MODEL)"),
    version: int | None = Query(None, ge=1, description="model version (default: the served one)"),
):
    """Start segmenting one study: the multipart form and the ``preprocess`` parameter of ``/segment``.
    202 + ``Location``."""
    loaded = service.resolve(model or settings.default_model, version)
    job = jobs.create("upload", loaded.name, loaded.version, {"preprocess": preprocess})
    staging = jobs.store.folder(job.id) / "input"
    try:
        staging.mkdir()
        files = await receive_files(
            request.stream(),
            request.headers.get("content-type"),
            request.headers.get("content-length"),
            staging,
            settings.max_upload_bytes,
            settings.body_timeout_seconds,
        )
    except BaseException:
        jobs.store.delete(job.id)
        raise
    # Counts and field names only: a client's file names may carry a patient's name.
    source = {
        "fields": sorted({f.field for f in files}),
        "files": len(files),
        "bytes": sum(f.size for f in files),
        "preprocess": preprocess,
    }
    jobs.store.update(job.id, source=source)
    jobs.run(job, upload_work(service, loaded, files, preprocess))
    return accepted(job)


@router.get("/jobs", response_model=JobList)
async def list_jobs(
    jobs: JobsDep,
    kind: str | None = Query(None, description="upload, dicomweb or listener"),
    limit: int = Query(100, ge=1, le=1000),
):
    """The newest jobs first."""
    return {"jobs": [j.describe() for j in jobs.store.list(limit, kind)], "active": jobs.active()}


@router.get("/jobs/{job_id}", response_model=JobRecord, responses=_UNKNOWN)
async def get_job(job_id: str, jobs: JobsDep):
    """State, the current stage, every stage's time, the error or the available formats."""
    return _job(jobs, job_id).describe()


@router.get(
    "/jobs/{job_id}/result",
    response_class=FileResponse,
    responses={
        200: {"content": {f.media_type: {} for f in FORMATS.values()}, "description": "the answer in that format"},
        **{status: {"model": ErrorBody} for status in (400, 404, 409)},
    },
)
async def get_result(
    job_id: str,
    jobs: JobsDep,
    format: str = Query("nifti", description="; ".join(f"{f.name}: {f.description}" for f in FORMATS.values())),
):
    """The job's answer in one of the formats it has (``formats`` in its record)."""
    fmt = FORMATS.get(format)
    if fmt is None:
        raise ApiError(400, "unknown_format", f'format "{format}" is not one of: {", ".join(FORMATS)}')
    job = _job(jobs, job_id)
    if job.state in ACTIVE_STATES:
        raise ApiError(409, "job_not_finished", f"job {job.id} is {job.state}", headers={"Retry-After": "2"})
    if job.state != "succeeded":
        reason = (job.error or {}).get("detail", "")
        raise ApiError(409, f"job_{job.state}", f"job {job.id} {job.state}: {reason}")
    if format not in job.results:
        available = ", ".join(sorted(job.results)) or "none"
        raise ApiError(404, "result_not_available", f"job {job.id} has no {format} result; available: {available}")
    path = jobs.store.folder(job.id) / job.results[format]
    if not path.is_file():
        raise ApiError(404, "result_not_available", f"the {format} result of job {job.id} is no longer stored")
    headers = {"X-Model-Name": job.model or "", "X-Model-Version": str(job.version or "")}
    return FileResponse(path, media_type=fmt.media_type, filename=fmt.filename or path.name, headers=headers)


@router.delete(
    "/jobs/{job_id}",
    response_model=JobRecord,
    responses={**_UNKNOWN, 204: {"description": "a finished job and its files were deleted"}},
)
async def delete_job(job_id: str, jobs: JobsDep):
    """Cancel a queued or running job (200, its record); delete a finished one and its files (204)."""
    job = _job(jobs, job_id)
    if job.state in ACTIVE_STATES:
        cancelled = await jobs.cancel(job.id)
        return (cancelled or job).describe()
    jobs.store.delete(job.id)
    return Response(status_code=204)
