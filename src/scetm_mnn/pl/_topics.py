"""Topic heatmaps: top genes per topic and mean topic proportions per cell type."""

from __future__ import annotations

import os
from collections.abc import Sequence

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from .._validation import check_obs_key
from ._utils import save_figure


def _select_topics(names: pd.Index, topics: Sequence[int | str] | None) -> list[str]:
    if topics is None:
        return list(names)
    selected = [names[t] if isinstance(t, int | np.integer) else t for t in topics]
    unknown = [t for t in selected if t not in names]
    if unknown:
        raise KeyError(f"Unknown topics {unknown}; the model has {list(names)}.")
    return selected


def _heatmap(fig, ax, values: pd.DataFrame, cmap: str, label: str, norm=None) -> None:
    image = ax.imshow(
        values.to_numpy(), aspect="auto", cmap=cmap, norm=norm, interpolation="nearest"
    )
    ax.set_xticks(range(values.shape[1]), values.columns, rotation=90, fontsize=7)
    ax.set_yticks(range(values.shape[0]), values.index, fontsize=7)
    fig.colorbar(image, ax=ax, shrink=0.6, label=label)


def topic_heatmap(
    model,
    adata: ad.AnnData | None = None,
    label_key: str = "cell_type",
    n_top: int = 5,
    topics: Sequence[int | str] | None = None,
    save: str | os.PathLike | None = None,
    title: str | None = None,
) -> Figure:
    """Plot each topic's top genes and the mean topic proportions per cell type.

    Left: the topic × gene matrix restricted to the union of the topics' ``n_top`` top
    genes (in topic order), diverging colours centred on 0 when it has negative values.
    Right: the mean topic proportion θ of each cell type. The panels share the topic axis.

    Parameters
    ----------
    model
        A trained topic model with ``get_topic_gene_matrix()`` (topics × genes DataFrame),
        ``get_top_genes(n=...)`` (ranks × topics DataFrame of gene names),
        ``get_topic_proportions(adata)`` (cells × topics) and ``adata``.
    adata
        Cells whose θ is averaged; default ``model.adata``.
    label_key
        ``obs`` column with cell-type labels.
    n_top
        Top genes shown per topic.
    topics
        Topics to show (positions or names); default all. Use it for large models.
    save
        Path to write the figure to (format from the suffix, e.g. ``.png``, ``.pdf``).
    title
        Figure title.

    Returns
    -------
    The figure: two heatmap axes followed by their two colour-bar axes.
    """
    if n_top < 1:
        raise ValueError(f"n_top must be at least 1, not {n_top}.")
    adata = model.adata if adata is None else adata
    check_obs_key(adata, label_key, "label_key")
    beta = model.get_topic_gene_matrix()
    names = _select_topics(beta.index, topics)
    top = model.get_top_genes(n=n_top)
    genes = list(dict.fromkeys(top[names].iloc[:n_top].T.to_numpy().ravel()))
    weights = beta.loc[names, genes]
    theta = np.asarray(model.get_topic_proportions(adata))
    if theta.shape != (adata.n_obs, len(beta.index)):
        raise ValueError(
            f"get_topic_proportions returned shape {theta.shape}, expected "
            f"({adata.n_obs}, {len(beta.index)})."
        )
    labels = adata.obs[label_key].astype(str).to_numpy()
    mean_theta = pd.DataFrame(theta, columns=beta.index).groupby(labels).mean()[names].T

    n_types = mean_theta.shape[1]
    width = min(30.0, 3.5 + 0.16 * len(genes) + 0.25 * n_types)
    height = min(30.0, 2.0 + 0.22 * len(names))
    fig, axes = plt.subplots(
        1,
        2,
        figsize=(width, height),
        sharey=True,
        layout="constrained",
        gridspec_kw={"width_ratios": [max(len(genes), 1), max(n_types, 1) * 1.5]},
    )
    lo, hi = float(np.nanmin(weights.to_numpy())), float(np.nanmax(weights.to_numpy()))
    if lo < 0 < hi:
        _heatmap(fig, axes[0], weights, "RdBu_r", "topic-gene weight", TwoSlopeNorm(0.0, lo, hi))
    else:
        _heatmap(fig, axes[0], weights, "viridis", "topic-gene weight")
    axes[0].set_title(f"Top {n_top} genes per topic", fontsize=10)
    _heatmap(fig, axes[1], mean_theta, "viridis", "mean θ")
    axes[1].set_title(f"Mean topic proportion by {label_key}", fontsize=10)
    if title is not None:
        fig.suptitle(title)
    save_figure(fig, save)
    return fig
