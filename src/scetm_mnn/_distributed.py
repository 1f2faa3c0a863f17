"""Layers that make N processes train as one: shared BatchNorm statistics, shared noise.

Under data-parallel training each process sees ``1/N`` of the global minibatch, so a plain
``BatchNorm1d`` normalises over a smaller, noisier sample than one process would, and the
fit drifts from the single-process one. torch's :class:`~torch.nn.SyncBatchNorm` shares the
statistics but only for CUDA-like devices. :class:`MomentBatchNorm1d` all-reduces the
per-feature sums ``[Σx, Σx², n]`` with autograd, so the forward
pass and its gradient are those of BatchNorm over the whole global minibatch, on the CPU
with gloo as well as on GPUs with NCCL. It is used by ``train`` (through Lightning's
:class:`~lightning.pytorch.plugins.LayerSync`) and by the corrector under ``strategy="ddp"``.

The random draws of training (dropout masks, the reparameterised ``δ``) are shared the
same way: :class:`RankDropout` and :class:`StandardNormal` draw the noise of the whole
global minibatch from the seeded stream every rank holds, and each rank keeps its own rows
(rank ``r`` of ``N`` holds rows ``r, r + N, ...``, the interleaving of
:func:`scetm_mnn.train.epoch_order`). ``N`` processes then draw what one process would for
the same minibatch, and follow its training run to float rounding instead of being
another random run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose gradient is the sum of the processes' gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        total = tensor.clone()
        torch.distributed.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        total = grad.clone()
        torch.distributed.all_reduce(total, group=ctx.group)
        return total, None


_GROUP: list = []
"""The process group of the statistics (made once per process by :func:`moments_group`)."""


def moments_group():
    """A process group of its own for the layers' small all-reduces, made on first use.

    DDP all-reduces the gradients in the default group while the backward pass runs; a
    BatchNorm all-reduce queued in that group would wait behind megabytes of gradients
    and stall the backward pass. Every rank must call this at the same point (the first
    training forward, which they run in step).
    """
    if not _GROUP or _GROUP[0][0] is not torch.distributed.distributed_c10d._get_default_group():
        default = torch.distributed.distributed_c10d._get_default_group()
        _GROUP[:] = [(default, torch.distributed.new_group())]
    return _GROUP[0][1]


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
    buffers and state dict, so a module converted by :func:`convert_layers` saves and
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
        total = _AllReduceSum.apply(local, moments_group())
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


def rank_rows(draw: Callable[[tuple[int, ...]], torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """The rows of ``draw`` for the global minibatch that belong to this rank.

    In one process, all of ``draw(shape)``.

    ``shape`` is the local one; ``draw(shape)`` makes a tensor from the random stream.
    """
    n = world_size()
    if n == 1:
        return draw(tuple(shape))
    full = draw((shape[0] * n, *shape[1:]))
    return full[torch.distributed.get_rank() :: n]


class RankDropout(nn.Dropout):
    """``Dropout`` whose mask is this rank's rows of the global minibatch's mask.

    Its mask is drawn as ``torch.nn.functional.dropout`` draws it on the CPU, so in one
    process (or in eval mode) it is ``Dropout``, bit for bit.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or world_size() == 1:
            return super().forward(x)
        keep = 1.0 - self.p
        mask = rank_rows(lambda s: x.new_empty(s).bernoulli_(keep), x.shape)
        return x * mask.div_(keep)


class StandardNormal(nn.Module):
    """Standard normal noise shaped like its input: ``ε`` of ``δ = μ + σ ε``.

    ``torch.distributions.Normal.rsample`` draws it the same way, so the module changes no
    single-process result. :func:`convert_layers` makes it :class:`RankStandardNormal`.
    """

    def forward(self, like: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(like).normal_()


class RankStandardNormal(StandardNormal):
    """:class:`StandardNormal` whose noise is this rank's rows of the global minibatch's."""

    def forward(self, like: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(like)
        return rank_rows(lambda s: like.new_empty(s).normal_(), like.shape)


_SHARED = {
    nn.BatchNorm1d: MomentBatchNorm1d,
    nn.Dropout: RankDropout,
    StandardNormal: RankStandardNormal,
}
"""Each layer class and its twin that trains over the ranks as one process would."""


def convert_layers(module: nn.Module, sync: bool = True) -> nn.Module:
    """Give ``module``'s layers their twins that span the ranks (``sync=False`` reverts).

    ``BatchNorm1d`` becomes :class:`MomentBatchNorm1d`, ``Dropout`` :class:`RankDropout`
    and :class:`StandardNormal` :class:`RankStandardNormal`, in place. Only the classes
    change: parameters, buffers, optimizers and state dicts are unaffected.
    """
    swap = _SHARED if sync else {new: old for old, new in _SHARED.items()}
    for layer in module.modules():
        if type(layer) in swap:
            layer.__class__ = swap[type(layer)]
    return module


@contextmanager
def synced_layers(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``module``'s layers span the ranks (:func:`convert_layers`)."""
    convert_layers(module, sync=True)
    try:
        yield module
    finally:
        convert_layers(module, sync=False)
