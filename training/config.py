"""Training configuration: one TOML file -> one validated :class:`TrainConfig`."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from segcore.card import Modality


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shards: Path = Field(description="directory written by training.convert")
    train: list[str] = Field(min_length=1, description="case ids trained on")
    validation: list[str] = Field(min_length=1, description="case ids never trained on; Dice per epoch")
    patch: int = Field(
        160, ge=16, description="training crop edge (pixels; 3D: voxels of a cube), a multiple of 2**depth"
    )
    tumour_fraction: float = Field(0.67, ge=0, le=1, description="share of crops centred on tumour")


class NetworkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    depth: int = Field(4, ge=1, le=6)
    base_filters: int = Field(16, ge=2)
    batch_norm: bool = True
    normalization: Literal["batch", "instance", "none"] | None = Field(
        None, description="overrides batch_norm; instance norm does not depend on the batch size"
    )
    dropout: float = Field(0.0, ge=0, lt=1)

    @property
    def norm(self) -> str:
        return self.normalization or ("batch" if self.batch_norm else "none")


class InferenceConfig(BaseModel):
    """Tiling written into the exported card (3D sliding window); also used for per-epoch validation."""

    model_config = ConfigDict(extra="forbid")

    patch: int | None = Field(None, ge=8, description="3D inference patch edge (default: data.patch)")
    overlap: float = Field(0.5, ge=0, lt=1)
    mirror: bool = False


class OptimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(30, ge=1)
    steps_per_epoch: int = Field(150, ge=1)
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    min_learning_rate: float = Field(1e-5, ge=0, description="cosine decay floor")
    warmup_epochs: int = Field(0, ge=0, description="linear warm-up (large multi-node learning rates)")
    bce_weight: float = Field(1.0, ge=0, description="weight of the (binary or categorical) cross-entropy term")
    validate_every: int = Field(1, ge=1, description="epochs between validations (the last epoch always is)")
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
    dims: Literal[2, 3] = 2
    modalities: list[Modality] = Field(min_length=1)
    labels: dict[int, str] = Field(default={1: "whole tumour"})
    activation: Literal["sigmoid", "softmax"] = Field(
        "sigmoid", description="sigmoid: one channel per label; softmax: background + one per label"
    )
    target: str = "whole_tumour"
    orientation: str = "LPS"
    spacing_mm: list[float] = [1.0, 1.0, 1.0]
    threshold: float = 0.5
    data: DataConfig
    network: NetworkConfig = NetworkConfig()
    optim: OptimConfig = OptimConfig()
    inference: InferenceConfig = InferenceConfig()
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

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        divisor = 2**self.network.depth
        for what, size in (("data.patch", self.data.patch), ("inference.patch", self.inference.patch)):
            if size is not None and size % divisor:
                raise ValueError(f"{what} {size} is not a multiple of 2**depth = {divisor}")
        if self.activation == "sigmoid" and len(self.labels) != 1:
            raise ValueError(f"a sigmoid model has one label; use activation = softmax for {self.labels}")
        overlap = set(self.data.train) & set(self.data.validation)
        if overlap:
            raise ValueError(f"cases in both train and validation: {sorted(overlap)}")
        return self
