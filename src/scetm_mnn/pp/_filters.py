"""The preprocessing's cell and gene filters, read a chunk of cells at a time."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from anndata import AnnData

from .._rows import Rows


class Kept(NamedTuple):
    """Which cells and genes pass the filters, and the counts the filters read."""

    cells: np.ndarray
    n_genes: np.ndarray
    genes: np.ndarray
    n_cells: np.ndarray


def find_kept(adata: AnnData, min_genes: int, min_cells: int) -> Kept:
    """The cells and genes that pass the filters, read a chunk of cells at a time.

    They are those :func:`scanpy.pp.filter_cells` and then :func:`scanpy.pp.filter_genes`
    would keep.

    Checked in advance, so that a failing in-place call leaves ``adata`` as it was.

    Raises
    ------
    ValueError
        When the filters would leave no cell or no gene.
    """
    n_genes = np.zeros(adata.n_obs, dtype=np.int64)  # genes each cell expresses
    n_cells = np.zeros(adata.n_vars, dtype=np.int64)  # kept cells expressing each gene
    passes = Rows(adata.X).chunks(dense=False, desc="preprocess: filters")
    for start, block in passes:  # one chunk of cells at a time
        positive = block > 0
        expressed = np.asarray(positive.sum(axis=1)).ravel()
        n_genes[start : start + block.shape[0]] = expressed
        n_cells += np.asarray(positive[expressed >= min_genes].sum(axis=0)).ravel()
    cells, genes = n_genes >= min_genes, n_cells >= min_cells
    if not cells.any() or not genes.any():
        raise ValueError(
            f"No cells or genes pass the filters (min_genes={min_genes}: {int(cells.sum())} "
            f"of {adata.n_obs} cells; min_cells={min_cells}: {int(genes.sum())} of "
            f"{adata.n_vars} genes); lower them."
        )
    return Kept(cells, n_genes, genes, n_cells)
