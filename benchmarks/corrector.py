"""Time and memory of ``scetm_mnn.pp.mnn_correct`` on simulated data of growing size.

For each size, simulated counts (``scetm_mnn.datasets.simulate``) are normalized
(``normalize_total`` + ``log1p``) in one subprocess and written to a temporary h5ad; a
second, fresh subprocess reads it and runs ``mnn_correct`` with its defaults, so its peak
resident memory (``ru_maxrss``) is that of loading the data plus the correction. The
phases come from ``uns["mnn_corrected"]["timing"]``: ``latent`` (PCA), ``pairs`` (MNN
search), ``train`` (training and BatchNorm recalibration), ``apply`` (correcting all cells).
"batch gap after/before" is the mean distance between the batch centroids of each cell
type, corrected over uncorrected (the simulation's batch effect is known): in the frozen
PCA space that the corrector aligns pairs in ("PCA"), and over all genes ("genes"; this
includes per-gene shifts outside the top components, which MNN pairs cannot see).
The load average shows whether other processes shared the cores.

Run: ``.venv/bin/python benchmarks/corrector.py [--sizes 10000 100000] [--genes 2000]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy import sparse

TARGET_S = 180.0
"""Target for pair search + training at 100 000 cells × 2000 genes on 2 cores."""


def _maxrss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def prepare(n_cells: int, n_genes: int, n_batches: int, n_types: int, seed: int, path: str):
    """Simulate, normalize and log-transform; write the h5ad."""
    import scanpy as sc

    from scetm_mnn.datasets import simulate

    adata = simulate(
        n_cells=n_cells,
        n_genes=n_genes,
        n_batches=n_batches,
        n_cell_types=n_types,
        random_state=seed,
    )
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata.write_h5ad(path)


def centroid_gap(x, cell_types: np.ndarray, batches: np.ndarray) -> float:
    """Mean distance between the batch centroids of each cell type (gene space)."""
    gaps = []
    for cell_type in np.unique(cell_types):
        centroids = [
            np.asarray(x[(cell_types == cell_type) & (batches == batch)].mean(axis=0)).ravel()
            for batch in np.unique(batches)
        ]
        gaps += [np.linalg.norm(a - b) for a, b in combinations(centroids, 2)]
    return float(np.mean(gaps))


def measure(path: str, seed: int, threads: int | None) -> dict:
    """Run ``mnn_correct`` on the h5ad; return timings and memory."""
    import anndata as ad
    import torch

    from scetm_mnn.pp import mnn_correct
    from scetm_mnn.pp._latent import fit_pca

    if threads is not None:
        torch.set_num_threads(threads)

    adata = ad.read_h5ad(path)
    loaded = _maxrss_gib()
    start = time.perf_counter()
    mnn_correct(adata, "batch", random_state=seed)
    total = time.perf_counter() - start
    info = adata.uns["mnn_corrected"]
    cell_types = adata.obs["cell_type"].to_numpy()
    batches = adata.obs["batch"].to_numpy()
    gap_ratio = centroid_gap(adata.layers["mnn_corrected"], cell_types, batches) / centroid_gap(
        adata.X, cell_types, batches
    )
    # The corrector's frozen PCA, refitted with the same seed, gives the uncorrected latent.
    x = adata.X.toarray() if sparse.issparse(adata.X) else np.asarray(adata.X)
    x = np.ascontiguousarray(x, dtype=np.float32)
    space = fit_pca(x, 50, random_state=seed)
    with torch.no_grad():
        before = space(torch.from_numpy(x)).numpy()
    latent_ratio = centroid_gap(adata.obsm["X_mnn_corrected"], cell_types, batches) / centroid_gap(
        before, cell_types, batches
    )
    return {
        "cells": adata.n_obs,
        "genes": adata.n_vars,
        "batches": int(adata.obs["batch"].nunique()),
        "threads": torch.get_num_threads(),
        "n_pairs": int(info["n_pairs"]),
        "epochs": len(info["history"]),
        **{f"{k}_s": float(v) for k, v in info["timing"].items()},
        "total_s": total,
        "peak_rss_gib": _maxrss_gib(),
        "data_rss_gib": loaded,
        "load_avg": os.getloadavg()[0],
        "gap_ratio": gap_ratio,
        "latent_gap_ratio": latent_ratio,
    }


def _run_worker(args: list[str]) -> str:
    result = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    )
    return result.stdout


def _table(rows: list[dict]) -> str:
    header = (
        "| cells | genes | batches | MNN pairs | epochs | PCA (s) | pairs (s) | train (s) "
        "| pairs + train (s) | apply (s) | total (s) | peak RSS (GiB) | Δ RSS (GiB) "
        "| batch gap after/before: PCA | genes | threads | load avg |"
    )
    lines = [header, "|" + "---:|" * (header.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['cells']} | {r['genes']} | {r['batches']} | {r['n_pairs']} | {r['epochs']} "
            f"| {r['latent_s']:.1f} | {r['pairs_s']:.1f} | {r['train_s']:.1f} "
            f"| {r['pairs_s'] + r['train_s']:.1f} | {r['apply_s']:.1f} | {r['total_s']:.1f} "
            f"| {r['peak_rss_gib']:.2f} | {r['peak_rss_gib'] - r['data_rss_gib']:.2f} "
            f"| {r['latent_gap_ratio']:.3f} | {r['gap_ratio']:.3f} | {r['threads']} "
            f"| {r['load_avg']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--cell-types", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        kind, *rest = args.worker
        if kind == "prepare":
            n_cells, path = int(rest[0]), rest[1]
            prepare(n_cells, args.genes, args.batches, args.cell_types, args.seed, path)
        else:
            print(json.dumps(measure(rest[0], args.seed, args.threads)))
        return

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n_cells in args.sizes:
            path = str(Path(tmp) / f"sim_{n_cells}.h5ad")
            common = [f"--genes={args.genes}", f"--batches={args.batches}", f"--seed={args.seed}"]
            common.append(f"--cell-types={args.cell_types}")
            if args.threads is not None:
                common.append(f"--threads={args.threads}")
            _run_worker([*common, "--worker", "prepare", str(n_cells), path])
            row = json.loads(_run_worker([*common, "--worker", "measure", path]).splitlines()[-1])
            rows.append(row)
            Path(path).unlink()
            print(json.dumps(row), file=sys.stderr)
    table = _table(rows)
    print(table)
    for r in rows:
        if r["cells"] >= 100_000:
            searched_and_trained = r["pairs_s"] + r["train_s"]
            verdict = "meets" if searched_and_trained < TARGET_S else "misses"
            print(
                f"\n{r['cells']} cells: pair search + training {searched_and_trained:.0f} s "
                f"{verdict} the {TARGET_S:.0f} s target ({r['threads']} threads)."
            )
    if args.out is not None:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
