"""Topic annotation: each topic's top genes tested against gene sets (over-representation).

For a topic's ``n_top`` genes with the largest weights ``β`` and a set of ``m`` genes, of
the ``G`` genes of the model (the universe), the overlap ``x`` is hypergeometric when the
top genes are drawn at random: ``p = P(X ≥ x)`` for ``X ~ Hypergeom(G, m, n_top)``, the
one-sided Fisher exact test. The p-values of all topic × set tests are corrected together
(Benjamini–Hochberg). The statistics are written here with :mod:`scipy`, vectorised over
topics and sets: decoupler (its ORA) would pull pyarrow and plotting packages into the
pinned stack, and gseapy (``enrich``) one topic at a time is slower and corrects each
topic's sets apart.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse, stats

from .._gene_sets import as_gene_sets, membership
from ._topic_matrices import _as_topic_gene

#: ``adata.uns`` key of the labels that :func:`scetm_mnn.pl.topic_heatmap` and the report read.
TOPIC_ANNOTATION_KEY = "topic_annotation"
_COLUMNS = (
    "topic", "gene_set", "set_size", "n_top", "overlap", "expected", "enrichment", "pvalue",
    "fdr", "overlap_genes",
)  # fmt: skip


def _topic_gene_of(source, topic_gene_key: str) -> tuple[pd.DataFrame, ad.AnnData | None]:
    """The topics × genes matrix of a model, an AnnData or a DataFrame, and where to write."""
    if hasattr(source, "get_topic_gene_relevance"):  # the genes ranked as get_top_genes ranks
        return _as_topic_gene(source.get_topic_gene_relevance()), source.adata
    if hasattr(source, "get_topic_gene_matrix"):
        return _as_topic_gene(source.get_topic_gene_matrix()), source.adata
    if isinstance(source, ad.AnnData):
        if topic_gene_key not in source.varm:
            raise KeyError(
                f"topic_gene_key={topic_gene_key!r} is not a key of adata.varm; store the "
                "genes × topics weights there, e.g. "
                "`adata.varm['topic_gene'] = model.get_topic_gene_matrix().T`, or pass the model."
            )
        weights = source.varm[topic_gene_key]
        if not isinstance(weights, pd.DataFrame):
            weights = pd.DataFrame(
                np.asarray(weights), columns=[f"topic_{k}" for k in range(weights.shape[1])]
            )
        return _as_topic_gene(weights.T.set_axis(source.var_names, axis=1)), source
    if isinstance(source, pd.DataFrame):
        return _as_topic_gene(source), None
    raise TypeError(
        "annotate_topics takes a trained topic model, an AnnData with varm[topic_gene_key] or "
        f"a topics × genes DataFrame, not {type(source).__name__}."
    )


def annotate_topics(
    source,
    gene_sets: str | os.PathLike | Mapping[str, Iterable[str]],
    *,
    n_top: int = 100,
    max_fdr: float = 0.05,
    topic_gene_key: str = "topic_gene",
    key_added: str | None = None,
) -> pd.DataFrame:
    """Test each topic's top genes against gene sets: enrichment, p-value, FDR, overlap.

    Over-representation analysis: a topic's ``n_top`` genes with the largest weights ``β``
    are compared with every set; the universe is the topics' genes (the model's genes),
    and genes of a set outside it are dropped with a warning. The one-sided hypergeometric
    (Fisher exact) p-value of each topic × set pair is corrected over all pairs with
    Benjamini–Hochberg. The statistics are computed here with scipy, vectorised (50 topics
    × 2,000 genes × 1,000 sets take well under a second).

    Parameters
    ----------
    source
        A trained topic model (its genes ranked as ``get_top_genes`` ranks them, by
        ``get_topic_gene_relevance()``, or by ``get_topic_gene_matrix()`` for a model
        without it), an AnnData with the genes ×
        topics weights in ``varm[topic_gene_key]``, or a topics × genes DataFrame.
    gene_sets
        A GMT file's path (:func:`read_gmt`) or a mapping of set name → genes. Empty sets
        and sets with none of the topics' genes are skipped with a warning.
    n_top
        Top genes per topic that are tested.
    max_fdr
        Largest FDR of a set that names a topic in the labels (:func:`topic_labels`).
    topic_gene_key
        ``varm`` key of the weights when ``source`` is an AnnData.
    key_added
        Write the labels to ``uns[key_added]`` of the model's (or the given) AnnData, as
        ``{"labels": {topic: label}, "gene_set": {topic: set}, "fdr": {topic: FDR},
        "n_top": ..., "max_fdr": ...}``; :func:`scetm_mnn.pl.topic_heatmap`, the report
        and ``model.topic_labels`` read ``uns["topic_annotation"]``.

    Returns
    -------
    One row per topic × set, sorted by topic (the model's order) then p-value:
    ``topic``, ``gene_set``, ``set_size`` (its genes in the universe), ``n_top``,
    ``overlap`` (top genes in the set), ``expected`` (the overlap of random genes),
    ``enrichment`` (overlap / expected), ``pvalue``, ``fdr`` and ``overlap_genes`` (the
    shared genes, in the topic's order).

    Raises
    ------
    ValueError
        When ``n_top`` exceeds the genes, no set has a gene among them, or ``key_added`` is
        given with a DataFrame.

    Examples
    --------
    Topics whose top genes are the simulated programmes of ``type_0`` and ``type_1``:

    >>> import pandas as pd
    >>> import scetm_mnn as sm
    >>> adata = sm.datasets.simulate(n_cells=100, n_genes=200, n_cell_types=3)
    >>> marker_of = adata.var["marker_of"].astype(str)
    >>> programmes = {t: list(marker_of.index[marker_of == t]) for t in ("type_0", "type_1")}
    >>> beta = pd.DataFrame(
    ...     [(marker_of == t).to_numpy(float) for t in ("type_1", "type_0")],
    ...     index=["topic_0", "topic_1"], columns=adata.var_names,
    ... )
    >>> table = sm.tl.annotate_topics(beta, programmes, n_top=10)
    >>> table.groupby("topic").first()[["gene_set", "overlap"]]  # doctest: +NORMALIZE_WHITESPACE
            gene_set  overlap
    topic
    topic_0   type_1       10
    topic_1   type_0       10
    >>> sm.tl.topic_labels(table)["topic_0"]
    'topic 0 · type_1 (FDR 2e-11)'
    """
    if not 0.0 < max_fdr <= 1.0:
        raise ValueError(f"max_fdr must be in (0, 1], not {max_fdr}.")
    beta, target = _topic_gene_of(source, topic_gene_key)
    if key_added is not None and target is None:
        raise ValueError("key_added needs a model or an AnnData to write to, not a DataFrame.")
    genes = pd.Index(beta.columns.astype(str))
    if not 1 <= n_top <= len(genes):
        raise ValueError(f"n_top must be between 1 and the {len(genes)} genes, not {n_top}.")
    names, member = membership(as_gene_sets(gene_sets), genes, "the topics", stacklevel=3)
    top = np.argsort(-beta.to_numpy(), axis=1, kind="stable")[:, :n_top]
    n_topics = top.shape[0]
    hits = sparse.csr_array(
        (np.ones(top.size), (np.repeat(np.arange(n_topics), n_top), top.ravel())),
        shape=(n_topics, len(genes)),
    )
    overlap = np.rint((hits @ member).toarray()).astype(np.int64)  # topics × sets
    size = np.asarray(member.sum(axis=0)).astype(np.int64)
    pvalue = stats.hypergeom.sf(overlap - 1, len(genes), size[None, :], n_top)
    fdr = stats.false_discovery_control(np.clip(pvalue, 0.0, 1.0).ravel(), method="bh")
    expected = np.broadcast_to(size * n_top / len(genes), overlap.shape)
    table = pd.DataFrame(
        {
            "topic": np.repeat(beta.index.astype(str), len(names)),
            "gene_set": np.tile(names, n_topics),
            "set_size": np.tile(size, n_topics),
            "n_top": n_top,
            "overlap": overlap.ravel(),
            "expected": expected.ravel(),
            "enrichment": (overlap / expected).ravel(),
            "pvalue": pvalue.ravel(),
            "fdr": fdr,
            "overlap_genes": _overlap_genes(top, member, genes, overlap),
        },
        columns=list(_COLUMNS),
    )
    table["topic"] = pd.Categorical(table["topic"], categories=beta.index.astype(str))
    table = table.sort_values(["topic", "pvalue", "gene_set"], kind="stable", ignore_index=True)
    table["topic"] = table["topic"].astype(str)
    if key_added is not None:
        target.uns[key_added] = _record(table, max_fdr, n_top)
    return table


def _overlap_genes(
    top: np.ndarray, member: sparse.csc_array, genes: pd.Index, overlap: np.ndarray
) -> list[list[str]]:
    """For each topic × set (row-major), the set's genes among the topic's top genes."""
    names = np.asarray(genes)
    dense = member.toarray().astype(bool)
    shared: list[list[str]] = []
    for k, ranked in enumerate(top):
        _, ranks = np.nonzero(dense[ranked].T)  # by set, then by the topic's rank
        shared.extend(
            g.tolist() for g in np.split(names[ranked[ranks]], np.cumsum(overlap[k])[:-1])
        )
    return shared


def topic_labels(table: pd.DataFrame, max_fdr: float = 0.05) -> dict[str, str]:
    """Readable topic labels from :func:`annotate_topics`: each topic's most significant set.

    A topic whose best set (smallest p-value, then largest overlap) has an FDR below
    ``max_fdr`` reads ``"topic 7 · beta (FDR 3e-12)"``; the others keep their name
    (``"topic_8"``).

    Parameters
    ----------
    table
        The table of :func:`annotate_topics`.
    max_fdr
        Largest FDR that names a topic.

    Returns
    -------
    Topic name → label, in the table's topic order.

    Examples
    --------
    >>> import pandas as pd
    >>> import scetm_mnn as sm
    >>> table = pd.DataFrame(
    ...     {"topic": ["topic_7", "topic_8"], "gene_set": ["beta", "alpha"],
    ...      "pvalue": [1e-13, 0.5], "fdr": [3e-12, 0.9], "overlap": [9, 1]}
    ... )
    >>> sm.tl.topic_labels(table)
    {'topic_7': 'topic 7 · beta (FDR 3e-12)', 'topic_8': 'topic_8'}
    """
    return {topic: label for topic, (_, label) in _best(table, max_fdr).items()}


def _best(table: pd.DataFrame, max_fdr: float) -> dict[str, tuple[pd.Series, str]]:
    """Each topic's best row of ``table`` and its label."""
    missing = {"topic", "gene_set", "pvalue", "fdr", "overlap"} - set(table.columns)
    if missing:
        raise KeyError(f"table lacks the columns {sorted(missing)}; pass annotate_topics' table.")
    order = table.sort_values(["pvalue", "overlap"], ascending=[True, False], kind="stable")
    best = order.drop_duplicates("topic").set_index("topic")
    out = {}
    for topic in dict.fromkeys(table["topic"]):
        row = best.loc[topic]
        name = re.sub(r"^topic_(\d+)$", r"topic \1", str(topic))
        named = row["fdr"] < max_fdr
        label = f"{name} · {row['gene_set']} (FDR {row['fdr']:.0e})" if named else str(topic)
        out[str(topic)] = (row, label)
    return out


def _record(table: pd.DataFrame, max_fdr: float, n_top: int) -> dict[str, object]:
    best = _best(table, max_fdr)
    return {
        "labels": {topic: label for topic, (_, label) in best.items()},
        "gene_set": {topic: str(row["gene_set"]) for topic, (row, _) in best.items()},
        "fdr": {topic: float(row["fdr"]) for topic, (row, _) in best.items()},
        "n_top": int(n_top),
        "max_fdr": float(max_fdr),
    }
