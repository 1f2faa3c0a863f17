"""Training plan with scETM's optimisation recipe on top of scvi-tools' ``TrainingPlan``."""

from __future__ import annotations

import math
import warnings

import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType
from scvi.module.base import BaseModuleClass
from scvi.train import TrainingPlan

from .._optim import fused_adam
from ._logger import HistoryLogger


def linear_warmup(step: int, warmup_steps: int, min_weight: float, max_weight: float) -> float:
    """Weight rising linearly from ``min_weight`` at step 0 to ``max_weight`` at ``warmup_steps``.

    Constant at ``max_weight`` afterwards (and immediately when ``warmup_steps <= 0``).

    Examples
    --------
    >>> from scetm_mnn.train import linear_warmup
    >>> [linear_warmup(step, 4, 0.0, 1e-7) for step in (0, 2, 4, 9)]
    [0.0, 5e-08, 1e-07, 1e-07]
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return max_weight
    return min_weight + (max_weight - min_weight) * step / warmup_steps


class ETMTrainingPlan(TrainingPlan):
    """scETM's optimisation: KL annealing over a fraction of training, lr decay, clipping.

    Parameters
    ----------
    module
        An :class:`~scetm_mnn.module.ETMModule` (any scvi-tools module works).
    lr
        Adam learning rate.
    eps
        Adam epsilon.
    weight_decay
        Adam weight decay.
    max_kl_weight
        KL weight reached at the end of the warm-up.
    min_kl_weight
        KL weight at the first step.
    kl_warmup_fraction
        Fraction of all optimizer steps (``max_epochs`` × steps per epoch) over which the KL
        weight rises linearly; constant afterwards. ``n_steps_kl_warmup`` or
        ``n_epochs_kl_warmup`` (in ``kwargs``, as in scvi-tools) replace it when given.
    lr_decay
        Per-step exponential decay: the learning rate at step ``t`` is
        ``lr · exp(-lr_decay · t)``. ``0`` disables it.
    gradient_clip_norm
        Clip the global gradient norm at this value; ``None`` disables it. A
        ``gradient_clip_val`` given to the trainer takes precedence.
    mnn_weight
        Weight of the MNN term in the module's loss (needs MNN pairs in the minibatches).
    **kwargs
        Passed to :class:`scvi.train.TrainingPlan`.

    Examples
    --------
    >>> from scetm_mnn.module import ETMModule
    >>> from scetm_mnn.train import ETMTrainingPlan
    >>> plan = ETMTrainingPlan(ETMModule(n_input=30, n_topics=4, n_emb=8), lr=5e-3)
    >>> type(plan.configure_optimizers()["optimizer"]).__name__
    'Adam'
    """

    def __init__(
        self,
        module: BaseModuleClass,
        *,
        lr: float = 5e-3,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        max_kl_weight: float = 1e-7,
        min_kl_weight: float = 0.0,
        kl_warmup_fraction: float = 1 / 3,
        lr_decay: float = 6e-5,
        gradient_clip_norm: float | None = 50.0,
        mnn_weight: float = 0.0,
        **kwargs,
    ):
        if not 0.0 <= kl_warmup_fraction <= 1.0:
            raise ValueError(f"kl_warmup_fraction must be in [0, 1], got {kl_warmup_fraction}.")
        if lr_decay < 0:
            raise ValueError(f"lr_decay must be >= 0, got {lr_decay}.")
        if mnn_weight < 0:
            raise ValueError(f"mnn_weight must be >= 0, got {mnn_weight}.")
        if kwargs.get("reduce_lr_on_plateau") and lr_decay > 0:
            warnings.warn(
                "reduce_lr_on_plateau=True replaces the per-step lr decay "
                f"(lr_decay={lr_decay} is not applied). Pass lr_decay=0 to silence this.",
                UserWarning,
                stacklevel=2,
            )
        self.kl_warmup_fraction = kl_warmup_fraction
        self.lr_decay = lr_decay
        self.gradient_clip_norm = gradient_clip_norm
        kwargs.setdefault("n_epochs_kl_warmup", None)
        kwargs.setdefault("n_steps_kl_warmup", None)
        if mnn_weight > 0:
            kwargs["mnn_weight"] = mnn_weight
        super().__init__(
            module,
            lr=lr,
            eps=eps,
            weight_decay=weight_decay,
            max_kl_weight=max_kl_weight,
            min_kl_weight=min_kl_weight,
            **kwargs,
        )

    def on_train_start(self) -> None:
        """Fix the warm-up length once the trainer knows the number of steps."""
        super().on_train_start()
        self._warmup_steps = self._count_warmup_steps()

    def _count_warmup_steps(self) -> int:
        if self.n_steps_kl_warmup is not None:
            return int(self.n_steps_kl_warmup)
        if self.n_epochs_kl_warmup is not None:
            return round(self.n_epochs_kl_warmup * self.trainer.num_training_batches)
        total = self.trainer.estimated_stepping_batches
        return round(self.kl_warmup_fraction * total) if math.isfinite(total) else 0

    @property
    def warmup_steps(self) -> int:
        """Number of optimizer steps of the KL warm-up (0 before a trainer is attached)."""
        if getattr(self, "_warmup_steps", None) is None:
            return 0 if self._attached_trainer() is None else self._count_warmup_steps()
        return self._warmup_steps

    @property
    def kl_weight(self) -> torch.Tensor:
        """KL weight at the current optimizer step."""
        if self._attached_trainer() is None:
            weight = self.min_kl_weight if self.kl_warmup_fraction > 0 else self.max_kl_weight
        else:
            weight = linear_warmup(
                self.global_step, self.warmup_steps, self.min_kl_weight, self.max_kl_weight
            )
        return torch.tensor(weight, device=self.device)

    # Lightning's per-step ``self.log`` costs about a millisecond per metric, which is a
    # quarter of a scETM step on small data. Training metrics are therefore summed over the
    # epoch here, reduced over the processes under DDP, and logged once per epoch with
    # ``self.log`` under scvi-tools' metric names, so callbacks (early stopping,
    # checkpoints) can monitor them and every logger receives them.
    def on_train_epoch_start(self) -> None:
        """Reset the epoch's running sums."""
        self._sums: dict[str, torch.Tensor] = {}
        self._n_cells = 0

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """One optimizer step's loss; metrics are accumulated, not logged per step.

        Raises
        ------
        FloatingPointError
            When the loss is NaN or infinite, before the step is taken (see
            :meth:`check_finite`).
        """
        if "kl_weight" in self.loss_kwargs:
            self.loss_kwargs["kl_weight"] = self.kl_weight
        _, _, output = self.forward(batch, loss_kwargs=self.loss_kwargs)
        self.check_finite(output.loss)
        with torch.no_grad():
            n = output.n_obs_minibatch
            step = {
                "train_loss": output.loss * n,
                "reconstruction_loss_train": output.reconstruction_loss_sum,
                "kl_local_train": output.kl_local_sum,
            }
            step.update({f"{k}_train": v * n for k, v in output.extra_metrics.items()})
            for key, value in step.items():
                self._sums[key] = self._sums.get(key, 0.0) + value.detach()
            self._n_cells += n
        return output.loss

    def check_finite(self, loss: torch.Tensor) -> None:
        """Stop training with a clear error when ``loss`` is NaN or infinite.

        Examples
        --------
        >>> import torch
        >>> from scetm_mnn.module import ETMModule
        >>> from scetm_mnn.train import ETMTrainingPlan
        >>> plan = ETMTrainingPlan(ETMModule(n_input=30, n_topics=4, n_emb=8))
        >>> plan.check_finite(torch.tensor(1.0))
        >>> try:
        ...     plan.check_finite(torch.tensor(float("nan")))
        ... except FloatingPointError as error:
        ...     print(str(error).split(".")[0])
        The training loss became nan at step 0
        """
        if torch.isfinite(loss):
            return
        trainer = self._attached_trainer()
        step = 0 if trainer is None else trainer.global_step
        value = float(loss.detach())
        raise FloatingPointError(
            f"The training loss became {value} at step {step}. Training stopped before "
            "this step changed the parameters. Likely causes: a learning rate too high for "
            f"this data (lr={self.lr}; try train(lr=1e-3)), or input that is not raw counts: "
            "the layer given to setup_anndata(layer=...) must hold non-negative counts, not "
            "log-normalised or scaled values, and the corrected layer must be finite."
        )

    def _attached_trainer(self):
        """The Lightning trainer, or ``None`` before the plan is attached to one."""
        try:
            return self.trainer
        except RuntimeError:
            return None

    def on_train_epoch_end(self) -> None:
        """Log the epoch's mean metrics (and the ELBO), averaged over all processes."""
        if not self._sums:
            return
        names = sorted(self._sums)
        local = torch.stack([torch.as_tensor(self._sums[k]).double() for k in names])
        local = torch.cat([local, torch.tensor([float(self._n_cells)], dtype=local.dtype)])
        distributed = self.trainer.world_size > 1
        if distributed:
            local = self.trainer.strategy.reduce(local.to(self.device), reduce_op="sum")
        means = (local[:-1] / local[-1]).tolist()
        metrics = dict(zip(names, means, strict=True))
        metrics["elbo_train"] = metrics["reconstruction_loss_train"] + metrics["kl_local_train"]
        metrics["kl_weight"] = float(self.kl_weight)
        metrics["lr"] = self.optimizers().param_groups[0]["lr"]
        train_loss = metrics.pop("train_loss")
        # The values are already global; sync_dist only tells Lightning so (a no-op mean).
        kwargs = {"on_step": False, "on_epoch": True, "sync_dist": distributed}
        self.log("train_loss", train_loss, prog_bar=True, **kwargs)
        self.log_dict(metrics, **kwargs)

    def on_train_end(self) -> None:
        """Under DDP, give every rank rank 0's buffers (BatchNorm's running statistics).

        DDP keeps the parameters equal but each rank updates its buffers on its own last
        minibatch; without this, the ranks' latent representations would differ slightly.
        """
        super().on_train_end()
        if self.trainer.world_size > 1:
            buffers = {name: b.detach().cpu() for name, b in self.module.named_buffers()}
            buffers = self.trainer.strategy.broadcast(buffers, src=0)
            for name, buffer in self.module.named_buffers():
                buffer.copy_(buffers[name].to(buffer.device))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Save torch's random state and the :class:`HistoryLogger`'s rows too.

        A resumed run then draws what the uninterrupted would, and its history is whole.
        """
        super().on_save_checkpoint(checkpoint)
        checkpoint["scetm_mnn_torch_rng_state"] = torch.get_rng_state()
        if isinstance(self.logger, HistoryLogger):
            pending = {k: v for k, v in self.trainer.callback_metrics.items() if k != "epoch"}
            state = self.logger.checkpoint_state(pending, self.trainer.current_epoch)
            checkpoint["scetm_mnn_history"] = state

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore what :meth:`on_save_checkpoint` saved."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("scetm_mnn_torch_rng_state")
        if state is not None:
            torch.set_rng_state(state)
        history = checkpoint.get("scetm_mnn_history")
        if history is not None and isinstance(self.logger, HistoryLogger):
            self.logger.restore_state(history)

    def _optimizer_creator_fn(self, optimizer_cls: type[torch.optim.Optimizer]):
        """scvi-tools' Adam (or AdamW) creator, with torch's fused step where it has one.

        ``fused_adam`` chooses it (about a third of the default step's time here).
        """
        return lambda params: fused_adam(
            params, optimizer_cls, lr=self.lr, eps=self.eps, weight_decay=self.weight_decay
        )

    def configure_optimizers(self) -> dict:
        """Adam, with the per-step exponential learning-rate decay."""
        config = super().configure_optimizers()
        if self.lr_decay > 0 and "lr_scheduler" not in config:
            decay = self.lr_decay
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                config["optimizer"], lambda step: math.exp(-decay * step)
            )
            config["lr_scheduler"] = {"scheduler": scheduler, "interval": "step"}
        return config

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Clip gradients by global norm (``gradient_clip_norm``) unless the trainer says so.

        Under ``precision="bf16-mixed"`` no gradient is scaled, yet Lightning refuses to
        clip for any fused optimizer (Lightning-AI/pytorch-lightning#21435): there the
        gradients are clipped as in full precision.
        """
        if gradient_clip_val is None and self.gradient_clip_norm is not None:
            gradient_clip_val, gradient_clip_algorithm = self.gradient_clip_norm, "norm"
        plugin = self.trainer.precision_plugin
        if gradient_clip_val and isinstance(plugin, MixedPrecision) and plugin.scaler is None:
            algorithm = GradClipAlgorithmType(gradient_clip_algorithm or "norm")
            Precision.clip_gradients(plugin, optimizer, gradient_clip_val, algorithm)
            return
        self.clip_gradients(
            optimizer,
            gradient_clip_val=gradient_clip_val,
            gradient_clip_algorithm=gradient_clip_algorithm,
        )
