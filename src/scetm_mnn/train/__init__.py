"""Training: scETM's training plan and a preloaded minibatch data path."""

from ._data import PreloadedDataSplitter, epoch_order, resolve_seed
from ._denormals import flush_denormals
from ._logger import HistoryLogger
from ._plan import ETMTrainingPlan, linear_warmup
from ._precision import hint_bf16, native_bf16
from ._source import CORRECTED_SHIFT_KEY, MinibatchSource, source_from_manager
from ._strategy import (
    DEFAULT_TIMEOUT_S,
    EndRanksOnError,
    SyncRanks,
    ddp_strategy,
    parallel_trainer_kwargs,
)

__all__ = [
    "CORRECTED_SHIFT_KEY",
    "DEFAULT_TIMEOUT_S",
    "ETMTrainingPlan",
    "EndRanksOnError",
    "HistoryLogger",
    "MinibatchSource",
    "PreloadedDataSplitter",
    "SyncRanks",
    "ddp_strategy",
    "epoch_order",
    "flush_denormals",
    "hint_bf16",
    "linear_warmup",
    "native_bf16",
    "parallel_trainer_kwargs",
    "resolve_seed",
    "source_from_manager",
]
