"""The learning-rate schedule: linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math


def learning_rate(step: int, total: int, warmup: int, base: float, floor: float) -> float:
    """Linear warm-up then cosine decay to ``floor`` (the large-LR-then-decay recipe of the seeds)."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * min(progress, 1.0)))
