"""What each kind of job does, composed from the service and the PACS clients.

- ``upload``: the files of a ``POST /jobs`` (the same form as ``/segment``), segmented once into every
  format the input allows (NIfTI, JSON, PNG, and the DICOM SEG for DICOM inputs).
- ``dicomweb``: a study in the configured PACS: series listed (QIDO-RS) and chosen by the rule table
  (:mod:`app.inputs.series_selection`), retrieved (WADO-RS), segmented, and the DICOM SEG stored back
  into the same study (STOW-RS).
- ``listener``: a study the DICOM listener received: series chosen from the received headers by the
  same rule table, segmented, and the SEG sent to the configured destination (C-STORE, or STOW-RS to
  the configured PACS when no DICOM destination is set).

All segmentation goes through :meth:`SegmentationService.segment`, the same call ``/segment`` makes.
Inputs are deleted once the answer is written; only results stay in the job's folder.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pydicom

from app.errors import ApiError
from app.inputs.series_selection import SeriesInfo, describe_files, select_series
from app.inputs.uploads import UploadedFile
from app.jobs.runner import JobContext, JobRunner, Work
from app.outputs.formats import FORMATS
from app.pacs.dicomweb import PacsClient
from app.pacs.listener import Destination, ReceivedStudy, check_received, send_c_store
from app.registry import LoadedModel
from app.service import SegmentationService
from segcore.preprocess import PreprocessMode

UPLOAD_FORMATS = tuple(FORMATS)  # every format /segment offers; the service drops what the input cannot give
PACS_FORMATS = ("dicom-seg", "nifti", "json")


async def _segment(
    ctx: JobContext,
    service: SegmentationService,
    model: LoadedModel,
    files: list[UploadedFile],
    formats: tuple[str, ...],
    preprocess: PreprocessMode = "auto",
) -> Path | None:
    """Segment through the service into the job's folder and record each result as a file; the DICOM
    SEG's path. Formats the input cannot give (a DICOM SEG of a NIfTI input) are left out. The input
    warnings' codes go into the job's ``outcome`` (the JSON result has them with their sentences)."""
    out = ctx.folder / "result"
    out.mkdir(exist_ok=True)
    asked = [FORMATS[name] for name in formats]
    answer = await service.segment(model, files, out, asked, progress=ctx.enter, preprocess=preprocess)
    ctx.set_outcome(warnings=answer.warnings)  # the guard's codes; details in the JSON result
    seg_path = None
    for name, payload in answer.payloads.items():
        if isinstance(payload, Path):
            path = payload
        else:  # an in-memory answer (JSON summary, PNG preview) is kept as a file too
            path = out / f"result.{FORMATS[name].media_type.split('/')[-1]}"
            path.write_bytes(json.dumps(payload).encode() if isinstance(payload, dict) else payload)
        ctx.add_result(name, path)
        seg_path = path if name == "dicom-seg" else seg_path
    return seg_path


def upload_work(
    service: SegmentationService, model: LoadedModel, files: list[UploadedFile], preprocess: PreprocessMode = "auto"
) -> Work:
    async def work(ctx: JobContext) -> None:
        await _segment(ctx, service, model, files, UPLOAD_FORMATS, preprocess)
        shutil.rmtree(ctx.folder / "input", ignore_errors=True)

    return work


def _files_of(chosen: dict[str, tuple[SeriesInfo, list[Path]]]) -> list[UploadedFile]:
    return [
        UploadedFile(modality, path.name, path, path.stat().st_size)
        for modality, (_, paths) in chosen.items()
        for path in paths
    ]


def dicomweb_work(
    service: SegmentationService,
    client: PacsClient,
    model: LoadedModel,
    study_uid: str,
    series_uids: list[str],
    max_bytes: int,
) -> Work:
    async def work(ctx: JobContext) -> None:
        ctx.enter("query")
        available = await asyncio.to_thread(client.list_series, study_uid)
        if series_uids:
            unknown = sorted(set(series_uids) - {s.uid for s in available})
            if unknown:
                raise ApiError(
                    404, "series_not_found", f"study {study_uid} in the PACS has no series {', '.join(unknown)}"
                )
            available = [s for s in available if s.uid in series_uids]
        selection = select_series(available, list(model.card.modalities), named=bool(series_uids))
        ctx.set_outcome(selection=selection.describe())
        ctx.enter("retrieve")
        chosen = {}
        for modality, series in selection.chosen.items():
            paths = await asyncio.to_thread(
                client.retrieve_series, study_uid, series.uid, ctx.folder / "input" / modality, max_bytes
            )
            chosen[modality] = (series, paths)
        seg_path = await _segment(ctx, service, model, _files_of(chosen), PACS_FORMATS)
        shutil.rmtree(ctx.folder / "input", ignore_errors=True)
        ctx.enter("store")
        seg = await asyncio.to_thread(pydicom.dcmread, seg_path)
        await asyncio.to_thread(client.store, seg, study_uid)
        ctx.set_outcome(stored=_stored(seg, f"STOW-RS {client.url}"))

    return work


def _stored(seg: pydicom.Dataset, where: str) -> dict[str, str]:
    return {
        "to": where,
        "study_uid": str(seg.StudyInstanceUID),
        "series_uid": str(seg.SeriesInstanceUID),
        "sop_instance_uid": str(seg.SOPInstanceUID),
    }


def listener_work(
    service: SegmentationService,
    model: LoadedModel,
    study: ReceivedStudy,
    destination: Destination | None,
    pacs: PacsClient | None,
) -> Work:
    """``study.folder`` must already be inside the job's folder (the job owns it)."""

    async def work(ctx: JobContext) -> None:
        check_received(study)
        ctx.enter("select")
        described = await asyncio.to_thread(describe_files, sorted(study.folder.iterdir()))
        selection = select_series([info for info, _ in described.values()], list(model.card.modalities))
        ctx.set_outcome(selection=selection.describe())
        chosen = {m: described[s.uid] for m, s in selection.chosen.items()}
        seg_path = await _segment(ctx, service, model, _files_of(chosen), PACS_FORMATS)
        shutil.rmtree(study.folder, ignore_errors=True)
        ctx.enter("send")
        seg = await asyncio.to_thread(pydicom.dcmread, seg_path)
        if destination is not None:
            await asyncio.to_thread(send_c_store, seg, destination)
            where = f"C-STORE {destination.ae_title}@{destination.host}:{destination.port}"
        elif pacs is not None:
            await asyncio.to_thread(pacs.store, seg, str(seg.StudyInstanceUID))
            where = f"STOW-RS {pacs.url}"
        else:
            raise ApiError(503, "no_destination", "no SEG destination is configured (SEG_LISTENER_DESTINATION)")
        ctx.set_outcome(stored=_stored(seg, where))

    return work


def listener_handover(
    loop: asyncio.AbstractEventLoop,
    runner: JobRunner,
    service: SegmentationService,
    model_name: str,
    destination: Destination | None,
    pacs: PacsClient | None,
) -> Callable[[ReceivedStudy], None]:
    """The listener's ``on_study``: from its thread, start a ``listener`` job in the event loop.

    A study a PACS sent is never turned away for load (there is no client to answer 503 to): listener
    jobs skip the runner's admission check and wait for an inference slot like any other job. The
    listener's association limit and per-study size limit bound what can pile up.
    """

    def start(study: ReceivedStudy) -> None:
        source = {
            "study_uid": study.study_uid,
            "calling_aet": study.calling_aet,
            "series": len(study.series),
            "instances": study.instances,
            "bytes": study.bytes,
        }
        try:
            loaded: LoadedModel | None = service.resolve(model_name, None)
        except ApiError as exc:
            loaded, refusal = None, exc
        job = runner.store.create("listener", model_name, loaded.version if loaded else None, source)
        inside = runner.store.folder(job.id) / "input"
        shutil.move(str(study.folder), inside)
        study.folder = inside
        if loaded is None:

            async def refuse(ctx: JobContext) -> None:
                raise refusal

            runner.run(job, refuse)
        else:
            runner.run(job, listener_work(service, loaded, study, destination, pacs))

    return lambda study: loop.call_soon_threadsafe(start, study)
