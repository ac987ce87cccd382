"""U-Net builders in the style of Intel's BraTS 2D U-Net (conv-conv-pool down, transpose-conv up,
skip concatenation), fully convolutional so any size that is a multiple of ``2**depth`` works.

The 2D and 3D builders share one definition; only the layer family differs. The 3D one is the 3D U-Net of
Cicek et al. (2016) at CPU size: with ``base_filters`` 8 and depth 3 it has ~0.35 M parameters.
"""

from __future__ import annotations

from typing import Literal

import keras
from keras import layers

NormKind = Literal["batch", "instance", "none"]


def _norm(x, kind: NormKind, name: str):
    if kind == "batch":
        return layers.BatchNormalization(name=name)(x)
    if kind == "instance":  # one group per channel: instance norm, batch-size independent (nnU-Net's choice)
        return layers.GroupNormalization(groups=-1, name=name)(x)
    return x


def _block(x, dims: int, filters: int, norm: NormKind, name: str):
    conv = layers.Conv2D if dims == 2 else layers.Conv3D
    for i in (1, 2):
        x = conv(filters, 3, padding="same", use_bias=norm == "none", name=f"{name}_conv{i}")(x)
        x = _norm(x, norm, f"{name}_{'bn' if norm == 'batch' else 'in'}{i}")
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def build_unet(
    dims: int,
    in_channels: int,
    out_channels: int,
    *,
    depth: int = 4,
    base_filters: int = 16,
    normalization: NormKind = "batch",
    dropout: float = 0.0,
    activation: str = "sigmoid",
) -> keras.Model:
    """A ``dims``-D U-Net taking ``[N, *spatial, in_channels]`` and returning ``[N, *spatial, out_channels]``
    probabilities (``activation`` over the last axis). ``depth`` is the number of poolings: every spatial
    size must be a multiple of ``2**depth``. Spatial sizes are left unknown so one export serves any size."""
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, not {dims}")
    if depth < 1:
        raise ValueError(f"depth must be at least 1, not {depth}")
    if normalization not in ("batch", "instance", "none"):
        raise ValueError(f'normalization must be "batch", "instance" or "none", not "{normalization}"')
    pool = layers.MaxPooling2D if dims == 2 else layers.MaxPooling3D
    up = layers.Conv2DTranspose if dims == 2 else layers.Conv3DTranspose
    head = layers.Conv2D if dims == 2 else layers.Conv3D
    inputs = keras.Input(shape=(None,) * dims + (in_channels,), name="image")
    x = inputs
    skips = []
    for level in range(depth):
        x = _block(x, dims, base_filters * 2**level, normalization, f"down{level}")
        skips.append(x)
        x = pool(2, name=f"pool{level}")(x)
    x = _block(x, dims, base_filters * 2**depth, normalization, "bottom")
    if dropout > 0:
        x = layers.Dropout(dropout, name="bottom_dropout")(x)
    for level in reversed(range(depth)):
        x = up(base_filters * 2**level, 2, strides=2, name=f"up{level}_tconv")(x)
        x = layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
        x = _block(x, dims, base_filters * 2**level, normalization, f"up{level}")
    outputs = head(out_channels, 1, activation=activation, name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"unet{dims}d")
