"""A light Lightning logger that backs ``model.history``: one row per logging call."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pandas as pd
import torch
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only


class HistoryLogger(Logger):
    """Keep every logged metric in memory, as :class:`scvi.train.SimpleLogger` does, cheaply.

    scvi's logger grows a DataFrame cell by cell (about a millisecond per metric and
    epoch); this one appends to lists and builds the DataFrames when ``history`` is
    read, which scvi-tools does once, after training. Its ``history`` has the same
    layout: one DataFrame per metric, indexed by ``epoch`` (or ``step`` for metrics logged
    per step). Only the process of global rank 0 records anything.

    Examples
    --------
    >>> from scetm_mnn.train import HistoryLogger
    >>> logger = HistoryLogger()
    >>> logger.log_metrics({"elbo_train": 3.0, "epoch": 0}, step=9)
    >>> logger.log_metrics({"elbo_train": 2.5, "epoch": 1}, step=19)
    >>> logger.history["elbo_train"]["elbo_train"].tolist()
    [3.0, 2.5]
    """

    def __init__(self, name: str = "scetm_mnn"):
        super().__init__()
        self._name = name
        self._axis: dict[str, str] = {}
        self._values: dict[str, dict[int, float]] = defaultdict(dict)

    @property
    def name(self) -> str:
        """The logger's name."""
        return self._name

    @property
    def version(self) -> int:
        """The logger's version, always 0 (the history lives in memory only)."""
        return 0

    @property
    def experiment(self) -> HistoryLogger:
        """The logger itself (there is no external experiment)."""
        return self

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args, **kwargs) -> None:
        """Hyperparameters are not recorded (they are in the model's ``init_params_``)."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Record one value per metric at the logged ``epoch`` (else at ``step``).

        A metric logged twice at the same point keeps the later value.
        """
        metrics = dict(metrics)
        if "epoch" in metrics:
            axis, point = "epoch", metrics.pop("epoch")
        else:
            axis, point = "step", metrics.pop("step", step)
        point = int(point.item() if isinstance(point, torch.Tensor) else point)
        for key, value in metrics.items():
            value = value.item() if isinstance(value, torch.Tensor) else float(value)
            self._axis.setdefault(key, axis)
            self._values[key][point] = value

    def checkpoint_state(self, pending: dict[str, Any], epoch: int) -> dict[str, Any]:
        """The recorded values and ``pending``, for a checkpoint.

        ``pending`` are this epoch's metrics, which Lightning logs only after the
        end-of-epoch checkpoint is written.
        """
        values = {key: dict(points) for key, points in self._values.items()}
        axis = dict(self._axis)
        for key, value in pending.items():
            if axis.setdefault(key, "epoch") == "epoch":
                value = value.item() if isinstance(value, torch.Tensor) else float(value)
                values.setdefault(key, {}).setdefault(int(epoch), value)
        return {"axis": axis, "values": values}

    def restore_state(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`checkpoint_state` gave (a run resumed from a checkpoint)."""
        self._axis.update(state["axis"])
        for key, points in state["values"].items():
            self._values[key].update({int(p): float(v) for p, v in points.items()})

    @property
    def history(self) -> dict[str, pd.DataFrame]:
        """One DataFrame per metric, indexed by epoch (or step), as scvi-tools' history."""
        return {
            key: pd.DataFrame(
                {key: list(values.values())},
                index=pd.Index(list(values), name=self._axis[key]),
            )
            for key, values in self._values.items()
        }
