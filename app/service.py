"""The segmentation service: one study in, one answer out, with bounded concurrency.

Blocking work (reading, TensorFlow, writing) runs in worker threads so the event loop keeps answering
``/healthz``. At most ``max_concurrent_inferences`` studies are segmented at once and at most
``queue_size`` wait; beyond that the answer is 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import SimpleITK as sitk

from app import __version__, telemetry
from app.config import Settings
from app.errors import ApiError
from app.inputs.archives import ArchiveLimits
from app.inputs.study import Study, StudyLimits, read_study
from app.inputs.uploads import UploadedFile
from app.outputs.formats import OutputFormat, Payload, Rendering
from app.registry import LoadedModel, ModelRegistry, UnknownModel
from segcore.pipeline import segment

log = logging.getLogger("app.service")
T = TypeVar("T")
Progress = Callable[[str], None]
"""Told the name of each stage as it starts: ``read``, ``queue`` (waiting for a slot), ``segment``, ``write``."""


@dataclass
class Answer:
    model: LoadedModel
    mask: sitk.Image
    timings_ms: dict[str, float]
    payload: Payload  # what the (first) format's writer returned: a file, bytes or a JSON-able dict
    payloads: dict[str, Payload] = field(default_factory=dict)  # by format name, when several were asked


class Limiter:
    """A semaphore with a bounded waiting room."""

    def __init__(self, slots: int, queue_size: int) -> None:
        self._semaphore = asyncio.Semaphore(slots)
        self._queue_size = queue_size
        self._waiting = 0

    async def __aenter__(self) -> None:
        await self.enter(bounded=True)

    async def enter(self, bounded: bool) -> None:
        """Take a slot, waiting in line. ``bounded``: refuse (503) when the waiting room is full. Jobs wait
        unbounded: they were admitted when submitted, and a job has no client to answer 503 to."""
        if bounded and self._semaphore.locked() and self._waiting >= self._queue_size:
            raise ApiError(
                503,
                "busy",
                "all inference slots are busy and the queue is full; retry shortly",
                headers={"Retry-After": "2"},
            )
        self._waiting += 1
        telemetry.QUEUE_DEPTH.set(self._waiting)
        try:
            await self._semaphore.acquire()
        finally:
            self._waiting -= 1
            telemetry.QUEUE_DEPTH.set(self._waiting)
        telemetry.IN_FLIGHT.inc()

    async def __aexit__(self, *exc: object) -> None:
        telemetry.IN_FLIGHT.dec()
        self._semaphore.release()

    @contextlib.asynccontextmanager
    async def slot(self, bounded: bool = True) -> AsyncIterator[None]:
        await self.enter(bounded)
        try:
            yield
        finally:
            await self.__aexit__()


async def run_to_completion(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in a worker thread. If the caller is cancelled meanwhile (a cancelled job), the thread
    is waited for before the cancellation goes on, so an inference slot is never released while its work
    still runs."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


class SegmentationService:
    def __init__(self, registry: ModelRegistry, *, max_concurrent: int, queue_size: int, limits: StudyLimits) -> None:
        self.registry = registry
        self.limiter = Limiter(max_concurrent, queue_size)
        self.limits = limits

    @classmethod
    def from_settings(cls, registry: ModelRegistry, settings: Settings) -> SegmentationService:
        """The service as ``SEG_*`` settings describe it; the server and ``python -m app.predict`` share it."""
        return cls(
            registry,
            max_concurrent=settings.max_concurrent_inferences,
            queue_size=settings.queue_size,
            limits=StudyLimits(
                max_voxels=settings.max_voxels,
                archive=ArchiveLimits(
                    max_members=settings.max_archive_members,
                    max_total_bytes=int(settings.max_unzipped_mb * 2**20),
                    max_ratio=settings.max_compression_ratio,
                ),
            ),
        )

    def resolve(self, name: str, version: int | None) -> LoadedModel:
        """The model a request will run on, fixed before the upload is read."""
        try:
            return self.registry.get(name, version)
        except UnknownModel:
            known = ", ".join(self.registry.names()) or "none"
            what = f'model "{name}"' + (f" version {version}" if version is not None else "")
            raise ApiError(404, "unknown_model", f"{what} is not loaded; loaded models: {known}") from None

    async def segment(
        self,
        model: LoadedModel,
        files: list[UploadedFile],
        out_dir: Path,
        fmt: OutputFormat | Sequence[OutputFormat],
        *,
        progress: Progress | None = None,
        wait: bool = False,
    ) -> Answer:
        """Read, segment and write one study in the format ``fmt`` (a row of ``app.outputs.formats.FORMATS``),
        or in several at once (a job's answer: one segmentation, every format).

        With several formats, those the input cannot give (a DICOM SEG of a NIfTI input) are left out; a
        single one is refused as ``/segment`` refuses it. ``progress`` is told each stage as it starts
        (``read``, ``queue``, ``segment``, ``write``). ``wait``: wait for an inference slot however long the
        line is (jobs, admitted when submitted) instead of 503 when the waiting room is full.
        """
        stage = progress or (lambda _: None)
        t0 = time.perf_counter()
        stage("read")
        study: Study = await asyncio.to_thread(read_study, files, model.card, self.limits)
        formats = self._applicable([fmt] if isinstance(fmt, OutputFormat) else list(fmt), study, model)
        read_ms = (time.perf_counter() - t0) * 1000
        stage("queue")
        t_queued = time.perf_counter()
        async with self.limiter.slot(bounded=not wait):
            queue_ms = (time.perf_counter() - t_queued) * 1000  # waiting for a slot: load, not work
            stage("segment")
            result = await run_to_completion(segment, study.images, model.runner)
        timings = {"read": read_ms, "queue": queue_ms, **result.timings_ms}
        telemetry.INFERENCE_SECONDS.labels(model.name, str(model.version)).observe(timings["infer"] / 1000)
        first = model.card.modalities[0]
        series = study.dicom.get(first)
        rendering = Rendering(
            mask=result.mask,
            image=study.images[first],
            datasets=series.datasets if series is not None else None,
            card=model.card,
            timings_ms=timings,
            directory=out_dir,
            software_version=__version__,
        )
        stage("write")
        t1 = time.perf_counter()
        payloads = {f.name: await asyncio.to_thread(f.write, rendering) for f in formats if not f.reports_timings}
        timings["write"] = (time.perf_counter() - t1) * 1000
        for name, ms in timings.items():
            telemetry.STAGE_SECONDS.labels(name).observe(ms / 1000)
        for f in formats:  # a format that reports the timings, "write" included, is built last
            if f.reports_timings:
                payloads[f.name] = await asyncio.to_thread(f.write, rendering)
        log.info(
            "segmented model=%s version=%s size=%s %s",
            model.name,
            model.version,
            "x".join(map(str, result.mask.GetSize())),
            " ".join(f"{k}_ms={v:.0f}" for k, v in timings.items()),
        )
        return Answer(model, result.mask, timings, payloads[formats[0].name], payloads)

    @staticmethod
    def _applicable(formats: list[OutputFormat], study: Study, model: LoadedModel) -> list[OutputFormat]:
        """``formats`` less those needing a DICOM input the study does not have; a single such format is
        refused (422 ``<format>_needs_dicom``), as ``/segment`` answers it."""
        first = model.card.modalities[0]
        if first in study.dicom:
            return formats
        usable = [f for f in formats if not f.needs_dicom]
        if not usable:
            fmt = formats[0]
            raise ApiError(
                422,
                f"{fmt.name.replace('-', '_')}_needs_dicom",
                f'format={fmt.name} needs "{first}" as a DICOM series, not a NIfTI file',
            )
        return usable
