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

import os
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


DEFAULT_TIMEOUT_S = 600.0
"""Seconds a process waits in a collective (all-reduce, barrier) before it fails.

A rank that dies or hangs makes the others fail at their next collective instead of
waiting for ever (Lightning's own default is 30 minutes). Nothing in the corrector's fit
or in training holds one rank alone for long: rank 0 writes checkpoints and logs outside
collectives. The process group is made by the first distributed step of a script (the
corrector's fit or the topic model's ``train``), with this timeout unless that step's
strategy says otherwise.
"""


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

    ``shape`` is the local one; ``draw(shape)`` makes a tensor from the random stream. In
    one process, all of ``draw(shape)``.
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


def available_cpus() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_devices(accelerator: object, devices: object) -> None:
    """Refuse, with the fix, ``devices`` of ``accelerator`` that this machine cannot give.

    ``devices=N`` CPU processes need a core each (more would share cores and run slower
    than one process); GPUs must be there for torch to see; Apple's ``"mps"`` runs one
    process. Used by the corrector's fit and the topic model's ``train`` alike.
    """
    name = str(accelerator).lower()
    if name in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"accelerator={accelerator!r}, but torch finds no CUDA GPU here (torch "
            f"{torch.__version__} may be the CPU build); pass accelerator='cpu' (with "
            "strategy='ddp', one process per CPU device), or install a CUDA build of torch."
        )
    if not isinstance(devices, int) or isinstance(devices, bool) or devices <= 1:
        return
    if name == "mps":
        raise ValueError(
            f"accelerator='mps' runs one process; devices={devices} needs CUDA GPUs or "
            "accelerator='cpu'."
        )
    cuda = name in ("gpu", "cuda") or (name == "auto" and torch.cuda.is_available())
    have = torch.cuda.device_count() if cuda else available_cpus()
    if devices > have:
        what = "GPUs" if cuda else "CPU cores"
        raise ValueError(
            f"devices={devices} with accelerator={accelerator!r} starts {devices} processes "
            f"on this machine, but it has {have} {what} available; pass devices={have} or "
            "fewer (num_nodes for more machines; on the CPU, devices=1 uses the cores as "
            "torch threads)."
        )


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
