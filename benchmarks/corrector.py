"""Time and memory of ``scetm_mnn.pp.mnn_correct`` on simulated data of growing size.

For each size, simulated counts (the design of ``scetm_mnn.datasets.simulate`` with the
same seed at every size, cells drawn in chunks; see ``simulate_in_chunks``) are normalized
(``normalize_total`` + ``log1p``) in one subprocess and written to a temporary h5ad; a
second, fresh subprocess reads it and runs ``mnn_correct`` with its defaults, so its peak
resident memory (``ru_maxrss``) is that of loading the data plus the correction. The
phases come from ``uns["mnn_corrected"]["timing"]``: ``latent`` (PCA), ``pairs`` (MNN
search), ``train`` (training and BatchNorm recalibration), ``apply`` (correcting all cells).
"batch gap after/before" is the mean distance between the batch centroids of each cell
type, corrected over uncorrected (the simulation's batch effect is known): in the frozen
PCA space that the corrector aligns pairs in ("PCA"), over all genes ("genes"; this
includes per-gene shifts outside the top components, which MNN pairs cannot see), and
in the genes' directions outside that PCA ("outside"; 1 means the corrector left them
unchanged, as its projection guarantees; above 1, it added batch-specific changes there).
"genes, debiased" is the gene-space ratio with the centroids' sampling noise removed from
each squared gap (``centroid_gap(debias=True)``): that noise sits in the gap before and
after correction alike, is larger the fewer cells per type and batch, and so lowers the
raw gene-space ratio as the data grow, whatever the corrector does.
The load average shows whether other processes shared the cores.

Run: ``.venv/bin/python benchmarks/corrector.py [--sizes 10000 100000 300000] [--genes 2000]
[--out benchmarks/results/corrector.md]``
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


def simulate_in_chunks(
    n_cells: int, n_genes: int, n_batches: int, n_types: int, seed: int, chunk: int = 20_000
):
    """``scetm_mnn.datasets.simulate``'s design, with the cells drawn ``chunk`` at a time.

    ``simulate`` holds several dense float64 cells × genes arrays at once (about 20 GB at
    300 000 × 2000), more than this machine has. The design (baseline expression, type
    programmes, batch fold changes and library factors) is drawn from the seed exactly as
    ``simulate`` draws it, and checked against it; the cells follow the same model, drawn
    in chunks (so they are not ``simulate``'s cells, but every size shares one design).
    """
    import anndata as ad
    import pandas as pd

    from scetm_mnn.datasets import simulate

    rng = np.random.default_rng(seed)
    base = rng.gamma(shape=0.5, scale=2.0, size=n_genes) + 0.05
    markers = np.full(n_genes, "", dtype=object)
    n_markers = max(1, int(0.3 * n_genes / n_types))
    candidates = rng.permutation(n_genes)
    programmes = np.ones((n_types, n_genes))
    for t in range(n_types):
        genes = candidates[t * n_markers : (t + 1) * n_markers]
        programmes[t, genes] = np.exp(rng.normal(2.0, 0.5, size=genes.size))
        markers[genes] = f"type_{t}"
    batch_log_fold = rng.normal(0.0, 0.5, size=(n_batches, n_genes))
    batch_lib = np.exp(rng.normal(0.0, 0.3, size=n_batches))
    reference = simulate(
        n_cells=n_batches * n_types,
        n_genes=n_genes,
        n_batches=n_batches,
        n_cell_types=n_types,
        random_state=seed,
    )
    np.testing.assert_array_equal(
        reference.varm["batch_log_fold"], batch_log_fold.T.astype(np.float32)
    )
    np.testing.assert_array_equal(reference.var["marker_of"].astype(str), markers.astype(str))

    batches = np.sort(rng.integers(0, n_batches, size=n_cells))
    batches[:n_batches] = np.arange(n_batches)
    batches.sort()
    cell_types = np.empty(n_cells, dtype=int)
    for b in range(n_batches):
        idx = np.flatnonzero(batches == b)
        types = rng.choice(n_types, size=idx.size, p=rng.dirichlet(np.full(n_types, 5.0)))
        types[: min(idx.size, n_types)] = np.arange(min(idx.size, n_types))
        cell_types[idx] = types
    blocks = []
    for start in range(0, n_cells, chunk):
        b, t = batches[start : start + chunk], cell_types[start : start + chunk]
        rates = base[None, :] * programmes[t] * np.exp(batch_log_fold[b])
        rates /= rates.sum(axis=1, keepdims=True)
        lib = 1500.0 * batch_lib[b] * np.exp(rng.normal(0.0, 0.25, size=b.size))
        mean = rates * lib[:, None]
        blocks.append(
            sparse.csr_matrix(rng.poisson(rng.gamma(10.0, mean / 10.0)).astype(np.float32))
        )
    obs = pd.DataFrame(
        {
            "batch": pd.Categorical([f"batch_{b}" for b in batches]),
            "cell_type": pd.Categorical([f"type_{t}" for t in cell_types]),
        },
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"gene_{g}" for g in range(n_genes)])
    return ad.AnnData(X=sparse.vstack(blocks, format="csr"), obs=obs, var=var)


def prepare(n_cells: int, n_genes: int, n_batches: int, n_types: int, seed: int, path: str):
    """Simulate, normalize and log-transform; write the h5ad."""
    import scanpy as sc

    adata = simulate_in_chunks(n_cells, n_genes, n_batches, n_types, seed)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata.write_h5ad(path)


def centroid_gap(
    x,
    cell_types: np.ndarray,
    batches: np.ndarray,
    outside: np.ndarray | None = None,
    debias: bool = False,
) -> float:
    """Mean distance between the batch centroids of each cell type.

    With ``outside`` (genes × d, orthonormal columns), only the part of each centroid
    difference orthogonal to those columns counts. With ``debias``, each squared distance
    loses its expected sampling noise, ``Σ_genes (var_a / n_a + var_b / n_b)``, before the
    square root (clipped at 0): over 2000 genes the noise of centroids of a few hundred
    cells is a sizeable part of the gap, and it shrinks with the number of cells.
    """
    gaps = []
    for cell_type in np.unique(cell_types):
        centroids, noise = [], []
        for batch in np.unique(batches):
            group = x[(cell_types == cell_type) & (batches == batch)]
            mean = np.asarray(group.mean(axis=0), dtype=np.float64).ravel()
            centroids.append(mean)
            if debias:
                sq = group.power(2) if sparse.issparse(group) else np.square(group)
                var = np.asarray(sq.mean(axis=0), dtype=np.float64).ravel() - mean**2
                noise.append(var.sum() / max(group.shape[0] - 1, 1))
        for (ia, a), (ib, b) in combinations(enumerate(centroids), 2):
            d = a - b
            if outside is not None:
                d = d - outside @ (outside.T @ d)
            if debias:
                gaps.append(np.sqrt(max(d @ d - noise[ia] - noise[ib], 0.0)))
            else:
                gaps.append(np.linalg.norm(d))
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
    debiased_ratio = centroid_gap(
        adata.layers["mnn_corrected"], cell_types, batches, debias=True
    ) / centroid_gap(adata.X, cell_types, batches, debias=True)
    # The corrector's frozen PCA, refitted with the same seed, gives the uncorrected latent.
    x = adata.X.toarray() if sparse.issparse(adata.X) else np.asarray(adata.X)
    x = np.ascontiguousarray(x, dtype=np.float32)
    space = fit_pca(x, 50, random_state=seed)
    with torch.no_grad():
        before = space(torch.from_numpy(x)).numpy()
    latent_ratio = centroid_gap(adata.obsm["X_mnn_corrected"], cell_types, batches) / centroid_gap(
        before, cell_types, batches
    )
    loadings = space.loadings.numpy().astype(np.float64)
    outside_ratio = centroid_gap(
        adata.layers["mnn_corrected"], cell_types, batches, loadings
    ) / centroid_gap(x, cell_types, batches, loadings)
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
        "outside_gap_ratio": outside_ratio,
        "debiased_gap_ratio": debiased_ratio,
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
        "| batch gap after/before: PCA | genes | genes, debiased | outside | threads "
        "| load avg |"
    )
    lines = [header, "|" + "---:|" * (header.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['cells']} | {r['genes']} | {r['batches']} | {r['n_pairs']} | {r['epochs']} "
            f"| {r['latent_s']:.1f} | {r['pairs_s']:.1f} | {r['train_s']:.1f} "
            f"| {r['pairs_s'] + r['train_s']:.1f} | {r['apply_s']:.1f} | {r['total_s']:.1f} "
            f"| {r['peak_rss_gib']:.2f} | {r['peak_rss_gib'] - r['data_rss_gib']:.2f} "
            f"| {r['latent_gap_ratio']:.3f} | {r['gap_ratio']:.3f} "
            f"| {r['debiased_gap_ratio']:.3f} "
            f"| {r['outside_gap_ratio']:.3f} | {r['threads']} "
            f"| {r['load_avg']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 300_000])
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
