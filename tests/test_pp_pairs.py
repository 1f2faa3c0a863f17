"""``scetm_mnn.pp.find_mnn_pairs`` against a brute-force reference."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from scetm_mnn import pp
from scetm_mnn.pp import _pairs


def reference_pairs(
    latent: np.ndarray, batches: np.ndarray, k: int, cosine: bool = False
) -> set[tuple[int, int]]:
    """All MNN pairs ``(i, j)``, ``i < j``, from full Euclidean (or cosine) distance matrices."""
    if cosine:
        unit = latent / np.linalg.norm(latent, axis=1, keepdims=True)
        dist = 1 - unit @ unit.T
    else:
        dist = np.linalg.norm(latent[:, None] - latent[None], axis=-1)
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
    """One round is plain MNN: Euclidean by default, cosine with ``normalize=True``."""
    latent, batches = three_batches
    pairs = pp.find_mnn_pairs(latent, batches, n_neighbors=5, n_rounds=1)
    expected = reference_pairs(latent, batches, 5)
    assert len(expected) > 50
    assert as_set(pairs) == expected
    cosine = pp.find_mnn_pairs(latent, batches, n_neighbors=5, n_rounds=1, normalize=True)
    assert as_set(cosine) == reference_pairs(latent, batches, 5, cosine=True) != expected


def test_later_rounds_search_with_the_batch_offsets_removed(three_batches):
    """Round 2 is plain MNN on the latent minus the least-squares batch offsets of round 1."""
    latent, batches = three_batches
    first = pp.find_mnn_pairs(latent, batches, n_neighbors=5, n_rounds=1)
    codes, _ = pd.factorize(batches)
    rows, cols = sparse.triu(first, k=1).nonzero()
    offsets = _pairs._batch_offsets(latent, codes, 3, rows, cols)

    # The offsets solve the least-squares problem: no translation of them fits better.
    def cost(o):
        return np.sum((latent[rows] - o[codes[rows]] - latent[cols] + o[codes[cols]]) ** 2)

    rng = np.random.default_rng(0)
    for _ in range(5):
        assert cost(offsets) <= cost(offsets + rng.normal(0, 0.05, offsets.shape))
    np.testing.assert_allclose(offsets.sum(axis=0), 0, atol=1e-3)  # no common translation
    shifted = (latent - offsets[codes]).astype(np.float32)
    second = pp.find_mnn_pairs(latent, batches, n_neighbors=5, n_rounds=2)
    assert as_set(second) == reference_pairs(shifted, batches, 5)


def test_populations_on_one_ray_are_not_paired():
    """Two types on one ray from the mean (one expresses a programme 3× more strongly):
    cosine distance on centred scores sees one population and pairs them; Euclidean does
    not."""
    rng = np.random.default_rng(0)
    radius = np.array([1.0, 3.0, -4.0])  # types 0 and 1 on one ray, type 2 opposite
    types = np.tile(np.repeat([0, 1, 2], 40), 2)
    batches = np.repeat(["a", "b"], 120)
    direction = np.eye(6)[0]
    # Noise proportional to the radius: the same angular spread for every type.
    latent = radius[types, None] * (direction + rng.normal(0, 0.1, (240, 6)))
    latent -= latent.mean(axis=0)

    def cross_type(pairs):
        rows, cols = sparse.triu(pairs, k=1).nonzero()
        assert rows.size > 250
        return np.mean(types[rows] != types[cols])

    assert cross_type(pp.find_mnn_pairs(latent, batches, n_neighbors=5, normalize=True)) > 0.2
    assert cross_type(pp.find_mnn_pairs(latent, batches, n_neighbors=5)) == 0


def test_offset_rounds_pair_whole_populations_not_their_facing_edges():
    """Batch b is a's three populations shifted by 3 (a blob's radius): round 1 pairs the
    facing edges, whose vectors capture little of the shift; later rounds pair more cells
    and their vectors approach the shift."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 8, (3, 5))
    types = np.tile(np.repeat([0, 1, 2], 100), 2)
    batches = np.repeat(["a", "b"], 300)
    shift = np.r_[3.0, 0, 0, 0, 0]
    latent = centres[types] + rng.normal(0, 1, (600, 5)) + (batches == "b")[:, None] * shift
    captured, n_paired = [], []
    for n_rounds in (1, 3, 8):
        rows, cols = sparse.triu(
            pp.find_mnn_pairs(latent, batches, 10, n_rounds=n_rounds)
        ).nonzero()
        assert (batches[rows] == "a").all() and (types[rows] == types[cols]).all()
        captured.append(np.mean((latent[cols] - latent[rows]) @ shift) / (shift @ shift))
        n_paired.append(np.unique(np.r_[rows, cols]).size)
    assert captured[0] < 0.4 and captured[1] > 0.55 and captured[2] > 0.8  # 0.32, 0.63, 0.86
    assert n_paired[0] < n_paired[1] < n_paired[2]


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
        pairs = pp.find_mnn_pairs(latent[keep], batches[keep], n_neighbors=20, n_rounds=1)
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
    with pytest.raises(ValueError, match="n_rounds"):
        pp.find_mnn_pairs(latent, batches, n_rounds=0)


@pytest.mark.parametrize("index", ["faiss", "pynndescent"])
def test_approximate_search_agrees_with_exact(three_batches, monkeypatch, index):
    """The index used above EXACT_SEARCH_MAX finds nearly the exact pairs, the same each run.

    faiss HNSW when it is installed (it is, in the dev extra), else pynndescent, seeded,
    with a warning that names the way to the better index.
    """
    latent, batches = three_batches
    exact = as_set(pp.find_mnn_pairs(latent, batches, n_neighbors=5))
    monkeypatch.setattr(_pairs, "EXACT_SEARCH_MAX", 0)
    if index == "faiss":
        pytest.importorskip("faiss")
        found = [
            pp.find_mnn_pairs(latent, batches, n_neighbors=5, random_state=s) for s in (3, 3, 4)
        ]
        floor = 0.95
    else:
        monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss fails
        with pytest.warns(UserWarning, match=r"pynndescent.*scetm-mnn\[faiss\]"):
            found = [pp.find_mnn_pairs(latent, batches, n_neighbors=5, random_state=3)] * 2
        found.append(pp.find_mnn_pairs(latent, batches, n_neighbors=5, random_state=3))
        floor = 0.9
    assert len(as_set(found[0]) & exact) >= floor * len(exact)
    assert (found[0] != found[1]).nnz == 0 and (found[0] != found[2]).nnz == 0


def test_max_cells_searches_a_seeded_sample(three_batches):
    """With max_cells, pairs are the exact MNN among one seeded sample per batch."""
    latent, batches = three_batches
    sampled = pp.find_mnn_pairs(latent, batches, n_neighbors=5, max_cells=30, random_state=1)
    again = pp.find_mnn_pairs(latent, batches, n_neighbors=5, max_cells=30, random_state=1)
    assert (sampled != again).nnz == 0
    paired = np.flatnonzero(sampled.getnnz(axis=1) > 0)
    for batch in np.unique(batches):
        assert np.isin(paired, np.flatnonzero(np.asarray(batches) == batch)).sum() <= 30
    unlimited = pp.find_mnn_pairs(latent, batches, n_neighbors=5, max_cells=10**6)
    assert (unlimited != pp.find_mnn_pairs(latent, batches, n_neighbors=5)).nnz == 0
    with pytest.raises(ValueError, match="max_cells"):
        pp.find_mnn_pairs(latent, batches, max_cells=0)
