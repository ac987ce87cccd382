"""Building the jobs runner, the PACS client and the DICOM listener from the settings, and starting and
stopping them with the application (its lifespan)."""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass

from app.config import Settings
from app.jobs.runner import JobRunner
from app.jobs.store import JobStore
from app.jobs.work import listener_handover
from app.pacs.dicomweb import PacsClient, PacsConfig
from app.pacs.listener import Destination, DicomListener, ListenerConfig
from app.service import SegmentationService

log = logging.getLogger("app.jobs")


@dataclass
class Integrations:
    """What the routes and the lifespan share: the runner, the PACS client (None without
    ``SEG_PACS_URL``) and the listener (None unless ``SEG_LISTENER_ENABLED``)."""

    runner: JobRunner
    pacs: PacsClient | None
    listener: DicomListener | None = None


def pacs_client(settings: Settings) -> PacsClient | None:
    if not settings.pacs_url:
        return None
    secret = settings.pacs_password.get_secret_value() if settings.pacs_password else None
    token = settings.pacs_token.get_secret_value() if settings.pacs_token else None
    return PacsClient(
        PacsConfig(
            url=settings.pacs_url,
            auth=settings.pacs_auth,
            username=settings.pacs_username,
            password=secret,
            token=token,
            timeout_seconds=settings.pacs_timeout_seconds,
            retries=settings.pacs_retries,
        )
    )


def destination(settings: Settings) -> Destination | None:
    """``SEG_LISTENER_DESTINATION`` (``AET@host:port``) as a C-STORE destination, or None."""
    if not settings.listener_destination:
        return None
    aet, _, address = settings.listener_destination.partition("@")
    host, _, port = address.rpartition(":")
    return Destination(
        aet, host, int(port), calling_aet=settings.listener_ae_title, timeout_seconds=settings.pacs_timeout_seconds
    )


def build(settings: Settings) -> Integrations:
    max_active = settings.jobs_max_active or settings.max_concurrent_inferences + settings.queue_size
    runner = JobRunner(
        JobStore(settings.jobs_dir),
        max_active=max_active,
        retention_seconds=settings.jobs_retention_hours * 3600,
        max_records=settings.jobs_max_records,
    )
    return Integrations(runner, pacs_client(settings))


async def start(integrations: Integrations, settings: Settings, service: SegmentationService) -> None:
    """Recover the job store, then open the DICOM listener if it is enabled."""
    await integrations.runner.start()
    if not settings.listener_enabled:
        return
    on_study = listener_handover(
        asyncio.get_running_loop(),
        integrations.runner,
        service,
        settings.listener_model or settings.default_model,
        destination(settings),
        integrations.pacs,
    )
    staging = settings.jobs_dir / "listener"
    # Instances received before a restart belong to studies that never went quiet here: the sender must
    # send them again (its C-STOREs were acknowledged, so say so in the log).
    if staging.exists() and any(staging.iterdir()):
        log.warning("dicom_listener_discarded_partial_studies count=%d", len(list(staging.iterdir())))
    shutil.rmtree(staging, ignore_errors=True)
    listener = DicomListener(
        ListenerConfig(
            ae_title=settings.listener_ae_title,
            host=settings.listener_host,
            port=settings.listener_port,
            allowed_calling_aets=tuple(settings.listener_calling_aets),
            max_associations=settings.listener_max_associations,
            quiet_seconds=settings.listener_quiet_seconds,
            max_study_bytes=int(settings.listener_max_study_mb * 2**20),
        ),
        staging,
        on_study,
    )
    await asyncio.to_thread(listener.start)
    integrations.listener = listener


async def stop(integrations: Integrations) -> None:
    if integrations.listener is not None:
        await asyncio.to_thread(integrations.listener.stop)
    await integrations.runner.stop()
    integrations.runner.store.close()
