"""U-Net builders in the style of Intel's BraTS 2D U-Net (conv-conv-pool down, transpose-conv up,
skip concatenation), fully convolutional so any size that is a multiple of ``2**depth`` works.
"""

from __future__ import annotations

import keras
from keras import layers


def _block(x, filters: int, batch_norm: bool, name: str):
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm, name=f"{name}_conv{i}")(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def build_unet_2d(
    in_channels: int,
    out_channels: int,
    *,
    depth: int = 4,
    base_filters: int = 16,
    batch_norm: bool = True,
    dropout: float = 0.0,
    activation: str = "sigmoid",
) -> keras.Model:
    """A 2D U-Net taking ``[N, H, W, in_channels]`` and returning ``[N, H, W, out_channels]``
    probabilities. ``depth`` is the number of poolings: H and W must be multiples of ``2**depth``."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, not {depth}")
    inputs = keras.Input(shape=(None, None, in_channels), name="image")
    x = inputs
    skips = []
    for level in range(depth):
        x = _block(x, base_filters * 2**level, batch_norm, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = _block(x, base_filters * 2**depth, batch_norm, "bottom")
    if dropout > 0:
        x = layers.Dropout(dropout, name="bottom_dropout")(x)
    for level in reversed(range(depth)):
        x = layers.Conv2DTranspose(base_filters * 2**level, 2, strides=2, name=f"up{level}_tconv")(x)
        x = layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
        x = _block(x, base_filters * 2**level, batch_norm, f"up{level}")
    outputs = layers.Conv2D(out_channels, 1, activation=activation, name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="unet2d")
