"""Label transfer from a reference to a query: a distance-weighted kNN vote with uncertainty.

The uncertainty is calibrated on the reference: a query cell's distance to its nearest
reference cells is compared with what that distance is for reference cells of the label
it is given, measured against the *other* reference batches (a split conformal rule,
label-conditional as in Mondrian conformal prediction; Vovk et al. 2005). A cell of a
new batch whose type the reference holds lies as close to the reference as reference
cells lie to the batches they are not in; a cell of a type the reference lacks lies
farther.
"""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

from .._validation import check_obs_key
from ._utils import get_rep

logger = logging.getLogger(__name__)

UNKNOWN = "Unknown"
"""The label :func:`transfer_labels` gives cells whose uncertainty is above its threshold."""


def _vote(
    distances: np.ndarray, neighbour_labels: np.ndarray, n_labels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per query cell, the winning label code and its weight share.

    Each neighbour weighs ``exp(-d / d̄)``, ``d̄`` the cell's mean neighbour distance, so
    the vote does not depend on the embedding's scale.
    """
    scale = distances.mean(axis=1, keepdims=True)
    weights = np.exp(-distances / np.maximum(scale, 1e-12))
    weights /= weights.sum(axis=1, keepdims=True)
    votes = np.zeros((distances.shape[0], n_labels))
    rows = np.repeat(np.arange(distances.shape[0]), distances.shape[1])
    np.add.at(votes, (rows, neighbour_labels.ravel()), weights.ravel())
    return votes.argmax(axis=1), votes.max(axis=1)


def calibration_distances(
    x_ref: np.ndarray, batches: np.ndarray | None, n_neighbors: int
) -> np.ndarray:
    """Each reference cell's mean distance to its ``n_neighbors`` nearest reference cells.

    With ``batches`` (two or more), the neighbours are taken from the other batches only,
    as a query cell's come from batches it is not in; otherwise from every other cell.
    """
    if batches is None or pd.unique(batches).size < 2:
        index = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(x_ref)
        return index.kneighbors(x_ref)[0][:, 1:].mean(axis=1)
    out = np.empty(x_ref.shape[0])
    for batch in pd.unique(batches):
        inside = batches == batch
        k = min(n_neighbors, int((~inside).sum()))
        index = NearestNeighbors(n_neighbors=k).fit(x_ref[~inside])
        out[inside] = index.kneighbors(x_ref[inside])[0].mean(axis=1)
    return out


def conformal_p_values(
    scores: np.ndarray, labels: np.ndarray, calibration: np.ndarray, calibration_labels: np.ndarray
) -> np.ndarray:
    """``#{calibration ≥ score} / n`` among the ``n`` calibration cells of each label.

    The empirical tail, without the ``+1`` of the finite-sample conformal p-value: with
    it, a label of fewer than ``1 / α`` reference cells could never reach ``p < α``.
    """
    p = np.ones(scores.size)
    for label in np.unique(labels):
        mine = labels == label
        cal = np.sort(calibration[calibration_labels == label])
        above = cal.size - np.searchsorted(cal, scores[mine], side="left")
        p[mine] = above / max(cal.size, 1)
    return p


def transfer_labels(
    reference: ad.AnnData,
    query: ad.AnnData,
    label_key: str,
    use_rep: str,
    n_neighbors: int = 15,
    threshold: float = 0.5,
    distance_quantile: float = 0.95,
    unknown_label: str = UNKNOWN,
    batch_key: str | None = None,
) -> None:
    """Transfer ``reference.obs[label_key]`` to ``query`` by a distance-weighted kNN vote.

    Each query cell's ``n_neighbors`` nearest reference cells (Euclidean, in
    ``obsm[use_rep]`` of both, one shared embedding such as a mapped query's latent
    representation) vote with weights ``exp(-d / d̄)``, ``d̄`` the cell's mean distance to
    them. The uncertainty combines the vote and the distance:

    ``uncertainty = 1 − (winning weight share) · min(1, p / (1 − distance_quantile))``

    where ``p`` is a conformal p-value of the cell's distance ``d̄``: the fraction of the
    reference cells of the winning label whose own mean distance to their
    ``n_neighbors`` nearest reference cells is at least ``d̄``. With ``batch_key``, those
    reference distances are taken to the other reference batches only, which is how far
    a cell of a batch the reference has not seen lies from it; without, to every other
    reference cell (a stricter rule when the query is a new batch). A cell among
    reference cells of one label gets an uncertainty near 0; one between labels, or
    farther from the reference than all but a ``1 − distance_quantile`` fraction of the
    reference cells of its label are (such as a type the reference lacks), gets a high
    one. Cells above ``threshold`` are labelled
    ``unknown_label``: with the defaults, a cell whose neighbours all agree is
    ``unknown_label`` when ``p < 0.025``, so about 2.5 % of the query cells of a type the
    reference holds are, when the query lies like the reference's batches (the rule is
    not fitted to the query; see the user guide).

    ``query`` is changed in place: the function writes ``query.obs[f"{label_key}_predicted"]``
    (categorical) and ``query.obs[f"{label_key}_uncertainty"]`` (float in [0, 1]).
    ``reference`` is not changed.

    Parameters
    ----------
    reference
        Cells with known labels, ``obs[label_key]`` and ``obsm[use_rep]``.
    query
        Cells to label, with ``obsm[use_rep]`` in the same space.
    label_key
        Column of ``reference.obs`` with the labels.
    use_rep
        Key of ``obsm`` (in both) holding the embedding, or ``"X"``.
    n_neighbors
        Reference neighbours per query cell.
    threshold
        Cells with a higher uncertainty are labelled ``unknown_label``; ``1`` labels every
        cell.
    distance_quantile
        Quantile of the reference's own neighbour distances beyond which the distance
        lowers the confidence (with the default 0.95 and ``threshold=0.5``, a cell farther
        from the reference than 97.5 % of reference cells are from theirs is
        ``unknown_label``).
    unknown_label
        The label of the uncertain cells.
    batch_key
        Column of ``reference.obs`` with the reference's batches, for the calibration
        (see above); ``None`` calibrates on every other reference cell.

    Raises
    ------
    KeyError
        When ``label_key`` or ``batch_key`` is not in ``reference.obs``, or ``use_rep`` is
        missing.
    ValueError
        When the embeddings differ in width, the labels have missing values, or a
        parameter is out of range.

    Examples
    --------
    >>> import scanpy as sc
    >>> import scetm_mnn as sm
    >>> adata = sm.datasets.simulate(n_cells=400, n_genes=100, batch_effect=0.0, random_state=0)
    >>> sc.pp.normalize_total(adata)
    >>> sc.pp.log1p(adata)
    >>> sc.pp.pca(adata, n_comps=10)
    >>> reference, query = adata[:300].copy(), adata[300:].copy()
    >>> sm.tl.transfer_labels(reference, query, "cell_type", "X_pca", batch_key="batch")
    >>> predicted = query.obs["cell_type_predicted"].astype(str)
    >>> accuracy = (predicted == query.obs["cell_type"].astype(str)).mean()
    >>> bool(accuracy > 0.9), bool(query.obs["cell_type_uncertainty"].between(0, 1).all())
    (True, True)
    """
    if int(n_neighbors) < 1:
        raise ValueError(f"n_neighbors must be at least 1, got {n_neighbors}.")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}.")
    if not 0.0 < distance_quantile < 1.0:
        raise ValueError(f"distance_quantile must be in (0, 1), got {distance_quantile}.")
    check_obs_key(reference, label_key, "label_key")
    if batch_key is not None:
        check_obs_key(reference, batch_key, "batch_key")
    labels = reference.obs[label_key]
    x_ref, x_query = get_rep(reference, use_rep), get_rep(query, use_rep)
    if x_ref.shape[1] != x_query.shape[1]:
        raise ValueError(
            f"reference.obsm[{use_rep!r}] has {x_ref.shape[1]} columns and the query's "
            f"{x_query.shape[1]}: both need one shared embedding (e.g. the latent "
            "representation of a model and of its query model)."
        )
    k = min(int(n_neighbors), reference.n_obs - 1)
    if k < 1:
        raise ValueError("The reference needs at least 2 cells.")
    codes, names = pd.factorize(labels.astype(str), sort=True)
    distances, neighbours = NearestNeighbors(n_neighbors=k).fit(x_ref).kneighbors(x_query)
    winner, share = _vote(distances, codes[neighbours], len(names))
    batches = None if batch_key is None else reference.obs[batch_key].astype(str).to_numpy()
    calibration = calibration_distances(x_ref, batches, k)
    p = conformal_p_values(distances.mean(axis=1), winner, calibration, codes)
    closeness = np.minimum(1.0, p / (1.0 - distance_quantile))
    uncertainty = np.clip(1.0 - share * closeness, 0.0, 1.0)
    predicted = np.where(uncertainty > threshold, unknown_label, np.asarray(names)[winner])
    categories = [*names, unknown_label] if unknown_label not in names else list(names)
    query.obs[f"{label_key}_predicted"] = pd.Categorical(predicted, categories=categories)
    query.obs[f"{label_key}_uncertainty"] = uncertainty
    logger.info(
        "Transferred %r to %d cells from %d reference cells; %d (%.1f%%) are %r.",
        label_key, query.n_obs, reference.n_obs, int((predicted == unknown_label).sum()),
        100 * float(np.mean(predicted == unknown_label)), unknown_label,
    )  # fmt: skip
