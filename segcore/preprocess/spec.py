"""The request-level switch of the preprocessing chain (the card's side is :class:`segcore.card.Preprocessing`)."""

from __future__ import annotations

from typing import Literal

PreprocessMode = Literal["auto", "none"]
"""``auto`` does what the card needs and the input lacks (found by looking at the input, not by
assuming); ``none`` sends the images to the network as they are (the guard still checks)."""

PREPROCESS_MODES: tuple[str, ...] = ("auto", "none")
