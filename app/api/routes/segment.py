from __future__ import annotations

import asyncio
import shutil
from collections.abc import Coroutine
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.background import BackgroundTask

from app.api.boundary import ClientGone
from app.api.deps import ServiceDep, SettingsDep
from app.api.schemas import ErrorBody, SegmentationSummary
from app.errors import ApiError
from app.inputs.sniff import UPLOAD_KINDS
from app.inputs.staging import new_staging_dir
from app.inputs.uploads import receive_files
from app.outputs.formats import FORMATS
from app.service import Answer, Ticket
from segcore.card import MODALITY_ALIASES, MODALITY_NAMES
from segcore.preprocess import PREPROCESS_MODES, PreprocessMode

router = APIRouter(tags=["segment"])

# The multipart body is parsed as a stream (app.inputs.uploads), not by FastAPI, so it is described here.
_FILES = {"type": "array", "items": {"type": "string", "format": "binary"}}
_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "description": (
                    "one field per modality the model needs (aliases: "
                    + ", ".join(f"{a} = {m}" for a, m in MODALITY_ALIASES.items())
                    + "); each file is sniffed by content as one of: "
                    + ", ".join(UPLOAD_KINDS)
                    + " (a NIfTI volume, or a DICOM series as several files or one zip)"
                ),
                "properties": {
                    **dict.fromkeys(MODALITY_NAMES, _FILES),
                    "study": {
                        "type": "string",
                        "format": "binary",
                        "description": "a zip of a whole DICOM "
                        "study; series are mapped onto the model's modalities by the rule table",
                    },
                },
            }
        }
    },
}
_ANSWERS = {
    200: {
        "model": SegmentationSummary,
        "description": "the mask (nifti, dicom-seg), the summary (json) or a preview (png)",
        "content": {f.media_type: {} for f in FORMATS.values() if f.media_type != "application/json"},
    },
    **{status: {"model": ErrorBody} for status in (400, 404, 408, 413, 415, 422, 431, 500, 503)},
}


def preprocess_mode(
    preprocess: str = Query(
        "auto",
        description="auto: register, skull-strip and bias-correct as the model card asks and the input needs "
        "(detected); none: send the images as they are (a skull is then refused for a model that expects a "
        "stripped brain)",
        json_schema_extra={"enum": list(PREPROCESS_MODES)},
    ),
) -> PreprocessMode:
    """The request's ``preprocess`` query parameter, checked (400 ``unknown_preprocess``); shared by
    ``/segment`` and ``POST /jobs`` so both accept exactly the same values."""
    if preprocess not in PREPROCESS_MODES:
        raise ApiError(400, "unknown_preprocess", f'preprocess "{preprocess}" is not one of: auto, none')
    return cast(PreprocessMode, preprocess)


PreprocessDep = Annotated[PreprocessMode, Depends(preprocess_mode)]


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read: the next ASGI message is the
    disconnect, whenever it comes)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_client_leaves(request: Request, ticket: Ticket, work: Coroutine[Any, Any, Answer]) -> Answer:
    """Run ``work``; if the client disconnects while it waits for a slot, cancel it (nothing has been
    read into memory yet). Once it runs in a worker thread it cannot be stopped: it finishes, its
    answer is dropped, and its staging is removed as usual."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        phase = ticket.state
        if phase == "queued":
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientGone(phase)
    finally:
        gone.cancel()


@router.post("/segment", responses=_ANSWERS, openapi_extra={"requestBody": _BODY})
async def segment_study(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    preprocess: PreprocessDep,
    format: str = Query(
        "nifti",
        description="; ".join(f"{f.name}: {f.description}" for f in FORMATS.values()),
        json_schema_extra={"enum": list(FORMATS)},  # checked against the table below: 400 unknown_format
    ),
    model: str | None = Query(None, description="model name (default: SEG_DEFAULT_MODEL)"),
    version: int | None = Query(None, ge=1, description="model version (default: the served one)"),
):
    """Segment one study: multipart form, one file field per modality named as in the model card.

    Admitted (or answered 503 at once) before a byte of the upload is read."""
    fmt = FORMATS.get(format)
    if fmt is None:
        raise ApiError(400, "unknown_format", f'format "{format}" is not one of: {", ".join(FORMATS)}')
    loaded = service.resolve(model or settings.default_model, version)
    with service.admission.ticket() as ticket:
        work = new_staging_dir(settings.tmp_dir)
        try:
            files = await receive_files(
                request.stream(),
                request.headers.get("content-type"),
                request.headers.get("content-length"),
                work,
                settings.max_upload_bytes,
                settings.body_timeout_seconds,
            )
            ticket.uploaded()
            answer = await _unless_client_leaves(
                request, ticket, service.segment(loaded, files, work, fmt, ticket, preprocess=preprocess)
            )
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    headers = {
        "X-Model-Name": loaded.name,
        "X-Model-Version": str(loaded.version),
        "X-Inference-Ms": f"{answer.timings_ms.get('infer', 0.0):.1f}",
        # Every format says what to doubt: codes of the JSON "warnings" (README: what each one means).
        "X-Input-Warnings": ",".join(answer.warnings) or "none",
    }
    if fmt.filename is None:  # the answer is in memory: the staging directory can go now
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(answer.payload, dict):
            return JSONResponse(answer.payload, headers=headers)
        return Response(answer.payload, media_type=fmt.media_type, headers=headers)
    # The file is streamed after this returns; the directory goes once it has been sent.
    return FileResponse(
        answer.payload,
        media_type=fmt.media_type,
        filename=fmt.filename,
        headers=headers,
        background=BackgroundTask(shutil.rmtree, work, ignore_errors=True),
    )
