"""Helpers shared by the benchmark scripts: data sets, preprocessing, evaluation, reports."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from scetm_mnn.datasets import baron_pancreas, pancreas_markers, simulate
from scetm_mnn.pp import preprocess
from scetm_mnn.tl import (
    DEFAULT_RESOLUTIONS,
    integration_metrics,
    label_batch_ari,
    leiden_sweep,
    scib_benchmark,
    sweep_summary,
    topic_summary,
)

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
BATCH_KEY = "batch"
LABEL_KEY = "cell_type"
N_TOP_GENES = 2000
DATASETS = ("human", "mouse", "simulated")

#: A method takes the preprocessed AnnData and a seed and returns (embedding, seconds).
Method = Callable[[ad.AnnData, int], tuple[np.ndarray, float]]
#: Topic models also leave their θ (cells × K) and topic-gene matrix (K × genes DataFrame)
#: here, under the method's name, for the topic measures of :func:`evaluate`.
TOPICS: dict[str, tuple[np.ndarray, pd.DataFrame]] = {}
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


def timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    """Call ``fn`` and return its result as a float32 array and the wall seconds it took."""
    start = time.perf_counter()
    result = fn()
    return np.asarray(result, dtype=np.float32), time.perf_counter() - start


def run_methods(
    adata: ad.AnnData, methods: Mapping[str, Method], seed: int = 0, log: Callable = print
) -> dict[str, float]:
    """Run each method, store its embedding in ``obsm["X_<name>"]``; return the seconds."""
    seconds = {}
    for name, method in methods.items():
        emb, sec = method(adata, seed)
        if emb.shape[0] != adata.n_obs:
            raise ValueError(f"{name} returned {emb.shape[0]} rows for {adata.n_obs} cells.")
        adata.obsm[f"X_{name}"] = emb
        seconds[name] = sec
        log(f"  {name}: {emb.shape[1]} dims in {sec:.1f} s")
    return seconds


def _topic_columns(adata: ad.AnnData, name: str, markers) -> dict[str, float]:
    if name not in TOPICS:
        return {}
    theta, topic_gene = TOPICS[name]
    tmp = ad.AnnData(obs=adata.obs[[LABEL_KEY]].copy(), obsm={"X_topics": theta})
    genes = topic_gene.reindex(columns=adata.var_names)
    summary = topic_summary(tmp, LABEL_KEY, topic_gene=genes, markers=markers)
    return {
        "mean max θ": summary["mean_max_theta"],
        "min ratio": summary["min_ratio"],
        "types ratio ≥ 10": summary["n_types_ratio_ge_10"],
        "markers": summary["marker_hits"],
        "of": summary["n_marker_types"],
        "diversity": summary["diversity"],
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
    """Leiden sweep, kNN batch entropy and topic measures per embedding, plus scib-metrics.

    Returns the summary (one row per method: best/mean ARI, best NMI, bARI at the best ARI,
    batch entropy, scib Bio conservation / Batch correction / Total, the topic measures of
    topic models, seconds) and the sweep tables.
    """
    keys = [f"X_{name}" for name in names]
    sweeps = {
        name: leiden_sweep(
            adata, key, LABEL_KEY, BATCH_KEY, resolutions=resolutions, random_state=seed
        )
        for name, key in zip(names, keys)
    }
    pre = pre_integrated if pre_integrated in adata.obsm else None
    table = scib_benchmark(adata, keys, LABEL_KEY, BATCH_KEY, pre_integrated=pre) if scib else None
    rows = []
    for name, key in zip(names, keys):
        s = sweep_summary(sweeps[name])
        mixing = integration_metrics(
            adata, key, LABEL_KEY, BATCH_KEY, n_neighbors=ENTROPY_NEIGHBOURS
        )
        row = {
            "method": name,
            "best ARI": s["best_ARI"],
            "mean ARI": s["mean_ARI"],
            "best NMI": s["best_NMI"],
            "bARI at best ARI": s["bARI_at_best_ARI"],
            "batch entropy": mixing["batch_entropy"],
        }
        if table is not None:
            for column, label in SCIB_COLUMNS.items():
                row[label] = float(table.loc[key, column])
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
