"""Mutual nearest neighbours between batches."""

from __future__ import annotations

import logging
from itertools import combinations

import numpy as np
from scipy import sparse

logger = logging.getLogger(__name__)

EXACT_SEARCH_MAX = 20_000
"""Batches up to this size use exact search; larger ones use pynndescent."""


def _knn(reference: np.ndarray, query: np.ndarray, k: int, random_state: int) -> np.ndarray:
    """Indices of the ``k`` nearest rows of ``reference`` for each row of ``query``."""
    if reference.shape[0] <= EXACT_SEARCH_MAX:
        from sklearn.neighbors import NearestNeighbors

        return NearestNeighbors(n_neighbors=k).fit(reference).kneighbors(query)[1]
    from pynndescent import NNDescent

    index = NNDescent(reference, n_neighbors=max(k, 15), random_state=random_state)
    return index.query(query, k=k)[0]


def _mutual(a_to_b: np.ndarray, b_to_a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i in A, j in B) with j among i's neighbours and i among j's (local indices)."""
    n_a, n_b = a_to_b.shape[0], b_to_a.shape[0]
    k_ab, k_ba = a_to_b.shape[1], b_to_a.shape[1]
    ab = sparse.csr_matrix(
        (np.ones(n_a * k_ab, bool), (np.repeat(np.arange(n_a), k_ab), a_to_b.ravel())),
        shape=(n_a, n_b),
    )
    ba = sparse.csr_matrix(
        (np.ones(n_b * k_ba, bool), (b_to_a.ravel(), np.repeat(np.arange(n_b), k_ba))),
        shape=(n_a, n_b),
    )
    both = ab.multiply(ba).tocoo()
    return both.row, both.col


def find_mnn_pairs(
    latent: np.ndarray,
    batches: np.ndarray,
    n_neighbors: int = 20,
    min_pairs: int = 1,
    random_state: int = 0,
) -> tuple[sparse.csr_matrix, dict[str, int]]:
    """Mutual nearest neighbours across every pair of batches.

    For each pair of batches, each cell's ``n_neighbors`` nearest neighbours among the other
    batch's cells are found on the L2-normalized latent (cosine geometry, as in MNN); a
    pair is kept when each cell is among the other's neighbours.

    Parameters
    ----------
    latent
        Cells × dimensions (e.g. PCA).
    batches
        Batch label per cell.
    n_neighbors
        Neighbours per cell; reduced (with a log message) for batches smaller than that.
    min_pairs
        Batch pairs with fewer mutual pairs are skipped, with a log message.
    random_state
        Seed of the approximate search (large batches).

    Returns
    -------
    The symmetric cells × cells pair matrix (1 for each MNN pair) and the number of pairs
    per batch pair (``"a|b" -> count``).
    """
    latent = np.asarray(latent, dtype=np.float32)
    norm = np.linalg.norm(latent, axis=1, keepdims=True)
    latent = latent / np.maximum(norm, 1e-12)
    batches = np.asarray(batches)
    labels = list(dict.fromkeys(batches.tolist()))
    members = {b: np.flatnonzero(batches == b) for b in labels}
    rows, cols, counts = [], [], {}
    for a, b in combinations(labels, 2):
        ia, ib = members[a], members[b]
        k = min(n_neighbors, ia.size, ib.size)
        if k < n_neighbors:
            logger.info("Batches %s/%s: k reduced from %d to %d", a, b, n_neighbors, k)
        a_to_b = _knn(latent[ib], latent[ia], k, random_state)
        b_to_a = _knn(latent[ia], latent[ib], k, random_state)
        i, j = _mutual(a_to_b, b_to_a)
        key = f"{a}|{b}"
        counts[key] = int(i.size)
        if i.size < min_pairs:
            logger.info("Batches %s/%s: %d MNN pairs, skipped", a, b, i.size)
            continue
        rows += [ia[i], ib[j]]
        cols += [ib[j], ia[i]]
    n = batches.size
    if rows:
        r, c = np.concatenate(rows), np.concatenate(cols)
    else:
        r = c = np.zeros(0, dtype=np.int64)
    pairs = sparse.csr_matrix((np.ones(r.size, np.float32), (r, c)), shape=(n, n))
    pairs.sum_duplicates()
    pairs.data[:] = 1.0
    return pairs, counts
