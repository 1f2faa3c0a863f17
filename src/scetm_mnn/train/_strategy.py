"""The data-parallel strategy ``train`` runs under: Lightning's DDP with this package's settings.

``model.train(strategy="ddp")`` (or any of Lightning's ``"ddp_*"`` names) becomes
:func:`ddp_strategy`: Lightning's :class:`~lightning.pytorch.strategies.DDPStrategy` with a
collective timeout, gradients all-reduced straight from their buckets, and BatchNorm
statistics and random draws shared by every process (:class:`SyncRanks`; torch's
``SyncBatchNorm`` works only on GPUs). A strategy object passed by the caller is used as it is.
"""

from __future__ import annotations

import logging
import signal
from datetime import timedelta

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins import LayerSync
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from torch import nn

from .._distributed import DEFAULT_TIMEOUT_S, check_devices, convert_layers

logger = logging.getLogger(__name__)


class SyncRanks(LayerSync):
    """Lightning plugin: N processes train as one process would on the same minibatches.

    While fitting under DDP, every ``BatchNorm1d`` normalises over the global minibatch
    (``scetm_mnn._distributed.MomentBatchNorm1d``; unlike
    ``Trainer(sync_batchnorm=True)`` it works on the CPU with gloo too), and dropout masks
    and the sampled ``δ`` are each rank's rows of the global minibatch's draws
    (``scetm_mnn._distributed.convert_layers``). Afterwards the layers are plain again
    (parameters, buffers and state dict unchanged).

    Examples
    --------
    >>> from scetm_mnn.module import ETMModule
    >>> from scetm_mnn.train import SyncRanks
    >>> module = SyncRanks().apply(ETMModule(n_input=30, n_topics=4, n_emb=8))
    >>> type(module.encoder[2]).__name__, type(module.noise).__name__
    ('MomentBatchNorm1d', 'RankStandardNormal')
    >>> type(SyncRanks().revert(module).encoder[2]).__name__
    'BatchNorm1d'
    """

    def apply(self, model: nn.Module) -> nn.Module:
        """Make ``model``'s layers span the processes."""
        return convert_layers(model, sync=True)

    def revert(self, model: nn.Module) -> nn.Module:
        """Give ``model`` back its plain layers."""
        return convert_layers(model, sync=False)


class EndRanksOnError(Callback):
    """When training fails in the process that started the others, end them too.

    Lightning's ``"ddp"`` launcher kills the other processes when one of them fails, but
    when the first process (rank 0) raises, the others run on until their next collective,
    or for ever when one is stuck outside one. This callback kills them at once, so the
    job ends with the error, not with orphans. (Under ``torchrun`` or SLURM, their agents
    end the other processes.)

    Examples
    --------
    >>> from scetm_mnn.train import EndRanksOnError, parallel_trainer_kwargs
    >>> any(isinstance(c, EndRanksOnError) for c in parallel_trainer_kwargs({})["callbacks"])
    True
    """

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """Kill the processes this one started (if it started any)."""
        launcher = trainer.strategy.launcher
        if getattr(launcher, "procs", None):
            # Through Lightning's logger, which prints: Lightning's watcher of the other
            # processes ends this one too a few seconds later, before its traceback shows.
            logging.getLogger("lightning.pytorch").error(
                "Training failed on rank 0 (%s: %s); ending the other ranks.",
                type(exception).__name__,
                exception,
            )
            launcher.kill(signal.SIGKILL)


def ddp_strategy(
    name: str = "ddp",
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    **kwargs,
) -> DDPStrategy:
    """Lightning's DDP strategy ``name`` with this package's settings.

    Parameters
    ----------
    name
        A DDP name of Lightning's strategy registry: ``"ddp"`` (one process per device,
        started by re-running the script, or joined from ``torchrun`` / SLURM),
        ``"ddp_spawn"``, ``"ddp_notebook"``, ...
    timeout
        Seconds a process waits in a collective before it fails with an error
        (:data:`DEFAULT_TIMEOUT_S`). A rank that dies or hangs then ends the job.
    **kwargs
        Passed to :class:`~lightning.pytorch.strategies.DDPStrategy` (and from there to
        torch's ``DistributedDataParallel``), e.g. ``bucket_cap_mb`` or ``static_graph``.

    Returns
    -------
    The strategy, to pass as ``model.train(strategy=...)``.

    Examples
    --------
    >>> from scetm_mnn.train import ddp_strategy
    >>> strategy = ddp_strategy(timeout=120)
    >>> type(strategy).__name__, strategy._timeout.total_seconds()
    ('DDPStrategy', 120.0)
    """
    if name not in StrategyRegistry or StrategyRegistry[name]["strategy"] is not DDPStrategy:
        names = sorted(
            n for n in StrategyRegistry if StrategyRegistry[n]["strategy"] is DDPStrategy
        )
        raise ValueError(f"strategy={name!r} is not a DDP strategy; use one of {names}.")
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}.")
    params = {
        **StrategyRegistry[name]["init_params"],
        "timeout": timedelta(seconds=timeout),
        "gradient_as_bucket_view": True,
        **kwargs,
    }
    return DDPStrategy(**params)


def is_ddp_name(strategy: object) -> bool:
    """Whether ``strategy`` is one of Lightning's DDP strategy names."""
    return (
        isinstance(strategy, str)
        and strategy in StrategyRegistry
        and StrategyRegistry[strategy]["strategy"] is DDPStrategy
    )


def parallel_trainer_kwargs(trainer_kwargs: dict) -> dict:
    """``trainer_kwargs`` checked (``scetm_mnn._distributed.check_devices``), DDP set up.

    A DDP name becomes :func:`ddp_strategy`, and :class:`SyncRanks` and
    :class:`EndRanksOnError` are added. The plugin is added unless the caller asked for
    ``sync_batchnorm`` or gave a ``LayerSync`` plugin of their own; only DDP strategies
    apply it, so a single process trains as before. Returns a new dict; the one given is
    not changed.

    Examples
    --------
    >>> from scetm_mnn.train import parallel_trainer_kwargs
    >>> kwargs = parallel_trainer_kwargs({"strategy": "ddp"})
    >>> type(kwargs["strategy"]).__name__, [type(p).__name__ for p in kwargs["plugins"]]
    ('DDPStrategy', ['SyncRanks'])
    """
    kwargs = dict(trainer_kwargs)
    check_devices(kwargs.get("accelerator", "auto"), kwargs.get("devices", "auto"))
    if is_ddp_name(kwargs.get("strategy")):
        kwargs["strategy"] = ddp_strategy(kwargs["strategy"])
    plugins = kwargs.get("plugins") or []
    plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
    if not kwargs.get("sync_batchnorm") and not any(isinstance(p, LayerSync) for p in plugins):
        kwargs["plugins"] = [*plugins, SyncRanks()]
    callbacks = list(kwargs.get("callbacks") or [])
    if not any(isinstance(c, EndRanksOnError) for c in callbacks):
        kwargs["callbacks"] = [*callbacks, EndRanksOnError()]
    return kwargs
