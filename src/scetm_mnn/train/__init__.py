"""Training: scETM's training plan and a preloaded minibatch data path."""

from ._data import PreloadedDataSplitter, epoch_order, resolve_seed
from ._denormals import flush_denormals
from ._logger import HistoryLogger
from ._plan import ETMTrainingPlan, linear_warmup
from ._source import CORRECTED_SHIFT_KEY, MinibatchSource, source_from_manager

__all__ = [
    "CORRECTED_SHIFT_KEY",
    "ETMTrainingPlan",
    "HistoryLogger",
    "MinibatchSource",
    "PreloadedDataSplitter",
    "epoch_order",
    "flush_denormals",
    "linear_warmup",
    "resolve_seed",
    "source_from_manager",
]
