"""Query mapping (scArches-style model surgery) for :class:`BatchCorrectedSCETM`.

A trained reference model maps a new donor or study without retraining, following
scvi-tools' ``ArchesMixin`` (:meth:`scvi.model.base.ArchesMixin.load_query_data`):

1. :meth:`QueryMixin.prepare_query_anndata` puts the query's genes in the reference's
   order, filling genes it lacks with zeros;
2. :meth:`QueryMixin.load_query_data` registers the query with the reference's registry
   (``extend_categories=True``: the query's new batches get new codes after the
   reference's), builds a model of the same architecture, copies the reference's weights
   into it, adds one new row of the batch bias ``λ`` per new batch, and freezes everything
   else;
3. ``model.train()`` then fine-tunes the new ``λ`` rows on the query alone.

The encoder of the topic model takes no batch covariate, so the query's latent
representation is the reference encoder's output on the query's input. In original mode
that input is the query's counts; in corrected mode it is the query's corrected layer,
which the reference's corrector writes (``corrector.transform(query)``). The new ``λ``
rows make the decoder's outputs for the query (ELBO, normalized expression, DE) account
for its batches.
"""

from __future__ import annotations

import logging
import os
import warnings
from copy import deepcopy
from typing import Literal, Self

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from scvi import REGISTRY_KEYS
from scvi.data._constants import _SETUP_ARGS_KEY
from scvi.model.base._save_load import _initialize_model

from .._validation import check_not_view, check_obs_key
from ..pp._corrected import corrected_source, latent_key
from ..pp._genes import match_genes
from ._docs import shared_parameters
from ._reference import freeze_reference, load_reference_state, reference_parts
from ._save_load import torch_device

logger = logging.getLogger(__name__)

MAX_MISSING_FRACTION = 0.2
"""Default largest fraction of the reference's genes a query may lack.

scvi-tools warns below 80 % shared genes (``MIN_VAR_NAME_RATIO``); here the same threshold
refuses, since a zero-filled gene reads as "not expressed" to the encoder.
"""

QUERY_STEPS = 200
"""Optimizer steps that ``train()`` of a query model aims for when ``max_epochs=None``."""
QUERY_LR = 5e-2
"""Default learning rate of ``train()`` for a query model.

Only the new rows of ``λ`` train, and the likelihood is concave in them for fixed topic
mixtures, so larger and fewer steps than the reference's (5e-3, 2,000 steps) suffice: on
simulated data (1,000 query cells, 1,000 genes) 200 steps at 5e-2 reach the query ELBO of
500 steps at 5e-3 (-1090.5 against -1091.4) in 40 % of the time.
"""

SharedBatches = Literal["reuse", "raise"]


def _pad_columns(x, order: np.ndarray) -> sparse.csr_matrix | np.ndarray:
    """Columns of ``x`` taken at ``order``; ``-1`` gives a column of zeros."""
    present = np.flatnonzero(order >= 0)
    if sparse.issparse(x):
        # x @ P with P[order[j], j] = 1: a column selection that keeps x sparse.
        ones = np.ones(present.size, dtype=x.dtype)
        select = sparse.csr_matrix((ones, (order[present], present)), (x.shape[1], order.size))
        return sparse.csr_matrix(x @ select)
    x = np.asarray(x)
    out = np.zeros((x.shape[0], order.size), dtype=x.dtype)
    out[:, present] = x[:, order[present]]
    return out


def _aligned_var(var: pd.DataFrame, genes: pd.Index) -> pd.DataFrame:
    """``var`` at the reference's genes; boolean columns are ``False`` for the added ones."""
    out = var.reindex(genes)
    for column in var.columns:
        if var[column].dtype == bool:
            out[column] = out[column].fillna(False).astype(bool)
    out.index = genes
    return out


@shared_parameters
class QueryMixin:
    """Map a query data set onto a trained reference model (scArches-style surgery).

    Mixed into :class:`~scetm_mnn.model.BatchCorrectedSCETM`, as scvi-tools'
    :class:`~scvi.model.base.ArchesMixin` is into its models. The reference is never
    changed: the query model is a new model holding a copy of its weights.

    Examples
    --------
    %(query_split)s
    >>> query = sm.model.BatchCorrectedSCETM.prepare_query_anndata(query, model)
    >>> query_model = sm.model.BatchCorrectedSCETM.load_query_data(query, model)
    >>> query_model.train(max_epochs=5, enable_progress_bar=False)
    >>> query_model.get_latent_representation().shape
    (100, 4)
    """

    @classmethod
    @shared_parameters
    def prepare_query_anndata(
        cls,
        query: AnnData,
        reference: Self | str | os.PathLike | pd.Index,
        max_missing: float = MAX_MISSING_FRACTION,
        prefix: str | None = None,
    ) -> AnnData:
        """A copy of ``query`` with the reference's genes, in its order.

        Genes of the reference that the query lacks are filled with zeros (in ``X`` and
        every layer; a warning says how many); genes the query has beyond the reference's
        are dropped. ``obs``, ``obsm`` and ``obsp`` are kept; ``var`` keeps the query's
        columns for its genes. ``query`` itself is not changed.

        Parameters
        ----------
        query
            The new cells, raw counts as the reference was registered (same layer).
        reference
            The trained reference model, the folder it was saved to, or its genes (a
            :class:`pandas.Index` of names, e.g. ``reference_adata.var_names``).
        max_missing
            Largest fraction of the reference's genes the query may lack (default 0.2).
        prefix
            File-name prefix, when ``reference`` is a folder saved with one.

        Returns
        -------
        The aligned copy, ready for :meth:`load_query_data`.

        Raises
        ------
        ValueError
            When the query lacks more than ``max_missing`` of the reference's genes, or
            has duplicate gene names.

        Examples
        --------
        >>> import warnings
        %(registered)s
        >>> model = sm.model.BatchCorrectedSCETM(adata, n_topics=4, n_emb=8)
        >>> query = adata[:20, adata.var_names[5:]].copy()  # 5 genes missing
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     aligned = sm.model.BatchCorrectedSCETM.prepare_query_anndata(query, model)
        >>> list(aligned.var_names) == list(adata.var_names), str(caught[0].message)[:34]
        (True, 'The query lacks 5 of the 50 refere')
        >>> float(aligned.X[:, :5].sum())
        0.0
        """
        if not 0.0 <= max_missing <= 1.0:
            raise ValueError(f"max_missing must be a fraction in [0, 1], got {max_missing}.")
        if isinstance(reference, pd.Index):
            genes = reference.astype(str)
        else:
            genes = reference_parts(reference, prefix)["var_names"]
        alignment = match_genes(genes, query.var_names.astype(str))
        order = alignment.columns
        n_missing = alignment.missing.size
        fraction = n_missing / len(genes)
        n_extra = alignment.n_extra
        if fraction > max_missing:
            raise ValueError(
                f"The query lacks {n_missing} of the reference's {len(genes)} genes "
                f"({fraction:.0%}), more than max_missing={max_missing:.0%}. Check that both "
                "use the same gene identifiers (symbols or Ensembl IDs, same species: map "
                "species with scetm_mnn.datasets.to_orthologs), or pass a larger max_missing."
            )
        if n_missing:
            warnings.warn(
                f"The query lacks {n_missing} of the {len(genes)} reference genes "
                f"({fraction:.1%}); they are filled with zeros (e.g. "
                f"{list(genes[order < 0][:3])}).",
                UserWarning,
                stacklevel=2,
            )
        logger.info(
            "Aligned the query to %d reference genes: %d missing (zeros), %d extra dropped.",
            len(genes), n_missing, n_extra,
        )  # fmt: skip
        return AnnData(
            X=None if query.X is None else _pad_columns(query.X, order),
            obs=query.obs.copy(),
            var=_aligned_var(query.var, genes),
            layers={key: _pad_columns(value, order) for key, value in query.layers.items()},
            obsm={key: deepcopy(value) for key, value in query.obsm.items()},
            obsp={key: deepcopy(value) for key, value in query.obsp.items()},
            uns=deepcopy(dict(query.uns)),
        )

    @classmethod
    @shared_parameters
    def load_query_data(
        cls,
        query: AnnData,
        reference: Self | str | os.PathLike,
        freeze: bool = True,
        shared_batches: SharedBatches = "reuse",
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
    ) -> Self:
        """A new model for ``query``: the reference's weights, with ``λ`` extended.

        ``query`` is registered in place with the reference's registry (as
        :meth:`~scetm_mnn.model.BatchCorrectedSCETM.setup_anndata` registers data), with
        ``extend_categories=True``: each batch of ``query`` not in the reference gets a new
        code and a new row of the batch bias ``λ``, started at the mean of the reference's
        rows. With ``freeze``, every reference weight is frozen (``requires_grad=False``),
        the encoder's BatchNorm statistics stop updating, and a gradient hook on ``λ``
        zeroes the gradient of its reference rows, so ``train()`` fine-tunes only the new
        rows, on the query alone (by default 200 steps at learning rate 5e-2). The
        topic-gene matrix ``β = α · ρ`` stays the reference's.

        **Batches shared with the reference.** A query batch whose name is a batch of the
        reference is taken to be that batch, as scvi-tools does: its cells use that
        batch's (frozen) ``λ`` row. If the name only happens to be the same (``"batch0"``
        of another study), rename the query's batches first, e.g.
        ``query.obs["batch"] = "query_" + query.obs["batch"].astype(str)``, or pass
        ``shared_batches="raise"`` to refuse such a query.

        Parameters
        ----------
        query
            The query, with the reference's genes in its order
            (:meth:`prepare_query_anndata`), raw counts in the registered layer and the
            batch column the reference was registered with. For a reference registered
            with ``corrected_layer``, the query needs that layer too: run the reference's
            corrector on it first (``corrector.transform(query)``).
        reference
            The trained reference model, or the folder it was saved to.
        freeze
            Freeze the reference's weights (the default; scArches' recipe). ``False``
            fine-tunes every weight on the query (scvi-tools' ``unfrozen=True``), which
            changes ``β``.
        shared_batches
            ``"reuse"`` (default): a query batch named like a reference batch uses that
            batch's ``λ`` row (logged as a warning). ``"raise"``: refuse such a query.
        accelerator, device
            Where to put the model, as in
            :meth:`~scetm_mnn.model.BatchCorrectedSCETM.load`.
        prefix
            File-name prefix, when ``reference`` is a folder saved with one.

        Returns
        -------
        The query model. Call ``train()`` on it, then its outputs (latent representation,
        topic mixtures, ...) for the query's cells.

        Raises
        ------
        ValueError
            When the query's genes differ from the reference's, the reference is not
            trained, or a batch is shared and ``shared_batches="raise"``.
        KeyError
            When the query lacks the batch column or the corrected layer the reference
            was registered with.

        Examples
        --------
        %(query_split)s
        >>> query_model = sm.model.BatchCorrectedSCETM.load_query_data(query, model)
        >>> tuple(query_model.module.batch_bias.shape)  # a third row for batch_2
        (3, 60)
        >>> [n for n, p in query_model.module.named_parameters() if p.requires_grad]
        ['batch_bias']
        """
        if shared_batches not in ("reuse", "raise"):
            raise ValueError(f"shared_batches must be 'reuse' or 'raise', not {shared_batches!r}.")
        check_not_view(query, "load_query_data")
        if query.n_obs == 0:
            raise ValueError("The query has no cells.")
        parts = reference_parts(reference, prefix)
        registry = parts["registry"]
        if registry.get("model_name", cls.__name__) != cls.__name__:
            raise ValueError(
                f"The reference is a {registry['model_name']}, not a {cls.__name__}; map "
                f"the query with {registry['model_name']}.load_query_data."
            )
        if not parts["trained"]:
            raise ValueError("The reference model is not trained; call reference.train().")
        genes = parts["var_names"]
        if not np.array_equal(np.asarray(query.var_names.astype(str)), np.asarray(genes)):
            missing = genes.difference(query.var_names)
            raise ValueError(
                f"The query's genes differ from the reference's {len(genes)} genes "
                f"({len(missing)} missing, {query.n_vars} given, or in another order). "
                f"Align them first: query = {cls.__name__}.prepare_query_anndata(query, "
                "reference)."
            )
        setup_args = dict(registry[_SETUP_ARGS_KEY])
        cls._check_query_inputs(query, setup_args)
        new_batches = cls._query_batches(query, registry, setup_args, shared_batches)
        # MNN pairs are the reference's; the query model trains without the MNN term.
        setup_args["mnn_pairs_key"] = None
        cls.setup_anndata(query, source_registry=registry, extend_categories=True, **setup_args)

        state = parts["state"]
        init_params = deepcopy(parts["init_params"])
        # The reference's λ, whatever batch_bias=None chose for it, not a new choice.
        init_params["non_kwargs"]["batch_bias"] = "batch_bias" in state
        device = torch_device(accelerator, device)
        model = _initialize_model(cls, query, registry, {"init_params_": init_params}, None)
        n_reference = load_reference_state(model, state)
        model.to_device(device)
        if freeze:
            freeze_reference(model.module, n_reference)
        model.is_trained_ = False
        model.topic_map_ = parts["topic_map"]  # the reference's topics, not the query's
        model.topic_usage_ = parts.get("topic_usage")
        if freeze:
            model._train_defaults = {"n_steps": QUERY_STEPS, "lr": QUERY_LR}
        n_trainable = sum(p.numel() for p in model.module.parameters() if p.requires_grad)
        logger.info(
            "Query model: %d new batches %s, %d trainable numbers.",
            len(new_batches), new_batches, n_trainable,
        )  # fmt: skip
        return model

    @staticmethod
    def _check_query_inputs(query: AnnData, setup_args: dict) -> None:
        """The batch column and the corrected layer the reference was registered with."""
        batch_key = setup_args.get("batch_key")
        if batch_key is not None:
            check_obs_key(query, batch_key, "the reference's batch_key")
        corrected = setup_args.get("corrected_layer")
        if corrected is not None and setup_args.get("corrected_input") == "latent":
            if latent_key(corrected) not in query.obsm:
                raise KeyError(
                    f"The reference's encoder reads the corrector's latent "
                    f"obsm[{latent_key(corrected)!r}], which the query lacks. Run the "
                    "reference's corrector on the query first (corrector.transform(query), "
                    "which writes it), after prepare_query_anndata."
                )
        elif corrected is not None:
            try:
                corrected_source(query, corrected)
            except KeyError:
                raise KeyError(
                    f"The reference's encoder reads the corrected layer {corrected!r}, which "
                    "the query lacks. Run the reference's corrector on the query first "
                    f"(corrector.transform(query), which writes layers[{corrected!r}]), "
                    "after prepare_query_anndata."
                ) from None

    @staticmethod
    def _query_batches(
        query: AnnData, registry: dict, setup_args: dict, shared_batches: SharedBatches
    ) -> list[str]:
        """The query's batches that the reference lacks; shared ones are warned or refused."""
        batch_key = setup_args.get("batch_key")
        mapping = registry["field_registries"][REGISTRY_KEYS.BATCH_KEY]["state_registry"][
            "categorical_mapping"
        ]
        reference_batches = pd.Index(np.asarray(mapping).astype(str))
        if batch_key is None:
            return []
        query_batches = pd.Index(pd.unique(query.obs[batch_key].astype(str)))
        shared = list(query_batches.intersection(reference_batches))
        if shared and shared_batches == "raise":
            raise ValueError(
                f"The query's batches {shared} are also batches of the reference. Rename "
                f"them if they are other batches (query.obs[{batch_key!r}] = 'query_' + "
                f"query.obs[{batch_key!r}].astype(str)), or pass shared_batches='reuse' to "
                "map them with the reference's batch bias."
            )
        if shared:
            logger.warning(
                "The query's batches %s are batches of the reference too: their cells use "
                "the reference's frozen batch bias. Rename them if they are other batches.",
                shared,
            )
        return list(query_batches.difference(reference_batches))
