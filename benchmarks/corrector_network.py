"""The corrector's network: the bottleneck default against deepMNN's residual network.

Per data set (Baron human and mouse, ``benchmarks/_common.py``: 2000 batch-aware HVGs) and
seed: ``pp.mnn_correct`` with each network variant, and, on the same 50-component PCA,
Harmony (harmonypy) and the uncorrected PCA. Each embedding (the corrector's latent
``obsm["X_mnn_corrected"]``, Harmony's, the PCA) is scored with the package's own metrics:
kNN batch entropy (30 neighbours) and a Leiden sweep (best and mean ARI, best NMI, bARI at
the best ARI). ``sec`` is the corrector's wall time.

Run: ``.venv/bin/python benchmarks/corrector_network.py [--seeds 0 1 2]
[--out benchmarks/results/corrector_network.md]``
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import harmonypy
import numpy as np
import pandas as pd
import scanpy as sc
import torch
from _common import load_dataset, prepare

from scetm_mnn import pp, tl

VARIANTS: dict[str, dict] = {
    "bottleneck (default, n_hidden=1024)": {},
    "bottleneck, n_hidden=256": {"n_hidden": 256},
    "bottleneck, lr=0.01": {"lr": 0.01},
    "residual (deepMNN)": {"network": "residual"},
}
METRICS = ("entropy", "best_ARI", "mean_ARI", "best_NMI", "bARI_at_best_ARI", "sec")


def _harmony(pca: np.ndarray, obs: pd.DataFrame, seed: int) -> np.ndarray:
    z = np.asarray(
        harmonypy.run_harmony(
            pca.astype(np.float64), obs[["batch"]].astype(str), "batch", random_state=seed
        ).Z_corr
    )
    return z if z.shape[0] == obs.shape[0] else z.T


def _score(adata, rep: str, seed: int) -> dict[str, float]:
    summary = tl.sweep_summary(
        tl.leiden_sweep(adata, rep, "cell_type", "batch", random_state=seed)
    )
    return {
        "entropy": tl.batch_entropy(adata, rep, "batch"),
        **{k: float(summary[k]) for k in METRICS[1:5]},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["human", "mouse"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "corrector_network.md"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.datasets:
        base = prepare(load_dataset(name))
        for seed in args.seeds:
            pca = sc.pp.pca(base.X, n_comps=50, random_state=seed, return_info=False)
            base.obsm["X_pca"] = pca
            base.obsm["X_harmony"] = _harmony(pca, base.obs, seed)
            for label, rep in (("harmony", "X_harmony"), ("pca (uncorrected)", "X_pca")):
                rows.append(
                    {"data": name, "seed": seed, "method": label, **_score(base, rep, seed)}
                )
            for label, kwargs in VARIANTS.items():
                adata = base.copy()
                tic = time.perf_counter()
                pp.mnn_correct(adata, "batch", random_state=seed, **kwargs)
                seconds = time.perf_counter() - tic
                base.obsm["X_variant"] = adata.obsm["X_mnn_corrected"]
                score = _score(base, "X_variant", seed)
                rows.append({"data": name, "seed": seed, "method": label, **score, "sec": seconds})
                print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    summary = df.groupby(["data", "method"], sort=False)[list(METRICS)].agg(["mean", "std"])
    cells = pd.DataFrame(
        {
            m: summary[(m, "mean")].map("{:.3f}".format)
            + " ± "
            + summary[(m, "std")].map("{:.3f}".format)
            for m in METRICS
        }
    )
    text = (
        "# The corrector's network\n\n"
        f"Made by `benchmarks/corrector_network.py`; seeds {args.seeds}; {args.threads} torch "
        f"thread(s), {os.cpu_count()} CPU cores, load average at the end "
        f"{os.getloadavg()[0]:.1f}. Mean ± sd over the seeds.\n\n"
        + cells.reset_index().to_markdown(index=False)
        + "\n"
    )
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
