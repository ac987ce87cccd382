"""Logging that cannot leak patient data: one format for every logger, tracebacks without messages.

An exception message may quote the value that broke it (pydicom: "Unable to convert '1970-11-12' to
'DA'"), and pydicom/highdicom warn with the offending value. So nothing from those sources is ever
formatted: exceptions are rendered as their type and frames (file, line, function) only, records from
pydicom, highdicom and captured warnings keep their origin but lose their text, and pydicom's read-time
validation (which warns with values) is switched off. DICOM UIDs anywhere in a line (URLs in the access
log, dicomweb_client's messages) are replaced by a short digest (:func:`digest`), the token our own lines
use for a study.
"""

from __future__ import annotations

import hashlib
import logging
import re
import traceback
from pathlib import Path
from types import TracebackType

_WITHHELD = ("pydicom", "highdicom", "py.warnings")
# A DICOM UID: dotted decimal components, at least six (an IPv4 address has four, a version three), as
# in /dicomweb/studies/1.2.840.113619.2.../segment or dicomweb_client's "search for series of study ...".
_UID = re.compile(r"(?<![\d.])\d+(?:\.\d+){5,}(?![\d.])")
FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def describe_exception(exc: BaseException, max_frames: int = 8) -> str:
    """``module.Type at file:line:function < ...`` for ``exc`` and its causes, innermost frame first.

    Deliberately never ``str(exc)``: the message is where DICOM values end up.
    """
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(parts) < 4:
        seen.add(id(current))
        parts.append(
            f"{type(current).__module__}.{type(current).__qualname__} at {_frames(current.__traceback__, max_frames)}"
        )
        current = current.__cause__ or current.__context__
    return " <- caused by ".join(parts)


def _frames(tb: TracebackType | None, max_frames: int) -> str:
    frames = traceback.extract_tb(tb)[-max_frames:]
    return " < ".join(f"{Path(f.filename).name}:{f.lineno}:{f.name}" for f in reversed(frames)) or "?"


class SafeFormatter(logging.Formatter):
    """The usual line format; an attached exception becomes one line of types and frames."""

    def formatException(self, ei) -> str:  # noqa: N802 (logging's name)
        _, exc, _ = ei
        return "exception: " + (describe_exception(exc) if exc is not None else "?")

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return ""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        # UIDs (study, series, instance) name a patient's visit: every line, uvicorn's access lines and
        # dicomweb_client's included, carries the digest our own lines use instead.
        text = _UID.sub(lambda m: f"uid:{digest(m.group(0))}", text)
        return text.replace("\n", " | ")  # one record, one line


def digest(uid: str) -> str:
    """A short stable token for a UID in log lines (UIDs can be traced back to a patient's visit)."""
    return hashlib.sha256(uid.encode()).hexdigest()[:10]


class WithholdDicomText(logging.Filter):
    """Replace the text of records from libraries that quote DICOM values (their origin stays)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(_WITHHELD):
            record.msg = "message withheld (it may quote DICOM values)"
            record.args = ()
            record.exc_info = None
        return True


def configure_logging(level: str) -> None:
    """Route every logger (ours, uvicorn's, libraries', warnings) through one safe handler."""
    import pydicom.config

    # Reading is already checked by our own validation; pydicom's warns with the offending values.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.captureWarnings(True)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_seg_safe", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler._seg_safe = True  # type: ignore[attr-defined]
    handler.setFormatter(SafeFormatter(FORMAT))
    handler.addFilter(WithholdDicomText())
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Our own loggers carry the level themselves: a library that lowers the root logger's level when it
    # is first used (seen: a model load under SEG_BACKEND=auto left the root at WARNING) must not
    # silence them.
    for name in ("app", "segcore"):
        logging.getLogger(name).setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
