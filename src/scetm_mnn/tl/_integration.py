"""Batch-mixing and cell-type separation metrics computed on an embedding's kNN graph."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import silhouette_samples, silhouette_score
from sklearn.neighbors import NearestNeighbors

from .._docstrings import shared_docstring
from ._subsample import subsample_positions
from ._utils import light_copy


def _knn_batch_counts(x: np.ndarray, batch_codes: np.ndarray, n_neighbors: int) -> np.ndarray:
    """Per cell, how many of its ``n_neighbors`` nearest other cells are in each batch."""
    nn = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(x)
    idx = nn.kneighbors(x, return_distance=False)[:, 1:]  # drop the cell itself
    n_batches = int(batch_codes.max()) + 1
    counts = np.zeros((x.shape[0], n_batches), dtype=np.int64)
    rows = np.repeat(np.arange(x.shape[0]), n_neighbors)
    np.add.at(counts, (rows, batch_codes[idx].ravel()), 1)
    return counts


def _neighbourhood_batches(
    tmp: ad.AnnData, use_rep: str, batch_key: str, n_neighbors: int
) -> tuple[np.ndarray, np.ndarray]:
    """Batch codes and per-cell neighbourhood batch counts of a light copy, checked."""
    n_batches = len(tmp.obs[batch_key].cat.categories)
    if n_batches < 2:
        raise ValueError(f"adata.obs[{batch_key!r}] has one batch; mixing needs at least two.")
    if not 0 < n_neighbors < tmp.n_obs:
        raise ValueError(f"n_neighbors must be between 1 and n_obs - 1, not {n_neighbors}.")
    codes = tmp.obs[batch_key].cat.codes.to_numpy()
    # light_copy's categories are the observed batches, so every code has cells.
    return codes, _knn_batch_counts(tmp.obsm[use_rep], codes, n_neighbors)


def _batch_entropy(counts: np.ndarray) -> float:
    """Mean Shannon entropy of neighbourhood batch frequencies over ``log(n_batches)``."""
    p = counts / counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return float(np.mean(h) / np.log(counts.shape[1]))


def _kbet_acceptance(counts: np.ndarray, batch_freq: np.ndarray, alpha: float) -> float:
    """Fraction of neighbourhoods whose batch counts pass a chi-square test (kBET)."""
    expected = counts.sum(axis=1, keepdims=True) * batch_freq[None, :]
    chi2 = ((counts - expected) ** 2 / expected).sum(axis=1)
    p_values = stats.chi2.sf(chi2, df=counts.shape[1] - 1)
    return float(np.mean(p_values >= alpha))


def _silhouette_batch(x: np.ndarray, batches: np.ndarray, labels: np.ndarray) -> float:
    """Compute scib's batch ASW: the mean over cell types of mean ``1 - |s|`` by batch."""
    scores = []
    for label in np.unique(labels):
        mask = labels == label
        n_batch = len(np.unique(batches[mask]))
        if n_batch < 2 or n_batch >= mask.sum():
            continue  # silhouettes are undefined for these cells
        s = silhouette_samples(x[mask], batches[mask])
        scores.append(np.mean(1.0 - np.abs(s)))
    return float(np.mean(scores)) if scores else float("nan")


@shared_docstring
def integration_metrics(
    adata: ad.AnnData,
    use_rep: str,
    label_key: str | None,
    batch_key: str,
    n_neighbors: int = 50,
    alpha: float = 0.05,
    subsample: int | None = None,
    random_state: int = 0,
) -> pd.Series:
    """Score how well an embedding mixes batches while keeping cell types apart.

    All neighbourhoods are the exact ``n_neighbors`` Euclidean nearest neighbours of each
    cell in ``use_rep``, the cell itself excluded.

    Parameters
    ----------
    %(embedding)s
    label_key
        ``obs`` column with cell-type labels, or ``None`` when there are none: the batch
        entropy, kBET and the batch silhouette need no labels; the label silhouettes and
        scib's batch ASW (computed per cell type) are then NaN.
    batch_key
        ``obs`` column with batch labels (at least two batches).
    n_neighbors
        Neighbourhood size. 50 is kBET's usual order of magnitude and gives each chi-square
        test enough expected counts per batch.
    alpha
        Significance level of the kBET test.
    subsample
        Score at most this many cells: above it, a stratified subsample of this many
        (:func:`~scetm_mnn.tl.stratified_subsample` by batch × cell type, or by batch
        without labels), whose neighbourhoods are found among the drawn cells. The
        silhouettes compare every pair of cells, so their cost grows with the square of
        the cells. The neighbourhood scores (batch entropy, kBET) then describe
        neighbourhoods among the drawn cells, which reach further than among all cells:
        compare embeddings on the same subsample (same size and seed), not with a score
        of all cells. ``None`` (default): all cells.
    random_state
        Seed of the subsample (nothing else here is random).

    Returns
    -------
    A Series with ``attrs["n_cells"]``, the number of cells scored, and

    - ``batch_entropy``: mean Shannon entropy of the batch labels among each cell's
      neighbours divided by ``log(n_batches)``; 1 is perfect mixing, 0 none.
    - ``kbet_acceptance``: kBET acceptance rate, the fraction of cells whose neighbourhood
      batch counts are not rejected (``p >= alpha``) by a chi-square goodness-of-fit test
      against the global batch frequencies (``n_batches - 1`` degrees of freedom), tested
      on every cell; higher is better.
    - ``silhouette_label``: :func:`sklearn.metrics.silhouette_score` of the cell types, in
      [-1, 1]; higher is better.
    - ``silhouette_batch``: the same for the batches; near 0 or below is good mixing.
    - ``asw_label``: scib's scaling ``(silhouette_label + 1) / 2`` in [0, 1]; higher is
      better.
    - ``asw_batch``: scib's batch ASW, per cell type the mean of ``1 - |s|`` with ``s`` the
      per-cell batch silhouettes, averaged over cell types (those in one batch are
      skipped); 1 is perfect mixing.

    The batch entropy is the one to read first: it is what the README's benchmark reports
    (with ``n_neighbors=30``). Its value depends on the batch sizes (a small batch cannot
    fill half of every neighbourhood), so compare embeddings of the same cells rather than
    data sets.

    Notes
    -----
    Against scib-metrics, on the same neighbourhoods (checked by the test suite when the
    ``bench`` extra is installed): ``kbet_acceptance`` is ``scib_metrics.kbet``'s
    acceptance rate (not ``kbet_per_label``, which tests each cell type on a diffusion
    graph, as the scib benchmark does); ``asw_batch`` is ``scib_metrics.silhouette_batch``,
    ``asw_label`` is ``scib_metrics.silhouette_label``, and ``silhouette_label`` and
    ``silhouette_batch`` are ``silhouette_label(..., rescale=False)`` of the labels and
    of the batches. They agree to float rounding.

    ``batch_entropy`` is not iLISI (``scib_metrics.ilisi_knn``), and the two differ by
    design: the entropy weighs the ``n_neighbors`` neighbours equally and averages the
    Shannon entropy ``h`` of their batch frequencies ``p`` over cells; iLISI weighs them
    with a Gaussian kernel of perplexity ``n_neighbors / 3``, takes the inverse Simpson
    index ``1 / Σ p²`` per cell, its median, and scales it by ``(L - 1) / (B - 1)``. On a
    neighbourhood that both weigh alike, ``B ** h ≥ 1 / Σ p²`` (Shannon's effective number
    of batches is at least Simpson's), with equality when it holds one batch or all in
    equal parts. Both are 0 when batches do not mix; under random mixing the entropy is
    near 1 and iLISI, over its smaller effective neighbourhood, well below (0.97 and 0.63
    for 3 batches and 30 neighbours in that test).

    Examples
    --------
    %(simulated_pca)s
    >>> metrics = sm.tl.integration_metrics(adata, "X_pca", "cell_type", "batch", n_neighbors=30)
    >>> metrics.index.tolist()  # doctest: +NORMALIZE_WHITESPACE
    ['batch_entropy', 'kbet_acceptance', 'silhouette_label', 'silhouette_batch',
     'asw_label', 'asw_batch']
    >>> bool(0 <= metrics["batch_entropy"] <= 1)
    True

    Without labels, pass ``None``; the label-based scores are NaN:

    >>> unlabelled = sm.tl.integration_metrics(adata, "X_pca", None, "batch", n_neighbors=30)
    >>> bool(unlabelled["batch_entropy"] == metrics["batch_entropy"])
    True
    >>> bool(unlabelled[["silhouette_label", "asw_batch"]].isna().all())
    True

    On many cells, score a stratified subsample:

    >>> sm.tl.integration_metrics(
    ...     adata, "X_pca", "cell_type", "batch", n_neighbors=30, subsample=200
    ... ).attrs["n_cells"]
    200
    """
    keys = {batch_key: "batch_key"}
    if label_key is not None:
        keys[label_key] = "label_key"
    keep = subsample_positions(adata, keys, subsample, random_state)
    tmp = light_copy(adata, use_rep, keys, keep)
    x = tmp.obsm[use_rep]
    labels = None if label_key is None else tmp.obs[label_key].to_numpy()
    batches = tmp.obs[batch_key].to_numpy()
    batch_codes, counts = _neighbourhood_batches(tmp, use_rep, batch_key, n_neighbors)
    n_batches = counts.shape[1]
    batch_freq = np.bincount(batch_codes, minlength=n_batches) / tmp.n_obs
    sil_label = (
        float(silhouette_score(x, labels))
        if labels is not None and 1 < len(np.unique(labels)) < tmp.n_obs
        else np.nan
    )
    metrics = pd.Series(
        {
            "batch_entropy": _batch_entropy(counts),
            "kbet_acceptance": _kbet_acceptance(counts, batch_freq, alpha),
            "silhouette_label": sil_label,
            "silhouette_batch": float(silhouette_score(x, batches)),
            "asw_label": (sil_label + 1.0) / 2.0,
            "asw_batch": np.nan if labels is None else _silhouette_batch(x, batches, labels),
        }
    )
    metrics.attrs["n_cells"] = int(tmp.n_obs)
    return metrics


@shared_docstring
def batch_entropy(
    adata: ad.AnnData,
    use_rep: str,
    batch_key: str,
    n_neighbors: int = 30,
    subsample: int | None = None,
    random_state: int = 0,
) -> float:
    """Mean batch entropy of the cells' neighbourhoods, from 0 (no mixing) to 1.

    The ``batch_entropy`` of :func:`integration_metrics` alone (no silhouettes, so it is
    cheap on many cells), with the ``n_neighbors=30`` of the README's benchmark. Compare
    embeddings of the same cells, e.g. the uncorrected PCA and the model's latent.

    Parameters
    ----------
    %(embedding)s
    batch_key
        ``obs`` column with batch labels (at least two batches).
    n_neighbors
        Neighbours of each cell, the cell itself excluded.
    subsample
        At most this many cells: above it, a stratified subsample by batch, as in
        :func:`integration_metrics` (its ``subsample`` with ``label_key=None`` gives the
        same value; compare embeddings on the same subsample). ``None`` (default): all
        cells.
    random_state
        Seed of the subsample.

    Returns
    -------
    The entropy of the batch labels among each cell's neighbours over ``log(n_batches)``,
    averaged over the cells.

    Examples
    --------
    %(simulated_pca)s
    >>> entropy = sm.tl.batch_entropy(adata, "X_pca", "batch")
    >>> metrics = sm.tl.integration_metrics(adata, "X_pca", None, "batch", n_neighbors=30)
    >>> bool(entropy == metrics["batch_entropy"])
    True
    """
    keys = {batch_key: "batch_key"}
    tmp = light_copy(
        adata, use_rep, keys, subsample_positions(adata, keys, subsample, random_state)
    )
    return _batch_entropy(_neighbourhood_batches(tmp, use_rep, batch_key, n_neighbors)[1])
