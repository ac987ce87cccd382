"""A real Orthanc PACS (Debian packages, installed by scripts/install_system_packages.sh through
scripts/run_orthanc.sh) on unusual loopback ports in a temporary directory, stopped by its PID; and one
real server wired to it over DICOMweb and DIMSE (its DICOM listener on)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest

from benchmarks.common import free_port
from tests.conftest import REPO, Server, need, start_server, stop_server
from tests.dicom_fixtures import mprage_files, zip_files

ORTHANC_AET = "ORTHANC_T"
LISTENER_AET = "BRATS_T"
# Orthanc asks for HTTP basic authentication, so the service's SEG_PACS_AUTH=basic path is what is tested.
USER, PASSWORD = "brats", "test-only-password"


@dataclass
class Orthanc:
    http_port: int
    dicom_port: int
    aet: str
    listener_port: int  # the port Orthanc's "brats_t" modality points at
    process: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return self.url + "/dicom-web"

    def client(self) -> httpx.Client:
        """Orthanc's own REST API (upload, send to a modality)."""
        return httpx.Client(base_url=self.url, timeout=60, auth=(USER, PASSWORD))

    def dicomweb_client(self):
        """A DICOMweb client of our own, to read back what the service stored, as a viewer would."""
        from dicomweb_client.api import DICOMwebClient
        from dicomweb_client.session_utils import create_session_from_user_pass

        return DICOMwebClient(self.dicomweb, session=create_session_from_user_pass(USER, PASSWORD))


def _install() -> tuple[bool, str]:
    done = subprocess.run(
        [str(REPO / "scripts" / "install_system_packages.sh"), "orthanc", "orthanc-dicomweb", "dicom3tools"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    return done.returncode == 0, done.stderr.strip()[-400:]


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    installed, why = _install()
    need(installed, f"Orthanc/dicom3tools could not be installed with apt-get: {why}")
    tmp = tmp_path_factory.mktemp("orthanc")
    http_port, dicom_port, listener_port = free_port(), free_port(), free_port()
    log_path = tmp / "orthanc.log"
    process = subprocess.Popen(
        [
            str(REPO / "scripts" / "run_orthanc.sh"),
            str(tmp),
            str(http_port),
            str(dicom_port),
            ORTHANC_AET,
            f"{LISTENER_AET}:127.0.0.1:{listener_port}",
        ],
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "ORTHANC_USER": USER, "ORTHANC_PASSWORD": PASSWORD},
    )  # the script execs Orthanc: this PID is Orthanc's own
    pacs = Orthanc(http_port, dicom_port, ORTHANC_AET, listener_port, process, log_path)
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            pytest.fail(f"Orthanc exited with {process.returncode}:\n{log_path.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(pacs.url + "/system", timeout=2, auth=(USER, PASSWORD)).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("Orthanc did not answer within 60 s")
        time.sleep(0.1)
    yield pacs
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@dataclass
class UploadedStudy:
    study_uid: str
    series_uid: str
    orthanc_study_id: str
    sop_uids: set[str]


@pytest.fixture(scope="session")
def mprage_in_orthanc(orthanc: Orthanc) -> UploadedStudy:
    """The real sagittal T1 MPRAGE series (176 instances) stored into Orthanc."""
    files = mprage_files()
    parents = set()
    with orthanc.client() as client:
        for path in files:
            r = client.post("/instances", content=path.read_bytes())
            r.raise_for_status()
            parents.add(r.json()["ParentStudy"])
    (study_id,) = parents
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    sops = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files}
    return UploadedStudy(str(header.StudyInstanceUID), str(header.SeriesInstanceUID), study_id, sops)


@pytest.fixture(scope="session")
def mprage_zip_bytes() -> bytes:
    return zip_files(mprage_files(), prefix="t1_MPRAGE/")


@pytest.fixture(scope="session")
def pacs_server(tmp_path_factory: pytest.TempPathFactory, orthanc: Orthanc) -> Iterator[Server]:
    """A real server whose PACS is the Orthanc above, with its DICOM listener on (only Orthanc may send,
    the SEG goes back to Orthanc by C-STORE). Models: ``bright-t1`` (the default, and the listener's)."""
    from tests.helpers import make_threshold_model

    tmp = tmp_path_factory.mktemp("pacs-server")
    models = tmp / "models"
    make_threshold_model(models, name="bright-t1", modality="t1")
    srv = start_server(
        tmp,
        {
            "SEG_MODELS_DIR": str(models),
            "SEG_DEFAULT_MODEL": "bright-t1",
            "SEG_MAX_UPLOAD_MB": "64",
            "SEG_JOBS_DIR": str(tmp / "jobs"),
            "SEG_PACS_URL": orthanc.dicomweb,
            "SEG_PACS_AUTH": "basic",
            "SEG_PACS_USERNAME": USER,
            "SEG_PACS_PASSWORD": PASSWORD,
            "SEG_PACS_TIMEOUT_SECONDS": "30",
            "SEG_LISTENER_ENABLED": "true",
            "SEG_LISTENER_AE_TITLE": LISTENER_AET,
            "SEG_LISTENER_PORT": str(orthanc.listener_port),
            "SEG_LISTENER_CALLING_AETS": ORTHANC_AET,
            "SEG_LISTENER_QUIET_SECONDS": "2",
            "SEG_LISTENER_DESTINATION": f"{ORTHANC_AET}@127.0.0.1:{orthanc.dicom_port}",
        },
    )
    yield srv
    stop_server(srv)


def wait_job(client: httpx.Client, location: str, timeout: float = 240.0) -> dict:
    """Poll a job until it is final (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        record = client.get(location).json()
        if record["state"] in ("succeeded", "failed", "cancelled"):
            return record
        if time.monotonic() > deadline:
            pytest.fail(f"job still {record['state']} after {timeout:.0f} s: {record}")
        time.sleep(0.2)


def dciodvfy_errors(path: Path) -> list[str]:
    """The error lines ``dciodvfy`` (Debian dicom3tools, the reference IOD validator) reports for a file."""
    tool = shutil.which("dciodvfy")
    need(tool is not None, "dciodvfy (Debian dicom3tools) is not installed")
    done = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]
