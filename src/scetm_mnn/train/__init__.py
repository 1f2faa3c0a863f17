"""Training: scETM's training plan and a preloaded minibatch data path."""

from ._data import MinibatchSource, PreloadedDataSplitter, resolve_seed, source_from_manager
from ._plan import ETMTrainingPlan, linear_warmup

__all__ = [
    "ETMTrainingPlan",
    "MinibatchSource",
    "PreloadedDataSplitter",
    "linear_warmup",
    "resolve_seed",
    "source_from_manager",
]
