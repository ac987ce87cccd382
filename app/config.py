"""Service settings: environment variables prefixed ``SEG_`` (see the README's table)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.runners.backends import BACKENDS, BackendName


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEG_", extra="ignore")

    models_dir: Path = Field(Path("models"), description="TF Serving layout: <name>/<version>/")
    default_model: str = Field("brats-wt-flair", description="model used when a request names none")
    backend: BackendName = Field(
        "auto", description="; ".join(f"{b.name}: {b.description} ({b.extra} extra)" for b in BACKENDS.values())
    )
    openvino_precision: Literal["default", "f32", "bf16"] = Field(
        "default", description="SEG_BACKEND=openvino: OpenVINO's choice (bf16 on AVX-512 BF16 CPUs), or forced"
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "brats-serve",
        description="OpenVINO's converted models and compiled kernels (and the skull stripper's networks), "
        "keyed by content, so only a machine's first start converts; a volume in the image",
    )
    auto_repeats: int = Field(
        3, ge=1, le=20, description="SEG_BACKEND=auto: timed rounds per candidate (the fastest round counts)"
    )
    auto_margin: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="SEG_BACKEND=auto: a backend slower to start serves only if its warm-up pass is at least "
        "this fraction faster",
    )
    tfserving_target: str = Field("localhost:8500", description="host:port of TF Serving's gRPC API")
    tfserving_timeout_seconds: float = Field(30.0, gt=0, description="gRPC deadline of one Predict call (one tile)")
    tfserving_max_message_mb: int = Field(
        256, ge=4, description="gRPC send/receive limit; gRPC's 4 MB default is one 512x512x4 float32 tile"
    )
    poll_seconds: float = Field(30.0, ge=0, description="models_dir rescan period; 0 disables polling")
    keep_versions: int = Field(
        2, ge=1, description="newest loadable versions kept loaded per model (TF Serving's latest{num_versions})"
    )
    pinned_versions: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=dict,
        description="model -> version served instead of the latest, as 'name=3,other=1' or JSON",
    )
    promotion_tolerance: float = Field(
        0.0,
        ge=0,
        le=1,
        description="quality gate: a new version may be this much lower in validation Dice than the one it replaces",
    )
    max_upload_mb: float = Field(512.0, gt=0, description="request body limit, checked while streaming")
    max_voxels: int = Field(512 * 512 * 512, gt=0, description="refuse larger images before reading voxels")
    max_archive_members: int = Field(4096, gt=0, description="entries allowed in one uploaded zip")
    max_unzipped_mb: float = Field(2048.0, gt=0, description="total uncompressed size allowed per zip")
    max_compression_ratio: float = Field(200.0, gt=1, description="per-member expansion limit (zip bombs)")
    intra_op_threads: int | None = Field(None, ge=1, description="TensorFlow intra-op pool (None: all cores)")
    inter_op_threads: int | None = Field(None, ge=1, description="TensorFlow inter-op pool")
    tuning_file: Path | None = Field(
        None, description="JSON written by `python -m app.tune`; fills the thread settings not set explicitly"
    )
    max_concurrent_inferences: int = Field(1, ge=1, description="studies segmented at the same time")
    queue_size: int = Field(8, ge=0, description="requests admitted to wait for a slot; beyond, 503 before the upload")
    max_concurrent_uploads: int = Field(
        4, ge=1, description="request bodies received at the same time; beyond, 503 before the upload is read"
    )
    # 6 GiB: a 512x512x200 3D series with its skull plans 2.9 GB (measured peak 3.0 GB RSS, with a
    # 0.7 GB baseline) and two such series about 4 GB; with one slot a 16 GB host keeps its headroom.
    memory_budget_mb: float = Field(
        6144.0,
        gt=0,
        description="memory one request may need (planned from headers: input, preprocessing, model grid, "
        "outputs); above, 413",
    )
    brain_networks_dir: Path | None = Field(
        None,
        description="folder of the skull stripper's OpenVINO networks (the image bakes them in); unset: the "
        "per-machine cache that scripts/bootstrap.sh fills from the pinned deepbet wheel",
    )
    brain_backend: Literal["auto", "openvino", "torch"] = Field(
        "auto", description="runtime of the skull stripper's networks; auto: OpenVINO where installed, else torch"
    )
    min_modality_overlap: float = Field(
        0.5, ge=0, le=1, description="fraction of the first modality's brain every other modality must cover"
    )
    header_timeout_seconds: float = Field(
        10.0, gt=0, description="time for a request's headers to arrive after their first byte; then 408, closed"
    )
    body_timeout_seconds: float = Field(
        30.0, gt=0, description="longest pause while a request body is received; then 408"
    )
    max_header_kb: int = Field(16, ge=1, le=1024, description="request headers larger than this get 431")
    tmp_dir: Path | None = Field(None, description="where uploads are staged (default: system temp)")
    jobs_dir: Path = Field(Path("jobs"), description="job records (jobs.sqlite3) and results; keep it on a volume")
    jobs_max_active: int | None = Field(
        None, ge=1, description="jobs queued or running at once, then 503 (default: inference slots + queue size)"
    )
    jobs_retention_hours: float = Field(24.0, gt=0, description="finished jobs and their files are deleted after")
    jobs_max_records: int = Field(1000, ge=1, description="finished jobs kept at most (oldest deleted first)")
    pacs_url: str | None = Field(None, description="DICOMweb root of the PACS, e.g. http://pacs:8042/dicom-web")
    pacs_auth: Literal["none", "basic", "bearer"] = Field("none", description="how to authenticate to the PACS")
    pacs_username: str | None = Field(None, description="SEG_PACS_AUTH=basic: user name")
    pacs_password: SecretStr | None = Field(None, description="SEG_PACS_AUTH=basic: password")
    pacs_token: SecretStr | None = Field(None, description="SEG_PACS_AUTH=bearer: token")
    pacs_timeout_seconds: float = Field(30.0, gt=0, description="per HTTP request (and per DIMSE exchange)")
    pacs_retries: int = Field(2, ge=0, le=10, description="retries of refused connections and HTTP 429/503/504")
    listener_enabled: bool = Field(False, description="run the DICOM listener (C-STORE SCP)")
    listener_ae_title: str = Field("BRATS", min_length=1, max_length=16, description="the listener's AE title")
    listener_host: str = Field("127.0.0.1", description="address the listener binds")
    listener_port: int = Field(11112, ge=1, le=65535, description="DICOM port of the listener")
    listener_calling_aets: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="AE titles allowed to send, comma-separated (required when enabled)"
    )
    listener_max_associations: int = Field(4, ge=1, description="associations served at once")
    listener_quiet_seconds: float = Field(10.0, gt=0, description="a study is segmented after this long without data")
    listener_max_study_mb: float = Field(2048.0, gt=0, description="size limit per received study")
    listener_model: str | None = Field(None, description="model for received studies (default: SEG_DEFAULT_MODEL)")
    listener_destination: str | None = Field(
        None, description="AET@host:port the SEG is C-STOREd to; unset: STOW-RS to SEG_PACS_URL"
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_level: str = "INFO"

    @field_validator("pinned_versions", mode="before")
    @classmethod
    def _parse_pins(cls, value: object) -> object:
        """Accept ``name=3,other=1`` (what fits in a compose file) as well as JSON or a mapping."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if not text:
            return {}
        if text.startswith("{"):
            return json.loads(text)
        pins: dict[str, str] = {}
        for item in text.split(","):
            name, sep, version = item.partition("=")
            if not sep or not name.strip() or not version.strip():
                raise ValueError(f'SEG_PINNED_VERSIONS entries look like "name=3", not "{item.strip()}"')
            pins[name.strip()] = version.strip()
        return pins

    @field_validator("listener_calling_aets", mode="before")
    @classmethod
    def _split_aets(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("listener_destination")
    @classmethod
    def _check_destination(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        aet, at, address = value.strip().partition("@")
        host, colon, port = address.rpartition(":")
        if not (at and colon and aet and host and port.isdigit() and len(aet) <= 16):
            raise ValueError(f'SEG_LISTENER_DESTINATION looks like "AET@host:port", not "{value}"')
        return value.strip()

    @model_validator(mode="after")
    def _check_integrations(self) -> Settings:
        if self.listener_enabled and not self.listener_calling_aets:
            raise ValueError("SEG_LISTENER_ENABLED needs SEG_LISTENER_CALLING_AETS (the AE titles allowed to send)")
        if self.pacs_auth == "basic" and not self.pacs_username:
            raise ValueError("SEG_PACS_AUTH=basic needs SEG_PACS_USERNAME and SEG_PACS_PASSWORD")
        if self.pacs_auth == "bearer" and not self.pacs_token:
            raise ValueError("SEG_PACS_AUTH=bearer needs SEG_PACS_TOKEN")
        return self

    @field_validator("pinned_versions")
    @classmethod
    def _positive_pins(cls, value: dict[str, int]) -> dict[str, int]:
        bad = {name: v for name, v in value.items() if v < 1}
        if bad:
            raise ValueError(f"pinned versions must be positive integers, not {bad}")
        return value

    @model_validator(mode="after")
    def _apply_tuning_file(self) -> Settings:
        """Thread counts measured by ``python -m app.tune`` on this machine, unless set explicitly.

        A named but missing or malformed file is an error: a deployment that asked for tuned threads
        must not silently start with defaults.
        """
        if self.tuning_file is None:
            return self
        try:
            tuned = json.loads(Path(self.tuning_file).read_text())
            best = tuned["best"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f'SEG_TUNING_FILE "{self.tuning_file}" is not a tuning file written by app.tune: {exc}'
            ) from None
        for field_name in ("intra_op_threads", "inter_op_threads"):
            value = best.get(field_name)
            if getattr(self, field_name) is None and value is not None:
                if not isinstance(value, int) or value < 1:
                    raise ValueError(f'{field_name} in "{self.tuning_file}" must be a positive integer, not {value!r}')
                setattr(self, field_name, value)
        return self

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def memory_budget_bytes(self) -> int:
        return int(self.memory_budget_mb * 1024 * 1024)
