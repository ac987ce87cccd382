"""Training data: converted shards (``training.convert``) loaded as arrays, and the random crops a step
trains on (tumour oversampling, flips, intensity jitter), in nnU-Net's terms the data loader and sampler.

Shards are already on the model grid and normalized by ``segcore.preprocess``; :func:`check_shards` makes
sure they were made for the grid and modalities of the config being trained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


class CropSampler:
    """Random crops (2D: square slices; 3D: cubes) with tumour oversampling, left-right flips and
    intensity jitter. ``targets`` are the training target's channels: one per label (sigmoid) or
    background + one per label (softmax, one-hot)."""

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
    ):
        self.cases, self.patch, self.tumour_fraction = cases, patch, tumour_fraction
        self.labels, self.dims, self.softmax = labels, dims, softmax
        self.rng = np.random.default_rng(seed)
        self.tumour = [np.argwhere(c.label > 0) for c in cases]
        self.brain = [np.argwhere(c.brain) for c in cases]
        self.weights = np.array([len(c.image) for c in cases], dtype=float)
        self.weights /= self.weights.sum()

    @property
    def target_channels(self) -> int:
        return len(self.labels) + (1 if self.softmax else 0)

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        channels = self.cases[0].image.shape[-1]
        spatial = (self.patch,) * self.dims
        xs = np.zeros((size, *spatial, channels), dtype=np.float32)
        ys = np.zeros((size, *spatial, self.target_channels), dtype=np.float32)
        half = self.patch // 2
        for i in range(size):
            k = self.rng.choice(len(self.cases), p=self.weights)
            pool = self.tumour[k] if len(self.tumour[k]) and self.rng.random() < self.tumour_fraction else self.brain[k]
            s, y, x = pool[self.rng.integers(len(pool))]
            case = self.cases[k]
            if self.dims == 2:
                image = _crop(case.image[s], (y - half, x - half), self.patch).astype(np.float32)
                label = _crop(case.label[s], (y - half, x - half), self.patch)
                brain = _crop(case.brain[s], (y - half, x - half), self.patch)
            else:  # a random offset keeps the tumour from always sitting in the patch centre
                jitter = self.rng.integers(-half // 2, half // 2 + 1, size=3)
                starts = tuple(int(c - half + j) for c, j in zip((s, y, x), jitter, strict=True))
                image = _crop(case.image, starts, self.patch).astype(np.float32)
                label = _crop(case.label, starts, self.patch)
                brain = _crop(case.brain, starts, self.patch)
            if self.rng.random() < 0.5:  # left-right flip (last spatial axis): brains are roughly symmetric
                image, label, brain = image[..., ::-1, :], label[..., ::-1], brain[..., ::-1]
            scale = self.rng.uniform(0.9, 1.1)
            shift = self.rng.uniform(-0.1, 0.1)
            xs[i] = np.where(brain[..., None], image * scale + shift, 0.0)
            offset = 1 if self.softmax else 0
            if self.softmax:
                ys[i, ..., 0] = label == 0
            for j, value in enumerate(self.labels):
                ys[i, ..., j + offset] = label == value
        return xs, ys
