"""Training configuration: one TOML file -> one validated :class:`TrainConfig`."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from segcore.card import Modality


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shards: Path = Field(description="directory written by training.convert")
    train: list[str] = Field(min_length=1, description="case ids trained on")
    validation: list[str] = Field(min_length=1, description="case ids never trained on; Dice per epoch")
    patch: int = Field(160, ge=16, description="square training crop (pixels), a multiple of 2**depth")
    tumour_fraction: float = Field(0.67, ge=0, le=1, description="share of crops centred on tumour")


class NetworkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    depth: int = Field(4, ge=1, le=6)
    base_filters: int = Field(16, ge=2)
    batch_norm: bool = True
    dropout: float = Field(0.0, ge=0, lt=1)


class OptimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(30, ge=1)
    steps_per_epoch: int = Field(150, ge=1)
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    min_learning_rate: float = Field(1e-5, ge=0, description="cosine decay floor")
    warmup_epochs: int = Field(0, ge=0, description="linear warm-up (large multi-node learning rates)")
    bce_weight: float = Field(1.0, ge=0)
    seed: int = 0


class ThreadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    intra_op: int | None = Field(None, ge=1, description="None: TensorFlow's default (all cores)")
    inter_op: int | None = Field(None, ge=1)
    omp_num_threads: int | None = Field(None, ge=1)
    kmp_blocktime: int | None = Field(None, ge=0)
    onednn: bool | None = None


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    dims: Literal[2] = 2
    modalities: list[Modality] = Field(min_length=1)
    labels: dict[int, str] = Field(default={1: "whole tumour"})
    target: str = "whole_tumour"
    orientation: str = "LPS"
    spacing_mm: list[float] = [1.0, 1.0, 1.0]
    threshold: float = 0.5
    data: DataConfig
    network: NetworkConfig = NetworkConfig()
    optim: OptimConfig = OptimConfig()
    threads: ThreadConfig = ThreadConfig()
    models_dir: Path = Path("models")
    run_dir: Path = Path("runs")
    datasets: list[str] = []
    licence_notes: list[str] = []

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        with Path(path).open("rb") as fh:
            raw = tomllib.load(fh)
        if "labels" in raw:  # TOML keys are strings
            raw["labels"] = {int(k): v for k, v in raw["labels"].items()}
        config = cls.model_validate(raw)
        return config
