from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect

from app.api.deps import ServiceDep, SettingsDep
from app.api.schemas import ErrorBody, SegmentationSummary
from app.errors import ApiError
from app.inputs.sniff import UPLOAD_KINDS
from app.inputs.uploads import receive_files
from app.outputs.formats import FORMATS
from segcore.card import MODALITY_ALIASES, MODALITY_NAMES

router = APIRouter(tags=["segment"])
log = logging.getLogger("app.api.segment")

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
                "properties": dict.fromkeys(MODALITY_NAMES, _FILES),
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
    **{status: {"model": ErrorBody} for status in (400, 404, 413, 415, 422, 500, 503)},
}


@router.post("/segment", responses=_ANSWERS, openapi_extra={"requestBody": _BODY})
async def segment_study(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    format: str = Query(
        "nifti",
        description="; ".join(f"{f.name}: {f.description}" for f in FORMATS.values()),
        json_schema_extra={"enum": list(FORMATS)},  # checked against the table below: 400 unknown_format
    ),
    model: str | None = Query(None, description="model name (default: SEG_DEFAULT_MODEL)"),
    version: int | None = Query(None, ge=1, description="model version (default: the served one)"),
):
    """Segment one study: multipart form, one file field per modality named as in the model card."""
    fmt = FORMATS.get(format)
    if fmt is None:
        raise ApiError(400, "unknown_format", f'format "{format}" is not one of: {", ".join(FORMATS)}')
    loaded = service.resolve(model or settings.default_model, version)
    work = tempfile.mkdtemp(prefix="seg-", dir=settings.tmp_dir)
    try:
        files = await receive_files(
            request.stream(),
            request.headers.get("content-type"),
            request.headers.get("content-length"),
            Path(work),
            settings.max_upload_bytes,
        )
        answer = await service.segment(loaded, files, Path(work), fmt)
    except (ApiError, ClientDisconnect):
        shutil.rmtree(work, ignore_errors=True)
        raise
    except Exception:
        # A fault of ours (a model that fails at inference, a bug): the same JSON shape as every other
        # error, the traceback in the log (it carries no DICOM values: nothing here formats a header).
        shutil.rmtree(work, ignore_errors=True)
        log.exception("segment_failed model=%s version=%s", loaded.name, loaded.version)
        raise ApiError(
            500, "internal_error", "the study could not be segmented because of a server error (logged)"
        ) from None
    except BaseException:  # cancelled: the client went away
        shutil.rmtree(work, ignore_errors=True)
        raise
    headers = {
        "X-Model-Name": loaded.name,
        "X-Model-Version": str(loaded.version),
        "X-Inference-Ms": f"{answer.timings_ms.get('infer', 0.0):.1f}",
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
