"""BatchNorm whose batch statistics span every process, on any backend (gloo included).

Under data-parallel training each process sees ``1/N`` of the global minibatch, so a plain
``BatchNorm1d`` normalises over a smaller, noisier sample than one process would, and the
fit drifts from the single-process one. torch's :class:`~torch.nn.SyncBatchNorm` shares the
statistics but only for CUDA-like devices. :class:`MomentBatchNorm1d` all-reduces the
per-feature sums ``[Σx, Σx², n]`` with autograd, so the forward
pass and its gradient are those of BatchNorm over the whole global minibatch, on the CPU
with gloo as well as on GPUs with NCCL. It is used by ``train`` (through Lightning's
:class:`~lightning.pytorch.plugins.LayerSync`) and by the corrector under ``strategy="ddp"``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose gradient is the sum of the processes' gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        torch.distributed.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        torch.distributed.all_reduce(total)
        return total


def world_size() -> int:
    """Processes in the default process group (1 outside one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


class MomentBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` over the union of every process's minibatch.

    In training mode inside a process group of more than one process, the batch mean and
    (biased) variance come from the all-reduced sums of all ranks, the running statistics
    are updated from them (so they stay equal on every rank), and gradients flow back
    through the all-reduce. Otherwise it is ``BatchNorm1d``, with the same parameters,
    buffers and state dict, so a module converted by :func:`convert_batchnorm` saves and
    loads as the plain one.

    Examples
    --------
    >>> import torch
    >>> from scetm_mnn._distributed import MomentBatchNorm1d
    >>> norm = MomentBatchNorm1d(3)  # one process: exactly BatchNorm1d
    >>> x = torch.randn(8, 3)
    >>> torch.allclose(norm(x), torch.nn.BatchNorm1d(3)(x))
    True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        c = self.num_features
        wide = x.double()  # E[x²] - E[x]² is exact enough in float64
        local = torch.cat([wide.sum(0), wide.pow(2).sum(0), wide.new_full((1,), x.shape[0])])
        total = _AllReduceSum.apply(local)
        n = total[-1]
        mean = total[:c] / n
        var = (total[c : 2 * c] / n - mean.pow(2)).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                unbiased = var * n / (n - 1).clamp_min(1.0)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        y = (x - mean.to(x.dtype)) * torch.rsqrt(var.to(x.dtype) + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y


def convert_batchnorm(module: nn.Module, sync: bool = True) -> nn.Module:
    """Turn every ``BatchNorm1d`` of ``module`` into :class:`MomentBatchNorm1d`, in place.

    The layers keep their parameters and buffers (only their class changes), so optimizers
    built before or after, and state dicts, are unaffected. ``sync=False`` reverts.
    """
    old, new = (nn.BatchNorm1d, MomentBatchNorm1d) if sync else (MomentBatchNorm1d, nn.BatchNorm1d)
    for layer in module.modules():
        if type(layer) is old:
            layer.__class__ = new
    return module


@contextmanager
def synced_batchnorm(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``module``'s BatchNorm layers share statistics across processes."""
    convert_batchnorm(module, sync=True)
    try:
        yield module
    finally:
        convert_batchnorm(module, sync=False)


_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
"""Where launchers put a process's rank, in the order Lightning reads them (torchrun,
Lightning's script launcher, SLURM, LSF)."""


def is_global_zero() -> bool:
    """Whether this process is rank 0 of its process group (the one that writes files).

    ``True`` outside a process group: a process alone writes its files.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return True


def started_as_global_zero() -> bool:
    """Whether a launcher started this process as rank 0, before any process group exists.

    What the launcher's environment says, as Lightning reads it: ``RANK`` (torchrun),
    ``LOCAL_RANK`` (Lightning's script launcher, which starts ranks >= 1 with it; and
    ``NODE_RANK`` on other machines than the first), ``SLURM_PROCID``, ``JSM_NAMESPACE_RANK``.
    For a run that will be distributed: a process started alone (by ``srun`` among
    independent tasks, say) may carry such variables too.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    if int(os.environ.get("NODE_RANK", 0)) != 0:
        return False
    for name in _RANK_VARIABLES:
        if name in os.environ:
            return int(os.environ[name]) == 0
    return True


def check_world_size(requested: int, what: str) -> None:
    """Refuse ``requested`` processes when the process group already holds another number.

    A script whose processes were started for one number (by ``mnn_correct(devices=N)``,
    a topic model's ``train(devices=N, strategy="ddp")`` or a launcher such as torchrun)
    runs every later distributed step in those same processes; a step that asks for
    another number would train each rank alone or on the wrong shards.
    """
    running = world_size()
    if running > 1 and requested != running:
        raise ValueError(
            f"This script already runs in {running} processes (started by an earlier "
            f"devices={running} step or a launcher), but {what} asks for {requested}. Pass "
            f"devices and num_nodes that make {running} processes, with strategy='ddp', "
            "or run this step in a script of its own."
        )
