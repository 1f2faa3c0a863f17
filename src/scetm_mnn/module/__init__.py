"""Torch modules: the embedded topic model (scETM) and its MNN term."""

from ._conformal import ConformalLinear
from ._etm import ANCHOR_KEY, CORRECTED_KEY, MNN_PAIRS_KEY, ETMModule
from ._likelihood import proportions_nll
from ._mnn_loss import MNN_LOSSES, mnn_loss

__all__ = [
    "ANCHOR_KEY",
    "CORRECTED_KEY",
    "MNN_LOSSES",
    "MNN_PAIRS_KEY",
    "ConformalLinear",
    "ETMModule",
    "mnn_loss",
    "proportions_nll",
]
