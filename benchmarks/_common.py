"""Helpers shared by the benchmark scripts: data sets, preprocessing, evaluation, reports."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from scetm_mnn.datasets import baron_pancreas, pancreas_markers, simulate
from scetm_mnn.model._relevance import topic_relevance
from scetm_mnn.pp import preprocess
from scetm_mnn.tl import (
    DEFAULT_RESOLUTIONS,
    integration_metrics,
    label_batch_ari,
    leiden_sweep,
    scib_benchmark,
    sweep_summary,
    topic_diversity,
    topic_summary,
)
from scetm_mnn.tl._integration import _batch_entropy
from scetm_mnn.tl._leiden import SWEEP_COLUMNS, sweep_row
from scetm_mnn.tl._scib import _BIO_DEFAULTS
from scetm_mnn.tl._utils import leiden_labels

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
BATCH_KEY = "batch"
LABEL_KEY = "cell_type"
N_TOP_GENES = 2000
DATASETS = ("human", "mouse", "simulated")


@dataclass(frozen=True)
class Graph:
    """The output of a graph method (BBKNN): a cell × cell kNN graph instead of an embedding.

    ``distances`` holds each cell's neighbours (one row per cell, the cell itself left out)
    with their distances; ``connectivities`` is the weighted, symmetric graph that the
    method means to be clustered (scanpy's ``obsp["connectivities"]``). Both are CSR.
    """

    connectivities: sparse.csr_matrix
    distances: sparse.csr_matrix


#: A method takes the preprocessed AnnData and a seed and returns (embedding or graph,
#: seconds). Embeddings go to ``obsm["X_<name>"]``, graphs to ``obsp["<name>_connectivities"]``
#: and ``obsp["<name>_distances"]``.
Method = Callable[[ad.AnnData, int], tuple[np.ndarray | Graph, float]]
#: Topic models also leave their θ (cells × K) and topic-gene matrix (K × genes DataFrame)
#: here, under the method's name, for the topic measures of :func:`evaluate`.
TOPICS: dict[str, tuple[np.ndarray, pd.DataFrame]] = {}
#: Topic model name → topics × genes relevance, where the model ranks its genes by it (ours);
#: the others are ranked by the relevance of their β at the same weight (Sievert & Shirley).
RELEVANCE: dict[str, pd.DataFrame] = {}
#: Neighbours of the kNN batch entropy (normalised to [0, 1]).
ENTROPY_NEIGHBOURS = 30
#: scib-metrics Benchmarker aggregates → the benchmark tables' column names.
SCIB_COLUMNS = {
    "Bio conservation": "scib Bio",
    "Batch correction": "scib Batch",
    "Total": "scib Total",
}


def markers_of(name: str, adata: ad.AnnData) -> dict[str, list[str]]:
    """Marker genes per cell type: the shared pancreas sets, or the simulated programmes."""
    if name in ("human", "mouse"):
        return pancreas_markers(name)
    marker_of = adata.var["marker_of"].astype(str)
    return {t: list(marker_of.index[marker_of == t]) for t in marker_of.unique() if t}


def load_dataset(name: str, seed: int = 0) -> ad.AnnData:
    """Raw counts with ``obs["batch"]`` and ``obs["cell_type"]`` for one benchmark data set."""
    if name in ("human", "mouse"):
        # Human: the seeded quarter of the GEO cells that the README reports (2,142 cells).
        return (
            baron_pancreas(name, subsample=0.25, random_state=0)
            if name == "human"
            else baron_pancreas(name)
        )
    if name == "simulated":
        return simulate(n_cells=4000, n_genes=3000, n_batches=4, n_cell_types=8, random_state=seed)
    raise ValueError(f"Unknown data set {name!r}; choose from {DATASETS}.")


def prepare(adata: ad.AnnData, n_top_genes: int = N_TOP_GENES) -> ad.AnnData:
    """Counts to ``layers["counts"]``, log-normalized (1e4) ``X`` over batch-aware HVGs."""
    return preprocess(adata, n_top_genes=n_top_genes, batch_key=BATCH_KEY, copy=True)


def timed(fn: Callable[[], np.ndarray | Graph]) -> tuple[np.ndarray | Graph, float]:
    """Call ``fn`` and return its result and the wall seconds it took.

    An embedding comes back as a float32 array, a :class:`Graph` as it is.
    """
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    if isinstance(result, Graph):
        return result, seconds
    return np.asarray(result, dtype=np.float32), seconds


def _graph_keys(name: str) -> tuple[str, str]:
    return f"{name}_connectivities", f"{name}_distances"


def stored_graph(adata: ad.AnnData, name: str) -> Graph | None:
    """The :class:`Graph` that :func:`run_methods` stored for ``name``, or ``None``."""
    conn, dist = _graph_keys(name)
    if conn not in adata.obsp:
        return None
    return Graph(sparse.csr_matrix(adata.obsp[conn]), sparse.csr_matrix(adata.obsp[dist]))


def run_methods(
    adata: ad.AnnData, methods: Mapping[str, Method], seed: int = 0, log: Callable = print
) -> dict[str, float]:
    """Run each method and store its output; return the seconds.

    An embedding goes to ``obsm["X_<name>"]``, a :class:`Graph` to
    ``obsp["<name>_connectivities"]`` and ``obsp["<name>_distances"]``.
    """
    seconds = {}
    for name, method in methods.items():
        out, sec = method(adata, seed)
        if isinstance(out, Graph):
            for what in ("connectivities", "distances"):
                shape = getattr(out, what).shape
                if shape != (adata.n_obs, adata.n_obs):
                    raise ValueError(f"{name} returned {what} of shape {shape}, not n_obs².")
            conn, dist = _graph_keys(name)
            adata.obsp[conn] = sparse.csr_matrix(out.connectivities)
            adata.obsp[dist] = sparse.csr_matrix(out.distances)
            per_cell = np.diff(adata.obsp[dist].indptr)
            log(
                f"  {name}: graph, {per_cell.min()}-{per_cell.max()} neighbours per cell "
                f"in {sec:.1f} s"
            )
        else:
            if out.shape[0] != adata.n_obs:
                raise ValueError(f"{name} returned {out.shape[0]} rows for {adata.n_obs} cells.")
            adata.obsm[f"X_{name}"] = out
            log(f"  {name}: {out.shape[1]} dims in {sec:.1f} s")
        seconds[name] = sec
    return seconds


def _graph_obs(adata: ad.AnnData) -> pd.DataFrame:
    """The label and batch columns as string categories (as ``scetm_mnn.tl``'s light copies)."""
    obs = adata.obs[[LABEL_KEY, BATCH_KEY]].copy()
    for key in obs.columns:
        obs[key] = obs[key].astype(str).astype("category")
    return obs


def graph_leiden_sweep(
    adata: ad.AnnData,
    graph: Graph,
    resolutions: Sequence[float] = DEFAULT_RESOLUTIONS,
    random_state: int = 0,
) -> pd.DataFrame:
    """:func:`scetm_mnn.tl.leiden_sweep` on a method's own graph instead of an embedding's kNN.

    Leiden (``scetm_mnn.tl``'s: igraph, 2 iterations, undirected, seeded) runs on
    ``graph.connectivities`` at each resolution; the rows are scored as ``leiden_sweep``
    scores them (ARI and NMI against the cell types, bARI against the batches), so
    :func:`scetm_mnn.tl.sweep_summary` reads the table.
    """
    tmp = ad.AnnData(obs=_graph_obs(adata))
    tmp.obsp["connectivities"] = graph.connectivities
    tmp.obsp["distances"] = graph.distances
    tmp.uns["neighbors"] = {
        "connectivities_key": "connectivities",
        "distances_key": "distances",
        "params": {"method": "umap"},
    }
    labels = tmp.obs[LABEL_KEY].to_numpy()
    batches = tmp.obs[BATCH_KEY].to_numpy()
    rows = []
    for resolution in resolutions:
        clusters = leiden_labels(tmp, resolution, random_state)
        rows.append(sweep_row(resolution, clusters, labels, batches))
    df = pd.DataFrame(rows, columns=list(SWEEP_COLUMNS))
    df.attrs.update(n_cells=int(adata.n_obs), n_obs=int(adata.n_obs))
    return df


def graph_batch_entropy(adata: ad.AnnData, graph: Graph) -> float:
    """The kNN batch entropy of :func:`scetm_mnn.tl.integration_metrics` on a graph.

    Each cell's neighbourhood is its row of ``graph.distances`` (the cell itself left out)
    instead of its nearest cells in an embedding; the entropy of the neighbourhood's batch
    frequencies over ``log(n_batches)``, averaged over the cells, is the same function.
    """
    codes = _graph_obs(adata)[BATCH_KEY].cat.codes.to_numpy()
    dist = sparse.csr_matrix(graph.distances)
    rows = np.repeat(np.arange(dist.shape[0]), np.diff(dist.indptr))
    keep = dist.indices != rows
    counts = np.zeros((dist.shape[0], int(codes.max()) + 1), dtype=np.int64)
    np.add.at(counts, (rows[keep], codes[dist.indices[keep]]), 1)
    if (counts.sum(axis=1) == 0).any():
        raise ValueError("Some cells have no neighbours in the graph.")
    return _batch_entropy(counts)


def graph_neighbors(graph: Graph):
    """A ``scib_metrics`` ``NeighborsResults`` of a graph, its connectivities the graph's own.

    Row ``i`` holds cell ``i`` itself (distance 0, first, as scib-metrics expects) and then
    its neighbours in ``graph.distances`` from the nearest on. Rows with fewer neighbours
    than the most (e.g. a neighbour at distance 0, which the sparse matrix does not store)
    are padded with more entries of the cell itself at distance 0, which no metric counts
    (LISI masks the cell itself; graph connectivity ignores self edges; Leiden and kBET use
    the connectivities). ``knn_graph_connectivities`` returns ``graph.connectivities``
    instead of UMAP connectivities recomputed from these neighbours.
    """
    from scib_metrics.nearest_neighbors import NeighborsResults

    class _GraphNeighbors(NeighborsResults):
        @property
        def knn_graph_connectivities(self):
            return graph.connectivities

    dist = sparse.csr_matrix(graph.distances)
    n = dist.shape[0]
    width = 1 + int(np.diff(dist.indptr).max())
    indices = np.repeat(np.arange(n)[:, None], width, axis=1)
    distances = np.zeros((n, width), dtype=np.float64)
    for i in range(n):
        cols = dist.indices[dist.indptr[i] : dist.indptr[i + 1]]
        vals = dist.data[dist.indptr[i] : dist.indptr[i + 1]]
        order = np.argsort(vals, kind="stable")
        cols, vals = cols[order], vals[order]
        keep = cols != i
        cols, vals = cols[keep], vals[keep]
        pad = width - 1 - len(cols)
        indices[i, 1 + pad :] = cols
        distances[i, 1 + pad :] = vals
    return _GraphNeighbors(indices=indices, distances=distances)


#: The scib-metrics functions that run on a graph, with the Benchmarker's arguments
#: (``scib_metrics.benchmark._core.MetricAnnDataAPI``; the 15/50/90-neighbour results are
#: all the graph's one ``NeighborsResults``) and their column names in its results.
_GRAPH_METRICS = {
    "nmi_ari_cluster_labels_leiden": (
        lambda fn, nn, labels, batches: fn(nn, labels),
        {"nmi": "Leiden NMI", "ari": "Leiden ARI"},
    ),
    "clisi_knn": (lambda fn, nn, labels, batches: fn(nn, labels), "cLISI"),
    "ilisi_knn": (lambda fn, nn, labels, batches: fn(nn, batches), "iLISI"),
    "kbet_per_label": (lambda fn, nn, labels, batches: fn(nn, batches, labels), "KBET"),
    "graph_connectivity": (lambda fn, nn, labels, batches: fn(nn, labels), "Graph connectivity"),
}
#: Column names of the metrics that need an embedding (NaN for a graph).
_EMBEDDING_METRICS = {
    "isolated_labels": "Isolated labels",
    "nmi_ari_cluster_labels_kmeans": {"nmi": "KMeans NMI", "ari": "KMeans ARI"},
    "silhouette_label": "Silhouette label",
    "bras": "BRAS",
    "pcr_comparison": "PCR comparison",
}


def graph_scib(
    adata: ad.AnnData,
    graph: Graph,
    bio_conservation: dict | None = None,
    batch_correction: dict | None = None,
) -> pd.Series:
    """scib-metrics on a graph: the metrics of :func:`scetm_mnn.tl.scib_benchmark`'s set
    that run on a neighbour graph, scored on :func:`graph_neighbors` of ``graph``.

    The metric set and arguments are ``scib_benchmark``'s (its ``BioConservation`` with
    Leiden NMI/ARI and no k-means, every ``BatchCorrection`` default), called as the
    ``Benchmarker`` calls them. The metrics that need an embedding (isolated labels, label
    silhouette, BRAS, PCR comparison) are NaN, and ``Bio conservation`` and ``Batch
    correction`` are the means over the others (as the Benchmarker's unscaled
    ``get_results`` would give without them); ``Total`` = 0.6 Bio + 0.4 Batch.
    ``bio_conservation`` and ``batch_correction`` override the metric set as in
    ``scib_benchmark`` (e.g. ``{"kbet_per_label": False}``); a metric turned off has no entry.
    """
    import scib_metrics
    from scib_metrics.benchmark import BatchCorrection, BioConservation

    nn = graph_neighbors(graph)
    obs = _graph_obs(adata)
    labels, batches = obs[LABEL_KEY].to_numpy(), obs[BATCH_KEY].to_numpy()
    values, kinds = {}, {}
    collections = {
        "Bio conservation": BioConservation(**{**_BIO_DEFAULTS, **(bio_conservation or {})}),
        "Batch correction": BatchCorrection(**(batch_correction or {})),
    }
    for kind, collection in collections.items():
        for metric, use in asdict(collection).items():
            if use is False:
                continue
            if metric in _GRAPH_METRICS:
                call, columns = _GRAPH_METRICS[metric]
                fn = getattr(scib_metrics, metric)
                if isinstance(use, dict):
                    fn = functools.partial(fn, **use)
                value = call(fn, nn, labels, batches)
            else:
                columns, value = _EMBEDDING_METRICS[metric], np.nan
            if isinstance(columns, str):
                columns, value = {None: columns}, {None: value}
            for key, column in columns.items():
                values[column] = np.nan if value is np.nan else float(value[key])
                kinds[column] = kind
    table = pd.Series(values, dtype=float)
    for kind in collections:
        table[kind] = float(np.nanmean([v for c, v in values.items() if kinds[c] == kind]))
    table["Total"] = 0.6 * table["Bio conservation"] + 0.4 * table["Batch correction"]
    return table


def _topic_columns(adata: ad.AnnData, name: str, markers) -> dict[str, float]:
    if name not in TOPICS:
        return {}
    theta, topic_gene = TOPICS[name]
    relevance = RELEVANCE.get(name)
    if relevance is None:
        scores = topic_relevance(topic_gene.to_numpy(), np.asarray(theta).mean(axis=0))
        relevance = pd.DataFrame(scores, index=topic_gene.index, columns=topic_gene.columns)
    tmp = ad.AnnData(obs=adata.obs[[LABEL_KEY]].copy(), obsm={"X_topics": theta})
    genes = relevance.reindex(columns=adata.var_names)
    summary = topic_summary(tmp, LABEL_KEY, topic_gene=genes, markers=markers)
    return {
        "mean max θ": summary["mean_max_theta"],
        "min ratio": summary["min_ratio"],
        "types ratio ≥ 10": summary["n_types_ratio_ge_10"],
        "markers": summary["marker_hits"],
        "of": summary["n_marker_types"],
        "diversity": summary["diversity"],
        "β diversity": topic_diversity(topic_gene),
        "topics": float(topic_gene.shape[0]),
    }


def evaluate(
    adata: ad.AnnData,
    names: Sequence[str],
    seconds: Mapping[str, float],
    pre_integrated: str | None = "X_pca",
    resolutions: Sequence[float] = DEFAULT_RESOLUTIONS,
    seed: int = 0,
    markers: Mapping[str, Sequence[str]] | None = None,
    scib: bool = True,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Leiden sweep, kNN batch entropy and topic measures per method, plus scib-metrics.

    An embedding (``obsm["X_<name>"]``) goes through ``scetm_mnn.tl``'s ``leiden_sweep``,
    ``integration_metrics`` and one ``scib_benchmark`` over all embeddings; a graph (a
    :class:`Graph` that :func:`run_methods` stored in ``obsp``) through
    :func:`graph_leiden_sweep`, :func:`graph_batch_entropy` and :func:`graph_scib`.

    Returns the summary (one row per method: best/mean ARI, best NMI, bARI at the best ARI,
    batch entropy, scib Bio conservation / Batch correction / Total, the topic measures of
    topic models, seconds) and the sweep tables.
    """
    graphs = {name: stored_graph(adata, name) for name in names}
    graphs = {name: graph for name, graph in graphs.items() if graph is not None}
    keys = {name: f"X_{name}" for name in names if name not in graphs}
    sweeps = {
        name: graph_leiden_sweep(adata, graphs[name], resolutions=resolutions, random_state=seed)
        if name in graphs
        else leiden_sweep(
            adata, keys[name], LABEL_KEY, BATCH_KEY, resolutions=resolutions, random_state=seed
        )
        for name in names
    }
    pre = pre_integrated if pre_integrated in adata.obsm else None
    scib_rows: dict[str, pd.Series] = {}
    if scib and keys:
        table = scib_benchmark(
            adata, list(keys.values()), LABEL_KEY, BATCH_KEY, pre_integrated=pre
        )
        scib_rows.update({name: table.loc[key] for name, key in keys.items()})
    if scib:
        scib_rows.update({name: graph_scib(adata, graph) for name, graph in graphs.items()})
    rows = []
    for name in names:
        s = sweep_summary(sweeps[name])
        if name in graphs:
            entropy = graph_batch_entropy(adata, graphs[name])
        else:
            entropy = integration_metrics(
                adata, keys[name], LABEL_KEY, BATCH_KEY, n_neighbors=ENTROPY_NEIGHBOURS
            )["batch_entropy"]
        row = {
            "method": name,
            "best ARI": s["best_ARI"],
            "mean ARI": s["mean_ARI"],
            "best NMI": s["best_NMI"],
            "bARI at best ARI": s["bARI_at_best_ARI"],
            "batch entropy": entropy,
        }
        if name in scib_rows:
            for column, label in SCIB_COLUMNS.items():
                row[label] = float(scib_rows[name][column])
        row.update(_topic_columns(adata, name, markers))
        row["time s"] = seconds[name]
        rows.append(row)
    return pd.DataFrame(rows), sweeps


def batch_floor(adata: ad.AnnData) -> float:
    """ARI(cell_type, batch): the bARI of a clustering that equals the cell types."""
    return label_batch_ari(adata, LABEL_KEY, BATCH_KEY)


def to_markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A markdown table with floats rounded to ``digits``."""
    return df.round(digits).to_markdown(index=False)
