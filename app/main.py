"""The FastAPI application: settings -> threads -> registry -> service -> routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request, Response

from app import __version__, telemetry
from app.api.boundary import RequestBoundary
from app.api.routes import dicomweb, health, jobs, models, segment, viewer
from app.config import Settings
from app.errors import install_handlers
from app.inputs.staging import remove_stale
from app.jobs import lifecycle
from app.logs import configure_logging
from app.registry import ModelRegistry
from app.runners.backends import runner_factory
from app.service import SegmentationService
from segcore.preprocess import skullstrip
from segcore.threads import apply_thread_env

log = logging.getLogger("app")


async def _poll(registry: ModelRegistry, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await asyncio.to_thread(registry.refresh)
        except Exception:  # a broken models_dir must not kill the poller
            log.exception("model_poll_failed")


def _lifespan(settings: Settings, registry: ModelRegistry, factory: object):
    """Startup: load and warm what is on disk, start the poller. Shutdown: stop it, close the backend."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.models_dir.is_dir():
            raise RuntimeError(f"SEG_MODELS_DIR {settings.models_dir} is not a directory")
        await asyncio.to_thread(registry.refresh)
        if not registry.ready():
            log.warning("no_model_loaded models_dir=%s", settings.models_dir)
        poller = asyncio.create_task(_poll(registry, settings.poll_seconds)) if settings.poll_seconds > 0 else None
        await lifecycle.start(app.state.integrations, settings, app.state.service)
        log.info(
            "serving backend=%s models_dir=%s poll_seconds=%s keep_versions=%s pinned=%s",
            settings.backend,
            settings.models_dir,
            settings.poll_seconds,
            settings.keep_versions,
            settings.pinned_versions or "-",
        )
        yield
        await lifecycle.stop(app.state.integrations)
        if poller is not None:
            poller.cancel()
        close = getattr(factory, "close", None)  # the TF Serving channel
        if close is not None:
            close()

    return lifespan


async def _count_requests(request: Request, call_next) -> Response:
    """Middleware: requests by route and status (Prometheus), and one log line per /segment and POST /jobs."""
    started = time.perf_counter()
    response = await call_next(request)
    route = request.scope.get("route")
    telemetry.REQUESTS.labels(getattr(route, "path", "unmatched"), str(response.status_code)).inc()
    if request.url.path in ("/segment", "/jobs"):
        log.info(
            "request path=%s status=%s ms=%.0f",
            request.url.path,
            response.status_code,
            (time.perf_counter() - started) * 1000,
        )
    return response


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level)
    # Before TensorFlow runs its first op: pool sizes are fixed from then on.
    apply_thread_env(intra_op=settings.intra_op_threads, inter_op=settings.inter_op_threads)
    skullstrip.configure(
        networks_dir=settings.brain_networks_dir, backend=settings.brain_backend, cache_dir=settings.cache_dir
    )
    if settings.tmp_dir is not None:
        Path(settings.tmp_dir).mkdir(parents=True, exist_ok=True)
    remove_stale(settings.tmp_dir)  # left by a killed process (OOM killer, container stop)
    factory = runner_factory(settings)
    registry = ModelRegistry(
        settings.models_dir,
        factory,
        keep_versions=settings.keep_versions,
        pinned=settings.pinned_versions,
        tolerance=settings.promotion_tolerance,
    )
    app = FastAPI(
        title="Brain-tumour MRI segmentation", version=__version__, lifespan=_lifespan(settings, registry, factory)
    )
    app.state.settings = settings
    app.state.service = SegmentationService.from_settings(registry, settings)
    app.state.integrations = lifecycle.build(settings)
    install_handlers(app)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(segment.router)
    app.include_router(jobs.router)
    app.include_router(dicomweb.router)
    app.include_router(viewer.router)
    viewer.mount_static(app)
    app.middleware("http")(_count_requests)
    app.add_middleware(RequestBoundary)  # added last: the outermost of the application's middleware
    return app
