"""Torch modules: the embedded topic model (scETM)."""

from ._etm import MNN_PAIRS_KEY, ETMModule

__all__ = ["MNN_PAIRS_KEY", "ETMModule"]
