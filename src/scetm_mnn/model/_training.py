"""How ``BatchCorrectedSCETM.train`` reads its arguments: epochs, MNN term, split, trainer.

:func:`train_arguments` turns ``train()``'s arguments into those of scvi-tools'
``UnsupervisedTrainingMixin.train``: scETM's step count when ``max_epochs`` is not given,
the MNN weight and pairs (:func:`resolve_mnn_weight`, :func:`mnn_pairs`), the split, the
validation schedule and the trainer's logger. A query model
(:meth:`~scetm_mnn.model.QueryMixin.load_query_data`) brings its own step count and
learning rate (``_train_defaults``).
"""

from __future__ import annotations

import logging
import math

from anndata import AnnData
from lightning.pytorch.callbacks import ModelCheckpoint
from scipy import sparse

from ..train import HistoryLogger, hint_bf16, parallel_trainer_kwargs
from ._setup import check_pairs

logger = logging.getLogger(__name__)

DEFAULT_N_STEPS = 2000
"""Optimizer steps that ``BatchCorrectedSCETM.train`` aims for when ``max_epochs=None``."""

DEFAULT_MNN_WEIGHT = 1.0
"""Weight of the MNN term when MNN pairs are registered (``mnn_pairs_key``); 0 without them.

The scale-invariant ``"local"`` term pulls MNN-paired cells together only until they share
a neighbourhood. On ``benchmarks/pancreas.py`` (Baron human and mouse, seeds 0-4, every
method in the same run, 2026-12-06) weight 1 raised the pipeline's mean ARI over the Leiden
sweep from 0.862 to 0.878 (human) and 0.794 to 0.804 (mouse), scib Total from 0.773 to 0.798
and 0.782 to 0.810, and the kNN batch entropy from 0.811 to 0.837 and 0.830 to 0.852, with
8/8 marker hits on human (the encoder's linear path off in both). ``train(mnn_weight=0)``
turns it off. Under the conformal encoder (the default on the corrector's latent since
2026-12-07) the term is constant, and ``None`` gives 0 (:func:`resolve_mnn_weight`).
"""


PARAMETERS = {
    "max_epochs": """\
max_epochs
    Passes over the data. ``None`` gives about 2,000 optimizer steps
    (:func:`default_max_epochs`), which scETM needs on small data sets; a query
    model from :meth:`~scetm_mnn.model.QueryMixin.load_query_data` aims for 200
    (only its new ``λ`` rows train).""",
    "batch_size": """\
batch_size
    Cells sampled per optimizer step. scETM uses 2,000 (for GPUs). With MNN pairs,
    each sampled cell that has a partner in the training split brings one into the
    step for the MNN term only, so up to ``2 × batch_size`` cells are encoded; the
    likelihood averages over the sampled cells alone.""",
    "lr": """\
lr
    Adam learning rate (default 5e-3, see :class:`~scetm_mnn.train.ETMTrainingPlan`;
    5e-2 for a query model, whose new ``λ`` rows are a convex fit).""",
    "mnn_weight": """\
mnn_weight
    Weight of the MNN term (:func:`scetm_mnn.module.mnn_loss` of the ``δ`` means of
    MNN-paired cells). Needs ``mnn_pairs_key`` in :meth:`setup_anndata`. ``0`` turns
    it off. ``None``: ``DEFAULT_MNN_WEIGHT`` (1) when ``mnn_pairs_key`` was
    registered, else 0 (off); 0 also under the conformal linear encoder (the default
    on the corrector's latent), which keeps the latent's distance ratios, so that
    the scale-invariant term is constant there. Also accepted as
    ``plan_kwargs["mnn_weight"]``.""",
    "train_size": """\
train_size
    Fraction of cells to train on (default all, or ``1 - validation_size``).""",
    "validation_size": """\
validation_size
    Fraction of cells for validation (default: the rest; 0.1 with
    ``early_stopping``). MNN partners are drawn from the training cells only. The
    validation ELBO (``elbo_validation``) is logged in ``model.history``.""",
    "seed": """\
seed
    Seed of the split, the minibatches, the partner draws and torch's sampling.
    ``None`` takes ``scvi.settings.seed``, and 0 when that is unset. The same seed
    gives the same model on CPU.""",
    "early_stopping": """\
early_stopping
    Stop when the validation ELBO has not improved for ``early_stopping_patience``
    validation passes (scvi-tools' default 45; pass it in ``trainer_kwargs`` with
    ``early_stopping_monitor`` / ``early_stopping_min_delta``). Validates every epoch
    on ``validation_size`` of the cells (default 0.1).""",
    "plan_kwargs": """\
plan_kwargs
    Passed to :class:`~scetm_mnn.train.ETMTrainingPlan` (``max_kl_weight``, default
    scETM's 1e-7; ``kl_warmup_fraction``; ``n_epochs_kl_warmup``; ``lr_decay``;
    ``gradient_clip_norm``; ...).""",
    "datasplitter_kwargs": """\
datasplitter_kwargs
    Passed to :class:`~scetm_mnn.train.PreloadedDataSplitter`.""",
    "trainer_kwargs": """\
**trainer_kwargs
    Passed to :class:`scvi.train.Trainer` (e.g. ``enable_progress_bar``,
    ``strategy``, ``callbacks``; a :class:`~lightning.pytorch.callbacks.ModelCheckpoint`
    among them turns checkpointing on, and ``ckpt_path`` resumes from one of its
    files: with the same arguments, the resumed run gives the model the
    uninterrupted run would have). The default
    logger is :class:`~scetm_mnn.train.HistoryLogger`.""",
}
"""The docs of ``train``'s arguments that :func:`train_arguments` reads, beside it."""


def default_max_epochs(n_obs: int, batch_size: int, n_steps: int = DEFAULT_N_STEPS) -> int:
    """Epochs giving about ``n_steps`` optimizer steps (scETM trains for thousands of steps).

    Examples
    --------
    >>> from scetm_mnn.model import default_max_epochs
    >>> default_max_epochs(2142, 256)  # 9 steps per epoch: 223 epochs, 2,007 steps
    223
    """
    steps_per_epoch = max(1, math.ceil(n_obs / batch_size))
    return max(1, math.ceil(n_steps / steps_per_epoch))


def resolve_mnn_weight(
    argument: float | None, in_plan: float | None, setup_args: dict, constant: bool = False
) -> float:
    """The MNN weight to train with, from ``train()`` or ``plan_kwargs``; never silent.

    ``constant``: the term cannot change the encoder (a conformal linear encoder, under
    which the scale-invariant term is constant), so ``None`` gives 0 and the minibatches
    carry no partners.
    """
    if argument is not None and in_plan is not None and argument != in_plan:
        raise ValueError(
            f"mnn_weight={argument} and plan_kwargs['mnn_weight']={in_plan} disagree; "
            "pass one of them."
        )
    weight = argument if argument is not None else in_plan
    if weight is None:
        if setup_args.get("mnn_pairs_key") is None:
            return 0.0
        if constant:
            logger.info(
                "The MNN term is off: the conformal encoder keeps the corrector's latent "
                "geometry, under which the term is constant (train(mnn_weight=...) sets it)."
            )
            return 0.0
        return DEFAULT_MNN_WEIGHT
    if weight < 0:
        raise ValueError(f"mnn_weight must be >= 0, got {weight}.")
    return float(weight)


def mnn_pairs(adata: AnnData, setup_args: dict) -> sparse.csr_matrix:
    """The registered MNN pair matrix (``mnn_pairs_key``), which must hold pairs."""
    key = setup_args.get("mnn_pairs_key")
    if key is None:
        raise ValueError(
            "mnn_weight > 0 needs MNN pairs: call setup_anndata(..., "
            "mnn_pairs_key='mnn_corrected_pairs') after scetm_mnn.pp.mnn_correct."
        )
    check_pairs(adata, key)
    pairs = sparse.csr_matrix(adata.obsp[key])
    if pairs.nnz == 0:
        raise ValueError(f"adata.obsp[{key!r}] holds no MNN pairs; mnn_weight needs some.")
    return pairs


def train_arguments(
    model,
    max_epochs: int | None,
    batch_size: int,
    lr: float | None,
    mnn_weight: float | None,
    train_size: float | None,
    validation_size: float | None,
    seed: int,
    early_stopping: bool,
    plan_kwargs: dict | None,
    datasplitter_kwargs: dict | None,
    trainer_kwargs: dict,
) -> dict:
    """The arguments of ``UnsupervisedTrainingMixin.train`` for ``model.train(...)``.

    ``seed`` is already resolved (:func:`~scetm_mnn.train.resolve_seed`); the split,
    minibatches and partner draws take it. The dicts passed in are not changed.
    """
    plan_kwargs = dict(plan_kwargs or {})
    datasplitter_kwargs = dict(datasplitter_kwargs or {})
    trainer_kwargs = parallel_trainer_kwargs(trainer_kwargs)
    # A query model (load_query_data) fits only its new λ rows: fewer, larger steps.
    defaults = getattr(model, "_train_defaults", {})
    if lr is not None:
        plan_kwargs["lr"] = lr
    elif "lr" in defaults:
        plan_kwargs.setdefault("lr", defaults["lr"])
    setup_args = model.adata_manager.registry["setup_args"]
    in_plan = plan_kwargs.pop("mnn_weight", None)
    constant = model.module.mnn_term_is_constant
    mnn_weight = resolve_mnn_weight(mnn_weight, in_plan, setup_args, constant)
    if mnn_weight:
        plan_kwargs["mnn_weight"] = mnn_weight
        datasplitter_kwargs["mnn_pairs"] = mnn_pairs(model.adata, setup_args)
    datasplitter_kwargs.setdefault("seed", seed)
    if early_stopping and train_size is None and validation_size is None:
        validation_size = 0.1
    if train_size is None and validation_size is not None:
        train_size = 1.0 - validation_size
    if max_epochs is None:
        n_obs = model.adata.n_obs
        n_train = n_obs if train_size is None else train_size * n_obs
        n_steps = defaults.get("n_steps", DEFAULT_N_STEPS)
        max_epochs = default_max_epochs(int(n_train), batch_size, n_steps)
    # Metrics are logged once per epoch (ETMTrainingPlan); per-step logging has nothing
    # to write, and 1 keeps Lightning from warning about short epochs (e.g. under DDP).
    trainer_kwargs.setdefault("log_every_n_steps", 1)
    if train_size is None or train_size >= 1.0:
        trainer_kwargs.setdefault("limit_val_batches", 0)  # no validation pass
    else:
        every = 1 if early_stopping else max(1, max_epochs // 20)
        trainer_kwargs.setdefault("check_val_every_n_epoch", every)
    trainer_kwargs.setdefault("logger", HistoryLogger())
    hint_bf16(trainer_kwargs)
    if any(isinstance(c, ModelCheckpoint) for c in trainer_kwargs.get("callbacks") or []):
        trainer_kwargs.setdefault("enable_checkpointing", True)
    return {
        "max_epochs": max_epochs,
        "batch_size": batch_size,
        "train_size": train_size,
        "validation_size": validation_size,
        "early_stopping": early_stopping,
        "plan_kwargs": plan_kwargs,
        "datasplitter_kwargs": datasplitter_kwargs,
        **trainer_kwargs,
    }
