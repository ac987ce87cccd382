"""The segmentation service: one study in, one answer out, with bounded concurrency.

Blocking work (reading, TensorFlow, writing) runs in worker threads so the event loop keeps answering
``/healthz``. At most ``max_concurrent_inferences`` studies are segmented at once and at most
``queue_size`` wait; beyond that the answer is 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from app import __version__, telemetry
from app.errors import ApiError
from app.inputs.study import Study, StudyLimits, read_study
from app.inputs.uploads import UploadedFile
from app.outputs.formats import OutputFormat, Payload, Rendering
from app.registry import LoadedModel, ModelRegistry, UnknownModel
from segcore.pipeline import segment
from segcore.preprocess import PreprocessMode, Untrustworthy

log = logging.getLogger("app.service")


@dataclass
class Answer:
    model: LoadedModel
    mask: sitk.Image
    timings_ms: dict[str, float]
    payload: Payload  # what the format's writer returned: a file, bytes or a JSON-able dict
    warnings: list[str]  # codes of the plausibility guard's warnings (header X-Input-Warnings)


class Limiter:
    """A semaphore with a bounded waiting room."""

    def __init__(self, slots: int, queue_size: int) -> None:
        self._semaphore = asyncio.Semaphore(slots)
        self._queue_size = queue_size
        self._waiting = 0

    async def __aenter__(self) -> None:
        if self._semaphore.locked() and self._waiting >= self._queue_size:
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


class SegmentationService:
    def __init__(self, registry: ModelRegistry, *, max_concurrent: int, queue_size: int, limits: StudyLimits) -> None:
        self.registry = registry
        self.limiter = Limiter(max_concurrent, queue_size)
        self.limits = limits

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
        fmt: OutputFormat,
        preprocess_mode: PreprocessMode = "auto",
    ) -> Answer:
        """Read, segment and write one study in the format ``fmt`` (a row of ``app.outputs.formats.FORMATS``).

        ``preprocess_mode`` is the request's ``preprocess`` (auto|none). An input whose answer cannot be
        trusted is a 422 saying what to send instead; every other doubt travels as ``Answer.warnings``.
        """
        t0 = time.perf_counter()
        study: Study = await asyncio.to_thread(read_study, files, model.card, self.limits)
        first = model.card.modalities[0]
        if fmt.needs_dicom and first not in study.dicom:
            raise ApiError(
                422,
                f"{fmt.name.replace('-', '_')}_needs_dicom",
                f'format={fmt.name} needs "{first}" as a DICOM series, not a NIfTI file',
            )
        read_ms = (time.perf_counter() - t0) * 1000
        t_queued = time.perf_counter()
        async with self.limiter:
            queue_ms = (time.perf_counter() - t_queued) * 1000  # waiting for a slot: load, not work
            try:
                result = await asyncio.to_thread(
                    segment, study.images, model.runner, preprocess_mode=preprocess_mode
                )
            except Untrustworthy as refused:
                raise ApiError(422, refused.code, refused.detail) from None
        timings = {"read": read_ms, "queue": queue_ms, **result.timings_ms}
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
        payload = None if fmt.reports_timings else await asyncio.to_thread(fmt.write, rendering)
        timings["write"] = (time.perf_counter() - t1) * 1000
        for stage, ms in timings.items():
            telemetry.STAGE_SECONDS.labels(stage).observe(ms / 1000)
        if payload is None:  # a format that reports the timings, "write" included, is built last
            payload = await asyncio.to_thread(fmt.write, rendering)
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
        return Answer(model, result.mask, timings, payload, result.warning_codes)
