"""What :meth:`BatchCorrectedSCETM.setup_anndata` registers, and the checks of its inputs.

:func:`setup_fields` validates an AnnData and returns the scvi-tools fields of a model's
registry: the counts (the likelihood's target), the batch, and in corrected mode what the
encoder reads of the corrected layer (:func:`resolve_corrected_input`). The constructor's
checks of the registered data (``n_topics``, the fixed gene embeddings) live here too.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import BaseAnnDataField, CategoricalObsField, LayerField, ObsmField

from .._validation import (
    check_counts,
    check_finite,
    check_log_scale,
    check_not_view,
    check_obs_key,
    get_matrix,
)
from ..module import CORRECTED_KEY
from ..pp._corrected import corrected_source, latent_key, shift_key
from ..train import CORRECTED_SHIFT_KEY

logger = logging.getLogger(__name__)

CorrectedInput = Literal["latent", "expression"]
CORRECTED_INPUTS: tuple[str, ...] = ("latent", "expression")
"""What the encoder reads of a corrected layer (:meth:`BatchCorrectedSCETM.setup_anndata`)."""


PARAMETERS = {
    "adata": """\
adata
    AnnData with raw counts in ``X`` or ``layers[layer]``.""",
    "layer": """\
layer
    Layer holding raw counts (``None``: ``X``). The decoder reconstructs these counts
    in both modes, so they are validated as count data.""",
    "batch_key": """\
batch_key
    Column of ``obs`` with the batch of each cell (for the batch bias ``λ``).""",
    "corrected_layer": """\
corrected_layer
    The ``key_added`` of :func:`scetm_mnn.pp.mnn_correct` (log-scale corrected
    expression over the same genes). When given, the encoder reads it instead of the
    counts. It is either a dense layer, or, for large data, the exact low-rank form
    ``x + C Bᵀ`` that ``mnn_correct`` always stores: each minibatch is then
    corrected from its own rows, and the dense matrix is never formed. It must be
    log-scale: raw counts there are refused.""",
    "mnn_pairs_key": """\
mnn_pairs_key
    Key of ``obsp`` holding an MNN pair matrix (e.g. ``"mnn_corrected_pairs"``
    written by :func:`scetm_mnn.pp.mnn_correct`). With it, ``train()`` adds the MNN
    term at weight ``DEFAULT_MNN_WEIGHT`` (1); ``train(mnn_weight=0)`` turns it off.""",
    "corrected_input": """\
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
    Either way the decoder reconstructs all the counts.""",
    "kwargs": """\
**kwargs
    Passed to :meth:`scvi.data.AnnDataManager.register_fields` (used when loading).""",
}
"""The docs of ``setup_anndata``'s arguments, beside the code that checks them."""


def resolve_corrected_input(
    adata: AnnData, corrected_layer: str | None, corrected_input: str, log: logging.Logger
) -> CorrectedInput:
    """``"auto"`` → ``"latent"`` where the corrector's latent exists, else ``"expression"``.

    The choice ``"auto"`` makes for a corrected layer is logged to ``log`` (the model's).
    """
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
    log.info(
        "The encoder reads the corrected %s (obsm[%r] %s).",
        resolved,
        latent_key(corrected_layer),
        "found" if found else "missing",
    )
    return resolved


def check_pairs(adata: AnnData, key: str) -> None:
    """``adata.obsp[key]`` exists (the MNN pairs of ``mnn_pairs_key``)."""
    if key not in adata.obsp:
        available = ", ".join(map(repr, adata.obsp.keys())) or "none"
        raise KeyError(
            f"mnn_pairs_key={key!r} not found in adata.obsp (available: {available}). "
            "Run scetm_mnn.pp.mnn_correct first; it writes '<key_added>_pairs'."
        )


def setup_fields(
    adata: AnnData,
    layer: str | None,
    batch_key: str | None,
    corrected_layer: str | None,
    corrected_input: CorrectedInput,
    mnn_pairs_key: str | None,
) -> list[BaseAnnDataField]:
    """The registry's fields for these ``setup_anndata`` arguments, each input checked."""
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
        check_pairs(adata, mnn_pairs_key)
    return fields


def check_n_topics(n_topics, n_genes: int) -> None:
    """``n_topics`` is an integer in ``[2, n_genes]``."""
    if isinstance(n_topics, bool) or not isinstance(n_topics, int | np.integer):
        raise TypeError(f"n_topics must be an integer, not {type(n_topics).__name__}.")
    if not 2 <= n_topics <= n_genes:
        raise ValueError(
            f"n_topics={n_topics} is out of range: a topic model needs at least 2 topics "
            f"and at most one per gene ({n_genes} genes here). Choose 2 <= n_topics <= "
            f"{n_genes}."
        )


def n_encoder_input(adata_manager: AnnDataManager) -> int | None:
    """Columns of the corrected latent the encoder reads (``None``: the genes)."""
    field = adata_manager.data_registry.get(CORRECTED_KEY)
    if field is None or field.attr_name != "obsm":
        return None
    return int(adata_manager.get_from_registry(CORRECTED_KEY).shape[1])


def align_fixed_embeddings(fixed, var_names: pd.Index) -> np.ndarray | None:
    """``fixed_gene_embeddings`` as a float32 array whose columns are ``var_names``."""
    if fixed is None:
        return None
    if isinstance(fixed, pd.DataFrame):
        missing = var_names.difference(fixed.columns)
        if len(missing):
            raise ValueError(
                f"fixed_gene_embeddings lacks {len(missing)} of the model's genes "
                f"(e.g. {list(missing[:3])}); its columns must cover adata.var_names."
            )
        fixed = fixed.loc[:, var_names].to_numpy()
    fixed = np.asarray(fixed, dtype=np.float32)
    check_finite(fixed, "fixed_gene_embeddings")
    return fixed


def summary(
    setup_args: dict,
    n_topics: int,
    n_emb: int,
    encoder_input: str | None,
    batch_bias: bool,
    n_batch: int,
    fixed: np.ndarray | None,
    gene_sets: dict | None,
) -> str:
    """The model's one-line summary: topics, input, batch bias, fixed rows, guided topics."""
    mode = (
        f"encoder on corrected {setup_args.get('corrected_input', 'expression')} "
        f"{setup_args['corrected_layer']!r}"
        if setup_args.get("corrected_layer") is not None
        else f"encoder on counts ({encoder_input or 'proportions'})"
    )
    guided = f", {len(gene_sets)} guided by gene sets" if gene_sets else ""
    return (
        f"BatchCorrectedSCETM: {n_topics} topics{guided}, embedding {n_emb}, input {mode}, "
        f"batch bias {'on' if batch_bias else 'off'} ({n_batch} batches), "
        f"{0 if fixed is None else fixed.shape[0]} fixed gene-embedding rows."
    )
