"""Data-parallel training with Horovod (Gloo, CPU), and the single-process run as its one-rank case.

Every rank samples from its own shard of the training cases, gradients are averaged with
``hvd.grouped_allreduce`` before the optimizer step, rank 0's initial weights are broadcast, the learning
rate is scaled by the world size with a linear warm-up (Goyal et al. 2017; the Intel/GE multi-node recipe),
and only rank 0 writes files. Horovod's Keras callbacks and ``DistributedGradientTape`` do not work with
Keras 3, which is why these pieces are written out. With one process, ``--horovod`` is a single-node run.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segcore.threads import apply_thread_env
from training.config import ThreadConfig, TrainConfig


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


@dataclass
class World:
    """This process's place in the run: Horovod's module (None for a plain single-process run), and the plan."""

    hvd: Any
    plan: WorldPlan

    @property
    def rank(self) -> int:
        return self.plan.rank

    @property
    def size(self) -> int:
        return self.plan.size


def start_world(config: TrainConfig, horovod: bool) -> World:
    """Join the Horovod run (``horovod``: under ``horovodrun``) or run alone, then size TensorFlow's thread
    pools for this rank. Must run before TensorFlow executes any op."""
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
    return World(hvd, plan)


def broadcast_initial_state(hvd: Any, model: Any, optimizer: Any) -> None:
    """Give every rank rank 0's initial weights and optimizer state (nothing to do without Horovod)."""
    if hvd is None:
        return
    import tensorflow as tf

    # Keras 3 variables wrap a tf.Variable; Horovod's broadcast assigns to the tf.Variable itself
    # (given the Keras wrapper it fails with "'SymbolicTensor' object has no attribute 'assign'").
    backing = [v.value for v in [*model.variables, *optimizer.variables]]
    if not all(isinstance(v, tf.Variable) for v in backing):
        raise TypeError("expected Keras variables backed by tf.Variable (the TensorFlow backend)")
    hvd.broadcast_variables(backing, root_rank=0)


def average_statistics(hvd: Any, model: Any) -> None:
    """Average batch-norm moving statistics across ranks: each rank saw different data, and the exported
    (rank 0) model should carry the statistics of all of it."""
    stats = list(model.non_trainable_variables)
    if hvd is None or not stats:
        return
    import tensorflow as tf

    averaged = hvd.grouped_allreduce([tf.convert_to_tensor(v) for v in stats], op=hvd.Average)
    for var, value in zip(stats, averaged, strict=True):
        var.assign(value)


def weights_digest(model) -> str:
    """sha256 over every weight (trainable and not), in order: equal digests mean identical models."""
    digest = hashlib.sha256()
    for w in model.weights:
        digest.update(np.ascontiguousarray(w.numpy()).tobytes())
    return digest.hexdigest()
