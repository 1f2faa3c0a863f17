"""Approximate nearest neighbours for the pair search of batches too large to search exactly.

Used only when a batch pair exceeds ``EXACT_SEARCH_MAX`` cell pairs, i.e. with
``max_search_cells=None`` on batches of more than 50,000 cells (the default searches a
sample of 10,000 per batch exactly). faiss's HNSW index (``IndexHNSWFlat``) finds 0.98
of the exact MNN pairs at a million cells (``benchmarks/results/recall.md``) and is used
when ``faiss`` is installed (``pip install "scetm-mnn[faiss]"``); otherwise pynndescent,
which finds 0.72–0.78 of them, with a warning that says so.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

logger = logging.getLogger(__name__)

HNSW_M = 32
"""Links per node of the HNSW graph."""
HNSW_EF_CONSTRUCTION = 100
"""Candidates kept while the graph is built."""
HNSW_EF_SEARCH = 512
"""Candidates kept per query (at least twice ``k``). Against whole batches of 250,000
simulated cells (a million in all, ``benchmarks/results/recall.md``) 128 found 0.794 of the
exact MNN pairs, 512 found 0.979 (about 1 ms per query on one core), 2048 0.997 (4 ms)."""


class _HNSW:
    """faiss HNSW over ``data``, built by one thread: the same graph on every run."""

    def __init__(self, data: np.ndarray):
        import faiss

        self.index = faiss.IndexHNSWFlat(data.shape[1], HNSW_M)
        self.index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # parallel insertion makes a different graph each run
        try:
            self.index.add(np.ascontiguousarray(data, dtype=np.float32))
        finally:
            faiss.omp_set_num_threads(threads)

    def query(self, query: np.ndarray, k: int) -> np.ndarray:
        self.index.hnsw.efSearch = max(HNSW_EF_SEARCH, 2 * k)
        _, neighbours = self.index.search(np.ascontiguousarray(query, dtype=np.float32), k)
        return neighbours


class _NNDescent:
    """A seeded pynndescent index over ``data``."""

    def __init__(self, data: np.ndarray, k: int, random_state: int):
        from pynndescent import NNDescent

        self.index = NNDescent(data, n_neighbors=max(k, 15), random_state=random_state)

    def query(self, query: np.ndarray, k: int) -> np.ndarray:
        return self.index.query(query, k=k)[0]


def build_index(data: np.ndarray, k: int, random_state: int) -> _HNSW | _NNDescent:
    """An index over the rows of ``data`` whose ``query(rows, k)`` gives neighbour indices.

    faiss HNSW when ``faiss`` can be imported (``random_state`` is then not needed: the
    graph is built deterministically), else pynndescent seeded with ``random_state``.
    """
    try:
        import faiss  # noqa: F401
    except ImportError:
        warnings.warn(
            f"Searching {data.shape[0]} cells approximately with pynndescent, which finds "
            "about 75 % of the exact MNN pairs; install faiss-cpu "
            '(pip install "scetm-mnn[faiss]") for an HNSW index that finds 98 %, or '
            "keep max_search_cells (the default searches a sample exactly).",
            UserWarning,
            stacklevel=4,
        )
        logger.info("Building a pynndescent index over %d cells.", data.shape[0])
        return _NNDescent(data, k, random_state)
    logger.info("Building a faiss HNSW index over %d cells.", data.shape[0])
    return _HNSW(data)
