"""Per-request staging directories, named after the process that owns them.

A request's upload is streamed into ``<tmp>/seg-<pid>-<random>/`` and the directory is removed when the
answer has been sent, refused or abandoned. A process killed mid-request (the OOM killer, a container
stop) cannot clean up, so at start the server removes every ``seg-<pid>-*`` directory whose owner is
no longer running, or is itself (a restarted container reuses its pid). Directories of other live
servers sharing the same temporary directory are left alone.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("app.staging")

_NAME = re.compile(r"^seg-(\d+)-")


def staging_root(tmp_dir: Path | None) -> Path:
    return Path(tmp_dir) if tmp_dir is not None else Path(tempfile.gettempdir())


def new_staging_dir(tmp_dir: Path | None) -> Path:
    """A fresh private directory for one request (mode 0700)."""
    return Path(tempfile.mkdtemp(prefix=f"seg-{os.getpid()}-", dir=staging_root(tmp_dir)))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours, from before a restart: nothing of this process is using it yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OverflowError:
        return False
    return True


def remove_stale(tmp_dir: Path | None) -> int:
    """Remove staging directories whose owning process is gone; returns how many were removed."""
    root = staging_root(tmp_dir)
    removed = 0
    for entry in root.iterdir() if root.is_dir() else []:
        match = _NAME.match(entry.name)
        if match and entry.is_dir() and not entry.is_symlink() and not _alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    if removed:
        log.info("stale_staging_removed count=%d dir=%s", removed, root)
    return removed
