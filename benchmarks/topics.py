"""Topics a biologist can name and trust (#33): annotation by gene sets and stability over seeds.

Per data set (Baron human, the seeded quarter; Baron mouse): the pancreas benchmark's
preprocessing (``_common.prepare``: 2000 batch-aware HVGs) → the corrector
(``pp.mnn_correct``, seed 0) → the default pipeline's topic model
(``_ours``: ``corrected_input`` the corrector's latent, its defaults, 50 topics, pruned),
built and trained with seed 0. Then

- **annotation**: a GMT written from the marker table (``datasets.pancreas_markers``) and
  ``tl.annotate_topics`` (top 100 genes per topic, hypergeometric, BH over all topic × set
  pairs); per marker-table type, its most enriched topic (smallest p-value) and whether that
  topic's label (its own most enriched set) is the type at FDR < 0.05;
- **stability**: ``tl.topic_stability`` of that model retrained with seeds 1–4 (the corrector
  kept); the reproducibility (mean matched β cosine) of each type's topic;
- **AmortizedLDA** (``--methods lda``): scvi-tools' LDA on the counts, 50 topics, its
  default epochs (``--lda-epochs`` to change), seeds 0–4, scored by the same two
  procedures (its β: the topic × gene distribution of ``get_feature_by_topic``);
- **speed**: ``tl.annotate_topics`` of 50 random topics × 2,000 genes against 1,000 random
  sets of 10–200 genes (best of 3).

Writes ``<out>/topics.md`` and prints the tables. Run:
``.venv/bin/python benchmarks/topics.py --datasets human mouse [--methods ours lda]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import _ours
import numpy as np
import pandas as pd
import scvi
import torch
from _common import BENCH_DIR, load_dataset, markers_of, prepare, to_markdown

from scetm_mnn import tl
from scetm_mnn.model import BatchCorrectedSCETM

SEEDS = (0, 1, 2, 3, 4)
MAX_FDR = 0.05


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _ours_model(adata, seed: int) -> BatchCorrectedSCETM:
    _ours._corrected(adata, seed)
    data = adata.copy()
    BatchCorrectedSCETM.setup_anndata(
        data,
        layer="counts",
        batch_key="batch",
        corrected_layer=_ours.KEY,
        mnn_pairs_key=f"{_ours.KEY}_pairs",
    )
    scvi.settings.seed = seed
    model = BatchCorrectedSCETM(data)
    model.train(seed=seed, enable_progress_bar=False)
    return model


def _lda_beta(adata, seed: int, epochs: int | None) -> pd.DataFrame:
    data = adata.copy()
    scvi.model.AmortizedLDA.setup_anndata(data, layer="counts")
    scvi.settings.seed = seed
    model = scvi.model.AmortizedLDA(data, n_topics=50)
    model.train(max_epochs=epochs, enable_progress_bar=False)
    return np.log(model.get_feature_by_topic().T.clip(lower=1e-30))


def annotation_table(table: pd.DataFrame, markers: dict[str, list[str]]) -> pd.DataFrame:
    """Per marker type: its most enriched topic, that topic's label, and the hit."""
    labels = tl.topic_labels(table, MAX_FDR)
    best_set = (
        table.sort_values(["pvalue", "overlap"], ascending=[True, False], kind="stable")
        .drop_duplicates("topic")
        .set_index("topic")["gene_set"]
    )
    rows = []
    for cell_type in markers:
        sub = table[table["gene_set"] == cell_type]
        if sub.empty:
            rows.append({"type": cell_type, "topic": "", "hit": False})
            continue
        row = sub.sort_values(["pvalue", "overlap"], ascending=[True, False]).iloc[0]
        hit = bool(row["fdr"] < MAX_FDR and best_set[row["topic"]] == cell_type)
        rows.append(
            {
                "type": cell_type,
                "markers": int(row["set_size"]),
                "topic": row["topic"],
                "overlap": int(row["overlap"]),
                "FDR": f"{row['fdr']:.1e}",
                "topic label": labels[row["topic"]],
                "overlap genes": " ".join(row["overlap_genes"]),
                "hit": hit,
            }
        )
    return pd.DataFrame(rows)


def _stability_rows(annotated: pd.DataFrame, stability: tl.TopicStability) -> pd.DataFrame:
    table = stability.table
    out = annotated[["type", "topic"]].copy()
    out["reproducibility"] = [table["reproducibility"].get(t, np.nan) for t in out["topic"]]
    out["present"] = [table["present_fraction"].get(t, np.nan) for t in out["topic"]]
    return out


def ours_section(name: str, adata, gmt: Path, markers: dict[str, list[str]]) -> str:
    """Our default pipeline's annotation and stability."""
    tic = time.perf_counter()
    model = _ours_model(adata, SEEDS[0])
    log(f"  reference model: {time.perf_counter() - tic:.0f} s, {model.n_live_topics} topics")
    annotated = annotation_table(tl.annotate_topics(model, gmt), markers)
    tic = time.perf_counter()
    stability = tl.topic_stability(model, seeds=SEEDS[1:])
    log(f"  4 more seeds: {time.perf_counter() - tic:.0f} s")
    rows = _stability_rows(annotated, stability)
    return "\n".join(
        [
            f"### scetm_mnn (default pipeline, seed 0, {model.n_live_topics} exposed topics)",
            "",
            f"**{int(annotated['hit'].sum())}/{len(annotated)}** marker types annotated.",
            "",
            to_markdown(annotated),
            "",
            f"Stability over seeds {', '.join(map(str, SEEDS))} (the corrector kept): mean "
            f"reproducibility of the types' topics **{rows['reproducibility'].mean():.3f}**; "
            f"{int(stability.table['stable'].sum())}/{len(stability.table)} exposed topics "
            "stable (present, centred β cosine ≥ 0.7, in ≥ 80% of the seeds).",
            "",
            to_markdown(rows),
            "",
        ]
    )


def lda_section(adata, gmt: Path, markers: dict[str, list[str]], epochs: int | None) -> str:
    """AmortizedLDA over the seeds, scored by the same two procedures."""
    tic = time.perf_counter()
    betas = [_lda_beta(adata, seed, epochs) for seed in SEEDS]
    log(f"  AmortizedLDA, 5 seeds: {time.perf_counter() - tic:.0f} s")
    annotated = annotation_table(tl.annotate_topics(betas[0], gmt), markers)
    rows = _stability_rows(annotated, tl.topic_stability(betas))
    return "\n".join(
        [
            f"### scvi-tools AmortizedLDA (50 topics, epochs {epochs or 'default'})",
            "",
            f"**{int(annotated['hit'].sum())}/{len(annotated)}** marker types annotated; mean "
            f"reproducibility of the types' topics over seeds {', '.join(map(str, SEEDS))}: "
            f"**{rows['reproducibility'].mean():.3f}**.",
            "",
            to_markdown(annotated),
            "",
            to_markdown(rows),
            "",
        ]
    )


def run_dataset(name: str, gmt_dir: Path, methods: list[str], lda_epochs: int | None):
    """Yield the markdown sections of one data set, each as soon as it is done."""
    log(f"== {name}")
    adata = prepare(load_dataset(name))
    markers = markers_of(name, adata)
    gmt = gmt_dir / f"pancreas_markers_{name}.gmt"
    tl.write_gmt(markers, gmt, descriptions={t: f"Baron {name} {t}" for t in markers})
    yield f"## Baron {name} ({adata.n_obs} cells × {adata.n_vars} genes)\n"
    if "ours" in methods:
        yield ours_section(name, adata, gmt, markers)
    if "lda" in methods:
        yield lda_section(adata, gmt, markers, lda_epochs)


def speed() -> str:
    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(2000)]
    beta = pd.DataFrame(rng.normal(size=(50, 2000)), columns=genes)
    sets = {
        f"s{j}": list(rng.choice(genes, size=int(rng.integers(10, 201)), replace=False))
        for j in range(1000)
    }
    times = []
    for _ in range(3):
        tic = time.perf_counter()
        tl.annotate_topics(beta, sets)
        times.append(time.perf_counter() - tic)
    text = (
        "## Annotation speed\n\n`tl.annotate_topics`, 50 topics × 2,000 genes (top 100) "
        f"against 1,000 random sets of 10–200 genes: **{min(times):.2f} s** (best of 3; "
        f"{', '.join(f'{t:.2f}' for t in times)}), one process on the shared 2 cores.\n"
    )
    print(text, flush=True)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["human", "mouse"])
    parser.add_argument("--methods", nargs="+", default=["ours", "lda"], choices=["ours", "lda"])
    parser.add_argument("--lda-epochs", type=int, default=None)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    sections = [
        "# Topic annotation and stability (#33)\n",
        (__doc__ or "").split("\n\n", 1)[1].split("Writes")[0].strip() + "\n",
        speed(),
    ]
    for name in args.datasets:
        for section in run_dataset(name, args.out, args.methods, args.lda_epochs):
            print(section, flush=True)
            sections.append(section)
            (args.out / "topics.md").write_text("\n".join(sections))


if __name__ == "__main__":
    main()
