"""The topic measures' inputs: θ and the topics × genes matrix checked, and the enrichment.

Every topic measure (:mod:`._topics`, :mod:`._topic_enrichment`) and the topic heatmap read
θ and ``topic_gene`` through these checks, and compare each label's mean θ with that of
all other cells through :func:`_enrichment`.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

#: Floor for the out-of-type mean θ in the enrichment ratio (avoids division by zero).
_TINY = 1e-12
#: Tolerance on the row sums of θ.
_SUM_ATOL = 1e-3


def _as_theta(theta, name: str = "theta") -> np.ndarray:
    """Check that ``theta`` is a finite, non-negative cells × topics matrix of proportions."""
    theta = theta.toarray() if hasattr(theta, "toarray") else np.asarray(theta)
    if theta.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D cells × topics matrix, not an array of shape {theta.shape}."
        )
    if theta.shape[0] == 0 or theta.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {theta.shape}).")
    if not np.issubdtype(theta.dtype, np.number):
        raise TypeError(f"{name} has non-numeric dtype {theta.dtype}; expected numbers.")
    theta = theta.astype(np.float64, copy=False)
    if not np.all(np.isfinite(theta)):
        raise ValueError(f"{name} contains NaN or infinite values; θ must be finite.")
    if theta.min() < 0:
        raise ValueError(
            f"{name} contains negative values, so it does not hold topic proportions θ "
            "(it may be the unnormalised embedding μ). Pass θ = softmax(μ), e.g. "
            "`model.get_topic_proportions()`."
        )
    sums = theta.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=_SUM_ATOL):
        raise ValueError(
            f"The rows of {name} must sum to 1 (topic proportions θ); their sums range "
            f"from {sums.min():.4g} to {sums.max():.4g}. Pass θ from "
            "`model.get_topic_proportions()` rather than an embedding."
        )
    return theta


def _get_theta(adata: ad.AnnData, theta_key: str) -> np.ndarray:
    if theta_key not in adata.obsm:
        available = ", ".join(map(repr, adata.obsm.keys())) or "none"
        raise KeyError(
            f"theta_key={theta_key!r} is not a key of adata.obsm (available: {available}). "
            "Store the topic proportions first, e.g. "
            "`adata.obsm['X_topics'] = model.get_topic_proportions(adata)`."
        )
    return _as_theta(adata.obsm[theta_key], f"adata.obsm[{theta_key!r}]")


def _as_topic_gene(topic_gene, n_topics: int | None = None) -> pd.DataFrame:
    """Return ``topic_gene`` as a finite topics × genes DataFrame (genes named by column)."""
    if not isinstance(topic_gene, pd.DataFrame):
        values = np.asarray(topic_gene)
        if values.ndim != 2:
            raise ValueError(
                f"topic_gene must be a 2-D topics × genes matrix, not shape {values.shape}."
            )
        topic_gene = pd.DataFrame(
            values,
            index=[f"topic_{k}" for k in range(values.shape[0])],
            columns=[f"gene_{j}" for j in range(values.shape[1])],
        )
    if topic_gene.shape[0] == 0 or topic_gene.shape[1] == 0:
        raise ValueError(f"topic_gene is empty (shape {topic_gene.shape}).")
    values = topic_gene.to_numpy()
    if not np.issubdtype(values.dtype, np.number) or not np.all(np.isfinite(values)):
        raise ValueError("topic_gene must hold finite numbers (e.g. the β logits).")
    if n_topics is not None and topic_gene.shape[0] != n_topics:
        raise ValueError(
            f"topic_gene has {topic_gene.shape[0]} rows but θ has {n_topics} topics; pass "
            "the topics × genes matrix, e.g. `model.get_topic_gene_matrix()`."
        )
    return topic_gene


def _top_genes(topic_gene: pd.DataFrame, n_top: int) -> list[list[str]]:
    """Each topic's ``n_top`` genes with the largest weights, best first."""
    if n_top < 1:
        raise ValueError(f"n_top must be at least 1, not {n_top}.")
    if n_top > topic_gene.shape[1]:
        raise ValueError(f"n_top={n_top} exceeds the {topic_gene.shape[1]} genes of topic_gene.")
    order = np.argsort(-topic_gene.to_numpy(), axis=1, kind="stable")[:, :n_top]
    genes = np.asarray(topic_gene.columns.astype(str))
    return [list(genes[row]) for row in order]


def _enrichment(
    theta: np.ndarray, labels: np.ndarray
) -> tuple[pd.Series, np.ndarray, np.ndarray, np.ndarray]:
    """Mean θ inside and outside each label, and their ratio (labels × topics).

    Returns ``(n_cells, theta_in, theta_out, ratio)``; ``n_cells`` is a Series indexed by
    the sorted labels, the others are arrays in the same label order.
    """
    codes, uniques = pd.factorize(pd.Series(labels, dtype=str), sort=True)
    if len(uniques) < 2:
        raise ValueError(
            "Topic enrichment compares each cell type with all other cells, so it needs at "
            f"least two labels; found {len(uniques)} ({list(uniques)})."
        )
    counts = np.bincount(codes, minlength=len(uniques)).astype(np.float64)
    sums = np.zeros((len(uniques), theta.shape[1]))
    np.add.at(sums, codes, theta)
    theta_in = sums / counts[:, None]
    theta_out = (theta.sum(axis=0)[None, :] - sums) / (theta.shape[0] - counts)[:, None]
    ratio = theta_in / np.maximum(theta_out, _TINY)
    return pd.Series(counts.astype(int), index=pd.Index(uniques)), theta_in, theta_out, ratio
