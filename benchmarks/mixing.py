"""Batch mixing and cell-type recovery of the corrector against Harmony, over simulate settings.

Per setting (:data:`SETTINGS`, all :func:`scetm_mnn.datasets.simulate` with
:data:`N_CELLS` cells × :data:`N_GENES` genes and 5 cell types) and seed (the simulation's
``random_state`` and every method's seed): ``_common.prepare`` (log-normalized, all genes
kept), then

- ``pca``: the uncorrected 50-component PCA (``_peers.pca``);
- ``harmony``: harmonypy on that PCA (``_peers.harmony``);
- ``mnn``: ``pp.mnn_correct`` at its defaults, scored on its latent
  ``obsm["X_mnn_corrected"]``.

Each embedding is scored by ``_common.evaluate`` (no scib): kNN batch entropy (30
neighbours, normalised to [0, 1]) and the best and mean ARI to the cell types over the
Leiden sweep. Settings with a batch-specific type also report that type's kNN purity (the
mean fraction of its cells' 15 nearest neighbours of the same type): an over-correction
that merges it into another type lowers it. A batch-specific type lowers the entropy of
every method (its cells have no other batch to mix with), so compare methods within a
setting.

Every setting × seed appends a row per method to ``--csv`` (a rerun skips those done);
the markdown table is mean ± sd over the seeds.

Run: ``.venv/bin/python benchmarks/mixing.py [--settings base strong] [--seeds 0 1 2 3 4]
[--out benchmarks/results/mixing.md]``
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _common import BATCH_KEY, LABEL_KEY, evaluate, prepare, run_methods, timed
from _peers import harmony, pca
from threadpoolctl import threadpool_limits

from scetm_mnn import pp
from scetm_mnn.datasets import simulate
from scetm_mnn.tl._integration import _knn_batch_counts

N_CELLS = 2500
N_GENES = 1000
PURITY_NEIGHBOURS = 15
PROPORTIONS = (0.5, 0.2, 0.15, 0.1, 0.05)
#: Setting name → ``simulate`` keyword arguments (besides cells, genes and seed).
SETTINGS: dict[str, dict] = {
    "base": {"n_batches": 4, "batch_effect": 0.5},
    "strong": {"n_batches": 4, "batch_effect": 1.0},
    "type_specific": {"n_batches": 4, "batch_effect": 0.5, "type_batch_effect": 0.5},
    "unbalanced": {"n_batches": 4, "batch_effect": 0.5, "type_proportions": PROPORTIONS},
    "batches2": {"n_batches": 2, "batch_effect": 0.5},
    "batches8": {"n_batches": 8, "batch_effect": 0.5},
    # As tests/test_batch_specific.py: type_4 in batch_0 only.
    "one_batch_type": {
        "n_batches": 3,
        "batch_effect": 0.5,
        "type_batch_effect": 0.2,
        "batch_specific_types": {4: 0},
    },
}
NOTES = """\
Harmony is run at harmonypy's defaults (`_peers.harmony`). Where its entropy is 0 and its
ARI equals the PCA's, it left the batches as they were: in these simulations the batches
are wholly separate in the PCA (its entropy is 0), Harmony's first clustering is then
batch-pure, and its diversity penalty at the default `theta=2` does not pull the clusters
together (measured on `batches2` and `strong`, seed 0: `lamb=1` or 30 iterations change
nothing; `theta=4` on `batches2` gives entropy 0.93 and best ARI 1.0). The defaults were
not tuned for either method.
"""
COLUMNS = ("best ARI", "mean ARI", "batch entropy", "specific purity", "time s")


def mnn(adata, seed: int = 0) -> tuple[np.ndarray, float]:
    """``pp.mnn_correct`` at its defaults (on a copy); its latent ``X_mnn_corrected``."""
    return timed(
        lambda: pp.mnn_correct(adata, BATCH_KEY, random_state=seed, copy=True).obsm[
            "X_mnn_corrected"
        ]
    )


METHODS = {"pca": pca, "harmony": harmony, "mnn": mnn}


def specific_purity(adata, key: str) -> float:
    """Mean kNN same-type fraction of the cells of batch-specific types (NaN if none)."""
    specific = adata.uns["simulation"].get("batch_specific_types", {})
    if not specific:
        return float("nan")
    codes = adata.obs[LABEL_KEY].cat.codes.to_numpy()
    counts = _knn_batch_counts(adata.obsm[key], codes, PURITY_NEIGHBOURS)
    types = adata.obs[LABEL_KEY].cat.categories
    own = [np.flatnonzero(codes == types.get_loc(t)) for t in specific]
    cells = np.concatenate(own)
    return float((counts[cells, codes[cells]] / PURITY_NEIGHBOURS).mean())


def run_one(setting: str, seed: int) -> pd.DataFrame:
    """The methods' scores on one setting and seed."""
    adata = prepare(
        simulate(n_cells=N_CELLS, n_genes=N_GENES, random_state=seed, **SETTINGS[setting])
    )
    seconds = run_methods(adata, METHODS, seed)
    table, _ = evaluate(adata, list(METHODS), seconds, seed=seed, scib=False)
    table["specific purity"] = [specific_purity(adata, f"X_{name}") for name in METHODS]
    return table.assign(setting=setting, seed=seed)[["setting", "seed", "method", *COLUMNS]]


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd over the seeds per setting and method (purity only where it applies)."""
    grouped = rows.groupby(["setting", "method"], sort=False)
    mean, sd = grouped[list(COLUMNS)].mean(), grouped[list(COLUMNS)].std()
    cells = {
        column: [
            "–" if np.isnan(m) else f"{m:.3f} ± {s:.3f}" if column != "time s" else f"{m:.1f}"
            for m, s in zip(mean[column], sd[column])
        ]
        for column in COLUMNS
    }
    out = pd.DataFrame(cells, index=mean.index).reset_index()
    out.insert(2, "seeds", grouped.size().to_numpy())
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    results = Path(__file__).parent / "results"
    parser.add_argument("--out", type=Path, default=results / "mixing.md")
    parser.add_argument("--csv", type=Path, default=results / "mixing.csv")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    done = (
        pd.read_csv(args.csv) if args.csv.exists() else pd.DataFrame(columns=["setting", "seed"])
    )
    with threadpool_limits(limits=1):
        # Seeds outermost: a run cut short still has every setting on its first seeds.
        for seed in args.seeds:
            for setting in args.settings:
                if ((done["setting"] == setting) & (done["seed"] == seed)).any():
                    continue
                tic = time.perf_counter()
                done = pd.concat([done, run_one(setting, seed)], ignore_index=True)
                done.to_csv(args.csv, index=False)
                print(f"{setting} seed {seed}: {time.perf_counter() - tic:.0f} s", flush=True)
    rows = done[done["setting"].isin(args.settings) & done["seed"].isin(args.seeds)]
    text = (
        "# Batch mixing: the corrector against Harmony on simulated settings\n\n"
        f"Made by `benchmarks/mixing.py`: `datasets.simulate` ({N_CELLS} cells × {N_GENES} "
        "genes, 5 cell types, `random_state` = seed) per setting below; "
        "`_common.prepare`; uncorrected 50-component PCA, Harmony on it, and "
        "`pp.mnn_correct` at its defaults (scored on `obsm['X_mnn_corrected']`). "
        "kNN batch entropy (30 neighbours), best and mean ARI over the Leiden sweep, and "
        f"for a batch-specific type its {PURITY_NEIGHBOURS}-NN purity. Mean ± sd over "
        f"seeds {sorted(rows['seed'].unique().tolist())}; 1 torch/BLAS thread, "
        f"{os.cpu_count()} CPU cores (shared), load average at the end "
        f"{os.getloadavg()[0]:.1f}. `time s` is the method's wall time (mean).\n\n"
        "Settings (`simulate` arguments besides cells, genes and seed):\n\n"
        + "\n".join(f"- `{name}`: `{SETTINGS[name]}`" for name in args.settings)
        + "\n\n"
        + summarise(rows).to_markdown(index=False)
        + "\n\n"
        + NOTES
    )
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
