"""MNN pair recall of approximate searches against exact search, and the sampled default.

Simulated counts (``scetm_mnn.datasets.simulate``: 100 000 cells × 2000 genes, 4 batches,
8 types, seed 0), ``pp.preprocess``, then the 30-component PCA in which ``mnn_correct``
searches (one round, ``k = 20``, so that only the search differs).

1. **Recall on a 20 000-cell subsample** (stratified by batch × type): the MNN pairs of
   each approximate search, against exact (brute-force) search on the same cells.
   ``recall`` is the share of the exact pairs found, ``extra`` the share of the found
   pairs that exact search does not have. Variants: pynndescent as ``find_mnn_pairs`` builds
   it above ``EXACT_SEARCH_MAX`` and with other ``n_neighbors`` / ``diversify_prob`` /
   query ``epsilon``; faiss HNSW (``IndexHNSWFlat``) when ``faiss`` is installed.
2. **The default at 100 000 cells**: exact search over every cell (25 000 per batch) against
   ``mnn_correct``'s default ``max_search_cells=10_000`` (exact search among a seeded
   sample of 10 000 cells per batch): pairs, cells with a partner, the fraction of pairs
   joining different cell types, and seconds.

3. **With ``--full-batches N``: recall against whole batches** (issue #34's measure): for
   every batch pair ``(A, B)``, ``N`` sampled cells of ``A``; a sampled cell ``i`` and a
   cell ``j`` of ``B`` are a pair when ``j`` is among ``i``'s ``k`` nearest cells of the
   whole of ``B`` and ``i`` among ``j``'s ``k`` nearest of the whole of ``A``. Exact search
   against the index ``find_mnn_pairs`` builds for batches above ``EXACT_SEARCH_MAX``
   (``scetm_mnn.pp._ann.build_index``: faiss HNSW when installed, else pynndescent), each
   index built once per batch over all its cells. ``--skip-subsample`` leaves out 1 and 2.

Run: ``.venv/bin/python benchmarks/recall.py [--cells 100000] [--full-batches 2000]
[--skip-subsample] [--out benchmarks/results/recall.md]``
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

import scetm_mnn as sm
from scetm_mnn.pp import _pairs
from scetm_mnn.pp._latent import apply_frozen as _apply
from scetm_mnn.pp._latent import fit_pca

K = 20


def _pairs_set(pairs) -> set[tuple[int, int]]:
    upper = pairs.tocoo()
    return {(int(i), int(j)) for i, j in zip(upper.row, upper.col) if i < j}


def _cross_type(pairs, types: np.ndarray) -> float:
    coo = pairs.tocoo()
    return float(np.mean(types[coo.row] != types[coo.col])) if coo.nnz else float("nan")


def _search(latent, batches, query=None, **kwargs) -> tuple[set, float, object]:
    """MNN pairs with ``_Searcher.query`` replaced by ``query`` (approximate path forced)."""
    original_query, original_max = _pairs._Searcher.query, _pairs.EXACT_SEARCH_MAX
    try:
        if query is not None:
            _pairs._Searcher.query = query
            _pairs.EXACT_SEARCH_MAX = 0
        tic = time.perf_counter()
        pairs = _pairs.find_mnn_pairs(latent, batches, n_neighbors=K, n_rounds=1, **kwargs)
        return _pairs_set(pairs), time.perf_counter() - tic, pairs
    finally:
        _pairs._Searcher.query, _pairs.EXACT_SEARCH_MAX = original_query, original_max


def _pynndescent(n_neighbors: int, diversify_prob: float, epsilon: float):
    def query(self, query, k, approximate):
        from pynndescent import NNDescent

        if self._index is None:
            self._index = NNDescent(
                self.data,
                n_neighbors=n_neighbors,
                diversify_prob=diversify_prob,
                random_state=self.random_state,
            )
        return self._index.query(query, k=k, epsilon=epsilon)[0]

    return query


def _hnsw(m: int, ef_construction: int, ef_search: int):
    def query(self, query, k, approximate):
        import faiss

        if self._index is None:
            self._index = faiss.IndexHNSWFlat(self.data.shape[1], m)
            self._index.hnsw.efConstruction = ef_construction
            self._index.add(np.ascontiguousarray(self.data))
        self._index.hnsw.efSearch = ef_search
        return self._index.search(np.ascontiguousarray(query), k)[1]

    return query


def _header(args) -> str:
    return (
        "# MNN pair recall and the sampled search\n\n"
        f"Made by `benchmarks/recall.py`; {os.cpu_count()} CPU cores, load average at the end "
        f"{os.getloadavg()[0]:.1f}. Simulated {args.cells:,} cells × 2000 genes, 4 batches; "
        f"30-component PCA; one search round, k = {K}.\n\n"
    )


def _mutual_of(sample, a_to_b, neighbours_of_b) -> set[tuple[int, int]]:
    """Pairs (i, j): j among i's neighbours, i among j's (``neighbours_of_b[j]``)."""
    return {
        (int(i), int(j)) for i, row in zip(sample, a_to_b) for j in row if i in neighbours_of_b[j]
    }


def _knn(index, data, queries, k):
    """``k`` nearest rows of ``data`` for ``queries``: exact (``index=None``) or the index's."""
    if index is not None:
        return index.query(queries, k)
    from sklearn.neighbors import NearestNeighbors

    return (
        NearestNeighbors(n_neighbors=k, algorithm="brute")
        .fit(data)
        .kneighbors(queries, return_distance=False)
    )


def _whole_batches(latent, batches, n_sample: int) -> pd.DataFrame:
    """Recall of the approximate index against whole batches (see the docstring, 3)."""
    from scetm_mnn.pp._ann import build_index

    labels = list(dict.fromkeys(batches))
    members = {b: np.flatnonzero(batches == b) for b in labels}
    rng = np.random.default_rng(0)
    indexes, build_s = {}, 0.0
    for b in labels:
        tic = time.perf_counter()
        indexes[b] = build_index(latent[members[b]], K, 0)
        build_s += time.perf_counter() - tic
    rows = []
    for ia, a in enumerate(labels):
        for b in labels[ia + 1 :]:
            sample = np.sort(rng.choice(members[a].size, n_sample, replace=False))
            found = {}
            for name, index_a, index_b in [
                ("exact", None, None),
                ("index", indexes[a], indexes[b]),
            ]:
                tic = time.perf_counter()
                a_to_b = _knn(index_b, latent[members[b]], latent[members[a][sample]], K)
                candidates = np.unique(a_to_b)
                back = _knn(index_a, latent[members[a]], latent[members[b][candidates]], K)
                neighbours_of_b = {int(j): set(row.tolist()) for j, row in zip(candidates, back)}
                found[name] = (
                    _mutual_of(sample, a_to_b, neighbours_of_b),
                    time.perf_counter() - tic,
                )
            exact, index = found["exact"][0], found["index"][0]
            rows.append(
                {
                    "batches": f"{a} – {b}",
                    "cells": f"{members[a].size:,} × {members[b].size:,}",
                    "exact pairs": len(exact),
                    "recall": len(exact & index) / max(len(exact), 1),
                    "extra": len(index - exact) / max(len(index), 1),
                    "exact s": found["exact"][1],
                    "index s": found["index"][1],
                }
            )
            print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    frame.attrs["index"] = type(next(iter(indexes.values()))).__name__
    frame.attrs["build_s"] = build_s
    return frame


def _full_text(args, full: pd.DataFrame) -> str:
    total = full["exact pairs"].sum()
    pooled = float((full["recall"] * full["exact pairs"]).sum() / max(total, 1))
    return (
        f"\n## Against whole batches: {args.full_batches:,} sampled cells per batch pair\n\n"
        f"Index: `{full.attrs['index']}` (`scetm_mnn.pp._ann.build_index`), built once per "
        f"batch over all its cells in {full.attrs['build_s']:.0f} s in all.\n\n"
        + full.round(3).to_markdown(index=False)
        + f"\n\nPooled recall over the batch pairs: {pooled:.3f}.\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--subsample", type=int, default=20_000)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "recall.md"
    )
    parser.add_argument("--full-batches", type=int, help="cells per batch, against whole batches")
    parser.add_argument("--skip-subsample", action="store_true")
    args = parser.parse_args(argv)
    adata = sm.datasets.simulate(
        n_cells=args.cells, n_genes=2000, n_batches=4, n_cell_types=8, random_state=0
    )
    sm.pp.preprocess(adata, n_top_genes=2000, batch_key="batch")
    latent = _apply(fit_pca(adata.X, 30), adata.X)
    batches = adata.obs["batch"].astype(str).to_numpy()
    types = adata.obs["cell_type"].astype(str).to_numpy()

    if args.full_batches:
        full = _whole_batches(latent, batches, args.full_batches)
    if args.skip_subsample:
        text = _header(args) + _full_text(args, full)
        print(text)
        args.out.write_text(text)
        return
    keep = sm.tl.stratified_subsample(adata, ["batch", "cell_type"], args.subsample)
    sub, sub_batches = latent[keep], batches[keep]
    exact, exact_s, _ = _search(sub, sub_batches)
    variants = [("exact (brute force)", None)]
    variants += [
        (f"pynndescent n_neighbors={n}, diversify_prob={p}, epsilon={e}", _pynndescent(n, p, e))
        for n, p, e in [(20, 1.0, 0.1), (30, 1.0, 0.1), (60, 1.0, 0.1), (30, 0.0, 0.3)]
    ]
    try:
        import faiss  # noqa: F401

        variants += [
            (f"faiss HNSW M={m}, efConstruction={c}, efSearch={s}", _hnsw(m, c, s))
            for m, c, s in [(32, 64, 64), (32, 100, 128)]
        ]
    except ImportError:
        pass
    rows = []
    for name, query in variants:
        found, seconds, _ = (
            (exact, exact_s, None) if query is None else _search(sub, sub_batches, query)
        )
        rows.append(
            {
                "search": name,
                "pairs": len(found),
                "recall": len(found & exact) / len(exact),
                "extra": len(found - exact) / max(len(found), 1),
                "seconds": seconds,
            }
        )
        print(rows[-1], flush=True)
    recall = pd.DataFrame(rows)

    rows = []
    for name, max_cells in [
        ("every cell (exact)", None),
        ("max_search_cells=10_000 (default)", 10_000),
    ]:
        _, seconds, pairs = _search(latent, batches, max_cells=max_cells)
        rows.append(
            {
                "search": name,
                "pairs": pairs.nnz // 2,
                "cells with a partner": int((pairs.getnnz(axis=1) > 0).sum()),
                "cross-type fraction": _cross_type(pairs, types),
                "seconds": seconds,
            }
        )
        print(rows[-1], flush=True)
    scale = pd.DataFrame(rows)
    text = (
        _header(args)
        + f"## Recall against exact search ({args.subsample:,}-cell stratified subsample)\n\n"
        + recall.round(3).to_markdown(index=False)
        + f"\n\n## All {args.cells:,} cells: every cell against the default sample\n\n"
        + scale.round(3).to_markdown(index=False)
        + "\n"
        + (_full_text(args, full) if args.full_batches else "")
    )
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
