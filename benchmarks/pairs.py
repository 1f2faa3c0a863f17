"""How often MNN pairs join different cell types, for variants of the pair search.

Baron human and mouse pancreas (``SCETM_MNN_DATA``), preprocessed with
``scetm_mnn.pp.preprocess(..., n_top_genes=2000, batch_key="batch")``; pairs between every
two donors at ``k = 20``. The cell-type labels are used as a diagnostic only: a pair whose
cells have different labels is most likely a wrong pair (a few are between genuinely close
states, e.g. acinar/ductal or activated/quiescent stellate). Variants:

- ``cosine on centred PCA scores (50)``: the search before this change (the rows of the
  centred 50-component PCA latent L2-normalized, then nearest neighbours).
- ``Euclidean on centred PCA scores (50)`` / ``(30)``: the same latent, not normalized.
- ``cosine-normalized expression -> PCA (50), Euclidean``: MNN (Haghverdi et al. 2018) and
  fastMNN: each cell's log-expression divided by its L2 norm, then the PCA.
- ``... , 3 rounds``: ``find_mnn_pairs(..., n_rounds=3)``; rounds 1 and 2 estimate the
  batch offsets from their pairs and the next round searches with them removed.
- ``mnn_correct search at k = 20``: exactly the search ``scetm_mnn.pp.mnn_correct`` runs
  with its defaults (``n_search_comps=30``, ``search_rounds=10``; the rounds stop once the
  offsets have converged), at the k of the other rows;
- ``mnn_correct default``: the same at ``mnn_correct``'s own ``n_neighbors`` (40).

Columns: pairs in all; the fewest pairs of any donor pair; the donor pairs with fewer pairs
than the search before this change; the fraction of pairs joining different cell types.

Run: ``.venv/bin/python benchmarks/pairs.py [--out benchmarks/results/pairs.md]``
"""

from __future__ import annotations

import argparse
import inspect
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from scetm_mnn._rows import Rows
from scetm_mnn.datasets import baron_pancreas
from scetm_mnn.pp import find_mnn_pairs, mnn_correct, preprocess
from scetm_mnn.pp._fitting import search_latent as _search_latent
from scetm_mnn.pp._latent import apply_frozen as _apply
from scetm_mnn.pp._latent import fit_pca
from scetm_mnn.pp._pairs import pair_counts

K = 20
#: ``mnn_correct``'s own k (the last variant searches with it).
DEFAULT_K = inspect.signature(mnn_correct).parameters["n_neighbors"].default
SEED = 0
BEFORE = "cosine on centred PCA scores (50)"


def variants(x: np.ndarray) -> dict[str, tuple[np.ndarray, dict]]:
    """Name → (latent, ``find_mnn_pairs`` keyword arguments)."""
    space = fit_pca(x, 50, random_state=SEED)
    z = _apply(space, x)
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    zc = _apply(fit_pca(unit, 50, random_state=SEED), unit)
    search = _search_latent(x, z, space, 30, SEED)
    return {
        BEFORE: (z, {"normalize": True, "n_rounds": 1}),
        "Euclidean on centred PCA scores (50)": (z, {"n_rounds": 1}),
        "Euclidean on centred PCA scores (30)": (z[:, :30], {"n_rounds": 1}),
        "cosine-normalized expression -> PCA (50), Euclidean": (zc, {"n_rounds": 1}),
        "cosine-normalized expression -> PCA (30), Euclidean, 3 rounds": (
            zc[:, :30],
            {"n_rounds": 3},
        ),
        "Euclidean on centred PCA scores (50), 3 rounds": (z, {"n_rounds": 3}),
        "mnn_correct search at k = 20: Euclidean on centred PCA scores (30), up to 10 rounds": (
            search,
            {"n_rounds": 10},
        ),
        f"mnn_correct default (k = {DEFAULT_K}): the same search": (
            search,
            {"n_rounds": 10, "n_neighbors": DEFAULT_K},
        ),
    }


def measure(species: str, data_dir: str | None) -> list[dict]:
    """One row per variant for one species."""
    adata = baron_pancreas(species, data_dir=data_dir)
    preprocess(adata, n_top_genes=2000, batch_key="batch")
    x = Rows(adata.X, preload=True).data  # dense float32 (Baron is small)
    batches = adata.obs["batch"].astype(str).to_numpy()
    types = adata.obs["cell_type"].astype(str).to_numpy()
    rows, before = [], None
    for name, (latent, kwargs) in variants(x).items():
        tic = time.perf_counter()
        kwargs = {"n_neighbors": K, **kwargs}
        pairs = find_mnn_pairs(latent, batches, random_state=SEED, **kwargs)
        seconds = time.perf_counter() - tic
        upper = sparse.triu(pairs, k=1).tocoo()
        counts = pair_counts(pairs, batches)
        if before is None:
            before = counts
        rows.append(
            {
                "variant": name,
                "species": species,
                "cells": adata.n_obs,
                "n pairs": int(upper.nnz),
                "min pairs per batch pair": min(counts.values()),
                "batch pairs with fewer than before": sum(
                    counts[key] < before[key] for key in counts
                ),
                "cross-type fraction": float(np.mean(types[upper.row] != types[upper.col])),
                "search s": seconds,
            }
        )
        print(
            f"{species:5s} {name:70s} {rows[-1]['n pairs']:6d} pairs, "
            f"cross-type {rows[-1]['cross-type fraction']:.4f}",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="default: $SCETM_MNN_DATA")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    rows = [row for species in ("human", "mouse") for row in measure(species, args.data_dir)]
    table = pd.DataFrame(rows).round({"cross-type fraction": 4, "search s": 1})
    markdown = table.to_markdown(index=False)
    print(markdown)
    if args.out is not None:
        args.out.write_text(
            f"MNN pairs at k = {K} on the Baron pancreas (the last row of each species at "
            f"`mnn_correct`'s own k = {DEFAULT_K}; `benchmarks/pairs.py`; "
            f"cross-type fraction: pairs whose cells have different cell-type labels).\n\n"
            + markdown
            + "\n"
        )


if __name__ == "__main__":
    main()
