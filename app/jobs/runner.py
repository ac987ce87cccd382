"""Running jobs in the service's event loop: admission, progress by stage, cancellation, retention.

A job's *work* is an async function given a :class:`JobContext`; it reports stages (``ctx.enter("read")``),
adds result files (``ctx.add_result("nifti", path)``) and what it did outside (``ctx.outcome``). The
segmentation itself goes through the same :class:`~app.service.SegmentationService` as ``/segment`` (so
the same inference semaphore and waiting room bound jobs and synchronous requests together); the runner
only decides how many jobs may be *active* at once (``max_active``: beyond that ``POST /jobs`` answers
503 with ``Retry-After``, as ``/segment`` does when its queue is full).

Errors become the job's ``error``: an :class:`~app.errors.ApiError` keeps its code and sentence (a job
fails with exactly the error ``/segment`` would have answered); anything else is ``internal_error``,
logged by type and traceback frames only, since an exception's message may quote a DICOM value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from app.errors import ApiError
from app.jobs.store import INTERRUPTED, Job, JobStore

log = logging.getLogger("app.jobs")

RETENTION_SWEEP_SECONDS = 600.0


class JobContext:
    """What a running job's work can report. Safe to call from worker threads (the store locks)."""

    def __init__(self, store: JobStore, job: Job) -> None:
        self.store = store
        self.job = job
        self.folder = store.folder(job.id)
        self._stages: list[dict[str, Any]] = []
        self._stage_t0 = 0.0
        self.results: dict[str, str] = {}
        self.outcome: dict[str, Any] = {}

    def enter(self, stage: str) -> None:
        """Close the running stage (recording its duration) and start ``stage``."""
        self._close_stage()
        self._stages.append({"name": stage, "state": "running", "started": time.time(), "ms": None})
        self._stage_t0 = time.perf_counter()
        self.store.update(self.job.id, stages=self._stages)

    def _close_stage(self) -> None:
        if self._stages and self._stages[-1]["state"] == "running":
            self._stages[-1].update(state="done", ms=round((time.perf_counter() - self._stage_t0) * 1000, 1))

    def done(self) -> None:
        self._close_stage()
        self.store.update(self.job.id, stages=self._stages)

    def add_result(self, fmt: str, path: Path) -> None:
        """Record ``path`` (inside the job's folder) as the answer in format ``fmt``."""
        self.results[fmt] = str(Path(path).relative_to(self.folder))
        self.store.update(self.job.id, results=self.results)

    def set_outcome(self, **values: Any) -> None:
        self.outcome.update(values)
        self.store.update(self.job.id, outcome=self.outcome)


Work = Callable[[JobContext], Awaitable[None]]


class JobRunner:
    """Starts, tracks and cancels jobs; keeps the store within its retention limits."""

    def __init__(self, store: JobStore, *, max_active: int, retention_seconds: float, max_records: int) -> None:
        self.store = store
        self.max_active = max_active
        self.retention_seconds = retention_seconds
        self.max_records = max_records
        self._tasks: dict[str, asyncio.Task] = {}
        self._sweeper: asyncio.Task | None = None
        self.finished_callbacks: list[Callable[[Job], None]] = []

    async def start(self) -> None:
        """Fail the jobs a previous process left unfinished, apply retention, sweep periodically."""
        interrupted = await asyncio.to_thread(self.store.recover)
        if interrupted:
            log.warning("jobs_interrupted_by_restart count=%d", interrupted)
        await asyncio.to_thread(self.store.clean, self.retention_seconds, self.max_records)
        self._sweeper = asyncio.create_task(self._sweep())

    async def stop(self) -> None:
        """On shutdown: running jobs are failed now (the next start would do it anyway)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for job_id, task in list(self._tasks.items()):
            task.cancel()
            self.store.finish(job_id, "failed", INTERRUPTED)
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=30)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(RETENTION_SWEEP_SECONDS, max(self.retention_seconds / 10, 1.0)))
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.clean, self.retention_seconds, self.max_records)

    def admit(self) -> None:
        """Refuse a new job (503, as ``/segment`` with a full queue) when ``max_active`` are active."""
        active = self.store.count_active()  # the records, so jobs still receiving their upload count too
        if active >= self.max_active:
            raise ApiError(
                503,
                "busy",
                f"{active} jobs are queued or running, the limit (SEG_JOBS_MAX_ACTIVE); retry shortly",
                headers={"Retry-After": "5"},
            )

    def create(self, kind: str, model: str | None, version: int | None, source: dict[str, Any]) -> Job:
        """A queued record and its folder; the caller fills the folder, then calls :meth:`run`."""
        self.admit()
        return self.store.create(kind, model, version, source)

    def run(self, job: Job, work: Work) -> None:
        """Start ``work`` for ``job`` as a task of the running event loop."""
        task = asyncio.create_task(self._execute(job, work), name=f"job-{job.id}")
        self._tasks[job.id] = task

    async def _execute(self, job: Job, work: Work) -> None:
        ctx = JobContext(self.store, job)
        self.store.update(job.id, state="running", started=time.time())
        t0 = time.perf_counter()
        try:
            await work(ctx)
            ctx.done()
            self.store.finish(job.id, "succeeded")
            log.info("job_succeeded id=%s kind=%s ms=%.0f", job.id, job.kind, (time.perf_counter() - t0) * 1000)
        except asyncio.CancelledError:
            ctx.done()
            self.store.finish(job.id, "cancelled", {"error": "cancelled", "detail": "the job was cancelled"})
            log.info("job_cancelled id=%s kind=%s", job.id, job.kind)
        except ApiError as exc:
            ctx.done()
            self.store.finish(job.id, "failed", {"error": exc.code, "detail": exc.detail})
            log.info("job_failed id=%s kind=%s error=%s", job.id, job.kind, exc.code)
        except Exception as exc:  # never leave a job running; the message may quote DICOM values: not logged
            ctx.done()
            detail = "the job failed unexpectedly; the service log has the details under this job id"
            self.store.finish(job.id, "failed", {"error": "internal_error", "detail": detail})
            frames = "".join(traceback.format_tb(exc.__traceback__))
            log.error("job_crashed id=%s kind=%s type=%s\n%s", job.id, job.kind, type(exc).__name__, frames)
        finally:
            self._tasks.pop(job.id, None)
        final = self.store.get(job.id)
        if final is not None and final.state != "succeeded":
            self._drop_files(final)
        if final is not None:
            for callback in self.finished_callbacks:
                callback(final)
        await asyncio.to_thread(self.store.clean, self.retention_seconds, self.max_records)

    def _drop_files(self, job: Job) -> None:
        """A job that did not succeed keeps its record but not its (partial) files."""
        shutil.rmtree(self.store.folder(job.id), ignore_errors=True)
        if job.results:
            self.store.update(job.id, results={})

    async def cancel(self, job_id: str) -> Job | None:
        """Cancel an active job: its record says ``cancelled`` at once; its task stops at the next await
        (work already in a worker thread finishes first, still holding its inference slot)."""
        task = self._tasks.get(job_id)
        if task is None:
            return self.store.get(job_id)
        self.store.finish(job_id, "cancelled", {"error": "cancelled", "detail": "the job was cancelled"})
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(task), timeout=30)
        return self.store.get(job_id)

    def active(self) -> int:
        return len(self._tasks)
