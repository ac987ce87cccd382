"""What a model expects of its input before the network, as declared in its card.

The card's ``preprocessing`` field is a :class:`Preprocessing`. A card written before the field existed
gets the defaults, which ask for nothing: such a model is served exactly as before (its brain mask from
the outer-face heuristic, no registration, no stripping, no bias correction).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

PreprocessMode = Literal["auto", "none"]
"""Request-level switch: ``auto`` does what the card needs and the input lacks (found by looking at the
input, not by assuming); ``none`` sends the images to the network as they are (the guard still checks)."""

PREPROCESS_MODES: tuple[str, ...] = ("auto", "none")


class Preprocessing(BaseModel):
    """The input a model was trained on, and therefore expects.

    - ``registration``: ``rigid`` = every modality after the first is co-registered to the first
      (6 degrees of freedom, Mattes mutual information, multi-resolution); ``none`` = the modalities are
      only resampled onto the first one's grid through physical space (today's behaviour).
    - ``skull_strip``: the model saw skull-stripped brains (background 0 outside the brain). A head with
      its skull is stripped under ``preprocess=auto`` and refused under ``preprocess=none``.
    - ``bias_correction``: ``n4`` = N4 bias-field correction of every modality (estimated on a shrunk
      image, applied at full resolution); ``none`` = intensities are used as given.
    """

    model_config = ConfigDict(extra="forbid")

    registration: Literal["none", "rigid"] = "none"
    skull_strip: bool = False
    bias_correction: Literal["none", "n4"] = "none"
    min_brain_ml: float = Field(800.0, gt=0, description="below this brain volume a warning is given (adult)")
    max_brain_ml: float = Field(2100.0, gt=0, description="above this brain volume a warning is given (adult)")

    @property
    def anything(self) -> bool:
        """True if the card asks for any step at all (an old card asks for none)."""
        return self.registration != "none" or self.skull_strip or self.bias_correction != "none"
