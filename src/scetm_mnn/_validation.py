"""Input checks shared by the preprocessing, model and evaluation entry points.

Every check raises an error that names the offending key or layer and says how to fix it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "check_counts",
    "check_finite",
    "check_obs_key",
    "get_matrix",
    "matrix_values",
]


def _describe(layer: str | None) -> str:
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def get_matrix(adata: AnnData, layer: str | None = None):
    """Return ``adata.X`` or ``adata.layers[layer]``, with a clear error for a missing layer."""
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty; pass `layer=` to name the layer holding the data.")
        return adata.X
    if layer not in adata.layers:
        available = ", ".join(map(repr, adata.layers.keys())) or "none"
        raise KeyError(
            f"Layer {layer!r} not found in adata.layers (available: {available}). "
            "Pass the name of an existing layer, or `layer=None` to use adata.X."
        )
    return adata.layers[layer]


def matrix_values(x) -> np.ndarray:
    """The stored values of a dense or sparse matrix, without densifying."""
    if sparse.issparse(x):
        return np.asarray(x.data)
    return np.asarray(x)


def check_finite(x, name: str) -> None:
    """Raise ``ValueError`` when ``x`` holds NaN or infinite values."""
    values = matrix_values(x)
    if not np.issubdtype(values.dtype, np.number):
        raise TypeError(f"{name} has non-numeric dtype {values.dtype}; expected numbers.")
    if not np.all(np.isfinite(values)):
        n_bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        raise ValueError(
            f"{name} contains {n_bad} NaN or infinite values. "
            "Remove or impute them before running scetm-mnn."
        )


def check_counts(adata: AnnData, layer: str | None = None) -> None:
    """Raise ``ValueError`` unless ``adata.X``/``adata.layers[layer]`` holds raw counts.

    Counts must be finite, non-negative and integer-valued (any numeric dtype).
    """
    name = _describe(layer)
    x = get_matrix(adata, layer)
    check_finite(x, name)
    values = matrix_values(x)
    if values.size and values.min() < 0:
        raise ValueError(
            f"{name} contains negative values, so it does not hold raw counts. "
            "Pass `layer=` naming the layer with raw UMI counts (e.g. 'counts')."
        )
    if values.size and not np.all(np.equal(np.mod(values, 1), 0)):
        raise ValueError(
            f"{name} contains non-integer values, so it does not hold raw counts "
            "(it looks normalized or log-transformed). Pass `layer=` naming the layer with "
            "raw UMI counts, e.g. the 'counts' layer written by `scetm_mnn.pp.preprocess`."
        )


def check_obs_key(adata: AnnData, key: str, what: str = "batch_key") -> None:
    """Raise ``KeyError`` listing the available ``obs`` columns when ``key`` is missing."""
    if key not in adata.obs.columns:
        available = ", ".join(map(repr, adata.obs.columns)) or "none"
        raise KeyError(
            f"{what}={key!r} is not a column of adata.obs. Available columns: {available}."
        )
    if adata.obs[key].isna().any():
        n = int(adata.obs[key].isna().sum())
        raise ValueError(
            f"adata.obs[{key!r}] has {n} missing values; fill or drop those cells first."
        )
