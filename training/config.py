"""Training configuration: one TOML file -> one validated :class:`TrainConfig`.

The fields a model card will carry (name, orientation, spacing, labels, threshold, normalization) use the
card's own types (``segcore.card``), so a config its card would refuse is refused when the TOML loads, not
after the last epoch. The config is also the one source of the training grid: ``training.convert --config``
makes shards for it and records :meth:`TrainConfig.shard_spec`, which training checks before it starts.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from segcore.card import (
    Activation,
    Labels,
    Modality,
    ModelName,
    Normalization,
    Orientation,
    Preprocessing,
    Spacing,
    Threshold,
)
from segcore.preprocess import PreprocessSpec
from training.augment import AugmentConfig


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set one value of a parsed TOML config in place: ``item`` is ``dotted.key=<TOML value>``, e.g.
    ``augmentation.enabled=false``, ``optim.learning_rate=1e-3`` or ``data.validation=["case_6"]``
    (strings quoted, as in the file). Missing tables are created; unknown keys are then refused by the
    config's own validation (every table forbids extra keys). Raises ValueError on a malformed item."""
    key, sep, value = item.partition("=")
    path = [part.strip() for part in key.split(".")]
    if not sep or not all(path):
        raise ValueError(f"override {item!r}: expected dotted.key=value, e.g. augmentation.enabled=false")
    try:
        parsed = tomllib.loads(f"value = {value.strip()}")["value"]
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"override {item!r}: {value.strip()!r} is not a TOML value (quote strings)") from error
    table = raw
    for part in path[:-1]:
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            raise ValueError(f"override {item!r}: {part!r} is a value, not a table")
    table[path[-1]] = parsed


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


class CalibrationConfig(BaseModel):
    """``[calibration]``: after training, the threshold (sigmoid models) and the small-component removal
    are chosen on the validation cases (``training.calibrate``) among these candidates, and written into
    the card. Off: the card keeps ``threshold`` and removes nothing (the v1 behaviour)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    thresholds: list[float] = Field(
        default=[0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8],
        description="sigmoid thresholds tried (softmax models take the arg-max)",
    )
    min_component_ml: list[float] = Field(
        default=[0.0, 0.1, 0.25, 0.5, 1.0, 2.0], description="small-component removal sizes tried (mL)"
    )


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

    name: ModelName
    description: str = ""
    dims: Literal[2, 3] = 2
    modalities: list[Modality] = Field(min_length=1)
    labels: Labels = Field(default={1: "whole tumour"})
    activation: Activation = Field(
        "sigmoid", description="sigmoid: one channel per label; softmax: background + one per label"
    )
    target: str = "whole_tumour"
    orientation: Orientation = "LPS"
    spacing_mm: Spacing = [1.0, 1.0, 1.0]
    threshold: Threshold = 0.5
    normalization: Normalization = Normalization()
    # What the input stage does before the grid (skull stripping, registration, N4), for conversion and,
    # through the card, for serving. The bundled models' BraTS inputs were already stripped and aligned.
    preprocessing: Preprocessing = Preprocessing()
    data: DataConfig
    network: NetworkConfig = NetworkConfig()
    optim: OptimConfig = OptimConfig()
    inference: InferenceConfig = InferenceConfig()
    augmentation: AugmentConfig = AugmentConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    threads: ThreadConfig = ThreadConfig()
    init_from: Path | None = Field(
        None,
        description="warm start: a published version (models/<name>/<v>) of the same network, whose variables "
        "(matched by name and shape) replace the random initial weights",
    )
    models_dir: Path = Path("models")
    run_dir: Path = Path("runs")
    datasets: list[str] = []
    licence_notes: list[str] = []

    @classmethod
    def load(cls, path: Path, overrides: Sequence[str] = ()) -> TrainConfig:
        """The config in ``path`` with ``overrides`` applied before validation (see :func:`apply_override`),
        so an experiment that flips one setting needs no copy of the file and is validated like it."""
        with Path(path).open("rb") as fh:
            raw = tomllib.load(fh)
        for item in overrides:
            apply_override(raw, item)
        if "labels" in raw:  # TOML keys are strings
            raw["labels"] = {int(k): v for k, v in raw["labels"].items()}
        config = cls.model_validate(raw)
        return config

    @property
    def divisor(self) -> int:
        """The U-Net's total downsampling factor: spatial sizes must be multiples of it."""
        return 2**self.network.depth

    @property
    def output_channels(self) -> int:
        """Network outputs: one per label (sigmoid), or background + one per label (softmax)."""
        return len(self.labels) + (1 if self.activation == "softmax" else 0)

    @property
    def inference_patch(self) -> int:
        """3D sliding-window patch edge used for validation and written into the card."""
        return self.inference.patch or self.data.patch

    def preprocess_spec(self) -> PreprocessSpec:
        """What ``segcore.preprocess`` does to this model's inputs (the card will say the same)."""
        return PreprocessSpec(
            modalities=self.modalities,
            orientation=self.orientation,
            spacing_mm=self.spacing_mm,
            normalization=self.normalization,
            preprocessing=self.preprocessing,
        )

    def shard_spec(self) -> dict:
        """What shards must have been made with: the preprocessing spec and the label target. Written into
        the shards' ``index.json`` by ``training.convert`` and compared by ``training.data.check_shards``."""
        return {**self.preprocess_spec().model_dump(mode="json"), "target": self.target}

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        divisor = self.divisor
        for what, size in (("data.patch", self.data.patch), ("inference.patch", self.inference.patch)):
            if size is not None and size % divisor:
                raise ValueError(f"{what} {size} is not a multiple of 2**depth = {divisor}")
        if self.activation == "sigmoid" and len(self.labels) != 1:
            raise ValueError(f"a sigmoid model has one label; use activation = softmax for {self.labels}")
        overlap = set(self.data.train) & set(self.data.validation)
        if overlap:
            raise ValueError(f"cases in both train and validation: {sorted(overlap)}")
        return self
