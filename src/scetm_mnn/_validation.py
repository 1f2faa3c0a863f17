"""Input checks shared by the preprocessing, model and evaluation entry points.

Every check raises an error that names the offending key or layer and says how to fix it.

Each public function checks its own inputs, so that a user who calls it directly gets the
error there. An entry point that calls other public functions (:func:`scetm_mnn.run_pipeline`)
checks its ``obs`` columns once, at its boundary, and calls the rest inside
:func:`obs_keys_checked`: there :func:`check_obs_key` passes the columns already checked
without checking them again. The AnnData objects an entry point derives from its input
(copies, subsets) carry those columns as they were checked.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from ._rows import Rows, is_on_disk

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "check_counts",
    "check_finite",
    "check_log_scale",
    "check_not_view",
    "check_obs_key",
    "get_matrix",
    "matrix_values",
    "obs_keys_checked",
]


_HELP = "https://scetm-mnn.readthedocs.io/en/latest/troubleshooting.html"
"""The troubleshooting page; the messages link to its sections."""


def _describe(layer: str | None) -> str:
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def get_matrix(adata: AnnData, layer: str | None = None, *, argument: str | None = None):
    """Return ``adata.X`` or ``adata.layers[layer]``, with a clear error for a missing layer.

    ``argument`` is the name of the caller's argument that selects the layer (e.g.
    ``"layer"``, ``"counts_layer"``); the error messages name it, and only it. ``None``
    means the caller reads ``adata.X`` only, or its argument is not known here.
    """
    if layer is None:
        if adata.X is None:
            hint = (
                f"pass `{argument}=` to name the layer holding the data"
                if argument is not None
                else "put the data in adata.X"
            )
            raise ValueError(f"adata.X is empty; {hint}.")
        return adata.X
    if layer not in adata.layers:
        available = ", ".join(map(repr, adata.layers.keys())) or "none"
        fix = (
            f"Pass `{argument}=` the name of an existing layer, or None to use adata.X."
            if argument is not None
            else "Name an existing layer, or None to use adata.X."
        )
        raise KeyError(
            f"Layer {layer!r} not found in adata.layers (available: {available}). {fix} "
            f"See {_HELP}#missing-layer"
        )
    return adata.layers[layer]


def matrix_values(x) -> np.ndarray:
    """The stored values of a dense or sparse in-memory matrix, without densifying."""
    if sparse.issparse(x):
        return np.asarray(x.data)
    return np.asarray(x)


def _value_blocks(x) -> Iterator[np.ndarray]:
    """The stored values of ``x`` in blocks: all at once in memory, by chunks on disk."""
    if not is_on_disk(x):
        yield matrix_values(x)
        return
    for _, block in Rows(x).chunks(dense=False, desc="checking the values"):
        yield block.data


def check_finite(x, name: str) -> None:
    """Raise ``ValueError`` when ``x`` holds NaN or infinite values (on-disk: by chunks)."""
    n_bad = 0
    for values in _value_blocks(x):
        if not np.issubdtype(values.dtype, np.number):
            raise TypeError(f"{name} has non-numeric dtype {values.dtype}; expected numbers.")
        n_bad += int(np.size(values) - np.count_nonzero(np.isfinite(values)))
    if n_bad:
        raise ValueError(
            f"{name} contains {n_bad} NaN or infinite values. "
            "Remove or impute them before running scetm-mnn."
        )


def check_counts(
    adata: AnnData, layer: str | None = None, *, argument: str | None = "layer"
) -> None:
    """Raise ``ValueError`` unless ``adata.X``/``adata.layers[layer]`` holds raw counts.

    Counts must be finite, non-negative and integer-valued (any numeric dtype).
    ``argument`` names the caller's argument that selects the layer, which the messages
    suggest; ``None`` for a caller that reads ``adata.X`` only (the messages then say to
    put raw counts in ``X``).
    """
    name = _describe(layer)
    x = get_matrix(adata, layer, argument=argument)
    check_finite(x, name)
    if argument is None:
        fix = (
            "Put raw UMI counts in adata.X, e.g. `adata.X = adata.layers['counts'].copy()` "
            "(the 'counts' layer written by `scetm_mnn.pp.preprocess`)."
        )
    else:
        fix = (
            f"Pass `{argument}=` naming the layer with raw UMI counts, e.g. the 'counts' "
            "layer written by `scetm_mnn.pp.preprocess`."
        )
    for values in _value_blocks(x):
        if values.size and values.min() < 0:
            raise ValueError(
                f"{name} contains negative values, so it does not hold raw counts. {fix}"
            )
        if values.size and not np.all(np.equal(np.mod(values, 1), 0)):
            raise ValueError(
                f"{name} contains non-integer values, so it does not hold raw counts "
                f"(it looks normalized or log-transformed). {fix}"
            )


LOG_SCALE_MAX = 50.0
"""Above this maximum, data are not log-normalized (log1p of 1e6-normalized data is < 14)."""
INTEGER_COUNTS_MAX = 10.0
"""Integer-valued data with a maximum above this look like raw counts."""
_INTEGER_SAMPLE = 1 << 20
"""Stored values (evenly spaced) inspected for integrality."""


def check_log_scale(x, name: str) -> None:
    """Raise ``ValueError`` when ``x`` looks like raw counts rather than log-scale data.

    Log-normalized expression (``log1p`` of size-normalized counts) stays well below
    ``LOG_SCALE_MAX`` (50) and is not integer-valued; raw counts reach hundreds and are
    integers. ``x`` is refused when its maximum exceeds ``LOG_SCALE_MAX``, or when it
    exceeds ``INTEGER_COUNTS_MAX`` (10) and the values (up to about a million, evenly
    spaced, are inspected) are all integers. The check does not densify sparse input.

    Parameters
    ----------
    x
        Dense or sparse matrix (finite values).
    name
        How the message refers to ``x``, e.g. ``"adata.X"``.

    Raises
    ------
    ValueError
        ``x`` looks like raw counts.
    """
    maximum, integer, seen = -np.inf, True, False
    for values in _value_blocks(x):
        if values.size == 0:
            continue
        values = values.reshape(-1)
        seen = True
        maximum = max(maximum, float(values.max()))
        if integer:
            sample = values[:: max(1, values.size // _INTEGER_SAMPLE)]
            integer = bool(np.all(np.equal(np.mod(sample, 1), 0)))
    if not seen or maximum <= INTEGER_COUNTS_MAX:
        return
    if maximum > LOG_SCALE_MAX:
        detail = f"maximum {maximum:g} > {LOG_SCALE_MAX:g}"
    elif integer:
        detail = f"integer-valued, maximum {maximum:g}"
    else:
        return
    raise ValueError(
        f"{name} ({detail}) looks like raw counts; run scetm_mnn.pp.preprocess(adata) first "
        f"(or sc.pp.normalize_total + sc.pp.log1p). See {_HELP}#counts-where-log-data-belong"
    )


_CHECKED_OBS_KEYS: ContextVar[frozenset[str]] = ContextVar("checked_obs_keys", default=frozenset())
"""The ``obs`` columns checked at the boundary of the running entry point."""


@contextmanager
def obs_keys_checked(adata: AnnData, keys: Mapping[str, str]) -> Iterator[None]:
    """Check the ``obs`` columns of ``keys`` once; inside the block they count as checked.

    ``keys`` maps each column to the argument that names it (``{"batch": "batch_key"}``),
    for the error messages. Inside the block, :func:`check_obs_key` of one of these
    columns returns at once, whichever AnnData it is asked about: the block's code must
    pass only ``adata`` and what it derives from it.
    """
    for key, what in keys.items():
        check_obs_key(adata, key, what)
    token = _CHECKED_OBS_KEYS.set(_CHECKED_OBS_KEYS.get() | frozenset(keys))
    try:
        yield
    finally:
        _CHECKED_OBS_KEYS.reset(token)


def check_obs_key(adata: AnnData, key: str, what: str = "batch_key") -> None:
    """Raise ``KeyError`` listing the available ``obs`` columns when ``key`` is missing.

    A column checked by the running entry point (:func:`obs_keys_checked`) passes.
    """
    if key in _CHECKED_OBS_KEYS.get():
        return
    _check_obs_column(adata, key, what)


def _check_obs_column(adata: AnnData, key: str, what: str) -> None:
    """The check itself: ``obs[key]`` exists and has no missing values."""
    if key not in adata.obs.columns:
        available = ", ".join(map(repr, adata.obs.columns)) or "none"
        raise KeyError(
            f"{what}={key!r} is not a column of adata.obs. Available columns: {available}. "
            f"See {_HELP}#missing-obs-column"
        )
    if adata.obs[key].isna().any():
        n = int(adata.obs[key].isna().sum())
        raise ValueError(
            f"adata.obs[{key!r}] has {n} missing values; fill or drop those cells first."
        )


def check_not_view(adata: AnnData, caller: str) -> None:
    """Raise ``ValueError`` when ``adata`` is a view (``caller`` must write into it).

    scvi-tools registers its fields in the AnnData itself and refuses views; the message
    says how to get an actual AnnData, in memory or, for a view of a backed one, on disk.
    """
    if not adata.is_view:
        return
    how = (
        "`adata = adata[cells].to_memory()`, or write the cells to their own h5ad with "
        "`adata[cells].write_h5ad(path)` and open that with backed='r'"
        if adata.isbacked
        else "`adata = adata.copy()` (or `adata = adata[cells].copy()` where you subset)"
    )
    raise ValueError(
        f"{caller} writes into the AnnData it is given, and this one is a view of another "
        f"AnnData. Make it an actual AnnData first: {how}. See {_HELP}#views"
    )
