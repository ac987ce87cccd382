from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import RegistryDep
from app.api.schemas import ErrorBody, Health, Readiness
from app.errors import error_response

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> dict:
    """The process is up and its event loop answers (even while a study is being segmented)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": ErrorBody, "description": "no model yet"}})
async def readyz(registry: RegistryDep):
    """A model is loaded and warmed."""
    if not registry.ready():
        return error_response(503, "not_ready", "no model is loaded yet", headers={"Retry-After": "5"})
    return {
        "status": "ready",
        "models": {n: registry.state(n).served.version for n in registry.names() if registry.state(n).served},
    }


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def prometheus_metrics() -> Response:
    """Prometheus text exposition format."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
