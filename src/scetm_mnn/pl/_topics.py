"""Topic heatmaps: top genes per topic and mean topic proportions per cell type."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from .._docstrings import shared_docstring
from .._validation import check_obs_key
from ..tl._annotate import TOPIC_ANNOTATION_KEY
from ..tl._topic_matrices import _enrichment, _get_theta
from ._utils import figure_and_axes, save_or_show

_NORMALIZE_LABELS = {
    None: "mean θ",
    "type": "mean θ / cell type's max",
    "topic": "mean θ / topic's max",
}


def _shown_labels(labels: Mapping[str, str] | None, adata: ad.AnnData, model) -> dict:
    """The topic axis' labels: ``labels``, else those annotate_topics stored, else none."""
    if labels is not None:
        return dict(labels)
    for where in (adata, getattr(model, "adata", None)):
        record = where.uns.get(TOPIC_ANNOTATION_KEY) if where is not None else None
        if isinstance(record, Mapping) and isinstance(record.get("labels"), Mapping):
            return dict(record["labels"])
    return {}


def _select_topics(names: pd.Index, topics: Sequence[int | str] | None) -> list[str]:
    if topics is None:
        return list(names)
    selected = [names[t] if isinstance(t, int | np.integer) else t for t in topics]
    unknown = [t for t in selected if t not in names]
    if unknown:
        raise KeyError(f"Unknown topics {unknown}; the model has {list(names)}.")
    return selected


def _diagonal_order(
    theta: np.ndarray, labels: np.ndarray, all_names: pd.Index, names: list[str]
) -> tuple[list[str], list[str]]:
    """Order topics and cell types so each type's most enriched topic lies on the diagonal.

    Each type's best topic is the shown topic with the largest enrichment ratio (mean θ in
    the type / mean θ in the other cells). Types are sorted by the position of their best
    topic, then by decreasing ratio; topics that are some type's best come first, in that
    order, and the others follow in their given order.
    """
    n_cells, _, _, ratio = _enrichment(theta, labels)
    ratio = pd.DataFrame(ratio, index=n_cells.index, columns=all_names)[names]
    best = ratio.to_numpy().argmax(axis=1)
    best_ratio = ratio.to_numpy()[np.arange(len(best)), best]
    type_order = sorted(range(len(best)), key=lambda i: (best[i], -best_ratio[i]))
    first = list(dict.fromkeys(names[best[i]] for i in type_order))
    topic_order = first + [t for t in names if t not in first]
    return topic_order, [n_cells.index[i] for i in type_order]


def _normalize(values: pd.DataFrame, normalize: str | None) -> pd.DataFrame:
    """Divide each column (``"type"``) or row (``"topic"``) of topics × types by its max."""
    if normalize is None:
        return values
    axis = 0 if normalize == "type" else 1
    peak = values.max(axis=axis)
    peak = peak.where(peak > 0, 1.0)
    return values.div(peak, axis=1 - axis)


def _heatmap(
    fig, ax, values: pd.DataFrame, cmap: str, label: str, norm=None, vmin=None, vmax=None
) -> None:
    image = ax.imshow(
        values.to_numpy(),
        aspect="auto",
        cmap=cmap,
        norm=norm,
        vmin=vmin,
        vmax=vmax,
        interpolation="nearest",
    )
    ax.set_xticks(range(values.shape[1]), values.columns, rotation=90, fontsize=7)
    ax.set_yticks(range(values.shape[0]), values.index, fontsize=7)
    fig.colorbar(image, ax=ax, shrink=0.6, label=label)


@shared_docstring
def topic_heatmap(
    model,
    adata: ad.AnnData | None = None,
    label_key: str = "cell_type",
    n_top: int = 5,
    topics: Sequence[int | str] | None = None,
    save: str | os.PathLike | None = None,
    title: str | None = None,
    *,
    normalize: Literal["topic", "type"] | None = "topic",
    order: bool = True,
    theta_key: str | None = None,
    topic_labels: Mapping[str, str] | None = None,
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
) -> Figure | list[Axes] | None:
    """Plot each topic's top genes and the mean topic proportions per cell type.

    Left: the topic × gene matrix restricted to the union of the topics' ``n_top`` top
    genes (in topic order), diverging colours centred on 0 when it has negative values.
    Right: the mean topic proportion θ of each cell type (topics × cell types), by default
    scaled so each topic's largest value is 1, and ordered so that each type's most
    enriched topic lies on the diagonal. The panels share the topic axis.

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
    normalize
        Scaling of the mean-θ panel, named in its colour-bar label (colour scale 0–1 when
        scaled). ``"topic"`` divides each topic's row by its maximum over the cell types,
        so the type using a topic most shows as 1: a cell-type-specific topic is one
        bright cell, a topic shared by all types a bright row. ``"type"`` divides each cell
        type's column by its maximum over the shown topics, so each type's dominant topic
        shows as 1 (often a shared background topic, not the most enriched one). ``None``
        shows the raw mean θ.
    order
        Reorder the cell types by their most enriched topic (largest ratio of mean θ in
        the type to mean θ in the other cells) and the topics so that the panel is as
        diagonal as possible; topics that are no type's most enriched go last. With
        ``False``, topics keep the model's (or ``topics``') order and cell types are sorted
        by name.
    theta_key
        ``obsm`` key of θ already computed for ``adata`` (e.g. ``"X_topics"``), which is
        then averaged instead of calling ``model.get_topic_proportions(adata)``.
    topic_labels
        Topic name → the label shown on the topic axis (e.g. from
        :func:`scetm_mnn.tl.topic_labels`); default: the labels that
        :func:`scetm_mnn.tl.annotate_topics` wrote to ``uns["topic_annotation"]`` of
        ``adata`` or ``model.adata``, else the topic names.
    ax
        Draw into these two axes (genes, cell types) instead of a new figure; the colour
        bars are added beside them.
    show
        Show the figure (:func:`matplotlib.pyplot.show`); ``None`` follows
        :attr:`scanpy.settings.autoshow`, as scanpy's plots do.

    Returns
    -------
    ``None`` when the figure is shown; otherwise the figure (two heatmap axes followed by
    their two colour-bar axes), or the axes passed as ``ax``.

    How to read it. Left, the colour is the topic-gene weight ``β = α·ρ`` (a logit: only
    differences within a topic's row matter, and red genes are those the topic raises).
    Right, with the default ``normalize="topic"``, 1 (yellow) marks the cell type that uses
    a topic most and 0 (purple) one that does not use it; a topic specific to one cell type
    is a single bright cell, a background topic a bright row. Name a topic from its top
    genes on the left (e.g. INS, IAPP: beta cells) and check the name against the right
    panel; :func:`scetm_mnn.tl.topic_specificity` gives the same reading as a table.

    Examples
    --------
    %(simulated_model)s
    >>> model.train(max_epochs=5, enable_progress_bar=False)  # a few steps: a quick look
    >>> fig = sm.pl.topic_heatmap(model, label_key="cell_type", n_top=3, show=False)
    >>> [ax.get_title() for ax in fig.axes[:2]]
    ['Top 3 genes per topic', 'Mean topic proportion by cell_type']
    >>> adata.obsm["X_topics"] = model.get_topic_proportions()
    >>> raw = sm.pl.topic_heatmap(
    ...     model, normalize=None, order=False, topics=[0, 1], theta_key="X_topics", show=False
    ... )
    >>> raw.axes[3].get_ylabel()
    'mean θ'
    """
    if n_top < 1:
        raise ValueError(f"n_top must be at least 1, not {n_top}.")
    if normalize not in _NORMALIZE_LABELS:
        raise ValueError(f"normalize must be 'type', 'topic' or None, not {normalize!r}.")
    adata = model.adata if adata is None else adata
    check_obs_key(adata, label_key, "label_key")
    beta = model.get_topic_gene_matrix()
    names = _select_topics(beta.index, topics)
    if theta_key is None:
        theta = np.asarray(model.get_topic_proportions(adata))
    else:
        theta = _get_theta(adata, theta_key)
    if theta.shape != (adata.n_obs, len(beta.index)):
        raise ValueError(
            f"θ ({theta_key or 'get_topic_proportions'}) has shape {theta.shape}, expected "
            f"({adata.n_obs}, {len(beta.index)})."
        )
    labels = adata.obs[label_key].astype(str).to_numpy()
    mean_theta = pd.DataFrame(theta, columns=beta.index).groupby(labels).mean()
    if order and mean_theta.shape[0] > 1:
        names, type_order = _diagonal_order(theta, labels, beta.index, names)
        mean_theta = mean_theta.loc[type_order]
    mean_theta = _normalize(mean_theta[names].T, normalize)
    top = model.get_top_genes(n=n_top)
    genes = list(dict.fromkeys(top[names].iloc[:n_top].T.to_numpy().ravel()))
    shown = _shown_labels(topic_labels, adata, model)
    weights = beta.loc[names, genes].rename(index=shown)
    mean_theta = mean_theta.rename(index=shown)

    n_types = mean_theta.shape[1]
    width = min(30.0, 3.5 + 0.16 * len(genes) + 0.25 * n_types)
    height = min(30.0, 2.0 + 0.22 * len(names))
    fig, axes = figure_and_axes(
        ax,
        2,
        (width, height),
        sharey=True,
        gridspec_kw={"width_ratios": [max(len(genes), 1), max(n_types, 1) * 1.5]},
    )
    lo, hi = float(np.nanmin(weights.to_numpy())), float(np.nanmax(weights.to_numpy()))
    if lo < 0 < hi:
        _heatmap(fig, axes[0], weights, "RdBu_r", "topic-gene weight", TwoSlopeNorm(0.0, lo, hi))
    else:
        _heatmap(fig, axes[0], weights, "viridis", "topic-gene weight")
    axes[0].set_title(f"Top {n_top} genes per topic", fontsize=10)
    vmax = None if normalize is None else 1.0
    label = _NORMALIZE_LABELS[normalize]
    _heatmap(fig, axes[1], mean_theta, "viridis", label, vmin=0.0, vmax=vmax)
    axes[1].set_title(f"Mean topic proportion by {label_key}", fontsize=10)
    if title is not None:
        fig.suptitle(title)
    return save_or_show(fig, ax, save, show)
