"""Topic enrichment: each topic's most enriched cell type (or cluster), one row per topic."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from .._validation import check_obs_key
from ._topic_matrices import _as_topic_gene, _enrichment, _get_theta, _top_genes


def topic_enrichment(
    adata: ad.AnnData,
    label_key: str,
    *,
    theta_key: str = "X_topics",
    topic_gene: pd.DataFrame | np.ndarray | None = None,
    n_top: int = 10,
    min_cells: int = 1,
) -> pd.DataFrame:
    """Find each topic's most enriched cell type (or cluster): one row per topic.

    The per-topic reading of :func:`topic_specificity`, with the same enrichment
    ``ratio = mean θ_k in the label / mean θ_k in all other cells``: for each topic ``k``,
    the label with the largest ratio. A ratio near 1 marks a background topic that every
    label uses alike.

    Parameters
    ----------
    adata
        Cells with θ in ``obsm[theta_key]`` and labels (cell types, or clusters when there
        are no labels) in ``obs[label_key]``.
    label_key
        ``obs`` column with the labels.
    theta_key
        ``obsm`` key of θ (cells × topics, rows summing to 1).
    topic_gene
        Topics × genes matrix (e.g. ``model.get_topic_gene_matrix()``); names the topics and
        adds their ``top_genes``.
    n_top
        Top genes listed per topic.
    min_cells
        Labels with fewer cells cannot be a topic's most enriched one (tiny groups give
        noisy ratios); they still count among the other cells.

    Returns
    -------
    One row per topic (index ``topic``, in the model's order) with ``mean_theta`` (the
    topic's mean proportion over all cells), ``label`` (most enriched label), ``n_cells``
    (its cells), ``theta_in``, ``theta_out`` and ``ratio``; with ``topic_gene`` also
    ``top_genes`` (list, best first).

    Examples
    --------
    >>> import numpy as np
    >>> import scetm_mnn as sm
    >>> adata = sm.datasets.simulate(n_cells=300, n_genes=200, n_batches=2, n_cell_types=3)
    >>> types = adata.obs["cell_type"].cat.codes.to_numpy()
    >>> theta = np.full((adata.n_obs, 4), 0.1)
    >>> theta[np.arange(adata.n_obs), types] = 0.7  # topic k is type_k's; topic_3 is shared
    >>> adata.obsm["X_topics"] = theta
    >>> table = sm.tl.topic_enrichment(adata, "cell_type")
    >>> table[["label", "ratio"]].head(3).round(2)  # doctest: +NORMALIZE_WHITESPACE
              label  ratio
    topic
    topic_0  type_0    7.0
    topic_1  type_1    7.0
    topic_2  type_2    7.0
    >>> round(float(table.loc["topic_3", "ratio"]), 2)  # the shared topic: a background one
    1.0
    """
    if min_cells < 1:
        raise ValueError(f"min_cells must be at least 1, not {min_cells}.")
    theta = _get_theta(adata, theta_key)
    check_obs_key(adata, label_key, "label_key")
    if topic_gene is not None:
        topic_gene = _as_topic_gene(topic_gene, theta.shape[1])
        names = list(topic_gene.index.astype(str))
    else:
        names = [f"topic_{k}" for k in range(theta.shape[1])]
    n_cells, theta_in, theta_out, ratio = _enrichment(theta, adata.obs[label_key].to_numpy())
    eligible = n_cells.to_numpy() >= min_cells
    if not eligible.any():
        raise ValueError(
            f"No label of adata.obs[{label_key!r}] has min_cells={min_cells} cells; lower it."
        )
    best = np.where(eligible[:, None], ratio, -np.inf).argmax(axis=0)
    topics = np.arange(theta.shape[1])
    table = pd.DataFrame(
        {
            "mean_theta": theta.mean(axis=0),
            "label": n_cells.index.to_numpy()[best],
            "n_cells": n_cells.to_numpy()[best],
            "theta_in": theta_in[best, topics],
            "theta_out": theta_out[best, topics],
            "ratio": ratio[best, topics],
        },
        index=pd.Index(names, name="topic"),
    )
    if topic_gene is not None:
        table["top_genes"] = pd.Series(_top_genes(topic_gene, n_top), index=table.index)
    return table
