"""Where :func:`~scetm_mnn.pp.mnn_correct` keeps the corrected expression, and reading it.

The corrector changes expression only within the ``d`` gene-space directions its loss sees
(``x̂ = x + P (f(x) − x)``, ``P = B Bᵀ``), so the corrected matrix is exactly the input plus
a low-rank term::

    x̂ = x + C Bᵀ,   C = (f(x) − x) B   (cells × d),   B (genes × d, orthonormal)

``mnn_correct`` always stores ``C`` in ``obsm[key + "_shift"]`` and ``B`` in
``varm[key + "_basis"]`` (``4·d`` bytes per cell; 50 dimensions are 200 MB for a million
cells). Up to ``DENSE_LAYER_MAX_BYTES`` (128 MiB) it also writes the dense matrix to
``layers[key]``, which is what small-data users expect; above it, the dense matrix (8 GB
for a million cells × 2000 genes) is never formed, and every reader computes the rows it
needs from ``x``, ``C`` and ``B``: the model's minibatches, and
:func:`corrected_expression` for an export in chunks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from .._rows import Rows, ShiftedRows, rows_of
from .._validation import (
    check_finite,
    check_log_scale,
    check_not_view,
    check_obs_key,
    get_matrix,
)
from ._actual import make_actual

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "DENSE_LAYER_MAX_BYTES",
    "corrected_expression",
    "corrected_rows",
    "corrected_source",
]

DENSE_LAYER_MAX_BYTES = 2**27
"""Largest dense corrected layer (float32 bytes, 128 MiB: 16 384 cells × 2000 genes) that
``mnn_correct`` writes to ``layers`` by default; above it only the low-rank form is kept."""
SHIFT_SUFFIX = "_shift"
BASIS_SUFFIX = "_basis"


def shift_key(key: str) -> str:
    """``obsm`` key of the low-rank coefficients ``C`` of corrected expression ``key``."""
    return key + SHIFT_SUFFIX


def latent_key(key: str) -> str:
    """``obsm`` key of the corrector's corrected coordinates (its latent space) of ``key``."""
    return "X_" + key


def basis_key(key: str) -> str:
    """``varm`` key of the gene-space basis ``B`` of corrected expression ``key``."""
    return key + BASIS_SUFFIX


def corrected_source(adata: AnnData, key: str) -> tuple[str | None, bool]:
    """How corrected expression ``key`` is stored: ``(layer, low_rank)``.

    ``(key, False)``: a dense ``layers[key]``. ``(layer, True)``: the low-rank form over the
    uncorrected ``layer`` (``None`` for ``X``) that ``mnn_correct`` read.

    Raises
    ------
    KeyError
        Neither form of ``key`` is in ``adata``.
    """
    if key in adata.layers:
        return key, False
    if shift_key(key) in adata.obsm and basis_key(key) in adata.varm and key in adata.uns:
        layer = adata.uns[key].get("params", {}).get("layer", "X")
        return (None if layer == "X" else layer), True
    available = ", ".join(map(repr, adata.layers.keys())) or "none"
    raise KeyError(
        f"No corrected expression {key!r} in this AnnData: it is neither in adata.layers "
        f"(available: {available}) nor stored in low-rank form (obsm[{shift_key(key)!r}], "
        f"varm[{basis_key(key)!r}]). Run scetm_mnn.pp.mnn_correct(adata, batch_key, "
        f"key_added={key!r}) first."
    )


def read_input(adata: AnnData, layer: str | None, batch_key: str) -> tuple[Rows, np.ndarray]:
    """Checked row access to the log-expression the corrector reads, and the batches."""
    check_obs_key(adata, batch_key, "batch_key")
    matrix = get_matrix(adata, layer, argument="layer")
    name = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    check_finite(matrix, name)
    check_log_scale(matrix, name)
    return rows_of(adata, layer), adata.obs[batch_key].astype(str).to_numpy()


def dense_default(rows: Rows) -> bool:
    """Whether ``dense_layer=None`` writes the dense layer: up to ``DENSE_LAYER_MAX_BYTES``."""
    return rows.n_obs * rows.n_vars * 4 <= DENSE_LAYER_MAX_BYTES


def output_target(adata: AnnData, copy: bool, caller: str) -> AnnData:
    """The AnnData to write into: a copy, or ``adata`` itself (checked before any work)."""
    if copy and adata.isbacked:
        raise ValueError(
            "copy=True would load the whole backed AnnData into memory. Use copy=False: the "
            "results are added to the (read-only) backed object in memory, and X stays on "
            "disk; or load it first with `adata = adata.to_memory()`."
        )
    if copy:
        return adata.copy()
    if adata.isbacked:
        check_not_view(adata, caller)  # before the work: writing could not make it actual
    return adata


def write_corrected(
    adata: AnnData, caller: str, key: str, corrected, latent, shift, basis, pairs, info: dict
) -> None:
    """Write a correction's outputs under ``key`` (``pairs`` only when not ``None``)."""
    make_actual(adata, caller)  # only now: a call that fails leaves a view a view
    if corrected is not None:
        adata.layers[key] = corrected
    adata.obsm[latent_key(key)] = latent
    adata.obsm[shift_key(key)] = shift
    adata.varm[basis_key(key)] = np.asarray(basis, dtype=np.float32)
    if pairs is not None:
        adata.obsp[f"{key}_pairs"] = pairs
    adata.uns[key] = info


def corrected_rows(adata: AnnData, key: str = "mnn_corrected") -> Rows | ShiftedRows:
    """Row access to corrected expression ``key``, whichever form it is stored in."""
    layer, low_rank = corrected_source(adata, key)
    if not low_rank:
        return rows_of(adata, layer, preload=True)
    return ShiftedRows(
        rows_of(adata, layer, preload=True), adata.obsm[shift_key(key)], adata.varm[basis_key(key)]
    )


def corrected_expression(
    adata: AnnData, key: str = "mnn_corrected", chunk_size: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """The corrected expression of :func:`~scetm_mnn.pp.mnn_correct`, chunk by chunk.

    Works whether ``mnn_correct`` wrote a dense ``layers[key]`` or, for large data, only
    the low-rank form; only one chunk is dense at a time, so a million cells can be exported
    (e.g. written into an on-disk array) in bounded memory.

    Parameters
    ----------
    adata
        AnnData corrected by :func:`~scetm_mnn.pp.mnn_correct` (in memory or backed).
    key
        Its ``key_added``.
    chunk_size
        Cells per chunk (2048 by default).

    Yields
    ------
    ``(start, block)``: the first cell's index and the dense float32 rows
    ``start:start + len(block)``.

    Examples
    --------
    >>> import numpy as np
    >>> import scetm_mnn as sm
    >>> adata = sm.datasets.simulate(n_cells=300, n_genes=100, random_state=0)
    >>> sm.pp.preprocess(adata, n_top_genes=100)
    >>> sm.pp.mnn_correct(adata, "batch", max_epochs=1, dense_layer=False)
    >>> "mnn_corrected" in adata.layers
    False
    >>> dense = np.vstack([block for _, block in sm.pp.corrected_expression(adata)])
    >>> dense.shape == adata.shape
    True
    """
    yield from corrected_rows(adata, key).chunks(chunk_size)
