"""Training data: converted shards (``training.convert``) loaded as arrays, and the random crops a step
trains on (tumour oversampling, flips, intensity jitter or, with ``[augmentation] enabled``, the
``batchgenerators`` pipeline of :mod:`training.augment`), in nnU-Net's terms the data loader and sampler.

Shards are already on the model grid and normalized by ``segcore.preprocess``; :func:`check_shards` makes
sure they were made for the grid and modalities of the config being trained.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.augment import AugmentConfig, build_transforms, input_size, thick_slice_resample
from training.config import TrainConfig


def check_shards(config: TrainConfig) -> None:
    """Refuse shards converted for another grid: ``index.json`` (written by ``training.convert``) must name
    the config's modalities (in order), target, orientation, spacing and normalization. Shards without an
    index (made by hand, e.g. in tests) are taken as they are."""
    index = Path(config.data.shards) / "index.json"
    if not index.is_file():
        return
    made = json.loads(index.read_text())
    wanted = config.shard_spec()
    differ = {k: (made.get(k), v) for k, v in wanted.items() if k in made and made[k] != v}
    if differ:
        described = "; ".join(f"{k}: shards {a!r}, config {b!r}" for k, (a, b) in differ.items())
        raise ValueError(
            f"the shards in {config.data.shards} were converted for another grid ({described}); "
            f"convert again with python -m training.convert --config <this config>"
        )


@dataclass
class CaseArrays:
    case_id: str
    image: np.ndarray  # float16 [S, Y, X, C]
    label: np.ndarray  # uint8 [S, Y, X]
    brain: np.ndarray  # bool [S, Y, X]


def load_cases(shards: Path, case_ids: list[str]) -> list[CaseArrays]:
    cases = []
    for case_id in case_ids:
        path = Path(shards) / f"{case_id}.npz"
        if not path.exists():
            raise FileNotFoundError(f"no shard {path}; run python -m training.convert first")
        with np.load(path) as z:
            cases.append(CaseArrays(case_id, z["image"], z["label"], z["brain"]))
    return cases


def _crop(array: np.ndarray, starts: tuple[int, ...], size: int) -> np.ndarray:
    """``array[starts : starts + size]`` on the leading ``len(starts)`` axes, zero-padded where the
    window leaves the array (only the crop is padded, never the whole volume)."""
    src, dst = [], []
    for start, extent in zip(starts, array.shape, strict=False):
        lo, hi = max(start, 0), min(start + size, extent)
        src.append(slice(lo, max(hi, lo)))
        dst.append(slice(lo - start, lo - start + max(hi - lo, 0)))
    out = np.zeros((size,) * len(starts) + array.shape[len(starts) :], dtype=array.dtype)
    out[tuple(dst)] = array[tuple(src)]
    return out


#: 2D with augmentation: slices either side of the sampled one, so that thick *axial* slices can be
#: simulated through the slab (z down-sampled and interpolated back, the centre slice kept).
SLAB_HALF = 6


class CropSampler:
    """Random crops (2D: square slices; 3D: cubes) with tumour oversampling and left-right flips; then
    either intensity jitter (``augment`` None or disabled: the v1 recipe) or the ``batchgenerators``
    pipeline (:func:`training.augment.build_transforms`) on crops of :func:`training.augment.input_size`.
    ``targets`` are the training target's channels: one per label (sigmoid) or background + one per label
    (softmax, one-hot). The sampler's own draws use ``seed``; batchgenerators draws from numpy's global
    generator (and Python's, for noise), both seeded here too, so a run is reproducible for a given seed."""

    def __init__(
        self,
        cases: list[CaseArrays],
        patch: int,
        tumour_fraction: float,
        labels: list[int],
        seed: int,
        *,
        dims: int = 2,
        softmax: bool = False,
        augment: AugmentConfig | None = None,
    ):
        self.cases, self.patch, self.tumour_fraction = cases, patch, tumour_fraction
        self.labels, self.dims, self.softmax = labels, dims, softmax
        self.rng = np.random.default_rng(seed)
        self.augment = augment if augment is not None and augment.enabled else None
        self.transforms = build_transforms(dims, patch, self.augment) if self.augment else None
        self.crop = input_size(patch, self.augment) if self.augment else patch
        if self.augment:  # batchgenerators draws from numpy's and (Gaussian noise) Python's global generators
            np.random.seed(seed)
            random.seed(seed)
        self.tumour = [np.argwhere(c.label > 0) for c in cases]
        self.brain = [np.argwhere(c.brain) for c in cases]
        self.weights = np.array([len(c.image) for c in cases], dtype=float)
        self.weights /= self.weights.sum()

    @property
    def target_channels(self) -> int:
        return len(self.labels) + (1 if self.softmax else 0)

    def _crop_one(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One random crop of edge ``self.crop``: image float32 ``[*spatial, C]``, label, brain."""
        k = self.rng.choice(len(self.cases), p=self.weights)
        pool = self.tumour[k] if len(self.tumour[k]) and self.rng.random() < self.tumour_fraction else self.brain[k]
        s, y, x = pool[self.rng.integers(len(pool))]
        case, edge = self.cases[k], self.crop
        half = edge // 2
        if self.dims == 2:
            starts = (y - half, x - half)
            if self.augment and self.rng.random() < self.augment.p_thick_through_plane:
                image = self._thick_axial(case, int(s), starts)
            else:
                image = _crop(case.image[s], starts, edge).astype(np.float32)
            label = _crop(case.label[s], starts, edge)
            brain = _crop(case.brain[s], starts, edge)
        else:  # a random offset keeps the tumour from always sitting in the patch centre
            jitter = self.rng.integers(-self.patch // 4, self.patch // 4 + 1, size=3)
            starts = tuple(int(c - half + j) for c, j in zip((s, y, x), jitter, strict=True))
            image = _crop(case.image, starts, edge).astype(np.float32)
            label = _crop(case.label, starts, edge)
            brain = _crop(case.brain, starts, edge)
        if self.rng.random() < 0.5:  # left-right flip (last spatial axis): brains are roughly symmetric
            image, label, brain = image[..., ::-1, :], label[..., ::-1], brain[..., ::-1]
        return image, label, brain

    def _thick_axial(self, case: CaseArrays, s: int, starts: tuple[int, int]) -> np.ndarray:
        """Slice ``s`` as a 3-6 mm axial acquisition would give it after resampling to 1 mm: the slab of
        ``2 * SLAB_HALF + 1`` slices around it through :func:`training.augment.thick_slice_resample` along
        z; the centre slice of the result, float32 ``[Y, X, C]``."""
        assert self.augment is not None
        rows = np.clip(np.arange(s - SLAB_HALF, s + SLAB_HALF + 1), 0, len(case.image) - 1)  # edge-replicated
        slab = np.stack([_crop(case.image[r], starts, self.crop) for r in rows]).astype(np.float32)
        slab = thick_slice_resample(np.moveaxis(slab, -1, 0), 0, self.augment)  # [C, Z, Y, X]
        return np.moveaxis(slab[:, SLAB_HALF], 0, -1)

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """``size`` training pairs: images float32 ``[B, *patch, C]`` (0 outside the brain) and targets
        float32 ``[B, *patch, target_channels]``."""
        channels = self.cases[0].image.shape[-1]
        spatial = (self.patch,) * self.dims
        xs = np.zeros((size, *spatial, channels), dtype=np.float32)
        ys = np.zeros((size, *spatial, self.target_channels), dtype=np.float32)
        if self.transforms is None:  # the v1 recipe, drawing in v1's order (crop, flip, scale, shift per sample)
            crops = []
            for _ in range(size):
                image, label, brain = self._crop_one()
                scale = self.rng.uniform(0.9, 1.1)
                shift = self.rng.uniform(-0.1, 0.1)
                crops.append((image * scale + shift, label, brain))
            images = np.stack([c[0] for c in crops])
            labels = np.stack([c[1] for c in crops])
            brains = np.stack([c[2] for c in crops])
        else:
            crops = [self._crop_one() for _ in range(size)]
            data = np.stack([np.moveaxis(c[0], -1, 0) for c in crops]).astype(np.float32)
            seg = np.stack([np.stack([c[1], c[2]]) for c in crops]).astype(np.float32)
            out = self.transforms(data=data, seg=seg)
            images = np.moveaxis(out["data"], 1, -1)
            labels = np.rint(out["seg"][:, 0]).astype(np.uint8)
            brains = out["seg"][:, 1] > 0.5
        xs[:] = np.where(brains[..., None], images, 0.0)
        offset = 1 if self.softmax else 0
        if self.softmax:
            ys[..., 0] = labels == 0
        for j, value in enumerate(self.labels):
            ys[..., j + offset] = labels == value
        return xs, ys
