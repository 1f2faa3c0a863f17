"""Seconds per phase and peak memory of the whole pipeline on simulated atlases.

For each size (cells × 2000 genes, 4 batches, 8 types, ``scetm_mnn.datasets.simulate``
with seed 0), a fresh subprocess runs, timing each phase:

``simulate`` → ``preprocess`` (normalize, log1p, HVGs; all 2000 genes are kept) →
``mnn_correct`` split into its own phases (``pca``, ``pairs``, ``corrector`` training,
``apply``) → ``train`` (the topic model on the corrected input, a fixed 2000 steps of 256
cells) → ``latent`` (``get_latent_representation`` of every cell).

After each phase it records the process's peak resident memory so far (``ru_maxrss``),
so the last column is the peak of the whole run. With ``--peers``, harmonypy on the same
50-component PCA and scVI (the same 2000 steps of 256) run in the same process after ours,
with their own seconds (their memory adds to the same process's peak; they run last), at
the sizes up to ``--peers-max-cells``.
The table ends with t(largest)/t(100k) per phase where both sizes ran. Each size's row is
also saved as JSON (``<out>.json``); ``--combine a.json b.json`` rebuilds the table from
rows of separate runs (e.g. sizes run side by side).

With ``--disk DIR`` the simulation is written to ``DIR`` in chunks and every phase reads
from disk: ``preprocess`` streams into a second file there (``pp.preprocess(...,
filename=)``), and the corrector (low-rank output) and the topic model read it backed, as
``scetm-mnn run`` does on a file opened backed. Each row also scores the latent against the
simulated truth on a stratified sample of 20,000 cells: the best Leiden ARI over the sweep
and the kNN batch entropy (30 neighbours).

Run: ``.venv/bin/python benchmarks/scale.py [--sizes 10000 100000 300000 1000000]
[--peers] [--peers-max-cells 300000] [--threads 1] [--disk DIR [--compression lzf]]
[--out benchmarks/results/scale.md]``
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

STEPS, BATCH = 2000, 256
PHASES = ("simulate", "preprocess", "pca", "pairs", "corrector", "apply", "train", "latent")
PEERS = ("harmony", "scvi")
ROW_MARK = "ours done: "


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


QUALITY_CELLS = 20_000
"""Cells of the stratified sample (batch × type) the quality columns are scored on."""


def _quality(adata, row: dict) -> None:
    """Best Leiden ARI and kNN batch entropy of the latent against the simulated truth."""
    from scetm_mnn import tl

    sweep = tl.leiden_sweep(
        adata, "X_latent", "cell_type", "batch", subsample=QUALITY_CELLS, random_state=0
    )
    row["best ARI"] = round(float(sweep["ARI"].max()), 3)
    metrics = tl.integration_metrics(
        adata, "X_latent", "cell_type", "batch", n_neighbors=30, subsample=QUALITY_CELLS
    )
    row["batch entropy"] = round(float(metrics["batch_entropy"]), 3)


def run_one(
    n_cells: int,
    peers: bool,
    threads: int,
    disk: Path | None = None,
    compression: str | None = None,
) -> dict:
    """All phases for one size, in this process; returns seconds and peak GiB per phase.

    With ``disk`` (a folder), the simulation is written there and every phase reads it from
    disk: the preprocessing streams into a second file there, and the corrector and the
    topic model read that file backed (the corrected data in low-rank form). Both files'
    matrices are written with ``compression`` (an HDF5 filter, or ``None``).
    """
    import torch

    torch.set_num_threads(threads)
    import scetm_mnn as sm
    from scetm_mnn.model import BatchCorrectedSCETM

    row: dict = {"cells": n_cells, "input": "disk" if disk else "memory"}
    if disk is not None:
        row["compression"] = compression or "none"

    def phase(name, seconds):
        row[f"{name} s"] = round(seconds, 1)
        row[f"{name} GiB"] = round(_peak_gib(), 2)

    tic = time.perf_counter()
    adata = sm.datasets.simulate(
        n_cells=n_cells,
        n_genes=2000,
        n_batches=4,
        n_cell_types=8,
        random_state=0,
        filename=None if disk is None else disk / f"sim_{n_cells}.h5ad",
        compression=compression,
    )
    phase("simulate", time.perf_counter() - tic)
    tic = time.perf_counter()
    if disk is None:
        sm.pp.preprocess(adata, n_top_genes=2000, batch_key="batch")
    else:
        adata = sm.pp.preprocess(
            adata,
            n_top_genes=2000,
            batch_key="batch",
            filename=disk / f"pre_{n_cells}.h5ad",
            compression=compression,
        )
    phase("preprocess", time.perf_counter() - tic)
    sm.pp.mnn_correct(adata, "batch", dense_layer=None if disk is None else False)
    timing = adata.uns["mnn_corrected"]["timing"]
    for ours, name in (("latent", "pca"), ("pairs", "pairs"), ("train", "corrector")):
        phase(name, timing[ours])
    phase("apply", timing["apply"])
    row["pairs n"] = int(adata.uns["mnn_corrected"]["n_pairs"])
    row["dense layer"] = "mnn_corrected" in adata.layers

    BatchCorrectedSCETM.setup_anndata(
        adata, layer="counts", batch_key="batch", corrected_layer="mnn_corrected"
    )
    model = BatchCorrectedSCETM(adata)
    epochs = max(1, math.ceil(STEPS * BATCH / n_cells))
    tic = time.perf_counter()
    model.train(
        max_epochs=epochs, max_steps=STEPS, batch_size=BATCH, seed=0, enable_progress_bar=False
    )
    phase("train", time.perf_counter() - tic)
    row["train steps"] = int(model.trainer.global_step) if model.trainer else STEPS
    tic = time.perf_counter()
    adata.obsm["X_latent"] = model.get_latent_representation()
    phase("latent", time.perf_counter() - tic)
    _quality(adata, row)
    # Ours is complete: should a peer fail (e.g. run out of memory), the parent keeps this.
    print(ROW_MARK + json.dumps(row), file=sys.stderr, flush=True)

    if peers:
        import harmonypy
        import scvi

        from scetm_mnn.pp._latent import apply_frozen as _apply
        from scetm_mnn.pp._latent import fit_pca

        pca = _apply(fit_pca(adata.X, 50), adata.X)  # the uncorrected 50-component PCA
        tic = time.perf_counter()
        harmonypy.run_harmony(pca, adata.obs, "batch", random_state=0, verbose=False)
        row["harmony s"] = round(time.perf_counter() - tic, 1)
        scvi.settings.seed = 0
        scvi.settings.num_threads = threads
        scvi.model.SCVI.setup_anndata(adata, layer="counts", batch_key="batch")
        peer = scvi.model.SCVI(adata, n_latent=10)
        tic = time.perf_counter()
        peer.train(
            max_epochs=epochs,
            max_steps=STEPS,
            batch_size=BATCH,
            train_size=1.0,
            enable_progress_bar=False,
        )
        row["scvi s"] = round(time.perf_counter() - tic, 1)
        row["peak with peers GiB"] = round(_peak_gib(), 2)
    return row


def _table(rows: list[dict]) -> str:
    import pandas as pd

    frame = pd.DataFrame(rows).set_index("cells")  # one input mode per table
    seconds = frame[[f"{p} s" for p in PHASES]]
    total = seconds.sum(axis=1).round(1)
    out = seconds.copy()
    out["total s"] = total
    out["pipeline s"] = (total - seconds["simulate s"]).round(1)  # without making the data
    out["peak GiB"] = frame["latent GiB"]
    for extra in (
        "input",
        "compression",
        "best ARI",
        "batch entropy",
        "pairs n",
        "train steps",
        "dense layer",
        "harmony s",
        "scvi s",
        "peak with peers GiB",
    ):
        if extra in frame:
            out[extra] = frame[extra]
    text = out.reset_index().to_markdown(index=False)
    memory = frame[[f"{p} GiB" for p in PHASES]].reset_index().to_markdown(index=False)
    text += "\n\nPeak resident memory after each phase (GiB, running maximum):\n\n" + memory
    sizes = sorted(out.index)
    columns = [*seconds.columns, "total s", "pipeline s"]
    for small, big in itertools.pairwise(sizes):  # each size against the one before
        ratio = out.loc[big, columns].astype(float) / out.loc[small, columns].astype(float)
        text += (
            f"\n\nt({big:,})/t({small:,}) per phase (linear scaling is {big / small:g}):\n\n"
            + ratio.round(2).to_frame("ratio").T.to_markdown(index=False)
        )
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 100_000, 300_000, 1_000_000]
    )
    parser.add_argument("--peers", action="store_true", help="also time harmonypy and scVI")
    parser.add_argument("--peers-max-cells", type=int, default=300_000)
    parser.add_argument("--combine", type=Path, nargs="+", help="rebuild from saved rows")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scale.md")
    parser.add_argument(
        "--disk",
        type=Path,
        help="simulate into this folder and run every phase from disk (backed files)",
    )
    parser.add_argument(
        "--compression",
        choices=("lzf", "gzip"),
        help="with --disk: the HDF5 filter for both files' matrices (default: none)",
    )
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # worker: one size
    args = parser.parse_args(argv)
    if args.one is not None:
        row = run_one(args.one, args.peers, args.threads, args.disk, args.compression)
        print(json.dumps(row))
        return
    rows = []
    if args.combine:
        rows = [row for path in args.combine for row in json.loads(path.read_text())]
        rows.sort(key=lambda row: row["cells"])
        args.sizes = []
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--one", str(size), "--threads", str(args.threads)]
        cmd += ["--peers"] if args.peers and size <= args.peers_max_cells else []
        cmd += ["--disk", str(args.disk)] if args.disk else []
        cmd += ["--compression", args.compression] if args.compression else []
        print(f"{size:,} cells ...", file=sys.stderr, flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            ours = [line for line in done.stderr.splitlines() if line.startswith(ROW_MARK)]
            failed = f"{size:,} cells failed (exit {done.returncode})"
            if not ours:
                print(f"{failed}; stopping.", file=sys.stderr)
                break
            print(f"{failed} in a peer; ours kept.", file=sys.stderr)
            rows.append({**json.loads(ours[-1][len(ROW_MARK) :]), "peers failed": True})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    if not rows:
        return
    header = (
        "# Scale: the pipeline on simulated atlases\n\n"
        "Made by `benchmarks/scale.py` (see its docstring for the phases). Simulated counts, "
        "2000 genes, 4 batches, 8 types, seed 0; each size in a fresh process; "
        f"{args.threads} torch thread(s); {os.cpu_count()} CPU cores ({platform.machine()}); "
        f"load average at the end {os.getloadavg()[0]:.1f} (above ~{os.cpu_count()} "
        "means other jobs shared the cores and the seconds are upper bounds).\n\n"
    )
    text = header + _table(rows) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
