"""The PACS over DICOMweb (dicomweb-client): list a study's series (QIDO-RS), retrieve a series to
disk (WADO-RS), store a DICOM SEG into the study (STOW-RS).

Authentication (none, HTTP basic, bearer token), a per-request timeout and retries with back-off are
set on the ``requests`` session the client uses. Every failure becomes a :class:`PacsError` (an
``ApiError``) with a stable code and a sentence naming the PACS URL and what was attempted, so a job
that failed because of the PACS says so plainly: ``pacs_unreachable``, ``pacs_timeout``,
``pacs_unauthorized``, ``study_not_found``, ``pacs_refused`` (STOW-RS did not accept the SEG),
``pacs_error`` (any other HTTP status). Messages carry UIDs and counts, never patient values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import requests
from pydicom.dataset import Dataset
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from app.errors import ApiError
from app.inputs.series_selection import SeriesInfo

T = TypeVar("T")

# QIDO-RS attributes the series selection reads (DICOM keywords).
SERIES_FIELDS = ("Modality", "SeriesDescription", "SeriesNumber", "NumberOfSeriesRelatedInstances", "ProtocolName")
INSTANCE_FIELDS = ("ImageType", "ProtocolName")


class PacsError(ApiError):
    """The PACS could not do what the job needed; ``status`` is what a synchronous answer would use."""


@dataclass(frozen=True)
class PacsConfig:
    """Where the PACS is and how to talk to it. ``url`` is the DICOMweb root (e.g.
    ``http://pacs:8042/dicom-web``); ``token`` is a bearer token, ``username``/``password`` basic auth."""

    url: str
    auth: Literal["none", "basic", "bearer"] = "none"
    username: str | None = None
    password: str | None = None
    token: str | None = None
    timeout_seconds: float = 30.0
    retries: int = 2


def _session(config: PacsConfig) -> requests.Session:
    """A session that retries refused or dropped connections (urllib3, with back-off) and carries the
    credentials. Retries on HTTP 429/503/504 are dicomweb-client's own (see ``PacsClient``)."""
    session = requests.Session()
    retry = Retry(total=config.retries, connect=config.retries, read=0, status=0, other=0, backoff_factor=0.5)
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    if config.auth == "basic":
        if not config.username:
            raise ValueError("SEG_PACS_AUTH=basic needs SEG_PACS_USERNAME (and SEG_PACS_PASSWORD)")
        session.auth = (config.username, config.password or "")
    elif config.auth == "bearer":
        if not config.token:
            raise ValueError("SEG_PACS_AUTH=bearer needs SEG_PACS_TOKEN")
        session.headers["Authorization"] = f"Bearer {config.token}"
    return session


def _first(item: dict, keyword: str) -> object:
    """The first value of ``keyword`` in a DICOM JSON object (QIDO-RS answer), or None."""
    from pydicom.datadict import tag_for_keyword

    element = item.get(f"{tag_for_keyword(keyword):08X}", {})
    values = element.get("Value") or [None]
    return values[0]


def _values(item: dict, keyword: str) -> tuple[str, ...]:
    from pydicom.datadict import tag_for_keyword

    return tuple(str(v) for v in item.get(f"{tag_for_keyword(keyword):08X}", {}).get("Value") or ())


class PacsClient:
    """One PACS, as configured. Blocking (requests): call it from a worker thread."""

    def __init__(self, config: PacsConfig) -> None:
        from dicomweb_client.api import DICOMwebClient

        self.config = config
        self.url = config.url.rstrip("/")
        self._client = DICOMwebClient(self.url, session=_session(config), timeout=config.timeout_seconds)
        self._client.set_http_retry_params(
            retry=config.retries > 0, max_attempts=config.retries + 1, wait_exponential_multiplier=500
        )

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one DICOMweb exchange; turn transport and HTTP failures into :class:`PacsError`."""
        try:
            return fn()
        except requests.Timeout:
            raise PacsError(
                504,
                "pacs_timeout",
                f"the PACS at {self.url} did not answer within {self.config.timeout_seconds:g} s "
                f"while trying to {what} (SEG_PACS_TIMEOUT_SECONDS)",
            ) from None
        except requests.ConnectionError as exc:
            reason = type(getattr(exc.args[0], "reason", exc) if exc.args else exc).__name__
            raise PacsError(
                502,
                "pacs_unreachable",
                f"the PACS at {self.url} cannot be reached to {what} ({reason} after "
                f"{self.config.retries} retries); check SEG_PACS_URL and that the PACS is running",
            ) from None
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status in (401, 403):
                raise PacsError(
                    502,
                    "pacs_unauthorized",
                    f"the PACS at {self.url} refused our credentials (HTTP {status}) "
                    f"while trying to {what}; check SEG_PACS_AUTH and its credentials",
                ) from None
            if status == 404:
                raise PacsError(404, "study_not_found", f"the PACS at {self.url} has no such object: {what}") from None
            raise PacsError(
                502, "pacs_error", f"the PACS at {self.url} answered HTTP {status} while trying to {what}"
            ) from None

    def list_series(self, study_uid: str) -> list[SeriesInfo]:
        """The study's series (QIDO-RS), with ImageType and ProtocolName from one instance of each MR series."""
        what = f"list the series of study {study_uid}"
        found = self._call(
            what, lambda: self._client.search_for_series(study_instance_uid=study_uid, fields=list(SERIES_FIELDS))
        )
        if not found:
            raise PacsError(404, "study_not_found", f"the PACS at {self.url} has no study {study_uid}")
        series = []
        for item in found:
            uid = str(_first(item, "SeriesInstanceUID"))
            modality = str(_first(item, "Modality") or "")
            image_type: tuple[str, ...] = ()
            protocol = str(_first(item, "ProtocolName") or "")
            if modality == "MR":
                instance = self._call(
                    f"read an instance header of series {uid}",
                    lambda uid=uid: self._client.search_for_instances(
                        study_instance_uid=study_uid, series_instance_uid=uid, fields=list(INSTANCE_FIELDS), limit=1
                    ),
                )
                if instance:
                    image_type = _values(instance[0], "ImageType")
                    protocol = protocol or str(_first(instance[0], "ProtocolName") or "")
            number = _first(item, "SeriesNumber")
            series.append(
                SeriesInfo(
                    uid=uid,
                    modality=modality,
                    description=str(_first(item, "SeriesDescription") or ""),
                    protocol=protocol,
                    image_type=image_type,
                    instances=int(_first(item, "NumberOfSeriesRelatedInstances") or 0),
                    number=int(number) if number is not None else None,
                )
            )
        return series

    def retrieve_series(self, study_uid: str, series_uid: str, directory: Path, max_bytes: int) -> list[Path]:
        """Every instance of one series (WADO-RS), streamed to ``directory`` as DICOM files; refused with 413
        ``study_too_large`` past ``max_bytes`` of pixel data."""
        directory.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        total = 0

        def fetch() -> None:
            nonlocal total
            for ds in self._client.iter_series(study_instance_uid=study_uid, series_instance_uid=series_uid):
                total += len(getattr(ds, "PixelData", b"") or b"")
                if total > max_bytes:
                    raise PacsError(
                        413,
                        "study_too_large",
                        f"series {series_uid} exceeds {max_bytes / 2**20:.0f} MB of pixel data (SEG_MAX_UNZIPPED_MB)",
                    )
                path = directory / f"{len(paths):05d}.dcm"
                ds.save_as(path, enforce_file_format=True)
                paths.append(path)

        self._call(f"retrieve series {series_uid} of study {study_uid}", fetch)
        if not paths:
            raise PacsError(
                404, "study_not_found", f"the PACS at {self.url} returned no instance of series {series_uid}"
            )
        return paths

    def store(self, dataset: Dataset, study_uid: str) -> None:
        """Store one instance into ``study_uid`` (STOW-RS); 502 ``pacs_refused`` if the PACS did not accept it."""
        answer = self._call(
            f"store the DICOM SEG into study {study_uid}",
            lambda: self._client.store_instances(datasets=[dataset], study_instance_uid=study_uid),
        )
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            reason = failed[0].get("FailureReason", "unknown")
            raise PacsError(
                502, "pacs_refused", f"the PACS at {self.url} refused the DICOM SEG (STOW-RS failure reason {reason})"
            )
