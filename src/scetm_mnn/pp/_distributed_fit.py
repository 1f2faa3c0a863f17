"""The processes a corrector's fit runs in: this one, or Lightning Fabric's.

``MNNCorrector(devices=N, strategy="ddp")`` fits data-parallel under
:class:`lightning.fabric.Fabric`, the engine under the topic model's Lightning training:
:func:`launch` starts the other processes (Fabric's script launcher runs the user's script
again for each) and returns a :class:`FitEngine`, which the fit asks how to share its work.
With the defaults (``devices=1``, ``strategy="auto"``, ``accelerator="cpu"``,
``num_nodes=1``) no Fabric is made and the engine is the one process: every method is then
the identity (or the plain step) and the fit is the single-process fit, bit for bit.

What is shared out (see the user guide, "Training on many machines"):

- the pair search's batch pairs, dealt to the ranks by their cost and gathered, so that
  every rank holds the pair matrix one process finds;
- each training minibatch of pairs, split into equal shares as
  :class:`~torch.utils.data.DistributedSampler` does (padded by its first pairs when the
  minibatch is not a multiple of the ranks), with gradients all-reduced by DDP and the
  BatchNorm statistics by :func:`~scetm_mnn._distributed.synced_layers`; the epoch
  loss is all-reduced, so every rank stops at the same epoch;
- the BatchNorm recalibration's minibatches, the same way.

Rank 0's latent space and final network are broadcast, so every rank ends with the same
corrector.
"""

from __future__ import annotations

import copy
import math
import os
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from typing import Any

import torch

from .._distributed import (
    DEFAULT_TIMEOUT_S,
    check_devices,
    check_world_size,
    is_global_zero,
    synced_layers,
    world_size,
)

RUNTIME = ("devices", "strategy", "accelerator", "num_nodes")
"""The corrector's arguments that say where its fit runs, not what it fits: they are not
recorded in ``params``, the saved corrector or the fit checkpoint's fingerprint."""
STRATEGIES = ("auto", "ddp")
"""``strategy`` values: ``"auto"`` (one process, or ``"ddp"`` for more) and ``"ddp"``."""
ACCELERATORS = ("cpu", "gpu", "cuda", "auto")
"""``accelerator`` values; ``"auto"`` is ``"cuda"`` when torch sees a GPU, else ``"cpu"``."""


def resolve_accelerator(accelerator: str) -> str:
    """``"cpu"`` or ``"cuda"``: the device kind ``accelerator`` names."""
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if accelerator in ("gpu", "cuda") else "cpu"


def check_runtime(params: dict[str, Any]) -> None:
    """Raise a ``ValueError`` naming the fix for runtime arguments that cannot run here."""
    devices, num_nodes = params["devices"], params["num_nodes"]
    strategy, accelerator = params["strategy"], params["accelerator"]
    for name, value in (("devices", devices), ("num_nodes", num_nodes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}.")
    if strategy not in STRATEGIES:
        raise ValueError(
            f"strategy must be 'auto' or 'ddp', not {strategy!r}: the corrector fits in one "
            "process, or data-parallel with strategy='ddp' from a script."
        )
    if accelerator not in ACCELERATORS:
        raise ValueError(f"accelerator must be one of {ACCELERATORS}, not {accelerator!r}.")
    check_devices(accelerator, devices)


def uses_fabric(params: dict[str, Any]) -> bool:
    """Whether the fit runs under Fabric (any runtime argument other than its default)."""
    return (
        params["devices"] * params["num_nodes"] > 1
        or params["strategy"] != "auto"
        or resolve_accelerator(params["accelerator"]) != "cpu"
    )


def _interactive() -> bool:
    """Whether Python runs interactively (a notebook, a REPL): what Lightning checks."""
    return hasattr(sys, "ps1") or bool(sys.flags.interactive)


def launch(params: dict[str, Any]) -> FitEngine:
    """The engine of a fit with ``params``: this process alone, or Fabric's processes.

    With more than one process, rank 0 starts the others by running the script again
    (they reach this call themselves and join); the process group stays up for the rest
    of the script, so a later ``train(devices=N, strategy="ddp")`` or fit reuses it.
    """
    check_runtime(params)
    if not uses_fabric(params):
        return FitEngine()
    from lightning.fabric import Fabric

    world = params["devices"] * params["num_nodes"]
    check_world_size(world, "the corrector's fit")
    launched = "LOCAL_RANK" in os.environ or world_size() > 1
    if world > 1 and _interactive() and not launched:
        raise ValueError(
            f"devices={params['devices']} with strategy='ddp' starts the other processes by "
            "running your script again, so it cannot run in a notebook or an interactive "
            "session: put the call in a script (python correct.py), or pass devices=1."
        )
    strategy = "ddp" if params["strategy"] == "auto" and world > 1 else params["strategy"]
    if strategy == "ddp":  # with the package's collective timeout, as train's
        from lightning.fabric.strategies import DDPStrategy

        strategy = DDPStrategy(timeout=timedelta(seconds=DEFAULT_TIMEOUT_S))
    fabric = Fabric(
        accelerator=resolve_accelerator(params["accelerator"]),
        devices=params["devices"],
        num_nodes=params["num_nodes"],
        strategy=strategy,
    )
    fabric.launch()
    return FitEngine(fabric)


class FitEngine:
    """How a fit shares its work among the processes: one (``fabric=None``) or Fabric's.

    Parameters
    ----------
    fabric
        The launched :class:`~lightning.fabric.Fabric`; ``None`` for this process alone,
        where every method is the single-process step.
    """

    def __init__(self, fabric: Any | None = None):
        self.fabric = fabric

    @property
    def world_size(self) -> int:
        """Processes of the fit."""
        return 1 if self.fabric is None else int(self.fabric.world_size)

    @property
    def rank(self) -> int:
        """The global rank of this process."""
        return 0 if self.fabric is None else int(self.fabric.global_rank)

    @property
    def is_global_zero(self) -> bool:
        """Whether this process writes files and shows the progress bar.

        Alone, unless it is a rank other than 0 of a script that runs in several processes
        (a fit with ``devices=1`` on every rank of one: each fits, rank 0 writes).
        """
        return is_global_zero() if self.fabric is None else self.rank == 0

    @property
    def device(self) -> torch.device:
        """The device this process trains on."""
        return torch.device("cpu") if self.fabric is None else self.fabric.device

    def assign(self, costs: Sequence[float]) -> list[bool]:
        """Which of the jobs of ``costs`` this rank runs: longest first, to the least loaded.

        Every rank computes the same assignment; alone, it runs them all.
        """
        if self.world_size == 1:
            return [True] * len(costs)
        load = [0.0] * self.world_size
        mine = [False] * len(costs)
        for job in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
            rank = min(range(self.world_size), key=lambda r: (load[r], r))
            load[rank] += costs[job]
            mine[job] = rank == self.rank
        return mine

    def gather(self, found: dict[int, Any]) -> dict[int, Any]:
        """The union of every rank's ``found`` (jobs' results by job number)."""
        if self.world_size == 1:
            return found
        parts: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(parts, found)
        return {job: result for part in parts for job, result in part.items()}

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        return obj if self.world_size == 1 else self.fabric.broadcast(obj, src=0)

    def sync_module(self, module: torch.nn.Module) -> None:
        """Give ``module`` rank 0's parameters and buffers."""
        if self.world_size > 1:
            state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
            module.load_state_dict(self.broadcast(state))

    def share(self, idx: torch.Tensor) -> torch.Tensor:
        """The share of a minibatch ``idx`` this rank trains on, as ``DistributedSampler`` deals.

        ``idx`` is padded with its first entries to a multiple of the ranks (nothing is
        padded when it is one), then rank ``r`` takes every ``N``-th entry from ``r``:
        equal shares, which together are the whole minibatch.
        """
        if self.world_size == 1:
            return idx
        n, size = idx.numel(), self.world_size
        total = math.ceil(n / size) * size
        padded = idx if total == n else idx.repeat(math.ceil(total / n))[:total]
        return padded[self.rank : total : size]

    def mean(self, total: float, count: int) -> float:
        """``total / count`` over every rank's ``total`` and ``count`` (the epoch loss)."""
        if self.world_size == 1:
            return total / count
        both = torch.tensor([total, float(count)], dtype=torch.float64, device=self.device)
        both = self.fabric.all_reduce(both, reduce_op="sum")
        return float(both[0] / both[1])

    def synced(self, net: torch.nn.Module) -> AbstractContextManager:
        """Within the block, ``net``'s BatchNorm normalises over every rank's minibatch."""
        return nullcontext(net) if self.world_size == 1 else synced_layers(net)

    def setup(self, net: torch.nn.Module, optimizer: torch.optim.Optimizer):
        """``(net, optimizer)`` to train with: Fabric's DDP wrappers, or the two alone."""
        return (net, optimizer) if self.fabric is None else self.fabric.setup(net, optimizer)

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` (through Fabric, whose DDP all-reduces the gradients)."""
        if self.fabric is None:
            loss.backward()
        else:
            self.fabric.backward(loss)

    def on_device(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` itself on the CPU, else a copy on this rank's device."""
        if self.device.type == "cpu":
            return module
        return copy.deepcopy(module).to(self.device)
