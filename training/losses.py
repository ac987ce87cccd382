"""Losses for imbalanced tumour segmentation: soft Dice plus (binary) cross-entropy.

Dice alone is unstable on slices without tumour (0/0); cross-entropy alone under-segments small
lesions. The sum is what the BraTS U-Net work and nnU-Net use. Sigmoid models (one channel per label)
use binary cross-entropy; softmax models (background + one channel per label, one-hot targets) use
categorical cross-entropy and Dice over the foreground channels only, so the huge background does not
dominate the Dice term.
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


def dice_ce_loss(y_true: tf.Tensor, y_pred: tf.Tensor, ce_weight: float = 1.0) -> tf.Tensor:
    """Soft Dice over the foreground channels + categorical cross-entropy, for softmax outputs
    ``[N, ..., K]`` with channel 0 the background and one-hot ``y_true``."""
    y_true = tf.cast(y_true, y_pred.dtype)
    eps = 1e-6
    p = tf.clip_by_value(y_pred, eps, 1.0)
    ce = -tf.reduce_mean(tf.reduce_sum(y_true * tf.math.log(p), axis=-1))
    return soft_dice_loss(y_true[..., 1:], y_pred[..., 1:]) + ce_weight * ce


def segmentation_loss(activation: str, weight: float = 1.0):
    """The loss for a model's output activation: Dice+BCE (sigmoid) or Dice+CE (softmax)."""
    if activation == "sigmoid":
        return lambda y_true, y_pred: dice_bce_loss(y_true, y_pred, weight)
    if activation == "softmax":
        return lambda y_true, y_pred: dice_ce_loss(y_true, y_pred, weight)
    raise ValueError(f'activation must be "sigmoid" or "softmax", not "{activation}"')
