"""``BatchCorrectedSCETM``: the embedded topic model as a scvi-tools model."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData, read_h5ad
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from scipy import sparse
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField, ObsmField

# Private scvi-tools helpers, pinned by scvi-tools>=1.4,<1.5, with no public equivalent:
# ``_initialize_model`` rebuilds a model from its saved init_params_ (BaseModelClass.load
# does the same, but unpickles with weights_only=False); ``parse_device_args`` turns
# accelerator/device into a torch device as every scvi-tools model's load does. The model
# also overrides BaseModelClass._get_user_attributes (what save writes; see save).
from scvi.model._utils import parse_device_args
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin
from scvi.model.base._save_load import _initialize_model
from scvi.utils import setup_anndata_dsp

from .._validation import (
    check_counts,
    check_finite,
    check_log_scale,
    check_not_view,
    check_obs_key,
    get_matrix,
)
from ..module import CORRECTED_KEY, ETMModule
from ..pp._corrected import corrected_source, latent_key, shift_key
from ..train import (
    CORRECTED_SHIFT_KEY,
    ETMTrainingPlan,
    HistoryLogger,
    PreloadedDataSplitter,
    flush_denormals,
    resolve_seed,
)
from ._de import DEMixin
from ._elbo import LikelihoodMixin
from ._expression import ExpressionMixin
from ._minibatches import minibatches
from ._pruning import TopicPruningMixin
from ._query import QueryMixin
from ._serialization import encode_attributes, model_path, read_model_file

logger = logging.getLogger(__name__)

DEFAULT_N_STEPS = 2000
"""Optimizer steps that ``BatchCorrectedSCETM.train`` aims for when ``max_epochs=None``."""

CorrectedInput = Literal["latent", "expression"]
CORRECTED_INPUTS: tuple[str, ...] = ("latent", "expression")
"""What the encoder reads of a corrected layer (:meth:`BatchCorrectedSCETM.setup_anndata`)."""

DEFAULT_MNN_WEIGHT = 1.0
"""Weight of the MNN term when MNN pairs are registered (``mnn_pairs_key``); 0 without them.

The scale-invariant ``"local"`` term pulls MNN-paired cells together only until they share
a neighbourhood. On ``benchmarks/pancreas.py`` (Baron human and mouse, seeds 0-4, every
method in the same run) weight 1 raised the pipeline's mean ARI over the Leiden sweep from
0.862 to 0.878 (human) and 0.785 to 0.812 (mouse), scib Total from 0.773 to 0.798 and 0.781
to 0.809, and the kNN batch entropy from 0.811 to 0.837 and 0.831 to 0.851, with the same
topic measures (8/8 marker hits on human). ``train(mnn_weight=0)`` turns it off.
"""


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


class BatchCorrectedSCETM(
    TopicPruningMixin,
    ExpressionMixin,
    LikelihoodMixin,
    DEMixin,
    QueryMixin,
    UnsupervisedTrainingMixin,
    BaseModelClass,
):
    """Single-cell embedded topic model (scETM) with batch correction.

    A VAE encoder gives topic mixtures ``θ = softmax(δ)``; a linear decoder gives
    ``softmax(θ · α · ρ [+ λ_batch])`` from topic embeddings ``α`` (K × L) and gene
    embeddings ``ρ`` (L × G), so topics stay interpretable as gene programmes.

    Two modes follow from :meth:`setup_anndata`:

    - **original scETM** (no ``corrected_layer``): the encoder reads the counts, and the
      per-batch gene bias ``λ`` absorbs batch effects in the decoder;
    - **corrected** (``corrected_layer`` written by :func:`scetm_mnn.pp.mnn_correct`): the
      encoder reads the corrected expression, so the topic mixtures come from batch-free
      input. In both modes the decoder reconstructs the observed counts with ``λ`` (a
      corrected layer is not count data, so it is never the likelihood's target).

    A trained model maps new data without retraining
    (:class:`~scetm_mnn.model.QueryMixin`):
    :meth:`~scetm_mnn.model.QueryMixin.prepare_query_anndata`, then
    :meth:`~scetm_mnn.model.QueryMixin.load_query_data`, then ``train()`` on the query
    model.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    n_topics
        Number of topics K.
    n_emb
        Dimension L of the gene and topic embeddings.
    hidden_sizes
        Encoder hidden-layer widths.
    dropout_rate
        Encoder dropout.
    batch_bias
        Use the per-batch gene bias ``λ``. ``None`` chooses: on with more than one batch.
    fixed_gene_embeddings
        Optional fixed gene-embedding rows (P × G array, or a DataFrame whose columns are
        ``adata.var_names``), e.g. a pathway × gene membership matrix, stacked under ``ρ``.
    encoder_input
        What the encoder reads of the counts in original mode: ``"proportions"`` (counts /
        library size, scETM's default) or ``"log"`` (log-normalized counts). With a
        corrected layer the encoder reads that layer as it is, and this must stay ``None``.
    mnn_loss
        Form of the MNN term used by ``train(mnn_weight=...)``
        (:func:`scetm_mnn.module.mnn_loss`): ``"local"`` (default; pulls MNN pairs
        together only until they share a neighbourhood), ``"normalized"``, or
        ``"euclidean"`` (the original term, which collapses the topic space; for ablations
        only).
    **module_kwargs
        Passed to :class:`~scetm_mnn.module.ETMModule`.

    Examples
    --------
    >>> import scetm_mnn as sm
    >>> adata = sm.datasets.simulate(n_cells=400, n_genes=200, random_state=0)
    >>> sm.model.BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch")
    >>> model = sm.model.BatchCorrectedSCETM(adata, n_topics=10)
    >>> model.train(max_epochs=5, enable_progress_bar=False)
    >>> adata.obsm["X_scetm_mnn"] = model.get_latent_representation()
    >>> adata.obsm["X_scetm_mnn"].shape
    (400, 10)
    """

    _module_cls = ETMModule
    _data_splitter_cls = PreloadedDataSplitter
    _training_plan_cls = ETMTrainingPlan

    def __init__(
        self,
        adata: AnnData,
        n_topics: int = 50,
        n_emb: int = 400,
        hidden_sizes: Sequence[int] = (128,),
        dropout_rate: float = 0.1,
        batch_bias: bool | None = None,
        fixed_gene_embeddings: np.ndarray | pd.DataFrame | None = None,
        encoder_input: Literal["log", "proportions"] | None = None,
        mnn_loss: Literal["local", "normalized", "euclidean"] = "local",
        **module_kwargs,
    ):
        n_genes = adata.n_vars
        if isinstance(n_topics, bool) or not isinstance(n_topics, int | np.integer):
            raise TypeError(f"n_topics must be an integer, not {type(n_topics).__name__}.")
        if not 2 <= n_topics <= n_genes:
            raise ValueError(
                f"n_topics={n_topics} is out of range: a topic model needs at least 2 topics "
                f"and at most one per gene ({n_genes} genes here). Choose 2 <= n_topics <= "
                f"{n_genes}."
            )
        super().__init__(adata)
        setup_args = self.adata_manager.registry["setup_args"]
        corrected = setup_args.get("corrected_layer") is not None
        n_batch = self.summary_stats.n_batch
        if batch_bias is None:
            batch_bias = n_batch > 1
        if corrected and encoder_input is not None:
            raise ValueError(
                "encoder_input applies to counts; with a corrected layer the encoder reads "
                "that layer as it is. Drop encoder_input, or register without corrected_layer."
            )
        fixed = self._align_fixed_embeddings(fixed_gene_embeddings)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(resolve_seed(None))  # the same seed gives the same init
            self.module = self._module_cls(
                n_input=self.summary_stats.n_vars,
                n_batch=n_batch,
                n_topics=n_topics,
                n_emb=n_emb,
                hidden_sizes=tuple(hidden_sizes),
                dropout_rate=dropout_rate,
                batch_bias=batch_bias,
                fixed_gene_embeddings=fixed,
                encoder_input=encoder_input or "proportions",
                mnn_loss=mnn_loss,
                n_encoder_input=self._n_encoder_input(),
                **module_kwargs,
            )
        reads = setup_args.get("corrected_input", "expression")
        mode = (
            f"encoder on corrected {reads} {setup_args['corrected_layer']!r}"
            if corrected
            else f"encoder on counts ({encoder_input or 'proportions'})"
        )
        self._model_summary_string = (
            f"BatchCorrectedSCETM: {n_topics} topics, embedding {n_emb}, input {mode}, "
            f"batch bias {'on' if batch_bias else 'off'} ({n_batch} batches), "
            f"{0 if fixed is None else fixed.shape[0]} fixed gene-embedding rows."
        )
        self.init_params_ = self._get_init_params(locals())

    def _n_encoder_input(self) -> int | None:
        """Columns of the corrected latent the encoder reads (``None``: the genes)."""
        field = self.adata_manager.data_registry.get(CORRECTED_KEY)
        if field is None or field.attr_name != "obsm":
            return None
        return int(self.adata_manager.get_from_registry(CORRECTED_KEY).shape[1])

    def _align_fixed_embeddings(self, fixed) -> np.ndarray | None:
        if fixed is None:
            return None
        if isinstance(fixed, pd.DataFrame):
            missing = self.adata.var_names.difference(fixed.columns)
            if len(missing):
                raise ValueError(
                    f"fixed_gene_embeddings lacks {len(missing)} of the model's genes "
                    f"(e.g. {list(missing[:3])}); its columns must cover adata.var_names."
                )
            fixed = fixed.loc[:, self.adata.var_names].to_numpy()
        fixed = np.asarray(fixed, dtype=np.float32)
        check_finite(fixed, "fixed_gene_embeddings")
        return fixed

    # ------------------------------------------------------------------ setup
    @classmethod
    @setup_anndata_dsp.dedent
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        batch_key: str | None = None,
        corrected_layer: str | None = None,
        mnn_pairs_key: str | None = None,
        corrected_input: CorrectedInput | Literal["auto"] = "auto",
        **kwargs,
    ) -> None:
        """Register an AnnData with the model.

        Parameters
        ----------
        adata
            AnnData with raw counts in ``X`` or ``layers[layer]``.
        layer
            Layer holding raw counts (``None``: ``X``). The decoder reconstructs these counts
            in both modes, so they are validated as count data.
        batch_key
            Column of ``obs`` with the batch of each cell (for the batch bias ``λ``).
        corrected_layer
            The ``key_added`` of :func:`scetm_mnn.pp.mnn_correct` (log-scale corrected
            expression over the same genes). When given, the encoder reads it instead of the
            counts. It is either a dense layer, or, for large data, the exact low-rank form
            ``x + C Bᵀ`` that ``mnn_correct`` always stores: each minibatch is then
            corrected from its own rows, and the dense matrix is never formed. It must be
            log-scale: raw counts there are refused.
        mnn_pairs_key
            Key of ``obsp`` holding an MNN pair matrix (e.g. ``"mnn_corrected_pairs"``
            written by :func:`scetm_mnn.pp.mnn_correct`). With it, ``train()`` adds the MNN
            term at weight ``DEFAULT_MNN_WEIGHT`` (1); ``train(mnn_weight=0)`` turns it off.
        corrected_input
            What of ``corrected_layer`` the encoder reads. ``"latent"``: the corrector's own
            corrected coordinates, ``obsm["X_" + corrected_layer]`` (its PCA space plus the
            learned shift, ``d`` = 50 dimensions), where the batches are aligned and the
            noise of the remaining gene-space directions is left out; on Baron pancreas it
            gave higher ARI, better mixing and sharper topics (see the user guide, "What
            the encoder reads"). ``"expression"``: the corrected expression over all genes
            (the layer, or its low-rank form). ``"auto"`` (the default): ``"latent"`` when
            that ``obsm`` entry exists (as :func:`scetm_mnn.pp.mnn_correct` writes it),
            else ``"expression"`` (a corrected layer from elsewhere); the choice is
            logged and registered, so a saved model and its queries read the same.
            Either way the decoder reconstructs all the counts.
        **kwargs
            Passed to :meth:`scvi.data.AnnDataManager.register_fields` (used when loading).
        """
        source = kwargs.get("source_registry")  # given when a saved model is loaded
        if source is not None and "corrected_input" not in source.get("setup_args", {}):
            corrected_input = "expression"  # saved before the option: what it was trained on
        corrected_input = cls._resolve_corrected_input(adata, corrected_layer, corrected_input)
        setup_method_args = cls._get_setup_method_args(**locals())
        check_not_view(adata, "setup_anndata")
        check_counts(adata, layer)
        if batch_key is not None:
            check_obs_key(adata, batch_key, "batch_key")
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
        ]
        if corrected_layer is not None and corrected_input == "latent":
            obsm_key = latent_key(corrected_layer)
            if obsm_key not in adata.obsm:
                raise KeyError(
                    f"corrected_input='latent' reads adata.obsm[{obsm_key!r}], which is "
                    f"missing. Run scetm_mnn.pp.mnn_correct(key_added={corrected_layer!r}) "
                    "(or MNNCorrector.transform) first, which writes it, or pass "
                    "corrected_input='expression' to read the corrected layer instead."
                )
            check_finite(np.asarray(adata.obsm[obsm_key]), f"adata.obsm[{obsm_key!r}]")
            fields.append(ObsmField(CORRECTED_KEY, obsm_key))
        elif corrected_layer is not None:
            source, low_rank = corrected_source(adata, corrected_layer)
            name = f"corrected expression {corrected_layer!r}" + (
                f" (low-rank form over {'adata.X' if source is None else repr(source)})"
                if low_rank
                else ""
            )
            corrected = get_matrix(adata, source)
            check_finite(corrected, name)
            check_log_scale(corrected, name)
            fields.append(LayerField(CORRECTED_KEY, source, is_count_data=False))
            if low_rank:
                fields.append(ObsmField(CORRECTED_SHIFT_KEY, shift_key(corrected_layer)))
        if mnn_pairs_key is not None:
            cls._check_pairs(adata, mnn_pairs_key)
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    @staticmethod
    def _resolve_corrected_input(
        adata: AnnData, corrected_layer: str | None, corrected_input: str
    ) -> CorrectedInput:
        """``"auto"`` → ``"latent"`` where the corrector's latent exists, else ``"expression"``."""
        if corrected_input not in (*CORRECTED_INPUTS, "auto"):
            raise ValueError(
                f"corrected_input must be 'auto' or one of {CORRECTED_INPUTS}, not "
                f"{corrected_input!r}."
            )
        if corrected_input != "auto":
            return corrected_input
        if corrected_layer is None:
            return "expression"
        found = latent_key(corrected_layer) in adata.obsm
        resolved = "latent" if found else "expression"
        logger.info(
            "The encoder reads the corrected %s (obsm[%r] %s).",
            resolved,
            latent_key(corrected_layer),
            "found" if found else "missing",
        )
        return resolved

    @staticmethod
    def _check_pairs(adata: AnnData, key: str) -> None:
        if key not in adata.obsp:
            available = ", ".join(map(repr, adata.obsp.keys())) or "none"
            raise KeyError(
                f"mnn_pairs_key={key!r} not found in adata.obsp (available: {available}). "
                "Run scetm_mnn.pp.mnn_correct first; it writes '<key_added>_pairs'."
            )

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int | None = None,
        batch_size: int = 256,
        lr: float | None = None,
        mnn_weight: float | None = None,
        train_size: float | None = None,
        validation_size: float | None = None,
        seed: int | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        early_stopping: bool = False,
        plan_kwargs: dict | None = None,
        datasplitter_kwargs: dict | None = None,
        **trainer_kwargs,
    ):
        """Train the model with scETM's recipe, then prune its unused and copied topics.

        At the end, :meth:`~scetm_mnn.model.TopicPruningMixin.prune_topics` (default
        thresholds) decides which topics the topic outputs expose, and logs how many; call
        it again to change them. A query model keeps its reference's topics.

        Parameters
        ----------
        max_epochs
            Passes over the data. ``None`` gives about 2,000 optimizer steps
            (:func:`default_max_epochs`), which scETM needs on small data sets; a query
            model from :meth:`~scetm_mnn.model.QueryMixin.load_query_data` aims for 200
            (only its new ``λ`` rows train).
        batch_size
            Cells sampled per optimizer step. scETM uses 2,000 (for GPUs). With MNN pairs,
            each sampled cell that has a partner in the training split brings one into the
            step for the MNN term only, so up to ``2 × batch_size`` cells are encoded; the
            likelihood averages over the sampled cells alone.
        lr
            Adam learning rate (default 5e-3, see :class:`~scetm_mnn.train.ETMTrainingPlan`;
            5e-2 for a query model, whose new ``λ`` rows are a convex fit).
        mnn_weight
            Weight of the MNN term (:func:`scetm_mnn.module.mnn_loss` of the ``δ`` means of
            MNN-paired cells). Needs ``mnn_pairs_key`` in :meth:`setup_anndata`. ``0`` turns
            it off. ``None``: ``DEFAULT_MNN_WEIGHT`` (1) when ``mnn_pairs_key`` was
            registered, else 0 (off). Also accepted as ``plan_kwargs["mnn_weight"]``.
        train_size
            Fraction of cells to train on (default all, or ``1 - validation_size``).
        validation_size
            Fraction of cells for validation (default: the rest; 0.1 with
            ``early_stopping``). MNN partners are drawn from the training cells only. The
            validation ELBO (``elbo_validation``) is logged in ``model.history``.
        seed
            Seed of the split, the minibatches, the partner draws and torch's sampling.
            ``None`` takes ``scvi.settings.seed``, and 0 when that is unset. The same seed
            gives the same model on CPU.
        accelerator
            Lightning accelerator (``"cpu"``, ``"gpu"``, ``"auto"``, ...).
        devices
            Lightning devices. With ``devices=N`` and ``strategy="ddp"`` (in
            ``trainer_kwargs``) training runs data-parallel over N processes, each on its own
            shard of the cells (see the user guide, "Training on many machines").
        early_stopping
            Stop when the validation ELBO has not improved for ``early_stopping_patience``
            validation passes (scvi-tools' default 45; pass it in ``trainer_kwargs`` with
            ``early_stopping_monitor`` / ``early_stopping_min_delta``). Validates every epoch
            on ``validation_size`` of the cells (default 0.1).
        plan_kwargs
            Passed to :class:`~scetm_mnn.train.ETMTrainingPlan` (``max_kl_weight``, default
            scETM's 1e-7; ``kl_warmup_fraction``; ``n_epochs_kl_warmup``; ``lr_decay``;
            ``gradient_clip_norm``; ...).
        datasplitter_kwargs
            Passed to :class:`~scetm_mnn.train.PreloadedDataSplitter`.
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer` (e.g. ``enable_progress_bar``,
            ``strategy``, ``callbacks``; a :class:`~lightning.pytorch.callbacks.ModelCheckpoint`
            among them turns checkpointing on, and ``ckpt_path`` resumes from one of its
            files: with the same arguments, the resumed run gives the model the
            uninterrupted run would have). The default
            logger is :class:`~scetm_mnn.train.HistoryLogger`.
        """
        if not any(p.requires_grad for p in self.module.parameters()):
            # A frozen query model whose batches are all the reference's: nothing to fit.
            logger.warning(
                "Nothing to train: every parameter is frozen (load_query_data found no new "
                "batch). The model keeps the reference's weights and is ready to use."
            )
            self.is_trained_ = True
            return None
        plan_kwargs = dict(plan_kwargs or {})
        datasplitter_kwargs = dict(datasplitter_kwargs or {})
        # A query model (load_query_data) fits only its new λ rows: fewer, larger steps.
        defaults = getattr(self, "_train_defaults", {})
        if lr is not None:
            plan_kwargs["lr"] = lr
        elif "lr" in defaults:
            plan_kwargs.setdefault("lr", defaults["lr"])
        mnn_weight = self._resolve_mnn_weight(mnn_weight, plan_kwargs.pop("mnn_weight", None))
        if mnn_weight:
            plan_kwargs["mnn_weight"] = mnn_weight
            datasplitter_kwargs["mnn_pairs"] = self._mnn_pairs()
        seed = resolve_seed(seed)
        datasplitter_kwargs.setdefault("seed", seed)
        if early_stopping and train_size is None and validation_size is None:
            validation_size = 0.1
        if train_size is None and validation_size is not None:
            train_size = 1.0 - validation_size
        if max_epochs is None:
            n_train = self.adata.n_obs if train_size is None else train_size * self.adata.n_obs
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
        if any(isinstance(c, ModelCheckpoint) for c in trainer_kwargs.get("callbacks") or []):
            trainer_kwargs.setdefault("enable_checkpointing", True)
        seed_everything(seed, verbose=False)
        with flush_denormals():  # subnormals slow the CPU's decoder step up to 1.4×
            result = super().train(
                max_epochs=max_epochs,
                batch_size=batch_size,
                train_size=train_size,
                validation_size=validation_size,
                accelerator=accelerator,
                devices=devices,
                early_stopping=early_stopping,
                plan_kwargs=plan_kwargs,
                datasplitter_kwargs=datasplitter_kwargs,
                **trainer_kwargs,
            )
        if "n_steps" not in defaults:  # a query model keeps its reference's topics
            self.prune_topics()
        return result

    def _resolve_mnn_weight(self, argument: float | None, in_plan: float | None) -> float:
        """The MNN weight to train with, from ``train()`` or ``plan_kwargs``; never silent."""
        if argument is not None and in_plan is not None and argument != in_plan:
            raise ValueError(
                f"mnn_weight={argument} and plan_kwargs['mnn_weight']={in_plan} disagree; "
                "pass one of them."
            )
        weight = argument if argument is not None else in_plan
        if weight is None:
            registered = self.adata_manager.registry["setup_args"].get("mnn_pairs_key")
            return DEFAULT_MNN_WEIGHT if registered is not None else 0.0
        if weight < 0:
            raise ValueError(f"mnn_weight must be >= 0, got {weight}.")
        return float(weight)

    def _mnn_pairs(self) -> sparse.csr_matrix:
        key = self.adata_manager.registry["setup_args"].get("mnn_pairs_key")
        if key is None:
            raise ValueError(
                "mnn_weight > 0 needs MNN pairs: call setup_anndata(..., "
                "mnn_pairs_key='mnn_corrected_pairs') after scetm_mnn.pp.mnn_correct."
            )
        self._check_pairs(self.adata, key)
        pairs = sparse.csr_matrix(self.adata.obsp[key])
        if pairs.nnz == 0:
            raise ValueError(f"adata.obsp[{key!r}] holds no MNN pairs; mnn_weight needs some.")
        return pairs

    # ------------------------------------------------------------------ outputs
    @torch.inference_mode()
    def _encode(
        self,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        batch_size: int | None,
    ) -> np.ndarray:
        """Posterior means μ of δ for the chosen cells (only their rows are read)."""
        _, _, batches = minibatches(self, adata, indices, batch_size, encoder_only=True)
        mus = [
            self.module.inference(**self.module._get_inference_input(tensors))["qz"].loc.cpu()
            for tensors in batches
        ]
        return torch.cat(mus).numpy() if mus else np.zeros((0, self.module.n_topics), "float32")

    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """The cell embedding to cluster on: posterior means μ of δ (n_obs × K).

        Parameters
        ----------
        adata
            AnnData registered like the training data (default: the model's).
        indices
            Cells to embed (default: all).
        batch_size
            Cells per forward pass.
        """
        return self._encode(adata, indices, batch_size)

    def get_topic_proportions(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Topic mixtures ``θ = softmax(μ)`` over the exposed topics; rows sum to 1.

        One column per name in :attr:`topic_names`: after training (which prunes unused
        topics and copies, :meth:`prune_topics`) a copy's weight is added to the topic it
        copies and the unused topics' weight is dropped before the rows are renormalised.
        """
        return self._expose_theta(self._full_topic_proportions(adata, batch_size, indices))

    @torch.inference_mode()
    def get_topic_gene_matrix(self) -> pd.DataFrame:
        """``β = α · ρ``: exposed topics × gene logits, columns are ``var_names``."""
        beta = self.module.topic_gene_logits().cpu().numpy()[self.exposed_topics]
        return pd.DataFrame(beta, index=self.topic_names, columns=self.adata.var_names)

    def get_top_genes(self, n: int = 10) -> pd.DataFrame:
        """The ``n`` genes with the largest ``β`` per topic (rows: rank, columns: topics)."""
        beta = self.get_topic_gene_matrix()
        n = min(int(n), beta.shape[1])
        order = np.argsort(-beta.to_numpy(), axis=1)[:, :n]
        genes = np.asarray(beta.columns)[order].T
        return pd.DataFrame(genes, columns=beta.index, index=pd.RangeIndex(n, name="rank"))

    @torch.inference_mode()
    def get_gene_embeddings(self) -> pd.DataFrame:
        """Gene embeddings ``ρᵀ`` (G × (L + P)), fixed rows included as ``fixed_*`` columns."""
        rho = self.module.gene_embeddings.cpu().numpy().T
        n_fixed = self.module.rho_fixed.shape[0]
        cols = [f"emb_{i}" for i in range(self.module.n_emb)]
        cols += [f"fixed_{i}" for i in range(n_fixed)]
        return pd.DataFrame(rho, index=self.adata.var_names, columns=cols)

    @torch.inference_mode()
    def get_topic_embeddings(self) -> pd.DataFrame:
        """Topic embeddings ``α`` of the exposed topics, same columns as the gene embeddings."""
        alpha = self.module.alpha.cpu().numpy()[self.exposed_topics]
        return pd.DataFrame(
            alpha, index=self.topic_names, columns=self.get_gene_embeddings().columns
        )

    # ------------------------------------------------------------------ save / load
    def save(self, dir_path: str, prefix: str | None = None, **kwargs) -> None:
        """Save the model (see :meth:`scvi.model.base.BaseModelClass.save`); rank 0 only.

        The file loads with ``torch.load(..., weights_only=True)``: the training history
        is kept as plain lists. After data-parallel training every process holds the same
        model; only the process of global rank 0 writes, so that N processes do not write
        one folder at once.

        Parameters
        ----------
        dir_path
            Folder to save to.
        prefix
            File-name prefix.
        **kwargs
            Passed to :meth:`scvi.model.base.BaseModelClass.save` (``overwrite``,
            ``save_anndata``, ...).
        """
        trainer = getattr(self, "trainer", None)
        if trainer is not None and not trainer.is_global_zero:
            logger.info("Not saving on rank %d; rank 0 saves the model.", trainer.global_rank)
            return
        super().save(dir_path, prefix=prefix, **kwargs)

    def _get_user_attributes(self) -> list[tuple[str, Any]]:
        # scvi-tools' (private) hook that collects what ``save`` writes: hand it the
        # attributes in types that torch.load(weights_only=True) reads back.
        return encode_attributes(super()._get_user_attributes())

    @classmethod
    def load(
        cls,
        dir_path: str,
        adata: AnnData | None = None,
        prefix: str | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
    ) -> BatchCorrectedSCETM:
        """Load a saved model, checking that ``adata`` has the genes it was trained on.

        The model file is read once, with ``torch.load(..., weights_only=True)``: a file
        that holds anything but tensors and plain data gets a clear error, never runs.

        Parameters
        ----------
        dir_path
            Folder written by ``model.save(dir_path)``.
        adata
            AnnData to attach (default: the one saved with the model, if any).
        prefix
            File-name prefix used when saving.
        accelerator, device
            Where to put the model, as in :meth:`scvi.model.base.BaseModelClass.load`.
        """
        _, _, torch_device = parse_device_args(
            accelerator=accelerator,
            devices=device,
            return_device="torch",
            validate_single_device=True,
        )
        saved = read_model_file(model_path(dir_path, prefix), map_location=torch_device)
        attrs, var_names = saved["attr_dict"], np.asarray(saved.get("var_names"))
        registry = attrs.pop("registry_")
        if registry.get("model_name", cls.__name__) != cls.__name__:
            raise ValueError(
                f"{dir_path} holds a {registry['model_name']}, not a {cls.__name__}; "
                f"load it with {registry['model_name']}.load."
            )
        if adata is None:
            saved_adata = Path(dir_path) / f"{prefix or ''}adata.h5ad"
            if not saved_adata.exists():
                raise ValueError(
                    f"No AnnData was saved in {dir_path}; pass the data: "
                    "BatchCorrectedSCETM.load(dir_path, adata=adata)."
                )
            adata = read_h5ad(saved_adata)
        if not np.array_equal(var_names, np.asarray(adata.var_names)):
            missing = pd.Index(var_names).difference(adata.var_names)
            raise ValueError(
                f"adata's genes differ from the {len(var_names)} genes the model was "
                f"trained on ({len(missing)} missing, {adata.n_vars} given). Subset and "
                "order them first: adata = adata[:, model_genes].copy(), with model_genes "
                "read from the training data."
            )
        cls.setup_anndata(adata, source_registry=registry, **registry["setup_args"])
        model = _initialize_model(cls, adata, registry, attrs, None)
        state = saved["model_state_dict"]
        model.module.on_load(model, pyro_param_store=state.pop("pyro_param_store", None))
        model.module.load_state_dict(state)
        model.to_device(torch_device)
        model.module.eval()
        model._validate_anndata(adata)
        return model
