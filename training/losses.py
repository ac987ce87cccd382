"""Losses for imbalanced tumour segmentation: soft Dice plus (binary) cross-entropy.

Dice alone is unstable on slices without tumour (0/0); cross-entropy alone under-segments small
lesions. The sum is what the BraTS U-Net work and nnU-Net use.
"""

from __future__ import annotations

import tensorflow as tf


def soft_dice_loss(y_true: tf.Tensor, y_pred: tf.Tensor, smooth: float = 1.0) -> tf.Tensor:
    """1 - soft Dice over the whole batch, per foreground channel, averaged.

    Batch-level (not per-sample) sums keep tumour-free slices from dominating with a 0/0.
    """
    axes = list(range(len(y_pred.shape) - 1))
    intersection = tf.reduce_sum(y_true * y_pred, axis=axes)
    total = tf.reduce_sum(y_true, axis=axes) + tf.reduce_sum(y_pred, axis=axes)
    return 1.0 - tf.reduce_mean((2.0 * intersection + smooth) / (total + smooth))


def dice_bce_loss(y_true: tf.Tensor, y_pred: tf.Tensor, bce_weight: float = 1.0) -> tf.Tensor:
    """Soft Dice + binary cross-entropy, for sigmoid outputs ``[N, ..., K]``."""
    y_true = tf.cast(y_true, y_pred.dtype)
    eps = 1e-6
    p = tf.clip_by_value(y_pred, eps, 1.0 - eps)
    bce = -tf.reduce_mean(y_true * tf.math.log(p) + (1.0 - y_true) * tf.math.log(1.0 - p))
    return soft_dice_loss(y_true, y_pred) + bce_weight * bce
