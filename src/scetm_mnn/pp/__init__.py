"""Preprocessing and batch correction: ``preprocess`` and the deep MNN ``mnn_correct``."""

from ._mnn_correct import mnn_correct
from ._pairs import find_mnn_pairs
from ._preprocess import preprocess

__all__ = ["find_mnn_pairs", "mnn_correct", "preprocess"]
