"""The contract shared by training and serving.

Everything that decides what a model sees (geometry, normalization, tiling) and what a model version
promises (the :class:`~segcore.card.ModelCard`) lives here, so the preprocessing that trained a model is
by construction the preprocessing that serves it. ``segcore`` never imports ``app`` or ``training``.
"""

from segcore.card import ModelCard

__all__ = ["ModelCard"]
