"""The model card: what a published model version promises to the pipeline that runs it.

A card sits at ``models/<name>/<version>/assets.extra/model_card.json`` next to the SavedModel. The
pipeline reads geometry, normalization, tiling and label semantics from it, so a model trained at other
settings is served correctly without code changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from segcore.model_folder import CARD_RELPATH

#: BraTS evaluation regions as sets of label values (Menze et al. 2015): whole tumour, tumour core,
#: enhancing tumour. Label 3 (non-enhancing, BraTS 2015) belongs to the core where a model outputs it.
BRATS_REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3, 4), "TC": (1, 3, 4), "ET": (4,)}

Modality = Literal["t1", "t1c", "t2", "flair"]
MODALITY_NAMES: tuple[str, ...] = get_args(Modality)
MODALITY_ALIASES: dict[str, str] = {"t1ce": "t1c", "t1gd": "t1c"}


def _orientation_code(value: str) -> str:
    value = value.upper()
    axes = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}
    if len(value) != 3 or any(c not in axes for c in value) or len({axes[c] for c in value}) != 3:
        raise ValueError(f'orientation must be a 3-letter code such as "LPS" or "RAS", not "{value}"')
    return value


def _spacing(value: list[float]) -> list[float]:
    if len(value) != 3 or any(s <= 0 for s in value):
        raise ValueError(f'spacing_mm must be three strictly positive numbers, not "{value}"')
    return value


def _labels(value: dict[int, str]) -> dict[int, str]:
    if not value or any(k <= 0 or k > 255 for k in value):
        raise ValueError(f"labels must map values 1..255 to names, not {value}")
    return value


# Field types shared by the card and the training config, so a config is refused when its TOML loads for
# exactly the reasons its card would be refused after training.
ModelName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")]
Orientation = Annotated[str, AfterValidator(_orientation_code)]
"""ITK orientation code (``LPS``, ``RAS``...), upper-cased; the axes the model sees."""
Spacing = Annotated[list[float], AfterValidator(_spacing)]
"""Voxel spacing (x, y, z) in mm, three strictly positive numbers."""
Labels = Annotated[dict[int, str], AfterValidator(_labels)]
"""Output label value (1..255) -> name; 0 (background) is implicit."""
Threshold = Annotated[float, Field(gt=0, lt=1)]
Activation = Literal["sigmoid", "softmax"]


def brats_regions(labels: dict[int, str], activation: str) -> dict[str, list[int]]:
    """BraTS regions (``WT``/``TC``/``ET`` -> label values) of a multi-class BraTS model, else ``{}``.

    A model is multi-class BraTS when it is softmax and outputs oedema (2) and enhancing tumour (4); a
    whole-tumour model's single label 1 is not a tumour core, so it gets no regions.
    """
    if activation != "softmax" or not {2, 4} <= set(labels):
        return {}
    return {name: sorted(set(values) & set(labels)) for name, values in BRATS_REGIONS.items()}


class Normalization(BaseModel):
    """Intensity normalization applied per input channel before the network.

    ``zscore_brain``: z-score over the brain, where the brain is every voxel that differs from the
    image's background value (see :func:`segcore.normalization.brain_mask`). This is not "nonzero":
    some archives store already z-scored images whose background is a negative constant.
    """

    model_config = ConfigDict(extra="forbid")

    method: Literal["zscore_brain"] = "zscore_brain"
    clip: float = Field(5.0, gt=0, description="clip normalized values to [-clip, clip]")


class Tiling(BaseModel):
    """How a volume is cut into network inputs.

    2D models see whole axial slices cropped to the brain's bounding box and padded up to a multiple of
    ``divisor`` (the network's total downsampling factor). 3D models see patches of ``patch_size``
    voxels with fractional ``overlap``.
    """

    model_config = ConfigDict(extra="forbid")

    divisor: int = Field(16, ge=1, description="spatial sizes are padded to a multiple of this")
    patch_size: list[int] | None = Field(None, description="3D patch size (z, y, x) in voxels")
    overlap: float = Field(0.5, ge=0, lt=1)
    crop_to_brain: bool = True
    margin: int = Field(8, ge=0, description="voxels kept around the brain when cropping")
    mirror: bool = Field(False, description="3D only: average the 8 axis flips (test-time augmentation, 8x cost)")


class Provenance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    datasets: list[str] = []
    train_cases: list[str] = []
    validation_cases: list[str] = []
    licence_notes: list[str] = []


class ThreadSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    intra_op: int | None = None
    inter_op: int | None = None
    onednn: bool | None = None


class Preprocessing(BaseModel):
    """The input a model was trained on, and therefore expects.

    - ``registration``: ``rigid`` = every modality after the first is co-registered to the first
      (6 degrees of freedom, Mattes mutual information, multi-resolution); ``none`` = the modalities are
      only resampled onto the first one's grid through physical space (today's behaviour).
    - ``skull_strip``: the model saw skull-stripped brains (background 0 outside the brain). A head with
      its skull is stripped under ``preprocess=auto`` and refused under ``preprocess=none``.
    - ``bias_correction``: ``n4`` = N4 bias-field correction of every modality (estimated on a shrunk
      image, applied at full resolution); ``none`` = intensities are used as given.
    """

    model_config = ConfigDict(extra="forbid")

    registration: Literal["none", "rigid"] = "none"
    skull_strip: bool = False
    bias_correction: Literal["none", "n4"] = "none"
    min_brain_ml: float = Field(800.0, gt=0, description="below this brain volume a warning is given (adult)")
    max_brain_ml: float = Field(2100.0, gt=0, description="above this brain volume a warning is given (adult)")

    @property
    def anything(self) -> bool:
        """True if the card asks for any step at all (an old card asks for none)."""
        return self.registration != "none" or self.skull_strip or self.bias_correction != "none"


class Variant(BaseModel):
    """Another form of the same version's network, under ``assets.extra/`` (so TF Serving ignores it), with
    the validation Dice that decides whether it may serve. Made by ``benchmarks/quantize_int8.py``."""

    model_config = ConfigDict(extra="forbid")

    runtime: Literal["openvino"] = "openvino"
    precision: Literal["int8"] = "int8"
    path: str = Field(description="the IR's .xml, relative to the version directory (its .bin beside it)")
    method: str = Field(description="how it was made, e.g. NNCF post-training quantization and its version")
    calibration_cases: list[str] = Field(description="cases its statistics came from (training cases only)")
    validation_dice: dict[str, float] = Field(description="per validation case and mean, like the card's")


class Postprocessing(BaseModel):
    """What is done to the label map on the model grid before it is mapped back onto the input grid.

    ``min_component_ml``: connected tumour components (all labels together, 26-connectivity) smaller
    than this volume are removed (:func:`segcore.postprocess.remove_small_components`); 0 keeps all.
    Chosen, with the card's ``threshold``, on the validation cases (``calibrated_on``); a card without
    this block removes nothing and is served as before.
    """

    model_config = ConfigDict(extra="forbid")

    min_component_ml: float = Field(0.0, ge=0, description="smaller tumour components are removed (mL)")
    calibrated_on: list[str] = Field(default=[], description="case ids threshold and min_component_ml were chosen on")


class ModelCard(BaseModel):
    """Schema of ``assets.extra/model_card.json``; see DESIGN §2."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    name: ModelName
    version: int = Field(ge=1)
    dims: Literal[2, 3]
    modalities: list[Modality] = Field(min_length=1)
    orientation: Orientation = Field("LPS", description="ITK orientation code the model was trained in")
    spacing_mm: Spacing = Field(description="voxel spacing (x, y, z) in mm the model was trained at")
    tiling: Tiling = Tiling()
    normalization: Normalization = Normalization()
    labels: Labels = Field(description="output label value -> name; 0 (background) implicit")
    activation: Activation = "sigmoid"
    threshold: Threshold = 0.5
    input_name: str = "image"
    output_name: str = "probabilities"
    provenance: Provenance = Provenance()
    validation_dice: dict[str, float] = {}
    variants: dict[str, Variant] = Field(
        {}, description="name -> another form of this network (e.g. openvino-int8) and its validation Dice"
    )
    threads: ThreadSettings = ThreadSettings()
    preprocessing: Preprocessing = Field(
        default_factory=Preprocessing,
        description="what the model expects before the network (registration, skull stripping, bias correction); "
        "a card without it asks for nothing and is served as before",
    )
    postprocessing: Postprocessing = Field(
        default_factory=Postprocessing,
        description="small-component removal after thresholding; a card without it removes nothing",
    )
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if self.activation == "sigmoid" and len(self.labels) != 1:
            raise ValueError("a sigmoid model has exactly one output label")
        if self.dims == 3 and not self.tiling.patch_size:
            raise ValueError("a 3D model card needs tiling.patch_size")
        if self.tiling.patch_size is not None and (
            len(self.tiling.patch_size) != 3 or any(p < 1 or p % self.tiling.divisor for p in self.tiling.patch_size)
        ):
            raise ValueError(
                f"tiling.patch_size must be three sizes (z, y, x), each a multiple of divisor "
                f"{self.tiling.divisor}, not {self.tiling.patch_size}"
            )
        return self

    @property
    def regions(self) -> dict[str, list[int]]:
        """BraTS regions of this card (:func:`brats_regions`): ``WT``/``TC``/``ET`` -> label values, or ``{}``."""
        return brats_regions(self.labels, self.activation)

    @property
    def output_channels(self) -> int:
        """Channels of the ``probabilities`` output: 1 for sigmoid, labels + background for softmax."""
        return 1 if self.activation == "sigmoid" else len(self.labels) + 1

    @property
    def representative_input_shape(self) -> tuple[int, ...]:
        """The one batch-of-one input shape typical of real use: what warm-up requests, the export check,
        the registry's fallback warm-up and the tuner send. 3D: the card's patch (the sliding window only
        ever sends that shape). 2D: a brain-cropped axial slice at 1 mm, 176 x 144 voxels, each rounded up
        to ``tiling.divisor``. ``(1, *spatial, len(modalities))``."""
        channels = len(self.modalities)
        if self.dims == 3:
            return (1, *self.tiling.patch_size, channels)  # type: ignore[misc]  # validated: 3D has a patch
        d = self.tiling.divisor
        return (1, -(-176 // d) * d, -(-144 // d) * d, channels)

    @classmethod
    def load(cls, version_dir: Path) -> ModelCard:
        return cls.model_validate_json((Path(version_dir) / CARD_RELPATH).read_text())

    def write(self, version_dir: Path) -> Path:
        path = Path(version_dir) / CARD_RELPATH
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return path


def canonical_modality(field_name: str) -> str:
    """Map an upload field name (``t1ce``, ``FLAIR``) to the card's modality name."""
    name = field_name.strip().lower()
    return MODALITY_ALIASES.get(name, name)
