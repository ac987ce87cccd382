"""``python -m training.train --config FILE``: train a 2D U-Net on converted shards and publish it.

Thread settings from the config are applied before TensorFlow starts. Each epoch runs
``steps_per_epoch`` batches of random crops (``tumour_fraction`` of them centred on tumour), then scores
the validation cases slice by slice with ``segcore``'s tiling, exactly as serving does. The best epoch
by mean validation Dice is kept, plotted, and exported as the next version under ``models_dir``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segcore.threads import apply_thread_env
from training.config import TrainConfig


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


class CropSampler:
    """Random square crops with tumour oversampling, left-right flips and intensity jitter."""

    def __init__(self, cases: list[CaseArrays], patch: int, tumour_fraction: float, labels: list[int], seed: int):
        self.cases, self.patch, self.tumour_fraction = cases, patch, tumour_fraction
        self.labels = labels
        self.rng = np.random.default_rng(seed)
        self.tumour = [np.argwhere(c.label > 0) for c in cases]
        self.brain = [np.argwhere(c.brain) for c in cases]
        self.weights = np.array([len(c.image) for c in cases], dtype=float)
        self.weights /= self.weights.sum()

    def _crop(self, array: np.ndarray, y: int, x: int) -> np.ndarray:
        half = self.patch // 2
        pad = [(half, half), (half, half)] + [(0, 0)] * (array.ndim - 2)
        return np.pad(array, pad)[y : y + self.patch, x : x + self.patch]

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        channels = self.cases[0].image.shape[-1]
        xs = np.zeros((size, self.patch, self.patch, channels), dtype=np.float32)
        ys = np.zeros((size, self.patch, self.patch, len(self.labels)), dtype=np.float32)
        for i in range(size):
            k = self.rng.choice(len(self.cases), p=self.weights)
            pool = self.tumour[k] if len(self.tumour[k]) and self.rng.random() < self.tumour_fraction else self.brain[k]
            s, y, x = pool[self.rng.integers(len(pool))]
            case = self.cases[k]
            image = self._crop(case.image[s].astype(np.float32), y, x)
            label = self._crop(case.label[s], y, x)
            brain = self._crop(case.brain[s], y, x)
            if self.rng.random() < 0.5:  # left-right flip: brains are roughly symmetric
                image, label, brain = image[:, ::-1], label[:, ::-1], brain[:, ::-1]
            scale = self.rng.uniform(0.9, 1.1)
            shift = self.rng.uniform(-0.1, 0.1)
            xs[i] = np.where(brain[..., None], image * scale + shift, 0.0)
            for j, value in enumerate(self.labels):
                ys[i, ..., j] = label == value
        return xs, ys


def learning_rate(step: int, total: int, warmup: int, base: float, floor: float) -> float:
    """Linear warm-up then cosine decay to ``floor`` (the large-LR-then-decay recipe of the seeds)."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * min(progress, 1.0)))


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax1 = plt.subplots(figsize=(7, 4), dpi=110)
    ax1.plot(epochs, [h["loss"] for h in history], color="tab:blue", label="training loss (Dice+BCE)")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(epochs, [h["val_dice"] for h in history], color="tab:red", marker="o", ms=3, label="validation Dice")
    ax2.set_ylabel("mean validation Dice", color="tab:red")
    ax2.set_ylim(0, 1)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def train(config: TrainConfig, *, export: bool = True, version: int | None = None, quiet: bool = False) -> dict:
    """Train, checkpoint, plot and (optionally) publish; returns the run summary (also run_dir/summary.json)."""
    apply_thread_env(**config.threads.model_dump())
    import keras
    import tensorflow as tf
    from tqdm import tqdm

    from segcore.card import ModelCard, Normalization, Provenance, ThreadSettings, Tiling
    from segcore.metrics import dice
    from segcore.tiling import predict_slices_2d, probabilities_to_labels
    from training.export import export_version, next_version
    from training.losses import dice_bce_loss
    from training.unet import build_unet_2d

    overlap = set(config.data.train) & set(config.data.validation)
    if overlap:
        raise ValueError(f"cases in both train and validation: {sorted(overlap)}")
    divisor = 2**config.network.depth
    if config.data.patch % divisor:
        raise ValueError(f"data.patch {config.data.patch} is not a multiple of 2**depth = {divisor}")
    keras.utils.set_random_seed(config.optim.seed)
    label_values = sorted(config.labels)
    train_cases = load_cases(config.data.shards, config.data.train)
    val_cases = load_cases(config.data.shards, config.data.validation)
    sampler = CropSampler(train_cases, config.data.patch, config.data.tumour_fraction, label_values, config.optim.seed)

    model = build_unet_2d(
        len(config.modalities),
        len(label_values),
        depth=config.network.depth,
        base_filters=config.network.base_filters,
        batch_norm=config.network.batch_norm,
        dropout=config.network.dropout,
    )
    optimizer = keras.optimizers.Adam(config.optim.learning_rate)
    bce_weight = config.optim.bce_weight

    @tf.function
    def train_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = dice_bce_loss(y, model(x, training=True), bce_weight)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, len(config.modalities)], tf.float32)])
    def infer(x: tf.Tensor) -> tf.Tensor:
        return model(x, training=False)

    def validate() -> dict[str, float]:
        scores = {}
        for case in val_cases:
            volume = np.moveaxis(case.image.astype(np.float32), -1, 0)
            probs = predict_slices_2d(
                volume, case.brain, lambda b: infer(b).numpy(), len(label_values), divisor=divisor
            )
            pred = probabilities_to_labels(probs, config.labels, "sigmoid", config.threshold)
            scores[case.case_id] = dice(pred > 0, case.label > 0)
        return scores

    run_dir = Path(config.run_dir) / config.name
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    total_steps = config.optim.epochs * config.optim.steps_per_epoch
    warmup_steps = config.optim.warmup_epochs * config.optim.steps_per_epoch
    history: list[dict] = []
    best = (-1.0, 0)
    started = time.perf_counter()
    step = 0
    for epoch in range(1, config.optim.epochs + 1):
        losses = []
        bar = tqdm(range(config.optim.steps_per_epoch), desc=f"epoch {epoch}/{config.optim.epochs}", disable=quiet)
        for _ in bar:
            optimizer.learning_rate.assign(
                learning_rate(
                    step, total_steps, warmup_steps, config.optim.learning_rate, config.optim.min_learning_rate
                )
            )
            x, y = sampler.batch(config.optim.batch_size)
            losses.append(float(train_step(tf.constant(x), tf.constant(y))))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            step += 1
        scores = validate()
        mean_dice = float(np.mean(list(scores.values())))
        history.append(
            {
                "epoch": epoch,
                "loss": float(np.mean(losses)),
                "first_loss": losses[0],
                "val_dice": mean_dice,
                "val_dice_per_case": scores,
                "elapsed_s": time.perf_counter() - started,
            }
        )
        model.save_weights(ckpt_dir / "last.weights.h5")
        if mean_dice > best[0]:
            best = (mean_dice, epoch)
            model.save_weights(ckpt_dir / "best.weights.h5")
        if not quiet:
            print(f"epoch {epoch}: loss {history[-1]['loss']:.4f}  val Dice {mean_dice:.4f}  {scores}", flush=True)
        (run_dir / "history.json").write_text(json.dumps(history, indent=2) + "\n")
        plot_curves(history, run_dir / "training_curve.png", f"{config.name}: loss and validation Dice")

    wall = time.perf_counter() - started
    model.load_weights(ckpt_dir / "best.weights.h5")
    summary = {
        "name": config.name,
        "best_epoch": best[1],
        "best_val_dice": best[0],
        "val_dice_per_case": history[best[1] - 1]["val_dice_per_case"],
        "wall_time_s": wall,
        "history": str(run_dir / "history.json"),
        "curve": str(run_dir / "training_curve.png"),
    }
    if export:
        models_dir = Path(config.models_dir)
        card = ModelCard(
            name=config.name,
            version=version or next_version(models_dir / config.name),
            dims=2,
            modalities=config.modalities,
            orientation=config.orientation,
            spacing_mm=config.spacing_mm,
            tiling=Tiling(divisor=divisor),
            normalization=Normalization(),
            labels=config.labels,
            activation="sigmoid",
            threshold=config.threshold,
            provenance=Provenance(
                datasets=config.datasets,
                train_cases=config.data.train,
                validation_cases=config.data.validation,
                licence_notes=config.licence_notes,
            ),
            validation_dice={**summary["val_dice_per_case"], "mean": best[0]},
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
    args = parser.parse_args(argv)
    config = TrainConfig.load(args.config)
    if args.epochs:
        config.optim.epochs = args.epochs
    summary = train(config, export=not args.no_export, version=args.version)
    print(json.dumps({k: v for k, v in summary.items() if k != "val_dice_per_case"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
