"""Job records in an embedded SQLite database, and the folder of files each job owns.

A job is one segmentation run asynchronously: its record (state, stages with their times, the error or
the available result formats) lives in ``<jobs_dir>/jobs.sqlite3`` and its files in ``<jobs_dir>/<id>/``.
Both survive a restart of the service: finished results stay retrievable, and jobs that were queued or
running when the process stopped are marked failed (``interrupted``) by :meth:`JobStore.recover` at the
next start, because the work they had done lived in that process and is gone.

SQLite (stdlib ``sqlite3``) is enough: one writer (this process), tiny rows, and WAL mode so a reader
never waits for a writer. Every call opens no transaction longer than one statement batch, under a lock,
so the store can be used from the event loop and from worker threads alike.

Nothing patient-identifying is stored in a record: the source is described by UIDs and counts only.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

State = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ACTIVE_STATES: tuple[State, ...] = ("queued", "running")
FINAL_STATES: tuple[State, ...] = ("succeeded", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    model TEXT,
    version INTEGER,
    source TEXT NOT NULL DEFAULT '{}',
    stages TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    results TEXT NOT NULL DEFAULT '{}',
    outcome TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created);
"""

INTERRUPTED = {
    "error": "interrupted",
    "detail": "the service stopped while this job was queued or running; submit it again",
}


@dataclass
class Job:
    """One job's record. Times are Unix seconds (UTC); stage times in milliseconds.

    ``stages`` is the progress: ``[{"name", "state": running|done, "started", "ms"}]`` in the order they ran.
    ``results`` maps a format (``nifti``, ``json``, ``png``, ``dicom-seg``) to a file name in the job folder.
    ``outcome`` holds what the job did outside (e.g. the SEG's UIDs as stored into the PACS).
    """

    id: str
    kind: str
    state: State
    created: float
    started: float | None = None
    finished: float | None = None
    model: str | None = None
    version: int | None = None
    source: dict[str, Any] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, str] | None = None
    results: dict[str, str] = field(default_factory=dict)
    outcome: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        return cls(
            id=row["id"],
            kind=row["kind"],
            state=row["state"],
            created=row["created"],
            started=row["started"],
            finished=row["finished"],
            model=row["model"],
            version=row["version"],
            source=json.loads(row["source"]),
            stages=json.loads(row["stages"]),
            error=json.loads(row["error"]) if row["error"] else None,
            results=json.loads(row["results"]),
            outcome=json.loads(row["outcome"]),
        )

    def describe(self) -> dict[str, Any]:
        """The JSON a client sees (``GET /jobs/{id}``)."""
        end = self.finished or time.time()
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "model": None if self.model is None else {"name": self.model, "version": self.version},
            "source": self.source,
            "stage": next((s["name"] for s in reversed(self.stages) if s["state"] == "running"), None),
            "stages": self.stages,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "timings_ms": {
                "waiting": round(((self.started or end) - self.created) * 1000, 1),
                "running": round((end - self.started) * 1000, 1) if self.started else None,
                **{s["name"]: s["ms"] for s in self.stages if s.get("ms") is not None},
            },
            "error": self.error,
            "formats": sorted(self.results),
            "outcome": self.outcome,
        }


class JobStore:
    """The jobs database and the jobs' folders under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.root / "jobs.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def folder(self, job_id: str) -> Path:
        """The job's own folder (uploads, retrieved instances, results); ids are hex UUIDs, never paths."""
        return self.root / job_id

    def create(self, kind: str, model: str | None, version: int | None, source: dict[str, Any]) -> Job:
        job = Job(uuid.uuid4().hex, kind, "queued", time.time(), model=model, version=version, source=source)
        with self._lock:  # the row first: a folder without a row would look like debris to clean()
            self._db.execute(
                "INSERT INTO jobs (id, kind, state, created, model, version, source) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job.id, kind, job.state, job.created, model, version, json.dumps(source)),
            )
        self.folder(job.id).mkdir()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_row(row) if row else None

    def list(self, limit: int = 100, kind: str | None = None) -> list[Job]:
        """The newest ``limit`` jobs, newest first, optionally of one ``kind``."""
        query, args = "SELECT * FROM jobs", []
        if kind is not None:
            query, args = query + " WHERE kind = ?", [kind]
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created DESC LIMIT ?", [*args, limit]).fetchall()
        return [Job.from_row(r) for r in rows]

    def count_active(self) -> int:
        with self._lock:
            (n,) = self._db.execute(
                f"SELECT COUNT(*) FROM jobs WHERE state IN ({','.join('?' * len(ACTIVE_STATES))})", ACTIVE_STATES
            ).fetchone()
        return int(n)

    def update(self, job_id: str, **values: Any) -> None:
        """Set columns; dict/list values are stored as JSON."""
        if not values:
            return
        encoded = {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in values.items()}
        assignments = ", ".join(f"{k} = ?" for k in encoded)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", [*encoded.values(), job_id])

    def finish(self, job_id: str, state: State, error: dict[str, str] | None = None) -> bool:
        """Move an active job to a final state; False (and no change) if it was already final, so a
        cancellation and a completion racing each other cannot both win."""
        with self._lock:
            cursor = self._db.execute(
                f"UPDATE jobs SET state = ?, finished = ?, error = ? WHERE id = ? "
                f"AND state IN ({','.join('?' * len(ACTIVE_STATES))})",
                (state, time.time(), json.dumps(error) if error else None, job_id, *ACTIVE_STATES),
            )
        return cursor.rowcount == 1

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def recover(self) -> int:
        """At start-up: jobs left queued or running by a previous process are failed (``interrupted``)
        and their partial files removed. Returns how many."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT id FROM jobs WHERE state IN ({','.join('?' * len(ACTIVE_STATES))})", ACTIVE_STATES
            ).fetchall()
        for row in rows:
            self.finish(row["id"], "failed", INTERRUPTED)
            self.update(row["id"], results={})
            shutil.rmtree(self.folder(row["id"]), ignore_errors=True)
        return len(rows)

    def clean(self, max_age_seconds: float, max_records: int) -> int:
        """Retention: delete finished jobs older than ``max_age_seconds``, then the oldest finished ones
        beyond ``max_records`` in all, with their folders. Folders without a record (left by a crash
        during a delete) go too. Returns the number of records deleted."""
        final = ",".join("?" * len(FINAL_STATES))
        with self._lock:
            old = self._db.execute(
                f"SELECT id FROM jobs WHERE state IN ({final}) AND created < ?",
                (*FINAL_STATES, time.time() - max_age_seconds),
            ).fetchall()
            (total,) = self._db.execute("SELECT COUNT(*) FROM jobs").fetchone()
            excess = max(0, total - len(old) - max_records)
            extra = self._db.execute(
                f"SELECT id FROM jobs WHERE state IN ({final}) AND created >= ? ORDER BY created LIMIT ?",
                (*FINAL_STATES, time.time() - max_age_seconds, excess),
            ).fetchall()
        doomed = [r["id"] for r in [*old, *extra]]
        for job_id in doomed:
            self.delete(job_id)
        with self._lock:
            known = {r["id"] for r in self._db.execute("SELECT id FROM jobs").fetchall()}
        for entry in self.root.iterdir():
            if entry.is_dir() and entry.name not in known and len(entry.name) == 32:
                shutil.rmtree(entry, ignore_errors=True)
        return len(doomed)
