"""The segmentation service: one study in, one answer out, with bounded concurrency.

Blocking work (reading, TensorFlow, writing) runs in worker threads so the event loop keeps answering
``/healthz``. A request is admitted before its upload is read (:class:`Admission`): at most
``max_concurrent_inferences`` studies are read and segmented at once, at most ``queue_size`` more are
admitted to wait, and at most ``max_concurrent_uploads`` bodies are received at once; beyond that the
answer is 503 with ``Retry-After``, immediately. Jobs (``app.jobs``) are admitted when submitted and
wait for a slot however long the line is.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import SimpleITK as sitk

from app import __version__, telemetry
from app.config import Settings
from app.errors import ApiError
from app.inputs.archives import ArchiveLimits
from app.inputs.study import Study, StudyLimits, inspect_study
from app.inputs.uploads import UploadedFile
from app.outputs.formats import OutputFormat, Payload, Rendering
from app.registry import LoadedModel, ModelRegistry, UnknownModel
from segcore.pipeline import Segmentation, segment
from segcore.preprocess import PreprocessMode, Untrustworthy

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
    warnings: list[str] = field(default_factory=list)  # the plausibility guard's codes (X-Input-Warnings)


def _busy(detail: str) -> ApiError:
    return ApiError(503, "busy", detail, headers={"Retry-After": "2"})


TicketState = Literal["uploading", "checking", "queued", "running"]


@dataclass
class Ticket:
    """One admitted request. ``state`` moves uploading -> checking (headers) -> queued (waiting for a
    slot) -> running; only a ``queued`` request can be abandoned without waiting for a worker thread."""

    admission: Admission
    state: TicketState = "uploading"

    def uploaded(self) -> None:
        if self.state == "uploading":
            self.admission.uploading -= 1
            self.state = "checking"


class Admission:
    """Admission control before the upload is read, and the inference slots.

    At most ``slots + queue_size`` requests hold a ticket (uploading, being checked, waiting or running)
    and at most ``max_uploads`` of them are still receiving their body; beyond either, the answer is 503
    with ``Retry-After`` at once, before a byte of the body is read. At most ``slots`` studies are read
    and segmented at once, so the memory in use is bounded by ``slots`` x the per-request budget: a
    queued request holds only its files on disk, never decoded volumes.
    """

    def __init__(self, slots: int, queue_size: int, max_uploads: int) -> None:
        self._semaphore = asyncio.Semaphore(slots)
        self.capacity = slots + queue_size
        self.max_uploads = max_uploads
        self.admitted = 0
        self.uploading = 0
        self.waiting = 0

    @contextlib.contextmanager
    def ticket(self) -> Iterator[Ticket]:
        if self.admitted >= self.capacity:
            raise _busy("all inference slots are busy and the queue is full; retry shortly")
        if self.uploading >= self.max_uploads:
            raise _busy(f"{self.uploading} uploads are in progress (SEG_MAX_CONCURRENT_UPLOADS); retry shortly")
        self.admitted += 1
        self.uploading += 1
        ticket = Ticket(self)
        try:
            yield ticket
        finally:
            ticket.uploaded()
            self.admitted -= 1

    @contextlib.asynccontextmanager
    async def slot(self, ticket: Ticket) -> AsyncIterator[None]:
        ticket.state = "queued"
        self.waiting += 1
        telemetry.QUEUE_DEPTH.set(self.waiting)
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
            telemetry.QUEUE_DEPTH.set(self.waiting)
        ticket.state = "running"
        telemetry.IN_FLIGHT.inc()
        try:
            yield
        finally:
            telemetry.IN_FLIGHT.dec()
            self._semaphore.release()


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
    def __init__(
        self,
        registry: ModelRegistry,
        *,
        max_concurrent: int,
        queue_size: int,
        max_uploads: int,
        limits: StudyLimits,
    ) -> None:
        self.registry = registry
        self.admission = Admission(max_concurrent, queue_size, max_uploads)
        self.limits = limits

    @classmethod
    def from_settings(cls, registry: ModelRegistry, settings: Settings) -> SegmentationService:
        """The service as ``SEG_*`` settings describe it; the server and ``python -m app.predict`` share it."""
        return cls(
            registry,
            max_concurrent=settings.max_concurrent_inferences,
            queue_size=settings.queue_size,
            max_uploads=settings.max_concurrent_uploads,
            limits=StudyLimits(
                max_voxels=settings.max_voxels,
                memory_budget_bytes=settings.memory_budget_bytes,
                min_overlap=settings.min_modality_overlap,
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
        ticket: Ticket | None = None,
        *,
        progress: Progress | None = None,
        preprocess: PreprocessMode = "auto",
    ) -> Answer:
        """Check, read, segment and write one study in the format ``fmt`` (a row of
        ``app.outputs.formats.FORMATS``), or in several at once (a job's answer: one segmentation, every
        format the input allows; a single format the input cannot give is refused as ``/segment`` refuses it).

        Everything that can be refused from headers (the formats' own prerequisites included) is refused
        before a slot is taken; voxels are read inside the slot. ``ticket``: the request's admission
        (``/segment``); ``None`` for a job, admitted when submitted, which waits for a slot however long
        the line is. ``progress`` is told each stage as it starts (``read``, ``queue``, ``segment``,
        ``write``). ``preprocess`` is the request's ``preprocess`` (auto|none); the input stage it runs
        (skull strip, registration, N4) allocates, so it runs inside the slot, with the segmentation. An
        input whose answer cannot be trusted is a 422 saying what to send instead; every other doubt
        travels as ``Answer.warnings`` and in each JSON answer.
        """
        stage = progress or (lambda _: None)
        ticket = ticket or Ticket(self.admission, state="checking")
        t0 = time.perf_counter()
        stage("read")
        inspected = await asyncio.to_thread(inspect_study, files, model.card, self.limits)
        datasets = inspected.datasets(model.card.modalities[0])
        formats = self._applicable([fmt] if isinstance(fmt, OutputFormat) else list(fmt), datasets, model)
        for f in formats:
            if f.precheck is not None:
                await asyncio.to_thread(f.precheck, datasets, model.card)
        check_ms = (time.perf_counter() - t0) * 1000
        stage("queue")
        t_queued = time.perf_counter()
        async with self.admission.slot(ticket):
            queue_ms = (time.perf_counter() - t_queued) * 1000  # waiting for a slot: load, not work
            t_read = time.perf_counter()
            study: Study = await run_to_completion(inspected.load)
            read_ms = check_ms + (time.perf_counter() - t_read) * 1000
            stage("segment")
            try:
                result = await run_to_completion(
                    functools.partial(segment, study.images, model.runner, preprocess_mode=preprocess)
                )
            except Untrustworthy as refused:
                raise ApiError(422, refused.code, refused.detail) from None
            result.warnings[:0] = inspected.header_warnings()  # what the headers say comes first
            timings = {"read": read_ms, "queue": queue_ms, **result.timings_ms}
            stage("write")
            answer = await self._write(model, study, result, timings, out_dir, formats)
        return answer

    @staticmethod
    def _applicable(formats: list[OutputFormat], datasets: object, model: LoadedModel) -> list[OutputFormat]:
        """``formats`` less those needing a DICOM input the study does not have (``datasets`` is None for a
        NIfTI input); a single such format is refused (422 ``<format>_needs_dicom``), as ``/segment``
        answers it."""
        if datasets is not None:
            return formats
        usable = [f for f in formats if not f.needs_dicom]
        if not usable:
            fmt = formats[0]
            first = model.card.modalities[0]
            raise ApiError(
                422,
                f"{fmt.name.replace('-', '_')}_needs_dicom",
                f'format={fmt.name} needs "{first}" as a DICOM series, not a NIfTI file',
            )
        return usable

    async def _write(
        self,
        model: LoadedModel,
        study: Study,
        result: Segmentation,
        timings: dict[str, float],
        out_dir: Path,
        formats: list[OutputFormat],
    ) -> Answer:
        """Run each format's writer on the mask (the "write" timing included where a format reports it)."""
        first = model.card.modalities[0]
        telemetry.INFERENCE_SECONDS.labels(model.name, str(model.version)).observe(timings["infer"] / 1000)
        for step in result.preprocessing.steps if result.preprocessing else ():
            telemetry.PREPROCESS_STEP_SECONDS.labels(step["step"]).observe(step["ms"] / 1000)
        for code in result.warning_codes:
            telemetry.INPUT_WARNINGS.labels(code).inc()
        series = study.dicom.get(first)
        rendering = Rendering(
            mask=result.mask,
            image=study.images[first],
            datasets=series.datasets if series is not None else None,
            other_datasets=[s.datasets for m, s in study.dicom.items() if m != first],
            card=model.card,
            timings_ms=timings,
            directory=out_dir,
            software_version=__version__,
        )
        t1 = time.perf_counter()
        payloads = {f.name: await asyncio.to_thread(f.write, rendering) for f in formats if not f.reports_timings}
        timings["write"] = (time.perf_counter() - t1) * 1000
        for name, ms in timings.items():
            telemetry.STAGE_SECONDS.labels(name).observe(ms / 1000)
        for f in formats:  # a format that reports the timings, "write" included, is built last
            if f.reports_timings:
                payloads[f.name] = await asyncio.to_thread(f.write, rendering)
        for payload in payloads.values():
            if isinstance(payload, dict):
                payload["preprocessing"] = result.preprocessing.as_dict() if result.preprocessing else None
                payload["warnings"] = [w.as_dict() for w in result.warnings]
                if study.series is not None:
                    payload["series"] = study.series
        log.info(
            "segmented model=%s version=%s size=%s %s warnings=%s",
            model.name,
            model.version,
            "x".join(map(str, result.mask.GetSize())),
            " ".join(f"{k}_ms={v:.0f}" for k, v in timings.items()),
            ",".join(result.warning_codes) or "none",
        )
        return Answer(model, result.mask, timings, payloads[formats[0].name], payloads, result.warning_codes)
