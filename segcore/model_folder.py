"""The model folder: how published model versions are laid out on disk (DESIGN §2, TF Serving's layout).

``models/<name>/<version>/`` (``<version>`` a positive integer) holds a SavedModel whose
:data:`SIGNATURE_NAME` signature is what every backend calls, and ``assets.extra/`` with the model card
(:data:`CARD_RELPATH`) and TF Serving's warm-up requests (:data:`WARMUP_RELPATH`). A version is published
with :func:`publish_atomically`: built under a hidden name in the same parent and renamed into place, so a
poller (this service's registry, or TF Serving) sees no version or a complete one, never half of one.

Training's export, the service's registry, the tuner, the benchmarks and the tests all go through this
module, so they agree on what a version is.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

SIGNATURE_NAME = "serving_default"
"""The SavedModel signature every backend calls (TF Serving's default)."""

CARD_RELPATH = Path("assets.extra") / "model_card.json"
WARMUP_RELPATH = Path("assets.extra") / "tf_serving_warmup_requests"
SAVED_MODEL_FILE = "saved_model.pb"


def version_numbers(model_root: Path, *, complete: bool = True) -> list[int]:
    """Version numbers under ``model_root`` (``models/<name>``), ascending.

    A version is a directory named by a positive integer. With ``complete`` (what a server may load) it
    must also hold ``saved_model.pb`` and the card; without it, any numbered directory counts (what a
    new version number must not collide with). Hidden directories (``.tmp-2-ab12cd34``, a publication in
    progress) are not numbers and never match. A missing ``model_root`` has no versions.
    """
    root = Path(model_root)
    found = []
    for entry in root.iterdir() if root.is_dir() else []:
        if not (entry.is_dir() and entry.name.isdigit() and int(entry.name) > 0):
            continue
        if complete and not ((entry / SAVED_MODEL_FILE).is_file() and (entry / CARD_RELPATH).is_file()):
            continue
        found.append(int(entry.name))
    return sorted(found)


def latest_version_dir(model_root: Path) -> Path:
    """``model_root/<highest complete version>``: the version a server on the default policy would serve."""
    versions = version_numbers(model_root)
    if not versions:
        raise FileNotFoundError(f"no complete version (SavedModel and model card) under {model_root}")
    return Path(model_root) / str(versions[-1])


def next_version(model_root: Path) -> int:
    """One more than the highest numbered directory under ``model_root`` (complete or not), 1 if none."""
    return max(version_numbers(model_root, complete=False), default=0) + 1


def publish_atomically(final: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp)`` on a hidden sibling of ``final`` and rename it to ``final`` (atomic on POSIX).

    ``build`` writes the whole version into the directory it is given (it may create it). If it raises,
    the temporary directory is removed and nothing is published. Published versions are immutable: an
    existing ``final`` is refused with :class:`FileExistsError` before anything is built.
    """
    final = Path(final)
    if final.exists():
        raise FileExistsError(f"{final} already exists; published versions are immutable")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        build(tmp)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
