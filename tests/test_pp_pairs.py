"""``scetm_mnn.pp.find_mnn_pairs`` against a brute-force reference."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy import sparse

from scetm_mnn import pp
from scetm_mnn.pp import _pairs


def reference_pairs(latent: np.ndarray, batches: np.ndarray, k: int) -> set[tuple[int, int]]:
    """All MNN pairs ``(i, j)``, ``i < j``, from full cosine distance matrices."""
    unit = latent / np.linalg.norm(latent, axis=1, keepdims=True)
    dist = 1 - unit @ unit.T
    labels = np.unique(batches)
    found = set()
    for a in labels:
        for b in labels[labels > a]:
            ia, ib = np.flatnonzero(batches == a), np.flatnonzero(batches == b)
            kk = min(k, ia.size, ib.size)
            a_to_b = ib[np.argsort(dist[np.ix_(ia, ib)], axis=1)[:, :kk]]
            b_to_a = ia[np.argsort(dist[np.ix_(ib, ia)], axis=1)[:, :kk]]
            nn_b = {j: set(row) for j, row in zip(ib, b_to_a)}
            for i, row in zip(ia, a_to_b):
                found |= {(min(i, j), max(i, j)) for j in row if i in nn_b[j]}
    return found


def as_set(pairs: sparse.csr_matrix) -> set[tuple[int, int]]:
    rows, cols = sparse.triu(pairs, k=1).nonzero()
    return set(zip(rows.tolist(), cols.tolist()))


@pytest.fixture(scope="module")
def three_batches():
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 3, (4, 8))
    types = rng.integers(0, 4, 150)
    batches = np.repeat(np.array(["b0", "b1", "b2"]), 50)
    shift = rng.normal(0, 0.5, (3, 8))
    latent = centres[types] + shift[np.repeat([0, 1, 2], 50)] + rng.normal(0, 1, (150, 8))
    return latent, batches


def test_matches_brute_force(three_batches):
    latent, batches = three_batches
    pairs = pp.find_mnn_pairs(latent, batches, n_neighbors=5)
    expected = reference_pairs(latent, batches, 5)
    assert len(expected) > 50
    assert as_set(pairs) == expected


def test_matrix_is_symmetric_binary_and_across_batches(three_batches):
    latent, batches = three_batches
    pairs = pp.find_mnn_pairs(latent, batches, n_neighbors=10)
    assert sparse.isspmatrix_csr(pairs) and pairs.shape == (150, 150)
    assert pairs.dtype == np.float32 and set(np.unique(pairs.data)) == {1.0}
    assert (pairs != pairs.T).nnz == 0
    rows, cols = pairs.nonzero()
    assert (batches[rows] != batches[cols]).all()
    counts = _pairs.pair_counts(pairs, batches)
    assert set(counts) == {"b0|b1", "b0|b2", "b1|b2"}
    assert sum(counts.values()) == pairs.nnz // 2
    for key, n in counts.items():
        a, b = key.split("|")
        in_a, in_b = batches == a, batches == b
        assert n == pairs[in_a][:, in_b].nnz


def test_small_batch_reduces_k(three_batches, caplog):
    latent, batches = three_batches
    keep = np.r_[0:50, 50:56]  # b0 complete, 6 cells of b1
    with caplog.at_level(logging.INFO, logger="scetm_mnn"):
        pairs = pp.find_mnn_pairs(latent[keep], batches[keep], n_neighbors=20)
    assert "k reduced from 20 to 6" in caplog.text
    assert as_set(pairs) == reference_pairs(latent[keep], batches[keep], 20)


def test_batch_pairs_with_too_few_pairs_are_skipped(three_batches, caplog):
    latent, batches = three_batches
    keep = np.r_[0:100, 100:102]  # b2 has 2 cells: at most 2 × 2 pairs with each batch
    with caplog.at_level(logging.INFO, logger="scetm_mnn"):
        pairs = pp.find_mnn_pairs(latent[keep], batches[keep], n_neighbors=5, min_pairs=5)
    assert "'b0' and 'b2'" in caplog.text and "skipped" in caplog.text
    assert not (batches[keep][pairs.nonzero()[0]] == "b2").any()
    assert pairs.nnz > 0  # b0/b1 kept
    empty = pp.find_mnn_pairs(latent[keep], batches[keep], n_neighbors=5, min_pairs=10**6)
    assert empty.nnz == 0 and empty.shape == (102, 102)


def test_one_batch_and_bad_shapes(three_batches):
    latent, batches = three_batches
    assert pp.find_mnn_pairs(latent[:50], batches[:50]).nnz == 0
    with pytest.raises(ValueError, match="one batch label per cell"):
        pp.find_mnn_pairs(latent, batches[:10])
    with pytest.raises(ValueError, match="n_neighbors"):
        pp.find_mnn_pairs(latent, batches, n_neighbors=0)


def test_approximate_search_agrees_with_exact(three_batches, monkeypatch):
    """pynndescent (used above EXACT_SEARCH_MAX) finds nearly the exact pairs, seeded."""
    latent, batches = three_batches
    exact = as_set(pp.find_mnn_pairs(latent, batches, n_neighbors=5))
    monkeypatch.setattr(_pairs, "EXACT_SEARCH_MAX", 0)
    approx = pp.find_mnn_pairs(latent, batches, n_neighbors=5, random_state=3)
    again = pp.find_mnn_pairs(latent, batches, n_neighbors=5, random_state=3)
    assert len(as_set(approx) & exact) >= 0.9 * len(exact)
    assert (approx != again).nnz == 0
