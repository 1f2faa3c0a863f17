"""``preprocess``: cell/gene filters, normalization, log1p and HVG selection in one call."""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np
import scanpy as sc
from anndata import AnnData
from scipy import sparse

from .._validation import check_counts, check_obs_key
from ._actual import make_actual
from ._filters import Kept, find_kept
from ._hvg import HVG_MAX_CELLS, hvg_sample, hvg_statistics
from ._normalize import float_copy, normalize_rows_in_place

logger = logging.getLogger(__name__)


def preprocess(
    adata: AnnData,
    n_top_genes: int = 2000,
    batch_key: str | None = None,
    counts_layer: str = "counts",
    min_genes: int = 1,
    min_cells: int = 3,
    target_sum: float = 1e4,
    copy: bool = False,
    filename: str | os.PathLike | None = None,
    compression: str | None = None,
) -> AnnData | None:
    """Filter, normalize, log-transform and keep the highly variable genes.

    A thin wrapper over scanpy: :func:`scanpy.pp.filter_cells`,
    :func:`scanpy.pp.filter_genes`, :func:`scanpy.pp.normalize_total`,
    :func:`scanpy.pp.log1p` and :func:`scanpy.pp.highly_variable_genes`
    (``flavor="seurat"`` on the log data), then subsetting to the selected genes.

    Like scanpy's functions, it modifies ``adata`` in place by default: afterwards ``X``
    holds log-normalized expression over the kept cells and genes, and the raw counts are
    in ``layers[counts_layer]``. Pass ``copy=True`` to get a new AnnData and leave
    ``adata`` untouched.

    With ``filename``, the result is written to that new ``.h5ad`` instead, a chunk of
    cells at a time, and returned opened with ``backed="r"``: the way to preprocess an
    AnnData opened backed whose counts do not fit in memory. ``adata`` is only read (a
    read-only file stays as it was), and the file holds what ``copy=True`` would return
    (``X``, the counts layer, ``obs``, ``var``, ``obsm``, ``varm`` and ``uns``; other
    layers are not carried), value for value. Memory is bounded by a chunk of cells, the
    cells the HVG statistics read (at most ``HVG_MAX_CELLS``) and the annotations.

    Parameters
    ----------
    adata
        Raw counts in ``X`` (non-negative integers, dense or sparse). Modified in place
        unless ``copy=True``; a view is made an actual AnnData.
    n_top_genes
        Highly variable genes to keep; capped at the number of genes left after filtering.
    batch_key
        ``obs`` column with batches; makes the HVG selection batch-aware (genes ranked by
        the number of batches in which they are highly variable).
    counts_layer
        Layer that receives the raw counts of the kept cells and genes.
    min_genes
        Drop cells with fewer expressed genes. The default only drops empty cells; raise it
        for QC (the Baron pancreas cells express at least 739 genes each).
    min_cells
        Drop genes expressed in fewer cells.
    target_sum
        Total counts per cell after normalization.
    copy
        Return a new, preprocessed AnnData and leave ``adata`` untouched. By default
        (``False``), ``adata`` itself is preprocessed and ``None`` is returned.
    filename
        Write the result to this ``.h5ad`` (replaced if it exists, once written whole)
        and return it opened backed; ``copy`` is then not used. Needed for a backed
        ``adata``. The disk's free space is checked before the file is written.
    compression
        With ``filename``: ``"lzf"`` or ``"gzip"`` compresses ``X`` and the counts in the
        file (HDF5 filters; lzf takes about a third of the space on counts and reads at a
        few hundred MB/s), ``None`` (the default) writes them uncompressed, as
        :meth:`anndata.AnnData.write_h5ad` does. The values are the same either way.

    Returns
    -------
    ``None`` (``adata`` was preprocessed in place), or with ``copy=True`` the new AnnData,
    or with ``filename`` the written file opened with ``backed="r"``.
    Either way the result has log-normalized ``X`` over the selected genes, raw counts in
    ``layers[counts_layer]`` and the HVG statistics in ``var``.

    Raises
    ------
    ValueError
        ``X`` does not hold raw counts, no cells or genes pass the filters, or ``adata``
        is backed (read-only on disk) and no ``filename`` is given.
    OSError
        The disk of ``filename`` has too little free space (nothing is written).
    KeyError
        ``batch_key`` is not an ``obs`` column.

    Examples
    --------
    >>> import scetm_mnn as sm
    >>> adata = sm.datasets.simulate(n_cells=500, n_genes=300, random_state=0)
    >>> sm.pp.preprocess(adata, n_top_genes=100, batch_key="batch")
    >>> adata.n_vars, "counts" in adata.layers
    (100, True)
    """
    if adata.isbacked and filename is None:
        raise ValueError(
            f"preprocess rewrites X, and this AnnData is backed by {adata.filename} "
            "(read-only). Pass `filename=` a new .h5ad to stream the result into (it is "
            "returned opened backed; mnn_correct, BatchCorrectedSCETM.train and "
            "get_latent_representation read it from disk), or load the data with "
            "`adata = adata.to_memory()` (sparse counts of a few hundred thousand cells fit)."
        )
    check_counts(adata, argument=None)
    if batch_key is not None:
        check_obs_key(adata, batch_key, "batch_key")
    kept = find_kept(adata, min_genes, min_cells)  # before anything is changed
    if filename is not None:
        from ._streamed import preprocess_to_file

        arguments = (n_top_genes, batch_key, counts_layer, min_genes, min_cells, target_sum)
        return preprocess_to_file(adata, filename, kept, *arguments, compression=compression)
    if copy:
        adata = adata.copy()
    else:
        make_actual(adata, "preprocess")
    _apply_filters(adata, kept, min_genes, min_cells)
    # The counts matrix itself becomes the layer and X a float copy of it: one new matrix,
    # where a copy for the layer and then a float X would hold three at once.
    counts = adata.X
    adata.X = float_copy(counts)
    adata.layers[counts_layer] = counts
    _normalize_total_in_place(adata, target_sum)
    sc.pp.log1p(adata)  # in place on X's values
    _select_genes(adata, n_top_genes, batch_key)
    logger.info("Preprocessed to %d cells × %d genes.", adata.n_obs, adata.n_vars)
    return adata if copy else None


def _normalize_total_in_place(adata: AnnData, target_sum: float) -> None:
    """:func:`scanpy.pp.normalize_total` of a CSR ``X``, in place a chunk of cells at a time.

    scanpy divides all of ``X``'s values at once by a repeated per-cell factor, which for a
    million cells × 2000 genes holds two more nnz-long arrays (5 GB) beside ``X`` and its
    counts layer: the peak of the whole pipeline. The same division, chunk by chunk
    (:func:`~scetm_mnn.pp._normalize.normalize_rows_in_place`), gives identical values.
    Dense or other input goes to scanpy.
    """
    x = adata.X
    if not (sparse.issparse(x) and x.format == "csr"):
        sc.pp.normalize_total(adata, target_sum=target_sum)
        return
    if normalize_rows_in_place(x, target_sum):
        warnings.warn("Some cells have zero counts", UserWarning, stacklevel=3)


def _apply_filters(adata: AnnData, kept: Kept, min_genes: int, min_cells: int) -> None:
    """Write scanpy's ``obs["n_genes"]`` and ``var["n_cells"]`` and drop what fails.

    The same columns and subsets as :func:`scanpy.pp.filter_cells` and
    :func:`scanpy.pp.filter_genes`, from counts already read; a filter that drops nothing
    copies nothing (anndata's subsetting copies every matrix, even to keep them all).
    """
    if min_genes > 0:
        what = f"cells with fewer than {min_genes} genes"
        _apply_filter(adata, "obs", "n_genes", kept.n_genes, kept.cells, what)
    if min_cells > 0:
        what = f"genes expressed in fewer than {min_cells} cells"
        _apply_filter(adata, "var", "n_cells", kept.n_cells, kept.genes, what)


def _apply_filter(
    adata: AnnData, axis: str, column: str, counts: np.ndarray, keep: np.ndarray, what: str
) -> None:
    """Store one filter's ``counts`` in ``adata.<axis>[column]``; subset to ``keep`` if needed."""
    getattr(adata, axis)[column] = counts
    if not keep.all():
        logger.info("Filtered out %d %s.", int((~keep).sum()), what)
        getattr(adata, f"_inplace_subset_{axis}")(keep)


def _select_genes(adata: AnnData, n_top_genes: int, batch_key: str | None) -> None:
    """Select the ``n_top_genes`` HVGs (:func:`hvg_statistics`) and subset ``adata`` to them.

    scanpy copies each batch's rows (twice, for seurat's expm1); above
    :data:`HVG_MAX_CELLS` cells the statistics come from a seeded random sample
    (:func:`hvg_sample`), which bounds that memory.
    """
    keep = hvg_sample(adata.n_obs)
    sample = adata
    if keep is not None:
        obs = adata.obs.iloc[keep][[] if batch_key is None else [batch_key]]
        sample = AnnData(X=adata.X[keep], obs=obs, var=adata.var[[]])
        sample.uns["log1p"] = dict(adata.uns.get("log1p", {}))
        logger.info("HVG statistics from %d of %d cells.", HVG_MAX_CELLS, adata.n_obs)
    table, hvg = hvg_statistics(sample, n_top_genes, batch_key)
    for column in table.columns:
        adata.var[column] = table[column].to_numpy()
    adata.uns["hvg"] = hvg
    if n_top_genes < adata.n_vars:
        adata._inplace_subset_var(adata.var["highly_variable"].to_numpy())
