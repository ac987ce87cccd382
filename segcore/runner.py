"""The runner contract every backend implements, and the in-process SavedModel runner.

The :data:`~segcore.model_folder.SIGNATURE_NAME` signature is a concrete function: calling it never
retraces, whatever the spatial size, as long as the model was exported with unknown spatial dimensions.
``model.predict`` per slice would build a dataset and a step function on every call (~2.7x slower here).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from segcore.card import ModelCard
from segcore.model_folder import SIGNATURE_NAME


class RetryableLoadError(Exception):
    """A backend cannot tell yet whether a version loads (TF Serving has not loaded it so far, or is
    restarting). Raised while a version is loaded or warmed, it makes the service's registry try the
    version again on its next refresh instead of recording it as failed."""


class NotApplicable(LookupError):
    """A backend has nothing to run for this version (an INT8 backend, a version without an INT8 variant).
    ``SEG_BACKEND=auto`` records the row as not applicable instead of failed."""


class Runner(ABC):
    """One model version behind one backend: a batch-of-one forward pass on numpy arrays.

    Contract of :meth:`predict`: ``batch`` is float32 ``[1, *spatial, C]`` with ``C = len(card.modalities)``
    channels in the card's order and ``spatial`` ``(Y, X)`` (2D) or ``(Z, Y, X)`` (3D) in the card's
    orientation, each size a multiple of ``card.tiling.divisor``; the answer is float32 ``[1, *spatial, K]``
    probabilities on the same spatial shape with ``K = card.output_channels`` (sigmoid: 1; softmax:
    background + one per label). :meth:`checked_predict` enforces the output side.
    """

    card: ModelCard
    backend: str | None = None
    """Which runtime answers (``inprocess``, ``openvino``...): stamped by the service's backend table."""
    selection: list[dict] | None = None
    """``SEG_BACKEND=auto`` only: every candidate's trial (timings, agreement with TensorFlow, verdict)."""

    @abstractmethod
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """``batch`` float32 ``[1, *spatial, C]`` -> float32 ``[1, *spatial, K]`` (see the class docstring)."""

    def checked_predict(self, batch: np.ndarray, what: str = "prediction") -> np.ndarray:
        """:meth:`predict`, refusing an answer whose shape breaks the contract (``ValueError`` naming ``what``):
        how warm-up and export catch a signature that loads but answers the wrong thing."""
        out = self.predict(batch)
        if out.shape[:-1] != batch.shape[:-1] or out.shape[-1] != self.card.output_channels:
            raise ValueError(
                f"{what} returned shape {out.shape} for input {batch.shape}; the card promises "
                f"{self.card.output_channels} output channel(s) on the input's spatial shape"
            )
        return out


class SavedModelRunner(Runner):
    """A SavedModel version directory loaded into this process."""

    def __init__(self, version_dir: Path, card: ModelCard | None = None) -> None:
        import tensorflow as tf  # imported late so thread settings can be applied first

        self.version_dir = Path(version_dir)
        self.card = card or ModelCard.load(self.version_dir)
        self._tf = tf
        loaded = tf.saved_model.load(str(self.version_dir))
        if SIGNATURE_NAME not in loaded.signatures:
            raise ValueError(f"{self.version_dir} has no {SIGNATURE_NAME} signature")
        self._loaded = loaded  # keep the trackable alive: the signature references its variables
        self._fn = loaded.signatures[SIGNATURE_NAME]
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
