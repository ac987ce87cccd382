from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.background import BackgroundTask

from app.api.deps import ServiceDep, SettingsDep
from app.errors import ApiError
from app.uploads import receive_files

router = APIRouter(tags=["segment"])

FORMATS = ("nifti", "json", "png", "dicom-seg")


@router.post("/segment")
async def segment_study(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    format: str = Query(
        "nifti", description="nifti (mask .nii.gz), json (volumes, timings), png (overlay), dicom-seg (DICOM inputs)"
    ),
    model: str | None = Query(None, description="model name (default: SEG_DEFAULT_MODEL)"),
    version: int | None = Query(None, ge=1, description="model version (default: the served one)"),
):
    """Segment one study: multipart form, one file field per modality named as in the model card."""
    if format not in FORMATS:
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
        answer = await service.segment(loaded, files, Path(work), format)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    headers = {
        "X-Model-Name": loaded.name,
        "X-Model-Version": str(loaded.version),
        "X-Inference-Ms": f"{answer.timings_ms.get('infer', 0.0):.1f}",
    }
    if format in ("json", "png"):
        shutil.rmtree(work, ignore_errors=True)
        if format == "json":
            return JSONResponse(answer.body, headers=headers)
        return Response(answer.png, media_type="image/png", headers=headers)
    # The file is streamed after this returns; the directory goes once it has been sent.
    media, name = ("application/gzip", "mask.nii.gz") if format == "nifti" else ("application/dicom", "mask.seg.dcm")
    return FileResponse(
        answer.path,
        media_type=media,
        filename=name,
        headers=headers,
        background=BackgroundTask(shutil.rmtree, work, ignore_errors=True),
    )
