"""Helpers shared by the benchmark scripts: where things are, a real server on loopback, statistics.

Benchmarks print a table and write JSON under ``benchmarks/results/``. They compare variants as ratios
measured in one run (the development machine is shared, so absolute numbers drift with its load; each
result file records ``uptime``'s load average at start and end).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED_DATA = Path(os.environ.get("SEG_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_MODEL = REPO / "models" / "brats-wt-flair"
# A validation case (never trained on) with a tumour, 240x240x155 at 1 mm; read in place, never copied.
DEFAULT_CASE = SHARED_DATA / "brats2018_deepvoxnet2" / "case_6" / "FLAIR.nii.gz"


def call_times(predict, batch: np.ndarray, reps: int, warm: int = 2) -> list[float]:
    """Seconds of each of ``reps`` calls ``predict(batch)`` on one fixed input, after ``warm`` untimed
    calls (first calls allocate and compile)."""
    for _ in range(warm):
        predict(batch)
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        predict(batch)
        times.append(time.perf_counter() - started)
    return times


def load_average() -> list[float]:
    """1/5/15-minute load average: how busy the shared machine was (2 cores here)."""
    return [round(x, 2) for x in os.getloadavg()]


def stats(seconds: list[float]) -> dict[str, float]:
    """Median, p90, min, max and count of a list of durations (seconds)."""
    a = np.asarray(seconds, dtype=float)
    return {
        "median_s": round(float(np.median(a)), 4),
        "p90_s": round(float(np.percentile(a, 90)), 4),
        "min_s": round(float(a.min()), 4),
        "max_s": round(float(a.max()), 4),
        "n": int(a.size),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_server(
    models_dir: Path,
    log_path: Path,
    env: dict[str, str] | None = None,
    ready_path: str = "/readyz",
    timeout: float = 180.0,
    cpus: set[int] | None = None,
) -> ServerProcess:
    """``python -m app`` on a free loopback port, waited on until ``ready_path`` answers 200.

    The one launcher of a real server for benchmarks and tests alike; ``env`` overrides the defaults.
    ``cpus`` pins the process to those CPUs before it starts (as a container's ``cpuset`` does), so
    TensorFlow sizes its default pools from them."""
    import httpx

    port = free_port()
    full_env = {
        **os.environ,
        "SEG_HOST": "127.0.0.1",
        "SEG_PORT": str(port),
        "SEG_MODELS_DIR": str(models_dir),
        "SEG_POLL_SECONDS": "0",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "SEG_LOG_LEVEL": "WARNING",
        **(env or {}),
    }
    log_path.parent.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=REPO,
        env=full_env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
        try:
            if httpx.get(server.url + ready_path, timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{log_path.read_text(errors='replace')}")
