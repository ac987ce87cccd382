from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import RegistryDep
from app.api.schemas import Health, NotReady, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> dict:
    """The process is up and its event loop answers (even while a study is being segmented)."""
    return {"status": "ok"}


@router.get(
    "/readyz", response_model=Readiness, responses={503: {"model": NotReady, "description": "a model serves nothing"}}
)
async def readyz(registry: RegistryDep):
    """Every model under ``SEG_MODELS_DIR`` serves a loaded, warmed version: 200 with ``models`` (name ->
    served version); otherwise 503 that also lists ``not_ready`` (name -> why)."""
    serving, not_ready = registry.readiness()
    if serving and not not_ready:
        return {"status": "ready", "models": serving}
    detail = f"not serving: {', '.join(sorted(not_ready))}" if not_ready else "no model is loaded yet"
    return JSONResponse(
        {"error": "not_ready", "detail": detail, "models": serving, "not_ready": not_ready},
        status_code=503,
        headers={"Retry-After": "5"},
    )


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def prometheus_metrics() -> Response:
    """Prometheus text exposition format."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
