"""Three-panel UMAP of an embedding: clusters, batches and cell types."""

from __future__ import annotations

import os
from collections.abc import Sequence

import anndata as ad
import numpy as np
import scanpy as sc
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._docstrings import shared_docstring
from ..tl._subsample import subsample_note, subsample_positions
from ..tl._utils import leiden_labels, light_copy, neighbors
from ._utils import figure_and_axes, save_or_show, scatter_categorical

#: Cells above which :func:`integration_umap` (and ``scetm-mnn run``'s figure and Leiden
#: sweep) use a stratified subsample of this many cells, by batch × cell type. A UMAP of
#: more cells takes long to compute and shows no more: the points overlap.
FIGURE_MAX_CELLS = 200_000


def umap_key(use_rep: str) -> str:
    """The ``obsm`` key under which a UMAP of ``use_rep`` is kept for reuse."""
    return f"{use_rep}_umap"


def umap_coordinates(
    adata: ad.AnnData,
    use_rep: str,
    batch_key: str,
    label_key: str | None,
    *,
    max_cells: int | None = FIGURE_MAX_CELLS,
    random_state: int = 0,
    n_neighbors: int = 15,
) -> np.ndarray:
    """The UMAP :func:`integration_umap` draws of ``use_rep``, one row per cell of ``adata``.

    Computed on the cells the figure draws (a stratified subsample above ``max_cells``);
    the rows of the cells it leaves out are ``NaN``. Kept under :func:`umap_key`, it is the
    figure's ``umap_key`` and the one :func:`scetm_mnn.pl.report` reuses.
    """
    keys = {batch_key: "batch_key"}
    if label_key is not None:
        keys[label_key] = "label_key"
    keep = subsample_positions(adata, keys, max_cells, random_state, argument="max_cells")
    tmp = light_copy(adata, use_rep, keys, keep)
    neighbors(tmp, use_rep, n_neighbors=n_neighbors, random_state=random_state)
    sc.tl.umap(tmp, random_state=random_state)
    if keep is None:
        return np.asarray(tmp.obsm["X_umap"])
    coords = np.full((adata.n_obs, tmp.obsm["X_umap"].shape[1]), np.nan)
    coords[keep] = tmp.obsm["X_umap"]
    return coords


def _existing_umap(adata: ad.AnnData, use_rep: str, umap_key: str | None):
    """Return UMAP coordinates already in ``adata`` for ``use_rep``, or ``None``."""
    if umap_key is not None:
        if umap_key not in adata.obsm:
            available = ", ".join(map(repr, adata.obsm.keys())) or "none"
            raise KeyError(f"umap_key={umap_key!r} is not in adata.obsm (available: {available}).")
        return adata.obsm[umap_key]
    params = adata.uns.get("neighbors", {}).get("params", {})
    if "X_umap" in adata.obsm and params.get("use_rep") == use_rep:
        return adata.obsm["X_umap"]
    return None


@shared_docstring
def integration_umap(
    adata: ad.AnnData,
    use_rep: str,
    batch_key: str,
    label_key: str | None,
    cluster_key: str | None = None,
    save: str | os.PathLike | None = None,
    title: str | None = None,
    random_state: int = 0,
    umap_key: str | None = None,
    resolution: float = 0.5,
    n_neighbors: int = 15,
    *,
    max_cells: int | None = FIGURE_MAX_CELLS,
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
) -> Figure | list[Axes] | None:
    """Plot UMAPs of an embedding coloured by clusters, batch and cell type.

    Nothing is written to ``adata``: when it lacks a UMAP of ``use_rep`` or clusters,
    they are computed on a light copy (:func:`scanpy.pp.neighbors` on ``use_rep``,
    :func:`scanpy.tl.umap`, and Leiden with ``flavor="igraph"``, ``n_iterations=2``),
    every step seeded with ``random_state``. Above ``max_cells`` cells, all of it runs on
    a stratified subsample (:func:`~scetm_mnn.tl.stratified_subsample` by batch × cell
    type, so rare types stay visible), and the figure says so.

    Parameters
    ----------
    adata
        Annotated data with the embedding in ``obsm[use_rep]``; not modified.
    use_rep
        ``obsm`` key of the embedding (or ``"X"``).
    batch_key
        ``obs`` column with batch labels.
    label_key
        ``obs`` column with cell-type labels, or ``None`` without labels: then only the
        clusters and batches are drawn (two panels).
    cluster_key
        ``obs`` column with clusters, e.g. the best-ARI clustering stored by
        :func:`scetm_mnn.tl.leiden_sweep` with ``key_added``. If ``None``, Leiden runs
        at ``resolution``.
    save
        Path to write the figure to (format from the suffix, e.g. ``.png``, ``.pdf``).
    title
        Figure title; default ``use_rep``.
    random_state
        Seed of the neighbours, UMAP, Leiden and the drawing order.
    umap_key
        ``obsm`` key of precomputed UMAP coordinates. If ``None``, ``obsm["X_umap"]`` is
        used when ``uns["neighbors"]`` says it was computed from ``use_rep``; otherwise a
        UMAP is computed.
    resolution
        Leiden resolution when ``cluster_key`` is ``None``; below scanpy's 1.0, for a
        coarser clustering in the overview panel. Pass ``cluster_key`` to show a clustering
        you chose, e.g. the best-ARI one of :func:`scetm_mnn.tl.leiden_sweep`.
    n_neighbors
        Neighbours of the kNN graph used for UMAP and Leiden.
    max_cells
        Above this many cells, draw a stratified subsample of this many, seeded by
        ``random_state``; given UMAP coordinates and clusters are taken for the drawn
        cells. The title (or, when drawing into ``ax`` without a ``title``, the first
        panel's title) then says "stratified subsample of N of M cells". Default
        :data:`FIGURE_MAX_CELLS` (200,000); ``None`` draws every cell.
    ax
        Draw into these axes (three, or two without ``label_key``) instead of a new figure.
    show
        Show the figure (:func:`matplotlib.pyplot.show`); ``None`` follows
        :attr:`scanpy.settings.autoshow`, as scanpy's plots do.

    Returns
    -------
    ``None`` when the figure is shown; otherwise the figure (or the axes passed as ``ax``),
    with three scatter axes (clusters, batch, cell type). The colours are
    categories, not a scale: each panel has its own legend. A good integration shows the
    batch colours interleaved within each cell-type island, and clusters that coincide
    with the cell types. UMAP distances between islands mean little; judge the mixing with
    :func:`scetm_mnn.tl.integration_metrics` rather than by eye.

    Examples
    --------
    %(agg)s
    %(simulated_pca)s
    >>> fig = sm.pl.integration_umap(
    ...     adata, "X_pca", "batch", "cell_type", title="PCA", show=False
    ... )
    >>> [ax.get_title() for ax in fig.axes]
    ['Leiden clusters (resolution 0.5)', 'Batch (batch)', 'Cell type (cell_type)']
    >>> "X_umap" in adata.obsm  # nothing was written to adata
    False
    >>> fig = sm.pl.integration_umap(adata, "X_pca", "batch", None, show=False)  # no labels
    >>> len(fig.axes)
    2

    Above ``max_cells``, a stratified subsample is drawn and the title says so:

    >>> fig = sm.pl.integration_umap(
    ...     adata, "X_pca", "batch", "cell_type", max_cells=200, show=False
    ... )
    >>> print(fig.get_suptitle())
    X_pca
    stratified subsample of 200 of 300 cells
    """
    keys = {batch_key: "batch_key"}
    if label_key is not None:
        keys[label_key] = "label_key"
    keep = subsample_positions(adata, keys, max_cells, random_state, argument="max_cells")
    if cluster_key is not None:
        keys[cluster_key] = "cluster_key"
    tmp = light_copy(adata, use_rep, keys, keep)
    coords = _existing_umap(adata, use_rep, umap_key)
    if coords is not None and keep is not None:
        coords = np.asarray(coords)[keep]
    if coords is None or cluster_key is None:
        neighbors(tmp, use_rep, n_neighbors=n_neighbors, random_state=random_state)
    if coords is None:
        sc.tl.umap(tmp, random_state=random_state)
        coords = tmp.obsm["X_umap"]
    if cluster_key is None:
        leiden_labels(tmp, resolution, random_state)
        clusters, cluster_title = tmp.obs["_leiden"], f"Leiden clusters (resolution {resolution})"
    else:
        clusters, cluster_title = tmp.obs[cluster_key], f"Clusters ({cluster_key})"
    xy = coords[:, :2]
    panels = [(clusters, cluster_title), (tmp.obs[batch_key], f"Batch ({batch_key})")]
    if label_key is not None:
        panels.append((tmp.obs[label_key], f"Cell type ({label_key})"))
    fig, axes = figure_and_axes(ax, len(panels), (5.4 * len(panels), 4.6))
    for axis, (values, panel_title) in zip(axes, panels):
        scatter_categorical(axis, xy, values, panel_title, random_state=random_state)
    note = None if keep is None else subsample_note(tmp.n_obs, adata.n_obs)
    if ax is None or title is not None:
        heading = use_rep if title is None else title
        fig.suptitle(heading if note is None else f"{heading}\n{note}", fontsize=12)
    elif note is not None:
        axes[0].set_title(f"{axes[0].get_title()}\n{note}", fontsize=10)
    return save_or_show(fig, ax, save, show)
