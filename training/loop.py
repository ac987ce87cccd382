"""The training loop: build the U-Net, run the epochs (random crops, one optimizer step per batch), validate
with ``segcore``'s tiling exactly as serving does, keep the best epoch, plot, and publish it.

Each epoch runs ``steps_per_epoch`` batches of random crops (``tumour_fraction`` of them centred on tumour),
then scores the validation cases with ``segcore``'s tiling (2D slices or the 3D Gaussian-weighted sliding
window). The best epoch by mean validation Dice (multi-class: mean over the BraTS regions WT/TC/ET) is kept,
plotted, and exported as the next version under ``models_dir``. Data-parallel runs go through
:mod:`training.distributed`; only rank 0 writes files.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segcore.card import brats_regions
from training.config import TrainConfig
from training.data import CaseArrays, CropSampler, check_shards, load_cases
from training.distributed import World, average_statistics, broadcast_initial_state, start_world, weights_digest
from training.plots import plot_curves
from training.schedule import learning_rate

Scores = dict[str, dict[str, float]]  # case id -> region (WT/TC/ET, or WT alone) -> Dice


def region_dice(pred: np.ndarray, truth: np.ndarray, regions: dict[str, list[int]]) -> dict[str, float]:
    """Dice per region (label-value sets) of two label maps; ``{}`` regions means whole tumour only."""
    from segcore.metrics import dice

    if not regions:
        return {"WT": dice(pred > 0, truth > 0)}
    return {name: dice(np.isin(pred, values), np.isin(truth, values)) for name, values in regions.items()}


@dataclass
class Progress:
    """What the epochs have produced so far: one history entry per epoch, and the best validated one."""

    history: list[dict] = field(default_factory=list)
    best_dice: float = -1.0
    best_epoch: int = 0
    wall_s: float = 0.0  # the epochs' wall time, validation included
    best_probabilities: dict[str, np.ndarray] | None = None  # the best epoch's validation output, if kept


def build_model(config: TrainConfig, learning_rate_start: float):
    """The U-Net of ``config.network``, an Adam optimizer (built, so its state can be broadcast) and the loss."""
    import keras

    from training.losses import segmentation_loss
    from training.unet import build_unet

    model = build_unet(
        config.dims,
        len(config.modalities),
        config.output_channels,
        depth=config.network.depth,
        base_filters=config.network.base_filters,
        normalization=config.network.norm,  # type: ignore[arg-type]
        dropout=config.network.dropout,
        activation=config.activation,
    )
    optimizer = keras.optimizers.Adam(learning_rate_start)
    optimizer.build(model.trainable_variables)
    return model, optimizer, segmentation_loss(config.activation, config.optim.bce_weight)


def load_published_weights(model, version_dir: Path) -> int:
    """Warm start: copy the variables of a published SavedModel version (``training.export`` writes them
    under the Keras variable paths) into ``model``, matched by name and shape; returns how many. Refuses
    (ValueError) unless every variable of ``model`` is found with its shape: a partial warm start would
    be a different network than the one described."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(version_dir))
    published = {v.name.removesuffix(":0"): v for v in loaded.variables}
    missing = [
        v.path for v in model.variables if v.path not in published or tuple(published[v.path].shape) != tuple(v.shape)
    ]
    if missing:
        raise ValueError(f"{version_dir} is not the same network: {len(missing)} variables differ, e.g. {missing[:3]}")
    for variable in model.variables:
        variable.assign(published[variable.path].numpy())
    return len(model.variables)


def make_train_step(model, optimizer, loss_fn, hvd: Any) -> Callable:
    """One optimizer step on a batch (a ``tf.function``); under Horovod, gradients and loss are averaged."""
    import tensorflow as tf

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

    return train_step


def make_case_predictor(config: TrainConfig, model) -> Callable[[CaseArrays], np.ndarray]:
    """Probabilities float32 ``[K, Z, Y, X]`` of one shard case with segcore's tiling, as serving does."""
    import tensorflow as tf

    from segcore.tiling import predict_slices_2d, predict_sliding_window_3d

    out_channels = config.output_channels
    infer = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec([1, *[None] * config.dims, len(config.modalities)], tf.float32)],
    )

    def predict(batch: np.ndarray) -> np.ndarray:
        return infer(batch).numpy()

    def probabilities(case: CaseArrays) -> np.ndarray:
        volume = np.moveaxis(case.image.astype(np.float32), -1, 0)
        if config.dims == 2:
            return predict_slices_2d(volume, case.brain, predict, out_channels, divisor=config.divisor)
        return predict_sliding_window_3d(
            volume,
            case.brain,
            predict,
            out_channels,
            patch_size=(config.inference_patch,) * 3,
            overlap=config.inference.overlap,
        )

    return probabilities


def make_validator(config: TrainConfig, model, val_cases: list[CaseArrays], hvd: Any) -> Callable[[], Scores]:
    """Score this rank's validation cases with segcore's tiling, as serving does; under Horovod the
    per-case scores are gathered, so every rank agrees on the best epoch."""
    from segcore.tiling import probabilities_to_labels

    regions = brats_regions(config.labels, config.activation)
    probabilities = make_case_predictor(config, model)

    def validate() -> Scores:
        scores = {}
        keep = config.calibration.enabled and hvd is None
        validate.probabilities = {}  # type: ignore[attr-defined]
        for case in val_cases:
            probs = probabilities(case)
            pred = probabilities_to_labels(probs, config.labels, config.activation, config.threshold)
            scores[case.case_id] = region_dice(pred, case.label, regions)
            if keep:  # the last validation's probabilities, reused by calibration when it is the best epoch
                validate.probabilities[case.case_id] = probs  # type: ignore[attr-defined]
        if hvd is not None:
            merged: Scores = {}
            for part in hvd.allgather_object(scores):
                merged.update(part)
            scores = {cid: merged[cid] for cid in config.data.validation}
        return scores

    return validate


def calibrate_on_validation(
    config: TrainConfig, model, cached: dict[str, np.ndarray] | None = None
) -> dict[str, Any]:
    """Choose threshold and small-component removal on the validation shards with the loaded (best)
    weights (:func:`training.calibrate.calibrate`); the summary's ``calibration`` entry. ``cached``: the
    best epoch's validation probabilities when they are still at hand (a 3D sliding window over every
    validation case is not cheap), else they are predicted again."""
    from training.calibrate import calibrate

    cases = load_cases(config.data.shards, config.data.validation)
    if cached is not None and set(cached) == {case.case_id for case in cases}:
        probs = cached
    else:
        probabilities = make_case_predictor(config, model)
        probs = {case.case_id: probabilities(case) for case in cases}
    voxel_ml = float(np.prod(config.spacing_mm)) / 1000.0
    chosen = calibrate(
        probs,
        {case.case_id: case.label for case in cases},
        config.labels,
        config.activation,
        brats_regions(config.labels, config.activation),
        config.calibration.thresholds,
        config.calibration.min_component_ml,
        voxel_ml=voxel_ml,
        default_threshold=config.threshold,
    )
    per_region = {r: float(np.mean([s[r] for s in chosen.scores.values()])) for r in next(iter(chosen.scores.values()))}
    return {
        "threshold": chosen.threshold,
        "min_component_ml": chosen.min_component_ml,
        "val_dice": chosen.mean_dice,
        "val_dice_per_region": per_region,
        "val_dice_per_case": chosen.scores,
        "volumes_ml": chosen.volumes_ml,
        "table": chosen.table,
    }


def run_epochs(config: TrainConfig, world: World, model, optimizer, loss_fn, quiet: bool) -> Progress:
    """Train for ``optim.epochs``, validating every ``validate_every`` epochs and at the last; rank 0 saves
    the best and last weights, the history and the curve after every epoch."""
    import tensorflow as tf
    from tqdm import tqdm

    plan = world.plan
    sampler = CropSampler(
        load_cases(config.data.shards, plan.train_cases),
        config.data.patch,
        config.data.tumour_fraction,
        sorted(config.labels),
        plan.seed,
        dims=config.dims,
        softmax=config.activation == "softmax",
        augment=config.augmentation,
    )
    # Validation is split across ranks too, and the per-case scores gathered: every rank then agrees on
    # the best epoch without anyone idling (or timing out) while one rank validates.
    val_cases = load_cases(config.data.shards, config.data.validation[world.rank :: world.size])
    validate = make_validator(config, model, val_cases, world.hvd)
    train_step = make_train_step(model, optimizer, loss_fn, world.hvd)
    run_dir = Path(config.run_dir) / config.name
    steps = config.optim.steps_per_epoch
    total_steps, warmup_steps = config.optim.epochs * steps, plan.warmup_epochs * steps
    progress = Progress()
    started = time.perf_counter()
    for epoch in range(1, config.optim.epochs + 1):
        losses = []
        epoch_start = time.perf_counter()
        bar = tqdm(range(steps), desc=f"epoch {epoch}/{config.optim.epochs}", disable=quiet)
        for _ in bar:
            step = (epoch - 1) * steps + len(losses)
            optimizer.learning_rate.assign(
                learning_rate(step, total_steps, warmup_steps, plan.learning_rate, plan.min_learning_rate)
            )
            x, y = sampler.batch(config.optim.batch_size)
            losses.append(float(train_step(tf.constant(x), tf.constant(y))))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        train_seconds = time.perf_counter() - epoch_start
        average_statistics(world.hvd, model)
        entry: dict[str, Any] = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "first_loss": losses[0],
            "val_dice": None,
            "samples_per_s": steps * config.optim.batch_size * world.size / train_seconds,
        }
        if epoch % config.optim.validate_every == 0 or epoch == config.optim.epochs:
            _record_validation(entry, validate(), progress, model, run_dir / "checkpoints", plan.is_chief)
            best_now = progress.best_epoch == epoch
            progress.best_probabilities = getattr(validate, "probabilities", None) if best_now else None
        entry["elapsed_s"] = time.perf_counter() - started
        progress.history.append(entry)
        if plan.is_chief:
            _save_epoch(config, model, progress.history, run_dir, quiet)
    progress.wall_s = time.perf_counter() - started
    return progress


def _record_validation(entry: dict, scores: Scores, progress: Progress, model, ckpt_dir: Path, is_chief: bool) -> None:
    """Add the epoch's validation Dice to its history ``entry``; a new best is remembered (and saved by rank 0)."""
    per_region = {r: float(np.mean([s[r] for s in scores.values()])) for r in next(iter(scores.values()))}
    mean_dice = float(np.mean(list(per_region.values())))
    entry.update(val_dice=mean_dice, val_dice_per_region=per_region, val_dice_per_case=scores)
    if mean_dice > progress.best_dice:
        if is_chief:
            model.save_weights(ckpt_dir / "best.weights.h5")
        progress.best_dice, progress.best_epoch = mean_dice, entry["epoch"]


def _save_epoch(config: TrainConfig, model, history: list[dict], run_dir: Path, quiet: bool) -> None:
    """Rank 0 after each epoch: last weights, a progress line, the history JSON and the curve."""
    entry = history[-1]
    model.save_weights(run_dir / "checkpoints" / "last.weights.h5")
    if not quiet:
        per_region = entry.get("val_dice_per_region")
        dice_text = "" if entry["val_dice"] is None else f"  val Dice {entry['val_dice']:.4f} {per_region}"
        print(f"epoch {entry['epoch']}: loss {entry['loss']:.4f}{dice_text}  {entry['elapsed_s']:.0f} s", flush=True)
    (run_dir / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    plot_curves(history, run_dir / "training_curve.png", f"{config.name}: loss and validation Dice")


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
    check_shards(config)  # before any epoch: shards made for another grid are refused now, not after training
    world = start_world(config, horovod)
    import keras

    quiet = quiet or not world.plan.is_chief
    keras.utils.set_random_seed(config.optim.seed)  # same initial weights everywhere (and broadcast anyway)
    model, optimizer, loss_fn = build_model(config, world.plan.learning_rate)
    if config.init_from is not None:
        load_published_weights(model, config.init_from)
    broadcast_initial_state(world.hvd, model, optimizer)
    run_dir = Path(config.run_dir) / config.name
    if world.plan.is_chief:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    progress = run_epochs(config, world, model, optimizer, loss_fn, quiet)
    if horovod:
        # Printed by every rank so a launcher (and the tests) can check that data-parallel training kept
        # the replicas identical; written nowhere, since only rank 0 writes files.
        print(f"horovod rank {world.rank}/{world.size} weights sha256 {weights_digest(model)}", flush=True)
        print(f"horovod rank {world.rank}/{world.size} trained on {','.join(world.plan.train_cases)}", flush=True)
    summary = _summary(config, world, progress, run_dir)
    if not world.plan.is_chief:
        return summary
    model.load_weights(run_dir / "checkpoints" / "best.weights.h5")
    if config.calibration.enabled:
        summary["calibration"] = calibrate_on_validation(config, model, progress.best_probabilities)
    if export:
        from training.export import export_version, model_card

        card = model_card(config, summary, version)
        summary["exported"] = str(export_version(model, card, Path(config.models_dir)))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _summary(config: TrainConfig, world: World, progress: Progress, run_dir: Path) -> dict[str, Any]:
    best_entry = progress.history[progress.best_epoch - 1]
    return {
        "name": config.name,
        "rank": world.rank,
        "world_size": world.size,
        "best_epoch": progress.best_epoch,
        "best_val_dice": progress.best_dice,
        "val_dice_per_region": best_entry["val_dice_per_region"],
        "val_dice_per_case": best_entry["val_dice_per_case"],
        "wall_time_s": progress.wall_s,
        "samples_per_s": float(np.mean([h["samples_per_s"] for h in progress.history])),
        "history": str(run_dir / "history.json"),
        "curve": str(run_dir / "training_curve.png"),
    }
