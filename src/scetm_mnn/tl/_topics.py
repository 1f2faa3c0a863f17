"""Topic meaning: cell-type specificity of the topics, marker recovery and diversity.

A topic model is chosen because its topics read as gene programmes. These measures say
whether they do: each cell type's most enriched topic and how enriched it is
(:func:`topic_specificity`), whether that topic's top genes hold the type's known markers,
how distinct the topics' top genes are (:func:`topic_diversity`), and how peaked the cells'
topic mixtures are (:func:`mean_max_theta`). :func:`topic_summary` condenses them into one
benchmark row.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import anndata as ad
import numpy as np
import pandas as pd

from .._validation import check_obs_key
from ._topic_matrices import _as_theta, _as_topic_gene, _enrichment, _get_theta, _top_genes

logger = logging.getLogger(__name__)


def topic_specificity(
    adata: ad.AnnData,
    label_key: str,
    *,
    theta_key: str = "X_topics",
    topic_gene: pd.DataFrame | np.ndarray | None = None,
    markers: Mapping[str, Sequence[str]] | None = None,
    n_top: int = 10,
    min_cells: int = 1,
) -> pd.DataFrame:
    """Find each cell type's most enriched topic and, optionally, its markers among the top genes.

    With θ the topic proportions (cells × K), the enrichment of topic ``k`` in type ``c`` is
    ``ratio = mean θ_k in c / mean θ_k in all other cells`` (the denominator floored at
    ``1e-12``). A type's enriched topic is the ``k`` with the largest ratio. Uniform θ gives
    ratios of 1; a topic used only by one type gives a very large ratio.

    Parameters
    ----------
    adata
        Cells with the topic proportions in ``obsm[theta_key]`` and labels in ``obs``.
    label_key
        ``obs`` column with the cell-type labels.
    theta_key
        ``obsm`` key of θ (cells × topics, non-negative, rows summing to 1).
    topic_gene
        Topics × genes matrix (e.g. the β logits from ``model.get_topic_gene_matrix()``),
        genes as columns. Its index names the topics; needed for ``top_genes`` and markers.
    markers
        Cell type → marker genes (e.g. :func:`scetm_mnn.datasets.pancreas_markers`).
        Needs ``topic_gene``. Gene names are matched exactly.
    n_top
        Top genes per topic used for ``top_genes`` and the marker check.
    min_cells
        Labels with fewer cells are left out of the table (their cells still count as
        "other cells" for the remaining labels).

    Returns
    -------
    One row per label (index named ``label_key``), sorted by ``n_cells`` descending, with
    columns ``n_cells``, ``topic`` (name of the enriched topic), ``theta_in``, ``theta_out``
    and ``ratio``; with ``topic_gene`` also ``top_genes`` (list of that topic's ``n_top``
    genes, best first); with ``markers`` also ``n_markers_in_top`` (nullable integer) and
    ``marker_hit`` (nullable boolean, at least one marker in the top genes), both ``<NA>``
    for labels without markers.

    Raises
    ------
    KeyError
        When ``theta_key`` or ``label_key`` is missing.
    ValueError
        When θ is not a matrix of proportions, there are fewer than two labels, or
        ``markers`` is given without ``topic_gene``.

    Examples
    --------
    Four topics on simulated cells of three types, each type using "its" topic (θ = 0.7)
    and the others a little (0.1); topic ``k`` weighs the marker genes of ``type_k``:

    >>> import numpy as np
    >>> import pandas as pd
    >>> import scetm_mnn as sm
    >>> adata = sm.datasets.simulate(n_cells=300, n_genes=200, n_batches=2, n_cell_types=3)
    >>> types = adata.obs["cell_type"].cat.codes.to_numpy()
    >>> theta = np.full((adata.n_obs, 4), 0.1)
    >>> theta[np.arange(adata.n_obs), types] = 0.7
    >>> adata.obsm["X_topics"] = theta
    >>> marker_of = adata.var["marker_of"].astype(str)
    >>> topic_gene = pd.DataFrame(
    ...     [(marker_of == f"type_{k}").to_numpy(float) for k in range(4)],
    ...     index=[f"topic_{k}" for k in range(4)],
    ...     columns=adata.var_names,
    ... )
    >>> markers = {t: list(marker_of.index[marker_of == t]) for t in ("type_0", "type_1")}
    >>> table = sm.tl.topic_specificity(
    ...     adata, "cell_type", topic_gene=topic_gene, markers=markers, n_top=5
    ... )
    >>> columns = ["n_cells", "topic", "ratio", "marker_hit"]
    >>> table[columns].round(2)  # doctest: +NORMALIZE_WHITESPACE
               n_cells    topic  ratio  marker_hit
    cell_type
    type_1         133  topic_1    7.0        True
    type_0         106  topic_0    7.0        True
    type_2          61  topic_2    7.0        <NA>

    A ratio of 7 means the type uses its topic seven times as much as the other cells;
    ``marker_hit`` is ``<NA>`` for a type without listed markers. With a trained model,
    use ``adata.obsm["X_topics"] = model.get_topic_proportions()`` and
    ``topic_gene=model.get_topic_gene_matrix()``.
    """
    if min_cells < 1:
        raise ValueError(f"min_cells must be at least 1, not {min_cells}.")
    if markers is not None and topic_gene is None:
        raise ValueError(
            "markers are checked against the topics' top genes, so pass `topic_gene=` too "
            "(e.g. `model.get_topic_gene_matrix()`)."
        )
    theta = _get_theta(adata, theta_key)
    check_obs_key(adata, label_key, "label_key")
    if topic_gene is not None:
        topic_gene = _as_topic_gene(topic_gene, theta.shape[1])
        names = np.asarray(topic_gene.index.astype(str))
        top = _top_genes(topic_gene, n_top)
    else:
        names = np.asarray([f"topic_{k}" for k in range(theta.shape[1])])
    n_cells, theta_in, theta_out, ratio = _enrichment(theta, adata.obs[label_key].to_numpy())
    best = ratio.argmax(axis=1)
    rows = np.arange(len(best))
    table = pd.DataFrame(
        {
            "n_cells": n_cells.to_numpy(),
            "topic": names[best],
            "theta_in": theta_in[rows, best],
            "theta_out": theta_out[rows, best],
            "ratio": ratio[rows, best],
        },
        index=pd.Index(n_cells.index, name=label_key),
    )
    if topic_gene is not None:
        table["top_genes"] = pd.Series([top[k] for k in best], index=table.index, dtype=object)
    if markers is not None:
        genes = set(topic_gene.columns.astype(str))
        n_in = pd.Series(pd.NA, index=table.index, dtype="Int64")
        for label, k in zip(table.index, best):
            if label not in markers:
                continue
            wanted = set(map(str, markers[label]))
            if not wanted & genes:
                logger.warning(
                    "None of the %d markers of %r is among topic_gene's genes.", len(wanted), label
                )
            n_in[label] = len(wanted & set(top[k]))
        table["n_markers_in_top"] = n_in
        table["marker_hit"] = (n_in >= 1).astype("boolean")
        unknown = sorted(set(markers) - set(table.index))
        if unknown:
            logger.info("Marker labels absent from adata.obs[%r]: %s", label_key, unknown)
    table = table[table["n_cells"] >= min_cells]
    return table.sort_values("n_cells", ascending=False, kind="stable")


def topic_diversity(topic_gene: pd.DataFrame | np.ndarray, n_top: int = 20) -> float:
    """Fraction of distinct genes among all topics' ``n_top`` top genes.

    The topic diversity of Dieng et al. (2020, *Topic modeling in embedding spaces*):
    1 when no two topics share a top gene, ``1 / K`` when all ``K`` topics have the same
    top genes.

    Parameters
    ----------
    topic_gene
        Topics × genes matrix (e.g. the β logits); genes are ranked by each row.
    n_top
        Top genes per topic.

    Returns
    -------
    The diversity, in ``[1 / K, 1]``.

    Examples
    --------
    >>> import numpy as np
    >>> import scetm_mnn as sm
    >>> sm.tl.topic_diversity(np.eye(3, 6), n_top=1)  # three topics, three distinct genes
    1.0
    >>> sm.tl.topic_diversity(np.ones((3, 6)), n_top=2)  # identical topics: 1 / K
    0.3333333333333333
    """
    top = _top_genes(_as_topic_gene(topic_gene), n_top)
    n_unique = len({gene for genes in top for gene in genes})
    return n_unique / (len(top) * n_top)


def mean_max_theta(theta) -> float:
    """Mean over cells of the largest topic proportion ``max_k θ_k``.

    It measures how peaked the topic mixtures are: ``1 / K`` for uniform θ, 1 when every
    cell uses a single topic.

    Parameters
    ----------
    theta
        Topic proportions, cells × topics (array or DataFrame), rows summing to 1.

    Returns
    -------
    The mean of the per-cell maxima.

    Examples
    --------
    >>> import numpy as np
    >>> import scetm_mnn as sm
    >>> sm.tl.mean_max_theta(np.full((5, 4), 0.25))
    0.25
    """
    return float(_as_theta(theta).max(axis=1).mean())


def topic_summary(
    adata: ad.AnnData,
    label_key: str,
    *,
    markers: Mapping[str, Sequence[str]] | None = None,
    topic_gene: pd.DataFrame | np.ndarray | None = None,
    theta_key: str = "X_topics",
    n_top: int = 10,
    min_cells_ratio: int = 50,
    min_cells_marker: int = 20,
    n_top_diversity: int = 20,
) -> pd.Series:
    """Condense the topic-meaning measures into one row for a benchmark table.

    Parameters
    ----------
    adata
        Cells with θ in ``obsm[theta_key]`` and labels in ``obs[label_key]``.
    label_key
        ``obs`` column with the cell-type labels.
    markers
        Cell type → marker genes; needs ``topic_gene``.
    topic_gene
        Topics × genes matrix; needed for ``marker_hits`` and ``diversity``.
    theta_key
        ``obsm`` key of θ.
    n_top
        Top genes per topic for the marker check.
    min_cells_ratio
        Labels with fewer cells are left out of ``min_ratio`` and ``n_types_ratio_ge_10``
        (rare types give noisy ratios).
    min_cells_marker
        Labels with fewer cells are left out of ``marker_hits``.
    n_top_diversity
        Top genes per topic for ``diversity``.

    Returns
    -------
    A float Series with

    ``mean_max_theta``
        :func:`mean_max_theta` of θ.
    ``min_ratio``
        Weakest enrichment ratio over the labels with at least ``min_cells_ratio`` cells
        (NaN when there are none).
    ``n_types_ratio_ge_10``
        How many of those labels have a ratio of at least 10.
    ``n_types_ratio``
        How many labels those are.
    ``marker_hits``
        How many labels in ``markers`` with at least ``min_cells_marker`` cells have at
        least one marker among their enriched topic's ``n_top`` top genes (NaN without
        ``markers``).
    ``n_marker_types``
        How many such labels there are (NaN without ``markers``).
    ``diversity``
        :func:`topic_diversity` with ``n_top_diversity`` (NaN without ``topic_gene``).

    Examples
    --------
    Topic proportions that follow the cell types exactly (θ = 1 on the type's own topic):

    >>> import numpy as np
    >>> import pandas as pd
    >>> import scetm_mnn as sm
    >>> adata = sm.datasets.simulate(n_cells=300, n_genes=200, n_batches=2, n_cell_types=3)
    >>> adata.obsm["X_topics"] = np.eye(3)[adata.obs["cell_type"].cat.codes.to_numpy()]
    >>> marker_of = adata.var["marker_of"].astype(str)
    >>> topic_gene = pd.DataFrame(
    ...     [(marker_of == f"type_{k}").to_numpy(float) for k in range(3)],
    ...     columns=adata.var_names,
    ... )
    >>> markers = {t: list(marker_of.index[marker_of == t]) for t in ("type_0", "type_1")}
    >>> summary = sm.tl.topic_summary(adata, "cell_type", topic_gene=topic_gene, markers=markers)
    >>> summary[["mean_max_theta", "n_types_ratio_ge_10", "marker_hits", "n_marker_types"]]
    mean_max_theta         1.0
    n_types_ratio_ge_10    3.0
    marker_hits            2.0
    n_marker_types         2.0
    Name: topics, dtype: float64
    """
    table = topic_specificity(
        adata,
        label_key,
        theta_key=theta_key,
        topic_gene=topic_gene,
        markers=markers,
        n_top=n_top,
    )
    ratios = table.loc[table["n_cells"] >= min_cells_ratio, "ratio"]
    if markers is not None:
        in_markers = table.index.isin(list(markers)) & (table["n_cells"] >= min_cells_marker)
        hits = table.loc[in_markers, "marker_hit"]
        marker_hits, n_marker_types = float(hits.sum()), float(len(hits))
    else:
        marker_hits = n_marker_types = np.nan
    diversity = topic_diversity(topic_gene, n_top_diversity) if topic_gene is not None else np.nan
    return pd.Series(
        {
            "mean_max_theta": mean_max_theta(adata.obsm[theta_key]),
            "min_ratio": float(ratios.min()) if len(ratios) else np.nan,
            "n_types_ratio_ge_10": float((ratios >= 10).sum()),
            "n_types_ratio": float(len(ratios)),
            "marker_hits": marker_hits,
            "n_marker_types": n_marker_types,
            "diversity": diversity,
        },
        dtype=float,
        name="topics",
    )
