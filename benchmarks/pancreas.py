"""Pancreas benchmark: batch correction and clustering on Baron human/mouse and simulated data.

Per data set and seed: raw counts → ``scetm_mnn.pp.preprocess`` (counts in
``layers["counts"]``, normalize_total 1e4, log1p, 2000 batch-aware ``seurat`` HVGs) → every
method in :data:`METHODS` with that seed → embeddings in ``obsm["X_<method>"]`` → one
evaluation: a Leiden sweep (17 resolutions 0.02-1.0; kNN n=15; igraph Leiden, 2 iterations,
the same seed) scored by ARI and NMI against the cell types and by bARI (ARI against the
batches); the kNN batch entropy (30 neighbours, normalised to [0, 1]); the topic measures of
the topic models (``scetm_mnn.tl.topic_summary`` with the marker sets of
``scetm_mnn.datasets.pancreas_markers``); and optionally one scib-metrics ``Benchmarker``
over all embeddings (``--scib``; Leiden NMI/ARI, no k-means, unscaled). A graph method
(BBKNN) is stored in ``obsp`` and scored on its own graph (``_common.evaluate``; see
``_peers``): the same sweep on its connectivities, the batch entropy over its neighbours,
and scib-metrics' graph metrics only.

Writes ``<out>/pancreas.md`` (mean ± sd over the seeds per method, and each seed's rows),
``<out>/pancreas_<data>_sweep.csv`` and ``<out>/pancreas_<data>_seeds.png`` (the metrics over
the seeds, ``scetm_mnn.pl.seed_metrics``, our methods highlighted); prints the same tables.

Run (after ``make bench-env``):
``.venv/bin/python benchmarks/pancreas.py --datasets human mouse [--seeds 0 1 2 3 4]
[--methods pca]``
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
import matplotlib.pyplot as plt
import pandas as pd
import torch
from _common import (
    BENCH_DIR,
    DATASETS,
    N_TOP_GENES,
    RELEVANCE,
    TOPICS,
    Method,
    batch_floor,
    evaluate,
    load_dataset,
    markers_of,
    prepare,
    run_methods,
    to_markdown,
)

from scetm_mnn import pl
from scetm_mnn.tl import DEFAULT_RESOLUTIONS

#: Method name → callable(adata, seed) -> (embedding or graph, seconds): the peers, then ours.
METHODS: dict[str, Method] = {**_peers.PEERS, **_ours.OURS}
#: The methods that return a graph (``_common.Graph``), scored on it.
GRAPH_METHODS = ("bbknn",)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _versions() -> str:
    names = (
        "scetm-mnn", "scvi-tools", "scanpy", "torch", "harmonypy", "scanorama", "bbknn",
        "scib-metrics", "jax",
    )  # fmt: skip
    found = []
    for name in names:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return ", ".join(found) + ", scETM 0.5.0 (own venv)"


def _graph_note(methods: dict[str, Method]) -> str:
    """The header's paragraph on the graph methods among ``methods`` (empty without any)."""
    graphs = [m for m in GRAPH_METHODS if m in methods]
    if not graphs:
        return ""
    return (
        f"Graph methods ({', '.join(graphs)}) give a neighbour graph, not an embedding, and "
        "are scored on it: the Leiden sweep runs on its connectivities (same resolutions, "
        "Leiden and scores); the batch entropy is over each cell's own neighbours in the "
        "graph (BBKNN: 3 in each batch, the cell itself among them: 11 others with 4 batches, "
        "5 with 2). "
        "BBKNN's graph is batch-balanced by construction, so its entropy is fixed by the "
        "number of batches (0.990 for 4, 0.971 for 2) and not comparable one to one with the "
        "embeddings' 30-neighbour entropy. scib: scib-metrics' graph metrics (Leiden NMI/ARI "
        "on its connectivities, cLISI and iLISI on its neighbours, perplexity a third of "
        "their number, kBET per label, graph connectivity), called as the Benchmarker calls "
        "them; the embedding metrics (isolated labels, label silhouette, BRAS, PCR "
        "comparison) are NaN for it, and its scib Bio / Batch are the means over the "
        "others (Total = 0.6 Bio + 0.4 Batch), so they are not comparable one to one "
        "either.\n\n"
    )


def run_dataset(
    name: str, methods: dict[str, Method], seeds: list[int], out: Path, scib: bool
) -> str:
    """Benchmark one data set over the seeds; return its markdown section."""
    log(f"== {name}")
    raw = load_dataset(name, seed=seeds[0])
    summaries, sweeps_all = [], []
    for seed in seeds:
        adata = prepare(raw)
        floor = batch_floor(adata)
        log(f"  seed {seed}: {adata.n_obs} cells × {adata.n_vars} genes")
        TOPICS.clear()
        RELEVANCE.clear()
        seconds = run_methods(adata, methods, seed=seed, log=log)
        summary, sweeps = evaluate(
            adata, list(methods), seconds, seed=seed, markers=markers_of(name, adata), scib=scib
        )
        summaries.append(summary.assign(seed=seed))
        sweeps_all += [df.assign(method=m, seed=seed) for m, df in sweeps.items()]
        log(to_markdown(summary))
    pd.concat(sweeps_all).to_csv(out / f"pancreas_{name}_sweep.csv", index=False)
    per_seed = pd.concat(summaries)
    log(f"wrote {plot_seeds(per_seed, name, out)}")
    extra = ""
    if "scetm" in methods and _peers.SCETM_INFO:
        info = _peers.SCETM_INFO
        extra = (
            f"scETM 0.5.0: {info['n_epochs']} epochs = {info['steps']} steps of batch "
            f"{info['batch_size']}, {info['ms_per_step']:.0f} ms/step, "
            f"{info['train_seconds']:.0f} s in the training loop.\n\n"
        )
    return (
        f"## {name} ({adata.n_obs} cells × {adata.n_vars} genes, "
        f"{adata.obs['batch'].nunique()} batches, {adata.obs['cell_type'].nunique()} types)\n\n"
        f"ARI(cell_type, batch) = {floor:.3f} (the bARI floor). Seeds: {seeds}.\n\n{extra}"
        f"### mean ± sd over {len(seeds)} seed(s)\n\n{to_markdown(mean_sd(per_seed))}\n\n"
        f"### per seed\n\n{to_markdown(per_seed)}\n"
    )


def plot_seeds(per_seed: pd.DataFrame, name: str, out: Path) -> Path:
    """Draw the metrics over the seeds, ours highlighted, in ``pancreas_<name>_seeds.png``."""
    path = out / f"pancreas_{name}_seeds.png"
    ours = [m for m in pd.unique(per_seed["method"]) if m in _ours.OURS]
    n_seeds = per_seed["seed"].nunique()
    fig = pl.seed_metrics(
        per_seed,
        highlight=ours or None,
        title=f"pancreas {name}: mean ± sd over {n_seeds} seed(s)",
        save=path,
        show=False,
    )
    plt.close(fig)
    return path


def mean_sd(per_seed: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """One row per method: ``mean ± sd`` of every numeric column over the seeds."""
    numeric = per_seed.drop(columns="seed").groupby("method", sort=False)
    mean, sd = numeric.mean(), numeric.std(ddof=1).fillna(0.0)
    table = mean.round(digits).astype(str) + " ± " + sd.round(digits).astype(str)
    return table.reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=["human", "mouse"])
    parser.add_argument("--methods", nargs="+", default=None, help="subset of the methods")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--scib", action="store_true", help="also run scib-metrics")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (scVI, scETM)")
    parser.add_argument("--scetm-epochs", type=int, default=_peers.SCETM_EPOCHS)
    args = parser.parse_args()

    logging.getLogger("scib_metrics").setLevel(logging.WARNING)  # per-label "Skip." notes
    _peers.THREADS["n"] = args.threads
    torch.set_num_threads(args.threads)  # ours too: spinning OpenMP workers on shared cores
    methods = dict(METHODS)
    methods["scetm"] = functools.partial(_peers.scetm, n_epochs=args.scetm_epochs)
    methods["scetm_mnn_orig_equal"] = functools.partial(
        _ours.scetm_mnn_orig_equal, n_epochs=args.scetm_epochs
    )
    if args.methods:
        unknown = set(args.methods) - set(methods)
        if unknown:
            parser.error(f"unknown methods {sorted(unknown)}; known: {sorted(methods)}")
        methods = {m: methods[m] for m in methods if m in args.methods}
    args.out.mkdir(parents=True, exist_ok=True)

    header = (
        "# Pancreas benchmark\n\n"
        f"Preprocessing: normalize_total 1e4, log1p, {N_TOP_GENES} batch-aware seurat HVGs. "
        f"Leiden sweep over {len(DEFAULT_RESOLUTIONS)} resolutions "
        f"({min(DEFAULT_RESOLUTIONS)}-{max(DEFAULT_RESOLUTIONS)}), kNN n=15, igraph Leiden, "
        "2 iterations, the run's seed: best/mean ARI and best NMI against the cell types, "
        "bARI (ARI against the batches; lower is better) at the best-ARI resolution; kNN "
        "batch entropy (30 neighbours, 1 = perfectly mixed). Topic models: mean max θ "
        "(uniform = 1/K), the weakest enrichment ratio over types with ≥ 50 cells and how "
        "many types reach 10, marker hits in the most enriched topic's top-10 genes (types "
        "with ≥ 20 cells), topic diversity (unique fraction of the top-20 genes), the "
        "genes ranked by their relevance (Sievert & Shirley 2014, weight 0.6: ours as "
        "`get_top_genes` ranks them, the others from their β and mean θ); β diversity: "
        "the same over the genes ranked by β. "
        "scib: scib-metrics Benchmarker (Leiden NMI/ARI, no k-means, unscaled). "
        f"Time: wall seconds of the method on the CPU, {args.threads} torch thread(s).\n\n"
        f"{_graph_note(methods)}Versions: {_versions()}.\n\n"
    )
    sections = []
    for name in args.datasets:  # rewritten after each data set, so a long run keeps its part
        sections.append(run_dataset(name, methods, args.seeds, args.out, args.scib))
        print(sections[-1], flush=True)
        (args.out / "pancreas.md").write_text(header + "\n".join(sections))
        log(f"wrote {args.out / 'pancreas.md'}")


if __name__ == "__main__":
    main()
