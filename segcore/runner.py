"""Running a published SavedModel in-process at batch size 1.

The ``serving_default`` signature is a concrete function: calling it never retraces, whatever the
spatial size, as long as the model was exported with unknown spatial dimensions. ``model.predict`` per
slice would build a dataset and a step function on every call (~2.7x slower here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from segcore.card import ModelCard


class Runner(Protocol):
    """What the pipeline needs from a backend: a batch-of-one forward pass on numpy arrays."""

    card: ModelCard

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


class SavedModelRunner:
    """A SavedModel version directory loaded into this process."""

    def __init__(self, version_dir: Path, card: ModelCard | None = None) -> None:
        import tensorflow as tf  # imported late so thread settings can be applied first

        self.version_dir = Path(version_dir)
        self.card = card or ModelCard.load(self.version_dir)
        self._tf = tf
        loaded = tf.saved_model.load(str(self.version_dir))
        if "serving_default" not in loaded.signatures:
            raise ValueError(f"{self.version_dir} has no serving_default signature")
        self._loaded = loaded  # keep the trackable alive: the signature references its variables
        self._fn = loaded.signatures["serving_default"]
        inputs = self._fn.structured_input_signature[1]
        outputs = self._fn.structured_outputs
        if self.card.input_name not in inputs or self.card.output_name not in outputs:
            raise ValueError(
                f"signature takes {sorted(inputs)} and returns {sorted(outputs)}, but the card says "
                f"{self.card.input_name!r} -> {self.card.output_name!r}"
            )
        rank = len(inputs[self.card.input_name].shape)
        if rank != self.card.dims + 2:
            raise ValueError(f"signature input has rank {rank}, a {self.card.dims}D card needs {self.card.dims + 2}")

    def predict(self, batch: np.ndarray) -> np.ndarray:
        result = self._fn(**{self.card.input_name: self._tf.constant(batch)})
        return result[self.card.output_name].numpy()
