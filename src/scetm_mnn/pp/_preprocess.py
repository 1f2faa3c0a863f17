"""The seed's preprocessing in one call: filters, normalization, log1p, HVG selection."""

from __future__ import annotations

import logging

import scanpy as sc
from anndata import AnnData

from .._validation import check_counts, check_obs_key

logger = logging.getLogger(__name__)


def preprocess(
    adata: AnnData,
    n_top_genes: int = 2000,
    batch_key: str | None = None,
    counts_layer: str = "counts",
    min_genes: int = 0,
    min_cells: int = 3,
    target_sum: float = 1e4,
    copy: bool = True,
) -> AnnData | None:
    """Filter, normalize, log-transform and keep the highly variable genes.

    Parameters
    ----------
    adata
        Raw counts in ``X``.
    n_top_genes
        Highly variable genes to keep (capped at the number of genes).
    batch_key
        ``obs`` column with batches; makes the HVG selection batch-aware.
    counts_layer
        Layer that receives a copy of the raw counts.
    min_genes
        Drop cells expressing fewer genes.
    min_cells
        Drop genes expressed in fewer cells.
    target_sum
        Counts per cell after normalization.
    copy
        Return a new AnnData (default); otherwise modify ``adata`` in place.

    Returns
    -------
    The preprocessed AnnData (log-normalized ``X`` over the HVGs, counts in
    ``layers[counts_layer]``) when ``copy=True``, else ``None``.
    """
    check_counts(adata)
    if batch_key is not None:
        check_obs_key(adata, batch_key, "batch_key")
    adata = adata.copy() if copy else adata
    if min_genes > 0:
        sc.pp.filter_cells(adata, min_genes=min_genes)
    if min_cells > 0:
        sc.pp.filter_genes(adata, min_cells=min_cells)
    adata.layers[counts_layer] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=target_sum)
    sc.pp.log1p(adata)
    n_top = min(n_top_genes, adata.n_vars)
    sc.pp.highly_variable_genes(adata, n_top_genes=n_top, batch_key=batch_key, subset=False)
    if adata.var["highly_variable"].sum() < adata.n_vars:
        adata._inplace_subset_var(adata.var["highly_variable"].to_numpy())
    logger.info("Preprocessed to %d cells × %d genes", adata.n_obs, adata.n_vars)
    return adata if copy else None
