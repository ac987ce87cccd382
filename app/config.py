"""Service settings: environment variables prefixed ``SEG_`` (see the README's table)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEG_", extra="ignore")

    models_dir: Path = Field(Path("models"), description="TF Serving layout: <name>/<version>/")
    default_model: str = Field("brats-wt-flair", description="model used when a request names none")
    backend: Literal["inprocess", "tfserving"] = "inprocess"
    tfserving_target: str = Field("localhost:8500", description="host:port of TF Serving's gRPC API")
    poll_seconds: float = Field(30.0, ge=0, description="models_dir rescan period; 0 disables polling")
    max_upload_mb: float = Field(512.0, gt=0, description="request body limit, checked while streaming")
    max_voxels: int = Field(512 * 512 * 512, gt=0, description="refuse larger images before reading voxels")
    max_archive_members: int = Field(4096, gt=0, description="entries allowed in one uploaded zip")
    max_unzipped_mb: float = Field(2048.0, gt=0, description="total uncompressed size allowed per zip")
    max_compression_ratio: float = Field(200.0, gt=1, description="per-member expansion limit (zip bombs)")
    intra_op_threads: int | None = Field(None, ge=1, description="TensorFlow intra-op pool (None: all cores)")
    inter_op_threads: int | None = Field(None, ge=1, description="TensorFlow inter-op pool")
    max_concurrent_inferences: int = Field(1, ge=1, description="studies segmented at the same time")
    queue_size: int = Field(8, ge=0, description="requests allowed to wait for a slot; then 503")
    tmp_dir: Path | None = Field(None, description="where uploads are staged (default: system temp)")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_level: str = "INFO"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
