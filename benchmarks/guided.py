"""Guided topics (#33): one topic pinned to the beta-cell set, against the unguided model.

Per data set (Baron human, the seeded quarter; Baron mouse) and seed: the pancreas
benchmark's preprocessing (``_common.prepare``: 2000 batch-aware HVGs) → the corrector
(``pp.mnn_correct``, that seed) → the default pipeline's topic model (``_ours``), once
unguided and once with ``gene_sets={"beta": <the marker table's beta genes>}`` (at each
``--strengths``), both trained with that seed. Per model:

- **beta topic ratio**: the guided topic's mean ``θ`` (exposed topics) in beta cells over
  its mean in the other cells; for the unguided model, the largest such ratio of any
  topic (the beta topic it found by itself);
- **best / mean ARI**: the Leiden sweep of the latent (``_common.evaluate``);
- **free diversity**: the topic diversity (top 20 genes) of the exposed topics other than
  the guided one (all exposed topics of the unguided model).

Writes ``<out>/guided.md`` (mean ± sd over the seeds, then one row per seed) and prints it.
Run: ``.venv/bin/python benchmarks/guided.py --datasets human mouse --seeds 0 1 2 3 4``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import _ours
import numpy as np
import pandas as pd
import torch
from _common import (
    BENCH_DIR,
    LABEL_KEY,
    RELEVANCE,
    TOPICS,
    evaluate,
    load_dataset,
    markers_of,
    prepare,
    to_markdown,
)

from scetm_mnn import tl
from scetm_mnn.model._guided import DEFAULT_STRENGTH

GUIDED_SET = "beta"
METRICS = ("beta topic ratio", "best ARI", "mean ARI", "free diversity", "topics", "time s")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _ratio(theta: np.ndarray, is_type: np.ndarray, column: int) -> float:
    inside, outside = theta[is_type, column].mean(), theta[~is_type, column].mean()
    return float(inside / max(outside, 1e-12))


def run_seed(adata, seed: int, genes: list[str], strengths: list[float]) -> list[dict]:
    """The unguided model and the guided one at each strength, for one seed."""
    is_beta = (adata.obs[LABEL_KEY].astype(str) == GUIDED_SET).to_numpy()
    names, seconds = ["unguided"], {}
    adata.obsm["X_unguided"], seconds["unguided"] = _ours._pipeline(adata, seed, "unguided")
    for s in strengths:
        name = f"guided s={s:g}"
        sets = {"model_kwargs": {"gene_sets": {GUIDED_SET: genes}, "gene_set_strength": s}}
        adata.obsm[f"X_{name}"], seconds[name] = _ours._pipeline(adata, seed, name, **sets)
        names.append(name)
    summary, _ = evaluate(adata, names, seconds, seed=seed, scib=False)
    rows = []
    for name, row in zip(names, summary.to_dict("records")):
        theta, topic_gene = TOPICS[name][0], RELEVANCE[name]  # genes ranked as get_top_genes
        topics = list(topic_gene.index)
        if name == "unguided":
            ratio = max(_ratio(theta, is_beta, k) for k in range(len(topics)))
            free = topic_gene
        else:
            ratio = _ratio(theta, is_beta, topics.index(GUIDED_SET))
            free = topic_gene.drop(index=GUIDED_SET)
        rows.append(
            {
                "model": name,
                "seed": seed,
                "beta topic ratio": ratio,
                "best ARI": row["best ARI"],
                "mean ARI": row["mean ARI"],
                "free diversity": tl.topic_diversity(free),
                "topics": len(topics),
                "time s": row["time s"],
            }
        )
    return rows


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd over the seeds per model, and the differences from the unguided model."""
    grouped = rows.groupby("model", sort=False)[list(METRICS)]
    mean, sd = grouped.mean(), grouped.std(ddof=1).fillna(0.0)
    table = pd.DataFrame(index=mean.index)
    for metric in METRICS:
        table[metric] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(mean[metric], sd[metric])]
    for metric in ("mean ARI", "best ARI", "free diversity"):
        table[f"Δ {metric}"] = (mean[metric] - mean.loc["unguided", metric]).map("{:+.3f}".format)
    return table.reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["human", "mouse"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--strengths", nargs="+", type=float, default=[DEFAULT_STRENGTH])
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    sections = ["# Guided topics (#33)\n", __doc__.split("\n\n", 1)[1].split("Writes")[0]]
    for name in args.datasets:
        adata = prepare(load_dataset(name))
        genes = markers_of(name, adata)[GUIDED_SET]
        rows = []
        for seed in args.seeds:
            tic = time.perf_counter()
            rows += run_seed(adata, seed, genes, args.strengths)
            log(f"{name} seed {seed}: {time.perf_counter() - tic:.0f} s")
            frame = pd.DataFrame(rows)
            text = "\n".join(
                [
                    f"## Baron {name} ({adata.n_obs} cells; the beta set: {' '.join(genes)})\n",
                    f"Seeds {', '.join(map(str, frame['seed'].unique()))}, mean ± sd:\n",
                    to_markdown(summarise(frame)),
                    "\nPer seed:\n",
                    to_markdown(frame),
                    "",
                ]
            )
            (args.out / "guided.md").write_text("\n".join([*sections, text]))
        sections.append(text)
        print(text, flush=True)


if __name__ == "__main__":
    main()
