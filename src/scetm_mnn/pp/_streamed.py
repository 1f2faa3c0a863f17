"""``preprocess(..., filename=)``: the same preprocessing, streamed from the input to a new file.

The input (in memory, or an AnnData opened with ``backed="r"`` whose counts are far larger
than memory) is read a chunk of cells at a time, three times:

1. the filters' counts (:func:`~scetm_mnn.pp._filters.find_kept`, as in memory);
2. the HVG statistics, on the cells :func:`~scetm_mnn.pp._hvg.hvg_sample` names
   (all of them up to ``HVG_MAX_CELLS``, else the same seeded sample as in memory),
   log-normalized exactly as in memory;
3. the output: each chunk normalized, log-transformed and cut to the HVGs, and appended to
   ``X`` and to the counts layer of the new file (:func:`scetm_mnn._h5ad.write_blocks`).

Every value is computed as the in-memory path computes it (per-cell sums over the kept
genes, the same float dtype), so the file holds what ``preprocess(adata, copy=True)``
returns; the input is only read. Memory is bounded by a chunk, the HVG sample and the
annotations.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._disk import array_bytes, check_free_space
from .._h5ad import dataset_kwargs, space_fix, stored_bytes, write_blocks
from .._rows import index_chunks
from ._filters import Kept
from ._hvg import hvg_sample, hvg_statistics
from ._normalize import float_copy, normalize_rows_in_place

logger = logging.getLogger(__name__)

SIZE_SAMPLE_CELLS = 20_000
"""Cells of the HVG sample, spread over it, written (in memory) to measure compression."""


def _read(x, rows: np.ndarray) -> sparse.csr_matrix:
    """The stored rows ``rows`` (increasing) of ``x``, as CSR in their own dtype."""
    return sparse.csr_matrix(x[rows])


def _log_normalized(counts: sparse.csr_matrix, target_sum: float) -> tuple[sparse.csr_matrix, int]:
    """``log1p`` of the counts scaled to ``target_sum`` per cell, as the in-memory path does.

    The rules are the in-memory path's (:mod:`scetm_mnn.pp._normalize`); also returned is the
    number of cells without counts, which stay zero.
    """
    x = float_copy(counts)
    empty = normalize_rows_in_place(x, target_sum)
    np.log1p(x.data, out=x.data)
    return x, empty


def _kept_rows(x, kept: Kept, positions: np.ndarray, genes: np.ndarray | None, desc: str):
    """Counts of the kept cells at ``positions`` (increasing), over the kept ``genes``."""
    cells = np.flatnonzero(kept.cells)
    for _, chunk in index_chunks(positions, desc=desc):
        block = _read(x, cells[chunk])
        yield block if genes is None else block[:, genes]


def preprocess_to_file(
    adata: AnnData,
    filename: str | os.PathLike,
    kept: Kept,
    n_top_genes: int,
    batch_key: str | None,
    counts_layer: str,
    min_genes: int,
    min_cells: int,
    target_sum: float,
    compression: str | None = None,
) -> AnnData:
    """Write the preprocessed data to ``filename`` and return it opened with ``backed="r"``.

    ``kept`` are the filters' cells and genes (checked by the caller); ``compression`` is
    the matrices' HDF5 filter (:func:`scetm_mnn._h5ad.write_blocks`).
    """
    dataset_kwargs(compression)  # refused before the passes over the input
    x = adata.X
    cells = np.flatnonzero(kept.cells)
    genes = None if kept.genes.all() else np.flatnonzero(kept.genes)
    obs = adata.obs.copy()
    if min_genes > 0:
        obs["n_genes"] = kept.n_genes
    var = adata.var.copy()
    if min_cells > 0:
        var["n_cells"] = kept.n_cells
    obs, var = obs.iloc[cells], var.iloc[np.flatnonzero(kept.genes)]

    # The HVGs, from the cells the in-memory path would use.
    positions = hvg_sample(cells.size)
    if positions is None:
        positions = np.arange(cells.size)
    else:
        logger.info("HVG statistics from %d of %d cells.", positions.size, cells.size)
    blocks = [
        _log_normalized(b, target_sum)[0]
        for b in _kept_rows(x, kept, positions, genes, "preprocess: HVG sample")
    ]
    sample = AnnData(
        X=sparse.vstack(blocks, format="csr"),
        obs=obs.iloc[positions][[] if batch_key is None else [batch_key]],
        var=pd.DataFrame(index=var.index),
    )
    table, hvg = hvg_statistics(sample, n_top_genes, batch_key)
    for column in table.columns:
        var[column] = table[column].to_numpy()
    selected = var["highly_variable"].to_numpy() if n_top_genes < var.shape[0] else None
    if selected is not None:
        var = var.iloc[np.flatnonzero(selected)]
    # The bytes of X and of the counts: the whole sample's log-expression over the HVGs
    # (the counts are not larger) per sampled cell, times the ratio that compression
    # achieves on cells spread over the sample (1 uncompressed).
    logged = sample.X if selected is None else sample.X[:, selected]
    spread = logged[:: -(-logged.shape[0] // SIZE_SAMPLE_CELLS) or 1]
    ratio = stored_bytes(spread, compression) / max(array_bytes(spread), 1)
    per_cell = 2 * ratio * array_bytes(logged) / max(logged.shape[0], 1)
    if compression is None:  # the counts' values in their own dtype
        per_cell += (np.dtype(x.dtype).itemsize - 4) * logged.nnz / max(logged.shape[0], 1)
    del sample, blocks, logged, spread

    uns = {**dict(adata.uns), "log1p": {"base": None}, "hvg": hvg}
    obsm = {key: np.asarray(value)[cells] for key, value in adata.obsm.items()}
    varm = {
        key: np.asarray(value)[np.flatnonzero(kept.genes)] for key, value in adata.varm.items()
    }
    if selected is not None:
        varm = {key: value[selected] for key, value in varm.items()}
    needed = int(1.05 * per_cell * cells.size) + 16 * (cells.size + 1) + (1 << 20)
    check_free_space(filename, needed, "the preprocessed data", space_fix(compression))

    def written() -> Iterator[dict[str, sparse.csr_matrix]]:
        empty = 0
        for counts in _kept_rows(x, kept, np.arange(cells.size), genes, "preprocess: writing"):
            logged, no_counts = _log_normalized(counts, target_sum)
            empty += no_counts
            if selected is not None:
                counts, logged = counts[:, selected], logged[:, selected]
            yield {"X": logged, counts_layer: counts}
        if empty:
            warnings.warn("Some cells have zero counts", UserWarning, stacklevel=2)

    result = write_blocks(
        filename, obs, var, written(), uns=uns, obsm=obsm, varm=varm, compression=compression
    )
    logger.info(
        "Preprocessed to %d cells × %d genes in %s.", result.n_obs, result.n_vars, filename
    )
    return result
