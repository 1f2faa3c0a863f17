"""Pancreas benchmark: batch correction and clustering on Baron human/mouse and simulated data.

Per data set: raw counts → ``scetm_mnn.pp.preprocess`` (counts in ``layers["counts"]``,
normalize_total 1e4, log1p, 2000 batch-aware ``seurat`` HVGs) → every method in
:data:`METHODS` → embeddings in ``obsm["X_<method>"]`` → one evaluation: a Leiden sweep
(17 resolutions 0.02-1.0; kNN n=15; igraph Leiden, 2 iterations, seed 0) scored by ARI and
NMI against the cell types and by bARI (ARI against the batches), and one scib-metrics
``Benchmarker`` over all embeddings (Leiden NMI/ARI, no k-means, unscaled).

Writes ``<out>/pancreas.md`` and ``<out>/pancreas_<data>_sweep.csv``; prints the same tables
and, per data set, the scETM report's ARI/NMI/bARI table at resolutions 0.1-0.28.

Run (after ``make bench-env``):
``.venv/bin/python benchmarks/pancreas.py --datasets human mouse [--methods pca scvi]``
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import _ours
import _peers
import pandas as pd
from _common import (
    BENCH_DIR,
    DATASETS,
    N_TOP_GENES,
    Method,
    batch_floor,
    evaluate,
    load_dataset,
    prepare,
    run_methods,
    seed_table,
    to_markdown,
)

from scetm_mnn.tl import DEFAULT_RESOLUTIONS

#: Method name → callable(adata, seed) -> (embedding, seconds): the peers, then ours.
METHODS: dict[str, Method] = {**_peers.PEERS, **_ours.OURS}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _versions() -> str:
    names = ("scetm-mnn", "scvi-tools", "scanpy", "torch", "harmonypy", "scib-metrics", "jax")
    found = []
    for name in names:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return ", ".join(found) + ", scETM 0.5.0 (own venv)"


def run_dataset(name: str, methods: dict[str, Method], seed: int, out: Path) -> tuple[str, str]:
    """Benchmark one data set; return its markdown section and the seed-format table."""
    log(f"== {name}")
    adata = prepare(load_dataset(name, seed=seed))
    floor = batch_floor(adata)
    log(f"  {adata.n_obs} cells × {adata.n_vars} genes, ARI(cell_type, batch) = {floor:.3f}")
    seconds = run_methods(adata, methods, seed=seed, log=log)
    summary, sweeps = evaluate(adata, list(methods), seconds, seed=seed)
    summary["time s"] = summary["time s"].round(1)
    pd.concat([df.assign(method=m) for m, df in sweeps.items()]).to_csv(
        out / f"pancreas_{name}_sweep.csv", index=False
    )
    extra = ""
    if "scetm" in methods and _peers.SCETM_INFO:
        info = _peers.SCETM_INFO
        extra = (
            f"scETM 0.5.0: {info['n_epochs']} epochs = {info['steps']} steps of batch "
            f"{info['batch_size']}, {info['ms_per_step']:.0f} ms/step, "
            f"{info['train_seconds']:.0f} s in the training loop.\n\n"
        )
    section = (
        f"## {name} ({adata.n_obs} cells × {adata.n_vars} genes, "
        f"{adata.obs['batch'].nunique()} batches, {adata.obs['cell_type'].nunique()} types)\n\n"
        f"ARI(cell_type, batch) = {floor:.3f} (the bARI floor).\n\n"
        f"{extra}{to_markdown(summary)}\n"
    )
    seed = f"### {name}: ARI / NMI / bARI per Leiden resolution\n\n"
    seed += to_markdown(seed_table(sweeps)) + "\n"
    return section, seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=["human", "mouse"])
    parser.add_argument("--methods", nargs="+", default=None, help="subset of the methods")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (scVI, scETM)")
    parser.add_argument("--scetm-epochs", type=int, default=_peers.SCETM_EPOCHS)
    args = parser.parse_args()

    logging.getLogger("scib_metrics").setLevel(logging.WARNING)  # per-label "Skip." notes
    _peers.THREADS["n"] = args.threads
    methods = dict(METHODS)
    methods["scetm"] = functools.partial(_peers.scetm, n_epochs=args.scetm_epochs)
    if args.methods:
        unknown = set(args.methods) - set(methods)
        if unknown:
            parser.error(f"unknown methods {sorted(unknown)}; known: {sorted(methods)}")
        methods = {m: methods[m] for m in methods if m in args.methods}
    args.out.mkdir(parents=True, exist_ok=True)

    sections, seeds = [], []
    for name in args.datasets:
        section, seed_fmt = run_dataset(name, methods, args.seed, args.out)
        sections.append(section)
        seeds.append(seed_fmt)
        print(section)
        print(seed_fmt, flush=True)
    header = (
        "# Pancreas benchmark\n\n"
        f"Preprocessing: normalize_total 1e4, log1p, {N_TOP_GENES} batch-aware seurat HVGs. "
        f"Leiden sweep over {len(DEFAULT_RESOLUTIONS)} resolutions "
        f"({min(DEFAULT_RESOLUTIONS)}-{max(DEFAULT_RESOLUTIONS)}), kNN n=15, igraph Leiden, "
        f"2 iterations, seed {args.seed}: best/mean ARI and best NMI against the cell types, "
        "bARI (ARI against the batches; lower is better) at the best-ARI resolution. "
        "scib: scib-metrics Benchmarker (Leiden NMI/ARI, no k-means, unscaled). "
        f"Time: wall seconds of the method on the CPU, {args.threads} torch thread(s).\n\n"
        f"Versions: {_versions()}.\n\n"
    )
    text = header + "\n".join(sections) + "\n# Seed-report format\n\n" + "\n".join(seeds)
    (args.out / "pancreas.md").write_text(text)
    log(f"wrote {args.out / 'pancreas.md'}")


if __name__ == "__main__":
    main()
