"""Leiden resolution sweeps scored against cell types (ARI, NMI) and batches (bARI)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from .._docstrings import shared_docstring
from .._validation import check_obs_key
from ._subsample import subsample_note, subsample_positions
from ._utils import leiden_labels, neighbors_copy

logger = logging.getLogger(__name__)

#: Default Leiden resolutions: 17 values covering 0.02-1.0, with steps of 0.03 between
#: 0.1 and 0.28 (the resolutions the scETM report used for the pancreas data) and coarser
#: steps elsewhere.
DEFAULT_RESOLUTIONS: tuple[float, ...] = (
    0.02, 0.05, 0.1, 0.13, 0.16, 0.19, 0.22, 0.25, 0.28,
    0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0,
)  # fmt: skip

SWEEP_COLUMNS = ("resolution", "n_clusters", "ARI", "NMI", "bARI")


def label_batch_ari(adata: ad.AnnData, label_key: str, batch_key: str) -> float:
    """ARI between cell types and batches: the bARI of the cell types themselves.

    A clustering that reproduces the cell types exactly has this bARI. It is a reference
    for reading the ``bARI`` column of :func:`leiden_sweep`, **not a floor**: when the
    batches' cell-type compositions differ it is above 0, and a clustering that merges or
    splits cell types can go below it. On the Baron human data it is 0.043 (printed by the
    pancreas tutorial), while PCA and the pipeline reach 0.037 at their best-ARI resolution
    (``benchmarks/results/pancreas.md``). A bARI well above it means clusters that follow
    the batches.

    Parameters
    ----------
    adata
        Annotated data.
    label_key
        ``obs`` column with cell-type labels.
    batch_key
        ``obs`` column with batch labels.

    Returns
    -------
    ``adjusted_rand_score(adata.obs[label_key], adata.obs[batch_key])``.

    Examples
    --------
    Two batches that hold both cell types in equal parts give about 0:

    >>> import anndata as ad
    >>> import pandas as pd
    >>> import scetm_mnn as sm
    >>> obs = pd.DataFrame(
    ...     {"cell_type": list("aabb" * 25), "batch": ["x"] * 50 + ["y"] * 50},
    ...     index=[f"cell_{i}" for i in range(100)],
    ... )
    >>> round(sm.tl.label_batch_ari(ad.AnnData(obs=obs), "cell_type", "batch"), 2)
    -0.01

    Batches that each hold one cell type give 1: then no clustering can separate the cell
    types without separating the batches.

    >>> obs["batch"] = obs["cell_type"]
    >>> sm.tl.label_batch_ari(ad.AnnData(obs=obs), "cell_type", "batch")
    1.0
    """
    check_obs_key(adata, label_key, "label_key")
    check_obs_key(adata, batch_key, "batch_key")
    labels = adata.obs[label_key].astype(str).to_numpy()
    batches = adata.obs[batch_key].astype(str).to_numpy()
    return float(adjusted_rand_score(labels, batches))


def sweep_row(
    resolution: float, clusters: np.ndarray, labels: np.ndarray, batches: np.ndarray
) -> dict[str, float]:
    """One row of a sweep: the clusters' number, ARI and NMI against the labels, bARI."""
    return {
        "resolution": float(resolution),
        "n_clusters": int(pd.unique(clusters).size),
        "ARI": float(adjusted_rand_score(labels, clusters)),
        "NMI": float(normalized_mutual_info_score(labels, clusters)),
        "bARI": float(adjusted_rand_score(batches, clusters)),
    }


@shared_docstring
def leiden_sweep(
    adata: ad.AnnData,
    use_rep: str,
    label_key: str,
    batch_key: str,
    resolutions: Sequence[float] | None = None,
    n_neighbors: int = 15,
    random_state: int = 0,
    key_added: str | None = None,
    subsample: int | None = None,
) -> pd.DataFrame:
    """Cluster an embedding with Leiden at several resolutions and score each clustering.

    The kNN graph is built once with :func:`scanpy.pp.neighbors` on ``use_rep`` in a light
    copy, then :func:`scanpy.tl.leiden` (``flavor="igraph"``, ``n_iterations=2``,
    undirected) runs once per resolution with the same seed. With ``subsample``, all of
    this runs on a stratified subsample of the cells
    (:func:`~scetm_mnn.tl.stratified_subsample` by batch × cell type, so rare cell types
    stay in), and the scores are those of the drawn cells.

    Parameters
    ----------
    adata
        Annotated data; unchanged unless ``key_added`` is given.
    use_rep
        Key of ``adata.obsm`` holding the embedding (or ``"X"``).
    label_key
        ``obs`` column with cell-type labels.
    batch_key
        ``obs`` column with batch labels.
    resolutions
        Leiden resolutions; default :data:`DEFAULT_RESOLUTIONS` (17 values from 0.02 to
        1.0, including 0.1, 0.13, 0.19, 0.22, 0.25 and 0.28).
    n_neighbors
        Neighbours of the kNN graph (scanpy's default, 15).
    random_state
        Seed of the subsample, the neighbour search and every Leiden run.
    key_added
        If given, the clustering at the best-ARI resolution (the first one on ties) is
        stored as categorical ``adata.obs[key_added]`` and the sweep table as
        ``adata.uns[f"{key_added}_sweep"]``. With a subsample, only the drawn cells have a
        cluster; the others are NaN (a missing category), since Leiden never saw them.
    subsample
        Cluster at most this many cells: above it, a stratified subsample of this many
        (seeded by ``random_state``; the same cells for the same data, ``subsample`` and
        seed). The kNN graph and each Leiden run take longer the more cells there are; a
        subsample bounds that cost, and a stratified one keeps every batch × cell type.
        ``None`` (default): all cells.

    Returns
    -------
    One row per resolution with columns ``resolution``, ``n_clusters``, ``ARI`` and ``NMI``
    (clusters against cell types; higher is better, 1 is a perfect match) and ``bARI``
    (clusters against batches; lower is better; compare it with :func:`label_batch_ari`,
    the bARI of the cell types themselves). ``df.attrs["n_cells"]`` is the number of cells
    clustered and ``df.attrs["n_obs"]`` that of ``adata`` (equal without a subsample);
    :func:`scetm_mnn.pl.leiden_sweep` notes a subsample on the figure.

    Examples
    --------
    %(simulated_pca)s
    >>> sweep = sm.tl.leiden_sweep(adata, "X_pca", "cell_type", "batch", resolutions=[0.1, 0.5])
    >>> sweep.columns.tolist()
    ['resolution', 'n_clusters', 'ARI', 'NMI', 'bARI']
    >>> sweep["resolution"].tolist()
    [0.1, 0.5]
    >>> sweep.attrs["n_cells"]
    300

    On many cells, cluster a stratified subsample:

    >>> small = sm.tl.leiden_sweep(
    ...     adata, "X_pca", "cell_type", "batch", resolutions=[0.5], subsample=200
    ... )
    >>> small.attrs["n_cells"], small.attrs["n_obs"]
    (200, 300)
    """
    resolutions = DEFAULT_RESOLUTIONS if resolutions is None else tuple(resolutions)
    if not resolutions:
        raise ValueError("resolutions is empty; pass at least one Leiden resolution.")
    keys = {batch_key: "batch_key", label_key: "label_key"}
    keep = subsample_positions(adata, keys, subsample, random_state)
    tmp = neighbors_copy(
        adata, use_rep, keys, n_neighbors=n_neighbors, random_state=random_state, positions=keep
    )
    logger.info(
        "Leiden sweep of %s: %d resolutions on %s",
        use_rep,
        len(resolutions),
        f"all {tmp.n_obs:,} cells"
        if keep is None
        else f"a {subsample_note(tmp.n_obs, adata.n_obs)}",
    )
    labels = tmp.obs[label_key].to_numpy()
    batches = tmp.obs[batch_key].to_numpy()
    rows, clusterings = [], []
    for resolution in resolutions:
        clusters = leiden_labels(tmp, resolution, random_state)
        clusterings.append(tmp.obs["_leiden"].copy())
        rows.append(sweep_row(resolution, clusters, labels, batches))
        logger.debug("Leiden resolution %s: %s", resolution, rows[-1])
    df = pd.DataFrame(rows, columns=list(SWEEP_COLUMNS))
    df.attrs.update(n_cells=int(tmp.n_obs), n_obs=int(adata.n_obs))
    if key_added is not None:
        best = pd.Categorical(clusterings[int(df["ARI"].to_numpy().argmax())].to_numpy())
        if keep is not None:  # the cells Leiden never saw get the missing code, NaN
            codes = np.full(adata.n_obs, -1, dtype=best.codes.dtype)
            codes[keep] = best.codes
            best = pd.Categorical.from_codes(codes, categories=best.categories)
        adata.obs[key_added] = best
        adata.uns[f"{key_added}_sweep"] = df.copy()
    return df


def sweep_subsample(df: pd.DataFrame) -> str | None:
    """The subsample a :func:`leiden_sweep` table was clustered on, in words (its ``attrs``).

    ``None`` when it used every cell or its ``attrs`` are lost (e.g. read from a CSV).
    """
    n_cells, n_obs = df.attrs.get("n_cells"), df.attrs.get("n_obs")
    if n_cells is None or n_obs is None or n_cells >= n_obs:
        return None
    return subsample_note(n_cells, n_obs)


@shared_docstring
def sweep_summary(df: pd.DataFrame) -> pd.Series:
    """Summarise a :func:`~scetm_mnn.tl.leiden_sweep` table.

    Parameters
    ----------
    df
        Output of :func:`leiden_sweep`.

    Returns
    -------
    ``best_ARI``, ``best_NMI`` (each maximised over resolutions separately),
    ``bARI_at_best_ARI``, ``mean_ARI``, ``mean_NMI``, ``best_resolution`` (of the best
    ARI, the first one on ties) and ``n_clusters_at_best_ARI``. The best ARI rewards an
    embedding that some resolution clusters well; the mean ARI one that clusters well at
    most resolutions, which is what a user who cannot tune the resolution against labels
    gets.

    Examples
    --------
    %(sweep_table)s
    >>> summary = sm.tl.sweep_summary(sweep)
    >>> summary[["best_ARI", "bARI_at_best_ARI", "best_resolution"]].tolist()
    [0.9, 0.02, 0.5]
    >>> round(float(summary["mean_ARI"]), 3)
    0.733
    """
    missing = [c for c in SWEEP_COLUMNS if c not in df.columns]
    if missing:
        raise KeyError(f"df lacks the leiden_sweep columns {missing}.")
    if df.empty:
        raise ValueError("df is empty; run leiden_sweep with at least one resolution.")
    best = df.iloc[int(np.argmax(df["ARI"].to_numpy()))]
    return pd.Series(
        {
            "best_ARI": float(df["ARI"].max()),
            "best_NMI": float(df["NMI"].max()),
            "bARI_at_best_ARI": float(best["bARI"]),
            "mean_ARI": float(df["ARI"].mean()),
            "mean_NMI": float(df["NMI"].mean()),
            "best_resolution": float(best["resolution"]),
            "n_clusters_at_best_ARI": int(best["n_clusters"]),
        }
    )
