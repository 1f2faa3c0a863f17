"""Preprocessing and batch correction: ``preprocess``, the deep MNN ``mnn_correct``."""

from ._corrected import corrected_expression
from ._corrector import MNNCorrector
from ._mnn_correct import mnn_correct
from ._pairs import find_mnn_pairs
from ._preprocess import preprocess

__all__ = ["MNNCorrector", "corrected_expression", "find_mnn_pairs", "mnn_correct", "preprocess"]
