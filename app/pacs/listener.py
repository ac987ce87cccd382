"""A DICOM listener (C-STORE SCP, pynetdicom) that collects studies sent to it, and the C-STORE SCU that
sends a DICOM SEG back.

Who may send: only associations whose calling AE title is in ``allowed_calling_aets`` are accepted
(pynetdicom rejects the others at association time); at most ``max_associations`` at once. What is kept:
instances are written as received (no re-encoding) under ``staging/<n>/``, one folder per study, with a
size limit per study (beyond it further instances get status 0xA700 "out of resources" and the study is
reported refused). When a study has received nothing for ``quiet_seconds`` it is handed to
``on_study`` as a :class:`ReceivedStudy` (from the listener's watcher thread) and forgotten here: the
callback owns the folder from then on.

Nothing patient-identifying is logged: pynetdicom's own logger is held at WARNING (at DEBUG it dumps
datasets), and our lines carry counts, AE titles and a short digest of the study UID only.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from app.errors import ApiError
from app.logs import digest
from app.pacs.dicomweb import PacsError

log = logging.getLogger("app.pacs.listener")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000


@dataclass
class ReceivedStudy:
    """One study as received: its folder of instances and counts. ``refused`` says why it must not be
    segmented (e.g. over the size limit), or is None."""

    study_uid: str
    folder: Path
    instances: int = 0
    bytes: int = 0
    series: dict[str, int] = field(default_factory=dict)  # series UID -> instances
    calling_aet: str = ""
    refused: str | None = None
    last: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class ListenerConfig:
    ae_title: str = "BRATS"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_calling_aets: tuple[str, ...] = ()
    max_associations: int = 4
    quiet_seconds: float = 10.0
    max_study_bytes: int = 2 * 2**30
    network_timeout_seconds: float = 30.0


class DicomListener:
    """The C-STORE SCP. ``start()`` binds and returns; ``stop()`` closes it and its watcher."""

    def __init__(self, config: ListenerConfig, staging: Path, on_study: Callable[[ReceivedStudy], None]) -> None:
        if not config.allowed_calling_aets:
            raise ValueError(
                "the DICOM listener needs at least one allowed calling AE title (SEG_LISTENER_CALLING_AETS)"
            )
        self.config = config
        self.staging = Path(staging)
        self.on_study = on_study
        self._studies: dict[str, ReceivedStudy] = {}
        self._lock = threading.Lock()
        self._counter = 0
        self._stop = threading.Event()
        self._server = None
        self._watcher: threading.Thread | None = None

    def start(self) -> None:
        from pynetdicom import AE, StoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        self.staging.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.config.ae_title)
        ae.supported_contexts = StoragePresentationContexts
        ae.add_supported_context(Verification)
        ae.require_calling_aet = list(self.config.allowed_calling_aets)
        ae.maximum_associations = self.config.max_associations
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = self.config.network_timeout_seconds
        self._server = ae.start_server(
            (self.config.host, self.config.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        self._watcher = threading.Thread(target=self._watch, name="dicom-listener-watch", daemon=True)
        self._watcher.start()
        log.info(
            "dicom_listener_started aet=%s port=%d calling_aets=%s quiet_seconds=%g",
            self.config.ae_title,
            self.config.port,
            ",".join(self.config.allowed_calling_aets),
            self.config.quiet_seconds,
        )

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        if self._watcher is not None:
            self._watcher.join(timeout=5)

    def _on_store(self, event) -> int:
        """One instance: write it as received; refuse it if its study is over the size limit."""
        try:
            ds = event.dataset
            study_uid, series_uid = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        except Exception:
            return STATUS_CANNOT_UNDERSTAND
        if not (_UID.match(study_uid) and _UID.match(series_uid)):
            return STATUS_CANNOT_UNDERSTAND
        encoded = event.encoded_dataset()
        with self._lock:
            study = self._studies.get(study_uid)
            if study is None:
                self._counter += 1
                folder = self.staging / f"{self._counter:06d}-{digest(study_uid)}"
                folder.mkdir(parents=True)
                study = ReceivedStudy(study_uid, folder, calling_aet=event.assoc.requestor.ae_title)
                self._studies[study_uid] = study
            study.last = time.monotonic()
            if study.refused or study.bytes + len(encoded) > self.config.max_study_bytes:
                study.refused = (
                    f"the study exceeded the listener's size limit of {self.config.max_study_bytes / 2**20:.0f} MB "
                    "(SEG_LISTENER_MAX_STUDY_MB)"
                )
                return STATUS_OUT_OF_RESOURCES
            path = study.folder / f"{study.instances:06d}.dcm"
            study.instances += 1
            study.bytes += len(encoded)
            study.series[series_uid] = study.series.get(series_uid, 0) + 1
        path.write_bytes(encoded)
        return STATUS_SUCCESS

    def _watch(self) -> None:
        """Hand over studies that have been quiet for ``quiet_seconds``."""
        tick = min(1.0, max(self.config.quiet_seconds / 4, 0.1))
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                ready = [s for s in self._studies.values() if now - s.last >= self.config.quiet_seconds]
                for study in ready:
                    del self._studies[study.study_uid]
            for study in ready:
                log.info(
                    "dicom_study_received study=%s series=%d instances=%d mb=%.1f calling_aet=%s refused=%s",
                    digest(study.study_uid),
                    len(study.series),
                    study.instances,
                    study.bytes / 2**20,
                    study.calling_aet,
                    "yes" if study.refused else "no",
                )
                try:
                    self.on_study(study)
                except Exception:  # the watcher must survive a failing hand-over
                    log.exception("dicom_study_handover_failed study=%s", digest(study.study_uid))


@dataclass(frozen=True)
class Destination:
    """Where SEGs go by C-STORE: the peer's AE title, host and port, and our calling AE title."""

    ae_title: str
    host: str
    port: int
    calling_aet: str = "BRATS"
    timeout_seconds: float = 30.0


def send_c_store(dataset: Dataset, destination: Destination) -> None:
    """Send one instance with C-STORE; :class:`PacsError` if the peer cannot be reached or refuses it."""
    from pynetdicom import AE

    ae = AE(ae_title=destination.calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = destination.timeout_seconds
    transfer = str(dataset.file_meta.TransferSyntaxUID)
    ae.add_requested_context(str(dataset.SOPClassUID), [transfer])
    peer = f"{destination.ae_title}@{destination.host}:{destination.port}"
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise PacsError(
            502,
            "destination_unreachable",
            f"the DICOM destination {peer} did not accept an association from {destination.calling_aet} "
            "(SEG_LISTENER_DESTINATION)",
        )
    try:
        status = assoc.send_c_store(dataset)
    finally:
        assoc.release()
    code = int(status.Status) if status and "Status" in status else None
    if code is None:
        raise PacsError(502, "destination_unreachable", f"the DICOM destination {peer} did not answer the C-STORE")
    if code not in (0x0000, 0xB000, 0xB007, 0xB006):
        raise PacsError(
            502, "destination_refused", f"the DICOM destination {peer} refused the SEG (status 0x{code:04X})"
        )


def check_received(study: ReceivedStudy) -> None:
    """Turn a refused study into the job's error."""
    if study.refused:
        raise ApiError(413, "study_too_large", study.refused)
