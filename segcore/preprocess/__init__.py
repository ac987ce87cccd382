"""What a model sees: the one preprocessing entry point shared by training conversion and serving.

:func:`preprocess` (``model_input``) runs the input stage (``chain``: skull detection and stripping,
co-registration, bias correction, the plausibility guard's input checks) and then the model grid and
normalization. The card's ``preprocessing`` (:class:`segcore.card.Preprocessing`) says what a model
expects; the request's mode (:data:`PreprocessMode`) may switch the input stage off.
"""

from segcore.preprocess.chain import PreparedInput, Report, prepare_input
from segcore.preprocess.model_input import Preprocessed, PreprocessSpec, preprocess
from segcore.preprocess.plausibility import InputWarning, Untrustworthy, result_warnings
from segcore.preprocess.spec import PREPROCESS_MODES, PreprocessMode

__all__ = [
    "PREPROCESS_MODES",
    "InputWarning",
    "PreparedInput",
    "PreprocessMode",
    "PreprocessSpec",
    "Preprocessed",
    "Report",
    "Untrustworthy",
    "prepare_input",
    "preprocess",
    "result_warnings",
]
