"""The highly variable genes: scanpy's seurat flavour on all cells, or on a seeded sample.

One definition for :func:`~scetm_mnn.pp.preprocess` in memory and streamed from disk
(``scetm_mnn.pp._streamed``): the same cells, the same statistics.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData

HVG_MAX_CELLS = 200_000
"""Above this many cells the HVG statistics come from a seeded random sample of this many
(scanpy's seurat flavour copies each batch's rows twice; the sample bounds that memory)."""

_BATCH_COLUMN = "__scetm_mnn_hvg_batch__"
"""Temporary ``obs`` column: the batches as a categorical of the kept cells, for scanpy."""


def hvg_sample(n_obs: int) -> np.ndarray | None:
    """The sorted positions of the cells whose statistics select the HVGs (``None``: all).

    Above :data:`HVG_MAX_CELLS` cells, a seeded random sample of that many: the same
    cells whether the data are in memory or streamed from disk.
    """
    if n_obs <= HVG_MAX_CELLS:
        return None
    rng = np.random.default_rng(0)
    return np.sort(rng.choice(n_obs, HVG_MAX_CELLS, replace=False))


def hvg_statistics(
    sample: AnnData, n_top_genes: int, batch_key: str | None
) -> tuple[pd.DataFrame, dict]:
    """The seurat HVG columns (scanpy) of the genes of ``sample`` (log data) and ``uns["hvg"]``.

    Only the columns scanpy adds are returned; ``sample``'s own are left out.

    The batches go to scanpy as a categorical of the sample's batches (any dtype of
    ``obs[batch_key]`` works, and batches without cells are left out), in a temporary
    column, so ``obs`` keeps its columns as they were. With ``n_top_genes`` at least the
    number of genes every gene is kept; the statistics then come from scanpy's cutoff mode,
    which also works where too few genes or cells leave no normalized dispersion to rank.
    """
    key, before = None, set(sample.var.columns)
    if batch_key is not None:
        key = _BATCH_COLUMN
        sample.obs[key] = pd.Categorical(sample.obs[batch_key].astype(str))
    try:
        if n_top_genes >= sample.n_vars:
            sc.pp.highly_variable_genes(sample, flavor="seurat", batch_key=key)
            sample.var["highly_variable"] = True
        else:
            sc.pp.highly_variable_genes(
                sample, n_top_genes=n_top_genes, flavor="seurat", batch_key=key
            )
    finally:
        if key is not None:
            del sample.obs[key]
    added = [column for column in sample.var.columns if column not in before]
    return sample.var[added].copy(), dict(sample.uns.get("hvg", {}))
