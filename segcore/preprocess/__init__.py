"""Preprocessing before the network grid: detection, co-registration, skull stripping, bias correction
and the plausibility guard. :func:`preprocess` is the one entry point; the card's ``preprocessing``
(:class:`Preprocessing`) says what a model expects."""

from segcore.preprocess.chain import Preprocessed, Report, preprocess
from segcore.preprocess.plausibility import InputWarning, Untrustworthy, result_warnings
from segcore.preprocess.spec import PREPROCESS_MODES, Preprocessing, PreprocessMode

__all__ = [
    "PREPROCESS_MODES",
    "InputWarning",
    "PreprocessMode",
    "Preprocessed",
    "Preprocessing",
    "Report",
    "Untrustworthy",
    "preprocess",
    "result_warnings",
]
