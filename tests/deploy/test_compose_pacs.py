"""The compose profile `pacs`: the service and Orthanc agree on AE titles, ports, host names and
credentials, and every SEG_* value is a valid setting (checked as data: no container engine runs here)."""

from __future__ import annotations

import json
import re

import yaml

from app.config import Settings
from tests.conftest import REPO

SERVICES = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
ORTHANC_CONFIG = json.loads((REPO / "deploy" / "orthanc" / "orthanc.json").read_text())
_DEFAULT = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def _env(service: str) -> dict[str, str]:
    return {k: _DEFAULT.sub(lambda m: m.group(2) or "", str(v)) for k, v in SERVICES[service]["environment"].items()}


def test_the_pacs_profile_wires_the_service_and_orthanc_both_ways():
    assert SERVICES["orthanc"]["profiles"] == SERVICES["app-pacs"]["profiles"] == ["pacs"]
    env = _env("app-pacs")
    fields = {f"SEG_{name.upper()}" for name in Settings.model_fields}
    assert sorted(set(env) - fields) == [] and "SEG_PACS_URL" in env
    settings = Settings(_env_file=None, **{k.removeprefix("SEG_").lower(): v for k, v in env.items()})
    assert settings.listener_enabled and settings.pacs_auth == "basic"
    # Service -> Orthanc: DICOMweb at the compose host name and Orthanc's HTTP port, with Orthanc's user.
    assert (
        settings.pacs_url
        == f"http://orthanc:{ORTHANC_CONFIG['HttpPort']}{ORTHANC_CONFIG['DicomWeb']['Root']}".rstrip("/")
    )
    orthanc_env = _env("orthanc")
    assert (settings.pacs_username, settings.pacs_password.get_secret_value()) == (
        orthanc_env["ORTHANC_USER"],
        orthanc_env["ORTHANC_PASSWORD"],
    )
    assert ORTHANC_CONFIG["RegisteredUsers"] == {"${ORTHANC_USER}": "${ORTHANC_PASSWORD}"}
    # SEGs go back by C-STORE to Orthanc's AE title and DICOM port; only Orthanc may send to the listener.
    assert settings.listener_destination == f"{ORTHANC_CONFIG['DicomAet']}@orthanc:{ORTHANC_CONFIG['DicomPort']}"
    assert settings.listener_calling_aets == [ORTHANC_CONFIG["DicomAet"]]
    # Orthanc -> service: its modality "brats" is the listener's AE title, compose host name and port.
    listener = [settings.listener_ae_title, "app-pacs", settings.listener_port]
    assert ORTHANC_CONFIG["DicomModalities"]["brats"] == listener
    assert str(settings.listener_port) in [str(p) for p in SERVICES["app-pacs"]["expose"]]
    assert settings.listener_host == "0.0.0.0"  # reachable from Orthanc's container
    # Job records outlive the container.
    assert f"jobs:{settings.jobs_dir}" in SERVICES["app-pacs"]["volumes"]
    assert "/var/lib/orthanc/db" in " ".join(SERVICES["orthanc"]["volumes"])
    dockerfile = (REPO / "deploy" / "orthanc" / "Dockerfile").read_text()
    assert "orthanc-dicomweb" in dockerfile and "USER orthanc" in dockerfile
