"""Training: scETM's training plan and a preloaded minibatch data path."""

from ._data import (
    CORRECTED_SHIFT_KEY,
    MinibatchSource,
    PreloadedDataSplitter,
    resolve_seed,
    source_from_manager,
)
from ._plan import ETMTrainingPlan, linear_warmup

__all__ = [
    "CORRECTED_SHIFT_KEY",
    "ETMTrainingPlan",
    "MinibatchSource",
    "PreloadedDataSplitter",
    "linear_warmup",
    "resolve_seed",
    "source_from_manager",
]
