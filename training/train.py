"""``python -m training.train --config FILE [--horovod]``: train a 2D or 3D U-Net on converted shards and
publish it.

Thread settings are applied before TensorFlow starts. Each epoch runs ``steps_per_epoch`` batches of random
crops (``tumour_fraction`` of them centred on tumour), then scores the validation cases with ``segcore``'s
tiling (2D slices or the 3D Gaussian-weighted sliding window), exactly as serving does. The best epoch by
mean validation Dice (multi-class: mean over the BraTS regions WT/TC/ET) is kept, plotted, and exported as
the next version under ``models_dir``.

Data-parallel training (``--horovod``, started by ``horovodrun``) uses the same loop: every rank samples
from its own shard of the training cases, gradients are averaged with ``hvd.grouped_allreduce`` before the
optimizer step, rank 0's initial weights are broadcast, the learning rate is scaled by the world size with
a linear warm-up (Goyal et al. 2017; the Intel/GE multi-node recipe), and only rank 0 writes checkpoints,
curves and the exported version. Horovod's Keras callbacks and ``DistributedGradientTape`` do not work
with Keras 3, which is why the loop is written out. With one process, ``--horovod`` is a single-node run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segcore.threads import apply_thread_env
from training.config import ThreadConfig, TrainConfig


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


def learning_rate(step: int, total: int, warmup: int, base: float, floor: float) -> float:
    """Linear warm-up then cosine decay to ``floor`` (the large-LR-then-decay recipe of the seeds)."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class WorldPlan:
    """What one process does in a (possibly one-process) data-parallel run."""

    rank: int
    size: int
    train_cases: list[str]
    seed: int
    learning_rate: float
    min_learning_rate: float
    warmup_epochs: int
    intra_op: int | None
    inter_op: int | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_chief(self) -> bool:
        return self.rank == 0


def plan_world(config: TrainConfig, rank: int = 0, size: int = 1, local_size: int = 1, cores: int | None = None):
    """Split the work of a run across ``size`` processes (``local_size`` of them on this host).

    - data: rank r trains on cases ``r, r + size, ...`` when there are at least ``size`` cases (disjoint
      shards); otherwise every rank sees every case with its own random stream (seed + rank).
    - learning rate: linear scaling with the global batch (``size`` x), with at least one epoch of
      warm-up when ``size > 1`` (a large initial rate needs it); the decay floor scales with it.
    - threads: the host's cores divided among its ranks (``intra_op``), one inter-op thread; a configured
      ``intra_op`` is an upper bound. Two ranks each using every core would oversubscribe the socket.
    One process (``size == 1``) gives exactly the single-node plan.
    """
    if not 0 <= rank < size or local_size < 1:
        raise ValueError(f"bad world: rank {rank}, size {size}, local_size {local_size}")
    cases = list(config.data.train)
    shard = cases[rank::size] if len(cases) >= size else cases
    threads: ThreadConfig = config.threads
    intra, inter = threads.intra_op, threads.inter_op
    if size > 1 or local_size > 1:
        per_rank = max(1, (cores or os.cpu_count() or 1) // local_size)
        intra = min(intra, per_rank) if intra else per_rank
        inter = 1
    return WorldPlan(
        rank=rank,
        size=size,
        train_cases=shard,
        seed=config.optim.seed + rank,
        learning_rate=config.optim.learning_rate * size,
        min_learning_rate=config.optim.min_learning_rate * size,
        warmup_epochs=max(config.optim.warmup_epochs, 1) if size > 1 else config.optim.warmup_epochs,
        intra_op=intra,
        inter_op=inter,
    )


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(7, 4), dpi=110)
    ax1.plot([h["epoch"] for h in history], [h["loss"] for h in history], color="tab:blue", label="training loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss (Dice + cross-entropy)", color="tab:blue")
    ax2 = ax1.twinx()
    validated = [h for h in history if h.get("val_dice") is not None]
    ax2.plot([h["epoch"] for h in validated], [h["val_dice"] for h in validated], color="tab:red", marker="o", ms=3)
    regions = sorted({r for h in validated for r in h.get("val_dice_per_region", {})})
    regions = regions if len(regions) > 1 else []  # one region is the mean line itself
    for region, style in zip(regions, (":", "--", "-."), strict=False):
        ax2.plot(
            [h["epoch"] for h in validated],
            [h["val_dice_per_region"][region] for h in validated],
            color="tab:red",
            linestyle=style,
            alpha=0.6,
            label=region,
        )
    if regions:
        ax2.legend(loc="lower right", fontsize=8)
    ax2.set_ylabel("mean validation Dice", color="tab:red")
    ax2.set_ylim(0, 1)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def region_dice(pred: np.ndarray, truth: np.ndarray, regions: dict[str, list[int]]) -> dict[str, float]:
    """Dice per region (label-value sets) of two label maps; ``{}`` regions means whole tumour only."""
    from segcore.metrics import dice

    if not regions:
        return {"WT": dice(pred > 0, truth > 0)}
    return {name: dice(np.isin(pred, values), np.isin(truth, values)) for name, values in regions.items()}


def weights_digest(model) -> str:
    """sha256 over every weight (trainable and not), in order: equal digests mean identical models."""
    digest = hashlib.sha256()
    for w in model.weights:
        digest.update(np.ascontiguousarray(w.numpy()).tobytes())
    return digest.hexdigest()


def train(
    config: TrainConfig,
    *,
    export: bool = True,
    version: int | None = None,
    quiet: bool = False,
    horovod: bool = False,
) -> dict:
    """Train, checkpoint, plot and (optionally) publish; returns the run summary (also run_dir/summary.json).

    With ``horovod=True`` this must run under ``horovodrun``; every rank returns the summary, but only
    rank 0 writes files.
    """
    hvd = None
    rank, size, local_size = 0, 1, 1
    if horovod:
        import horovod.tensorflow as hvd  # imports TensorFlow, but runs no op: thread settings still apply

        hvd.init()
        rank, size, local_size = hvd.rank(), hvd.size(), hvd.local_size()
    plan = plan_world(config, rank, size, local_size)
    apply_thread_env(
        intra_op=plan.intra_op,
        inter_op=plan.inter_op,
        omp_num_threads=config.threads.omp_num_threads if size == 1 else plan.intra_op,
        kmp_blocktime=config.threads.kmp_blocktime,
        onednn=config.threads.onednn,
    )
    import keras
    import tensorflow as tf
    from tqdm import tqdm

    from segcore.card import BRATS_REGIONS, ModelCard, Normalization, Provenance, ThreadSettings, Tiling
    from segcore.model_folder import next_version
    from segcore.tiling import predict_slices_2d, predict_sliding_window_3d, probabilities_to_labels
    from training.export import export_version
    from training.losses import segmentation_loss
    from training.unet import build_unet

    quiet = quiet or not plan.is_chief
    dims = config.dims
    divisor = 2**config.network.depth
    softmax = config.activation == "softmax"
    keras.utils.set_random_seed(config.optim.seed)  # same initial weights everywhere (and broadcast anyway)
    label_values = sorted(config.labels)
    out_channels = len(label_values) + (1 if softmax else 0)
    train_cases = load_cases(config.data.shards, plan.train_cases)
    # Validation is split across ranks too, and the per-case scores gathered: every rank then agrees on
    # the best epoch without anyone idling (or timing out) while one rank validates.
    val_ids = config.data.validation[rank::size]
    val_cases = load_cases(config.data.shards, val_ids)
    sampler = CropSampler(
        train_cases, config.data.patch, config.data.tumour_fraction, label_values, plan.seed, dims=dims, softmax=softmax
    )
    regions: dict[str, list[int]] = {}
    if softmax and {2, 4} <= set(label_values):  # the same rule as ModelCard.regions
        regions = {k: [v for v in vals if v in label_values] for k, vals in BRATS_REGIONS.items()}
    infer_patch = config.inference.patch or config.data.patch

    model = build_unet(
        dims,
        len(config.modalities),
        out_channels,
        depth=config.network.depth,
        base_filters=config.network.base_filters,
        normalization=config.network.norm,  # type: ignore[arg-type]
        dropout=config.network.dropout,
        activation=config.activation,
    )
    optimizer = keras.optimizers.Adam(plan.learning_rate)
    optimizer.build(model.trainable_variables)
    loss_fn = segmentation_loss(config.activation, config.optim.bce_weight)
    if hvd is not None:
        # Keras 3 variables wrap a tf.Variable; Horovod's broadcast assigns to the tf.Variable itself
        # (given the Keras wrapper it fails with "'SymbolicTensor' object has no attribute 'assign'").
        backing = [v.value for v in [*model.variables, *optimizer.variables]]
        if not all(isinstance(v, tf.Variable) for v in backing):
            raise TypeError("expected Keras variables backed by tf.Variable (the TensorFlow backend)")
        hvd.broadcast_variables(backing, root_rank=0)

    @tf.function
    def train_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        if hvd is not None:
            grads = hvd.grouped_allreduce(grads, op=hvd.Average)
            loss = hvd.allreduce(loss, op=hvd.Average)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    def sync_statistics() -> None:
        """Average batch-norm moving statistics across ranks: each rank saw different data, and the
        exported (rank 0) model should carry the statistics of all of it."""
        stats = list(model.non_trainable_variables)
        if hvd is None or not stats:
            return
        averaged = hvd.grouped_allreduce([tf.convert_to_tensor(v) for v in stats], op=hvd.Average)
        for var, value in zip(stats, averaged, strict=True):
            var.assign(value)

    spatial = [None] * dims
    infer = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec([1, *spatial, len(config.modalities)], tf.float32)],
    )

    def validate() -> dict[str, dict[str, float]]:
        scores = {}
        for case in val_cases:
            volume = np.moveaxis(case.image.astype(np.float32), -1, 0)
            if dims == 2:
                probs = predict_slices_2d(volume, case.brain, lambda b: infer(b).numpy(), out_channels, divisor=divisor)
            else:
                probs = predict_sliding_window_3d(
                    volume,
                    case.brain,
                    lambda b: infer(b).numpy(),
                    out_channels,
                    patch_size=(infer_patch,) * 3,
                    overlap=config.inference.overlap,
                )
            pred = probabilities_to_labels(probs, config.labels, config.activation, config.threshold)
            scores[case.case_id] = region_dice(pred, case.label, regions)
        if hvd is not None:
            merged: dict[str, dict[str, float]] = {}
            for part in hvd.allgather_object(scores):
                merged.update(part)
            scores = {cid: merged[cid] for cid in config.data.validation}
        return scores

    run_dir = Path(config.run_dir) / config.name
    ckpt_dir = run_dir / "checkpoints"
    if plan.is_chief:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    steps = config.optim.steps_per_epoch
    total_steps = config.optim.epochs * steps
    warmup_steps = plan.warmup_epochs * steps
    history: list[dict] = []
    best = (-1.0, 0)
    started = time.perf_counter()
    step = 0
    for epoch in range(1, config.optim.epochs + 1):
        losses = []
        epoch_start = time.perf_counter()
        bar = tqdm(range(steps), desc=f"epoch {epoch}/{config.optim.epochs}", disable=quiet)
        for _ in bar:
            optimizer.learning_rate.assign(
                learning_rate(step, total_steps, warmup_steps, plan.learning_rate, plan.min_learning_rate)
            )
            x, y = sampler.batch(config.optim.batch_size)
            losses.append(float(train_step(tf.constant(x), tf.constant(y))))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            step += 1
        train_seconds = time.perf_counter() - epoch_start
        sync_statistics()
        entry: dict[str, Any] = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "first_loss": losses[0],
            "val_dice": None,
            "samples_per_s": steps * config.optim.batch_size * size / train_seconds,
        }
        if epoch % config.optim.validate_every == 0 or epoch == config.optim.epochs:
            scores = validate()
            per_region = {r: float(np.mean([s[r] for s in scores.values()])) for r in next(iter(scores.values()))}
            mean_dice = float(np.mean(list(per_region.values())))
            entry.update(val_dice=mean_dice, val_dice_per_region=per_region, val_dice_per_case=scores)
            if plan.is_chief and mean_dice > best[0]:
                model.save_weights(ckpt_dir / "best.weights.h5")
            if mean_dice > best[0]:
                best = (mean_dice, epoch)
        entry["elapsed_s"] = time.perf_counter() - started
        history.append(entry)
        if plan.is_chief:
            model.save_weights(ckpt_dir / "last.weights.h5")
            if not quiet:
                dice_text = "" if entry["val_dice"] is None else f"  val Dice {entry['val_dice']:.4f} {per_region}"
                print(f"epoch {epoch}: loss {entry['loss']:.4f}{dice_text}  {entry['elapsed_s']:.0f} s", flush=True)
            (run_dir / "history.json").write_text(json.dumps(history, indent=2) + "\n")
            plot_curves(history, run_dir / "training_curve.png", f"{config.name}: loss and validation Dice")

    wall = time.perf_counter() - started
    if horovod:
        # Printed by every rank so a launcher (and the tests) can check that data-parallel training kept
        # the replicas identical; written nowhere, since only rank 0 writes files.
        print(f"horovod rank {rank}/{size} weights sha256 {weights_digest(model)}", flush=True)
        print(f"horovod rank {rank}/{size} trained on {','.join(plan.train_cases)}", flush=True)
    best_entry = history[best[1] - 1]
    summary: dict[str, Any] = {
        "name": config.name,
        "rank": rank,
        "world_size": size,
        "best_epoch": best[1],
        "best_val_dice": best[0],
        "val_dice_per_region": best_entry["val_dice_per_region"],
        "val_dice_per_case": best_entry["val_dice_per_case"],
        "wall_time_s": wall,
        "samples_per_s": float(np.mean([h["samples_per_s"] for h in history])),
        "history": str(run_dir / "history.json"),
        "curve": str(run_dir / "training_curve.png"),
    }
    if not plan.is_chief:
        return summary
    model.load_weights(ckpt_dir / "best.weights.h5")
    if export:
        models_dir = Path(config.models_dir)
        validation_dice = {
            f"{cid}:{region}" if regions else cid: round(value, 4)
            for cid, per in summary["val_dice_per_case"].items()
            for region, value in per.items()
        }
        validation_dice.update({f"mean:{r}": round(v, 4) for r, v in summary["val_dice_per_region"].items()})
        validation_dice["mean"] = round(best[0], 4)
        card = ModelCard(
            name=config.name,
            version=version or next_version(models_dir / config.name),
            dims=dims,
            modalities=config.modalities,
            orientation=config.orientation,
            spacing_mm=config.spacing_mm,
            tiling=Tiling(
                divisor=divisor,
                patch_size=[infer_patch] * 3 if dims == 3 else None,
                overlap=config.inference.overlap,
                mirror=config.inference.mirror,
            ),
            normalization=Normalization(),
            labels=config.labels,
            activation=config.activation,
            threshold=config.threshold,
            provenance=Provenance(
                datasets=config.datasets,
                train_cases=config.data.train,
                validation_cases=config.data.validation,
                licence_notes=config.licence_notes,
            ),
            validation_dice=validation_dice,
            threads=ThreadSettings(intra_op=config.threads.intra_op, inter_op=config.threads.inter_op),
            description=config.description,
        )
        summary["exported"] = str(export_version(model, card, models_dir))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="training config (TOML)")
    parser.add_argument("--no-export", action="store_true", help="train and plot, but publish nothing")
    parser.add_argument("--version", type=int, default=None, help="version number to publish (default: next)")
    parser.add_argument("--epochs", type=int, default=None, help="override optim.epochs")
    parser.add_argument("--steps", type=int, default=None, help="override optim.steps_per_epoch")
    parser.add_argument("--models-dir", type=Path, default=None, help="override models_dir")
    parser.add_argument("--run-dir", type=Path, default=None, help="override run_dir")
    parser.add_argument("--horovod", action="store_true", help="data-parallel under horovodrun (see README)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    config = TrainConfig.load(args.config)
    if args.epochs:
        config.optim.epochs = args.epochs
    if args.steps:
        config.optim.steps_per_epoch = args.steps
    if args.models_dir:
        config.models_dir = args.models_dir
    if args.run_dir:
        config.run_dir = args.run_dir
    summary = train(config, export=not args.no_export, version=args.version, horovod=args.horovod, quiet=args.quiet)
    if summary["rank"] == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "val_dice_per_case"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
