"""Helpers shared by the benchmark scripts: data sets, preprocessing, evaluation, reports."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from scetm_mnn.datasets import baron_pancreas, simulate
from scetm_mnn.pp import preprocess
from scetm_mnn.tl import (
    DEFAULT_RESOLUTIONS,
    label_batch_ari,
    leiden_sweep,
    scib_benchmark,
    sweep_summary,
)

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
BATCH_KEY = "batch"
LABEL_KEY = "cell_type"
N_TOP_GENES = 2000
#: The Leiden resolutions at which the scETM report tabulated ARI/NMI/bARI.
SEED_RESOLUTIONS: tuple[float, ...] = (0.1, 0.13, 0.19, 0.22, 0.25, 0.28)
DATASETS = ("human", "mouse", "simulated")

#: A method takes the preprocessed AnnData and a seed and returns (embedding, seconds).
Method = Callable[[ad.AnnData, int], tuple[np.ndarray, float]]


def load_dataset(name: str, seed: int = 0) -> ad.AnnData:
    """Raw counts with ``obs["batch"]`` and ``obs["cell_type"]`` for one benchmark data set."""
    if name in ("human", "mouse"):
        return baron_pancreas(name)
    if name == "simulated":
        return simulate(n_cells=4000, n_genes=3000, n_batches=4, n_cell_types=8, random_state=seed)
    raise ValueError(f"Unknown data set {name!r}; choose from {DATASETS}.")


def prepare(adata: ad.AnnData, n_top_genes: int = N_TOP_GENES) -> ad.AnnData:
    """Counts to ``layers["counts"]``, log-normalized (1e4) ``X`` over batch-aware HVGs."""
    return preprocess(adata, n_top_genes=n_top_genes, batch_key=BATCH_KEY)


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


def evaluate(
    adata: ad.AnnData,
    names: Sequence[str],
    seconds: Mapping[str, float],
    pre_integrated: str | None = "X_pca",
    resolutions: Sequence[float] = DEFAULT_RESOLUTIONS,
    seed: int = 0,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Leiden sweep per embedding plus one scib-metrics run over all of them.

    Returns the summary (one row per method: best/mean ARI, best NMI, bARI at the best ARI,
    scib Bio conservation / Batch correction / Total, seconds) and the sweep tables.
    """
    keys = [f"X_{name}" for name in names]
    sweeps = {
        name: leiden_sweep(
            adata, key, LABEL_KEY, BATCH_KEY, resolutions=resolutions, random_state=seed
        )
        for name, key in zip(names, keys)
    }
    pre = pre_integrated if pre_integrated in adata.obsm else None
    scib = scib_benchmark(adata, keys, LABEL_KEY, BATCH_KEY, pre_integrated=pre)
    rows = []
    for name, key in zip(names, keys):
        s = sweep_summary(sweeps[name])
        rows.append(
            {
                "method": name,
                "best ARI": s["best_ARI"],
                "mean ARI": s["mean_ARI"],
                "best NMI": s["best_NMI"],
                "bARI at best ARI": s["bARI_at_best_ARI"],
                "best res": s["best_resolution"],
                "scib Bio": float(scib.loc[key, "Bio conservation"]),
                "scib Batch": float(scib.loc[key, "Batch correction"]),
                "scib Total": float(scib.loc[key, "Total"]),
                "time s": seconds[name],
            }
        )
    return pd.DataFrame(rows), sweeps


def seed_table(
    sweeps: Mapping[str, pd.DataFrame], resolutions: Sequence[float] = SEED_RESOLUTIONS
) -> pd.DataFrame:
    """The scETM report's table: ARI/NMI/bARI of each method at its six resolutions."""
    rows = []
    for name, df in sweeps.items():
        sel = df.set_index(df["resolution"].round(4)).loc[[round(r, 4) for r in resolutions]]
        for metric in ("ARI", "NMI", "bARI"):
            rows.append({"method": name, "metric": metric, **dict(zip(resolutions, sel[metric]))})
    return pd.DataFrame(rows)


def batch_floor(adata: ad.AnnData) -> float:
    """ARI(cell_type, batch): the bARI of a clustering that equals the cell types."""
    return label_batch_ari(adata, LABEL_KEY, BATCH_KEY)


def to_markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A markdown table with floats rounded to ``digits``."""
    return df.round(digits).to_markdown(index=False)
