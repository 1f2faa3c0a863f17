"""Stratified subsamples: fewer cells with every batch × cell-type group kept."""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping, Sequence

import anndata as ad
import numpy as np

from .._validation import check_obs_key

logger = logging.getLogger(__name__)


def stratified_subsample(
    adata: ad.AnnData,
    keys: str | Sequence[str],
    max_cells: int,
    random_state: int = 0,
) -> np.ndarray:
    """Positions of ``max_cells`` cells, drawn at random within each group of ``keys``.

    Each group (e.g. each batch × cell type) keeps its share of the cells, rounded by the
    largest remainders, and at least one cell, so rare types stay visible in a figure; with
    many tiny groups that can add a few cells beyond ``max_cells`` (at most one per group).
    With ``n_obs <= max_cells`` every cell is kept.

    Parameters
    ----------
    adata
        Cells with the ``obs`` columns ``keys``; not modified.
    keys
        ``obs`` column or columns whose combinations are the groups.
    max_cells
        Cells to keep.
    random_state
        Seed of the draw.

    Returns
    -------
    Sorted integer positions, for ``adata[positions]``.

    Examples
    --------
    >>> import scetm_mnn as sm
    >>> adata = sm.datasets.simulate(n_cells=1000, n_batches=2, n_cell_types=4)
    >>> keep = sm.tl.stratified_subsample(adata, ["batch", "cell_type"], max_cells=100)
    >>> len(keep)
    100
    >>> share = adata.obs["batch"].value_counts(normalize=True)
    >>> sub_share = adata[keep].obs["batch"].value_counts(normalize=True)
    >>> bool((share - sub_share).abs().max() < 0.01)  # each batch keeps its share
    True
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    if not keys:
        raise ValueError("keys is empty; pass at least one obs column, e.g. the batch key.")
    for key in keys:
        check_obs_key(adata, key, "keys")
    if max_cells < 1:
        raise ValueError(f"max_cells must be at least 1, not {max_cells}.")
    n_obs = adata.n_obs
    if n_obs <= max_cells:
        return np.arange(n_obs)
    codes = adata.obs.groupby(keys, observed=True, sort=True).ngroup().to_numpy()
    counts = np.bincount(codes)
    exact = counts * (max_cells / n_obs)
    quota = np.maximum(np.floor(exact).astype(np.int64), 1)
    left = max_cells - int(quota.sum())
    if left > 0:  # largest remainders first, among groups that have cells to spare
        remainder = np.where(quota < counts, exact - np.floor(exact), -np.inf)
        quota[np.argsort(-remainder, kind="stable")[:left]] += 1
    quota = np.minimum(quota, counts)
    rng = np.random.default_rng(random_state)
    order = np.lexsort((rng.random(n_obs), codes))  # cells grouped, shuffled within groups
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(n_obs) - starts[codes[order]]
    return np.sort(order[rank < quota[codes[order]]])


def check_max_cells(max_cells: int | None, argument: str) -> None:
    """Raise unless ``max_cells`` is ``None`` or an integer of at least 2.

    ``argument`` is the caller's name for it, which the messages use.
    """
    if max_cells is None:
        return
    if isinstance(max_cells, bool) or not isinstance(max_cells, numbers.Integral):
        raise TypeError(
            f"{argument} is a number of cells, not {max_cells!r}; pass an int such as "
            f"int(0.1 * adata.n_obs) for a tenth of the cells, or None for all of them."
        )
    if max_cells < 2:
        raise ValueError(f"{argument} must be at least 2 cells, or None for all, not {max_cells}.")


def subsample_positions(
    adata: ad.AnnData,
    keys: Mapping[str, str],
    max_cells: int | None,
    random_state: int = 0,
    *,
    argument: str = "subsample",
) -> np.ndarray | None:
    """The cells an evaluation or figure uses: a stratified subsample, or ``None`` for all.

    ``keys`` maps each ``obs`` column to stratify by (their combinations are the groups)
    to the caller's argument that names it, for the error messages. ``argument`` is the
    caller's name of ``max_cells``. ``None`` is returned when ``max_cells`` is ``None`` or
    at least ``adata.n_obs``: then every cell is used.

    Raises
    ------
    TypeError
        When ``max_cells`` is not an integer (e.g. a fraction).
    ValueError
        When ``max_cells`` is below 2.
    KeyError
        When a column of ``keys`` is not in ``adata.obs``.
    """
    for key, what in keys.items():
        check_obs_key(adata, key, what)
    check_max_cells(max_cells, argument)
    if max_cells is None or adata.n_obs <= max_cells:
        return None
    keep = stratified_subsample(adata, list(dict.fromkeys(keys)), int(max_cells), random_state)
    logger.info(
        "Drawing a %s (by %s).",
        subsample_note(len(keep), adata.n_obs),
        " × ".join(dict.fromkeys(keys)),
    )
    return keep


def subsample_note(n_cells: int, n_obs: int) -> str:
    """The words a figure or table carries when it shows ``n_cells`` of ``n_obs`` cells."""
    return f"stratified subsample of {n_cells:,} of {n_obs:,} cells"
