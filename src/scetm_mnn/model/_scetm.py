"""``BatchCorrectedSCETM``: the embedded topic model as a scvi-tools model.

The class holds its constructor, ``setup_anndata``, ``train`` and the cell embedding; the
rest comes from one mixin per concept (see ``docs/architecture.md``), as in scvi-tools.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from lightning.pytorch import seed_everything
from scvi.data import AnnDataManager
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin
from scvi.utils import setup_anndata_dsp

from .._docstrings import fill_docstring
from ..module import ETMModule
from ..train import ETMTrainingPlan, PreloadedDataSplitter, flush_denormals, resolve_seed
from . import _encoder, _guided, _setup, _training
from ._de import DEMixin
from ._docs import shared_parameters
from ._elbo import LikelihoodMixin
from ._expression import ExpressionMixin
from ._minibatches import minibatches
from ._outputs import TopicOutputsMixin
from ._pruning import TopicPruningMixin
from ._query import QueryMixin
from ._save_load import SaveLoadMixin
from ._setup import CorrectedInput

logger = logging.getLogger(__name__)


@fill_docstring({**_guided.PARAMETERS, **_encoder.PARAMETERS})
class BatchCorrectedSCETM(
    TopicPruningMixin,
    TopicOutputsMixin,
    ExpressionMixin,
    LikelihoodMixin,
    DEMixin,
    QueryMixin,
    SaveLoadMixin,
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
    %(hidden_sizes)s
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
        Form of the MNN term (:func:`scetm_mnn.module.mnn_loss`): ``"local"`` (default),
        ``"normalized"``, or ``"euclidean"`` (collapses the topic space; ablations only).
    %(encoder_skip)s
    %(conformal_encoder)s
    %(gene_sets)s
    %(gene_set_strength)s
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
        hidden_sizes: Sequence[int] | None = None,
        dropout_rate: float = 0.1,
        batch_bias: bool | None = None,
        fixed_gene_embeddings: np.ndarray | pd.DataFrame | None = None,
        encoder_input: Literal["log", "proportions"] | None = None,
        mnn_loss: Literal["local", "normalized", "euclidean"] = "local",
        encoder_skip: bool | None = None,
        conformal_encoder: bool | None = None,
        gene_sets: _guided.GeneSetsArg = None,
        gene_set_strength: float = _guided.DEFAULT_STRENGTH,
        **module_kwargs,
    ):
        _setup.check_n_topics(n_topics, adata.n_vars)
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
        fixed = _setup.align_fixed_embeddings(fixed_gene_embeddings, self.adata.var_names)
        gene_sets = _guided.guided_sets(gene_sets, adata.var_names, n_topics, gene_set_strength)
        self.gene_set_names_ = list(gene_sets or ())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(resolve_seed(None))  # the same seed gives the same init
            self.module = self._module_cls(
                n_input=self.summary_stats.n_vars,
                n_batch=n_batch,
                n_topics=n_topics,
                n_emb=n_emb,
                dropout_rate=dropout_rate,
                batch_bias=batch_bias,
                fixed_gene_embeddings=fixed,
                encoder_input=encoder_input or "proportions",
                mnn_loss=mnn_loss,
                **_encoder.encoder_kwargs(
                    hidden_sizes, encoder_skip, conformal_encoder, n_topics, self.adata_manager
                ),
                topic_prior=_guided.topic_prior(gene_sets, adata.var_names, gene_set_strength),
                **module_kwargs,
            )
        self._model_summary_string = _setup.summary(
            setup_args, n_topics, n_emb, encoder_input, batch_bias, n_batch, fixed, gene_sets
        )
        self.init_params_ = self._get_init_params(locals())

    @classmethod
    @setup_anndata_dsp.dedent
    @fill_docstring(_setup.PARAMETERS)
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
        %(adata)s
        %(layer)s
        %(batch_key)s
        %(corrected_layer)s
        %(mnn_pairs_key)s
        %(corrected_input)s
        %(kwargs)s
        """
        source = kwargs.get("source_registry")  # given when a saved model is loaded
        if source is not None and "corrected_input" not in source.get("setup_args", {}):
            corrected_input = "expression"  # saved before the option: what it was trained on
        corrected_input = _setup.resolve_corrected_input(
            adata, corrected_layer, corrected_input, logger
        )
        # Every local so far but adata and kwargs is a registered setup argument.
        setup_method_args = cls._get_setup_method_args(**locals())
        fields = _setup.setup_fields(
            adata, layer, batch_key, corrected_layer, corrected_input, mnn_pairs_key
        )
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    @fill_docstring(_training.PARAMETERS)
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
        thresholds) decides which topics the topic outputs expose, and logs how many (call
        it again to change them); a query model with frozen topics keeps its reference's.

        Parameters
        ----------
        %(max_epochs)s
        %(batch_size)s
        %(lr)s
        %(mnn_weight)s
        %(train_size)s
        %(validation_size)s
        %(seed)s
        accelerator
            Lightning accelerator (``"cpu"``, ``"gpu"``, ``"auto"``, ...).
        devices
            Lightning devices. ``devices=N, strategy="ddp"`` trains data-parallel over N
            processes, each on its own shard of the cells (:doc:`/distributed`).
        %(early_stopping)s
        %(plan_kwargs)s
        %(datasplitter_kwargs)s
        %(trainer_kwargs)s
        """
        if not any(p.requires_grad for p in self.module.parameters()):
            # A frozen query model whose batches are all the reference's: nothing to fit.
            logger.warning(
                "Nothing to train: every parameter is frozen (load_query_data found no new "
                "batch). The model keeps the reference's weights and is ready to use."
            )
            self.is_trained_ = True
            return None
        seed = resolve_seed(seed)
        arguments = _training.train_arguments(
            self, max_epochs, batch_size, lr, mnn_weight, train_size, validation_size, seed,
            early_stopping, plan_kwargs, datasplitter_kwargs,
            {"accelerator": accelerator, "devices": devices, **trainer_kwargs},
        )  # fmt: skip
        seed_everything(seed, verbose=False)
        with flush_denormals():  # subnormals slow the CPU's decoder step up to 1.4×
            result = super().train(**arguments)
        if self.module.alpha.requires_grad:  # the topics trained (not a frozen query)
            self.prune_topics()
        return result

    @shared_parameters
    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """The cell embedding to cluster on: posterior means μ of δ (n_obs × K).

        Only the chosen cells' rows are read.

        Parameters
        ----------
        %(cells)s
        """
        _, _, batches = minibatches(self, adata, indices, batch_size, encoder_only=True)
        mus = [
            self.module.inference(**self.module._get_inference_input(tensors))["qz"].loc.cpu()
            for tensors in batches
        ]
        return torch.cat(mus).numpy() if mus else np.zeros((0, self.module.n_topics), "float32")
