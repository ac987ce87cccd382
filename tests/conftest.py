"""Shared fixtures: paths to real data (read in place, never copied), the bundled model, and a real
uvicorn server on a loopback port."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SEG_SHARED_DATA", REPO.parent / "shared" / "data"))
MODELS_DIR = REPO / "models"
BUNDLED_MODEL = "brats-wt-flair"
# Readiness deadline of a test server: loading and warming models takes ~10 s on a quiet 2-core machine and
# several minutes when the machine is shared; a timeout here says nothing about the service, so it is generous.
SERVER_START_TIMEOUT = float(os.environ.get("SEG_TEST_SERVER_START_TIMEOUT", "600"))


STRICT = os.environ.get("SEG_TEST_STRICT") == "1"
"""Set by ``make test`` under CI: a missing component (real data, OpenVINO, Horovod, Orthanc, Chromium, a
container engine) fails the run instead of skipping, so a green CI never hides an untested promise."""


def need(available: bool, reason: str) -> None:
    """Skip the calling test with ``reason`` when ``available`` is false, or fail it under
    ``SEG_TEST_STRICT=1``. Every test that depends on an optional component goes through here."""
    if available:
        return
    if STRICT:
        pytest.fail(f"required under SEG_TEST_STRICT=1: {reason}", pytrace=False)
    pytest.skip(reason)


def shared_case(*parts: str) -> Path:
    """A file or folder under ../shared/data, or skip the test with the reason (fail under strict)."""
    path = SHARED_DATA.joinpath(*parts)
    need(path.exists(), f"real data not available: {path} (../shared/data is read in place, never copied)")
    return path


def bundled_version_dir() -> Path:
    from segcore.model_folder import latest_version_dir

    try:
        return latest_version_dir(MODELS_DIR / BUNDLED_MODEL)
    except FileNotFoundError as exc:
        pytest.fail(f"the bundled model is missing from the repository: {exc}")


@dataclass
class Server:
    url: str
    tmp_dir: Path
    log_path: Path
    process: subprocess.Popen

    def client(self, timeout: float = 900.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(tmp: Path, env_overrides: dict[str, str] | None = None, wait_ready: bool = True) -> Server:
    """``python -m app`` in a subprocess on a free loopback port, as a user would start it (through the
    benchmarks' launcher), with a private staging directory and test-sized limits."""
    from benchmarks.common import start_server as launch

    staging = tmp / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    env = {
        "SEG_MODELS_DIR": str(MODELS_DIR),
        "SEG_TMP_DIR": str(staging),
        "SEG_MAX_UPLOAD_MB": "16",
        "SEG_INTRA_OP_THREADS": "2",
        "SEG_INTER_OP_THREADS": "1",
        "SEG_LOG_LEVEL": "INFO",  # tests read the log (e.g. that no patient data is in it)
        "SEG_JOBS_DIR": str(tmp / "jobs"),  # job records and results stay in the test's temporary folder
        **(env_overrides or {}),
    }
    launched = launch(
        Path(env["SEG_MODELS_DIR"]),
        tmp / "server.log",
        env,
        "/readyz" if wait_ready else "/healthz",
        timeout=SERVER_START_TIMEOUT,
    )
    return Server(launched.url, staging, launched.log_path, launched.process)


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server for the app tests: the bundled model plus ``bright-t1``, a tiny real SavedModel
    that marks bright T1 voxels (for geometry checks on the real T1 DICOM series); 16 MB upload limit."""
    from tests.helpers import make_threshold_model

    tmp = tmp_path_factory.mktemp("server")
    models = tmp / "models"
    models.mkdir()
    (models / BUNDLED_MODEL).symlink_to(MODELS_DIR / BUNDLED_MODEL, target_is_directory=True)
    make_threshold_model(models, name="bright-t1", modality="t1")
    srv = start_server(
        tmp, {"SEG_MODELS_DIR": str(models), "SEG_MAX_ARCHIVE_MEMBERS": "500", "SEG_MAX_UNZIPPED_MB": "64"}
    )
    yield srv
    stop_server(srv)


def wait_empty(directory: Path, timeout: float = 30.0) -> list[str]:
    """Entries left in ``directory`` after ``timeout`` (responses clean up after they are sent)."""
    deadline = time.monotonic() + timeout
    while True:
        left = sorted(os.listdir(directory))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@dataclass
class Gated:
    """A real server whose ``gated`` model the test holds and releases (see
    :func:`tests.helpers.make_gated_model`): one inference slot, a waiting room of one, DEBUG logs."""

    server: Server
    gate: Path
    poison: Path

    def hold(self) -> None:
        self.gate.unlink(missing_ok=True)

    def release(self) -> None:
        self.gate.touch()

    def metric(self, name: str) -> float:
        import re

        text = httpx.get(self.server.url + "/metrics", timeout=10).text
        match = re.search(rf"^{name} (\S+)$", text, flags=re.M)
        assert match, f"{name} missing from /metrics"
        return float(match.group(1))

    def wait_metric(self, name: str, value: float, timeout: float = 60.0) -> None:
        """Wait (bounded) until the gauge ``name`` reads ``value``: a state, not a duration."""
        deadline = time.monotonic() + timeout
        while self.metric(name) != value:
            assert time.monotonic() < deadline, f"{name} never reached {value}:\n{self.server.log()[-3000:]}"
            time.sleep(0.05)


@pytest.fixture(scope="session")
def gated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gated]:
    from tests.helpers import make_gated_model, make_threshold_model

    tmp = tmp_path_factory.mktemp("gated")
    models = tmp / "models"
    gate, poison = tmp / "gate-open", tmp / "poison"
    gate.touch()  # open while the model loads and warms
    make_gated_model(models, gate, poison, name="gated")
    make_threshold_model(models, name="bright", modality="flair")
    srv = start_server(
        tmp,
        {
            "SEG_MODELS_DIR": str(models),
            # TensorFlow, not auto: the gated model waits on a file and fails on a poison file through
            # TensorFlow ops that OpenVINO's conversion cannot keep (auto may pick OpenVINO, which then
            # answers at once with an empty mask).
            "SEG_BACKEND": "inprocess",
            "SEG_DEFAULT_MODEL": "gated",
            "SEG_MAX_CONCURRENT_INFERENCES": "1",
            "SEG_QUEUE_SIZE": "1",
            "SEG_LOG_LEVEL": "DEBUG",  # the no-PHI promise holds at every level
            "SEG_INTRA_OP_THREADS": "1",
        },
    )
    yield Gated(srv, gate, poison)
    gate.touch()
    poison.unlink(missing_ok=True)
    stop_server(srv)
