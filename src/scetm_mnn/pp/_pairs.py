"""Mutual nearest neighbours (MNN) between batches."""

from __future__ import annotations

import logging
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import sparse

from ._ann import build_index
from ._distributed_fit import FitEngine

logger = logging.getLogger(__name__)

EXACT_SEARCH_MAX = 50_000**2
"""Batch pairs with ``n_a × n_b`` up to this use exact search; larger ones an approximate index.

Exact (brute-force, multithreaded) search of two 25 000-cell batches in a 50-dimensional
PCA takes about 11 s on 2 cores, and pynndescent about 58 s (numba compilation included)
while finding only 57 % of the exact pairs on simulated data; exact search is preferred
until its quadratic cost overtakes that. Above it, ``scetm_mnn.pp._ann`` (faiss HNSW when
installed).
"""

SEARCH_WORKING_MEMORY_MB = 64
"""Memory of one block of the exact search's query × batch distance matrix (MiB).

scikit-learn splits the queries into chunks whose distances fit in this; its default,
1 GiB, would make the search the largest allocation of ``mnn_correct``.
"""

MIN_PAIRS = 5
"""Default of ``min_pairs``: batch pairs with fewer MNN pairs are skipped."""


class _Searcher:
    """k-nearest-neighbour search among the cells of one batch.

    Exact (scikit-learn brute force) by default; ``approximate`` queries use an index
    (:func:`scetm_mnn.pp._ann.build_index`: faiss HNSW when installed, else a seeded
    pynndescent), built on first use and then reused for every other batch.
    """

    def __init__(self, data: np.ndarray, random_state: int):
        self.data = data
        self.random_state = random_state
        self._index = None

    @property
    def size(self) -> int:
        return self.data.shape[0]

    def query(self, query: np.ndarray, k: int, approximate: bool) -> np.ndarray:
        """Indices (into this batch) of the ``k`` nearest cells of each row of ``query``."""
        if not approximate:
            from sklearn import config_context
            from sklearn.neighbors import NearestNeighbors

            search = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(self.data)
            with config_context(working_memory=SEARCH_WORKING_MEMORY_MB):  # query chunks
                return search.kneighbors(query, return_distance=False)
        if self._index is None:
            self._index = build_index(self.data, k, self.random_state)
        return self._index.query(query, k)


def _mutual(a_to_b: np.ndarray, b_to_a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)`` (local indices) with ``j`` among ``i``'s neighbours and vice versa."""
    n_a, n_b = a_to_b.shape[0], b_to_a.shape[0]
    forward = sparse.csr_matrix(
        (
            np.ones(a_to_b.size, dtype=np.int8),
            (np.repeat(np.arange(n_a), a_to_b.shape[1]), a_to_b.ravel()),
        ),
        shape=(n_a, n_b),
    )
    backward = sparse.csr_matrix(
        (
            np.ones(b_to_a.size, dtype=np.int8),
            (b_to_a.ravel(), np.repeat(np.arange(n_b), b_to_a.shape[1])),
        ),
        shape=(n_a, n_b),
    )
    both = forward.multiply(backward).tocoo()
    return both.row, both.col


OFFSET_SAMPLE = 5000
"""Cells per batch (at most, a seeded subsample) searched in the rounds that only estimate
the batch offsets; the last round always searches all cells."""

OFFSET_TOL = 0.01
"""The offset rounds stop once no batch offset changed by more than this fraction of the
largest offset."""

_OFFSET_RIDGE = 1e-3
"""Ridge on the batch offsets: fixes their common translation (they sum to about zero)
and leaves a batch without pairs unshifted; negligible next to ``min_pairs`` pairs."""


def _batch_offsets(
    latent: np.ndarray, codes: np.ndarray, n_batches: int, rows: np.ndarray, cols: np.ndarray
) -> np.ndarray:
    """Per-batch translations that best superimpose paired cells (least squares).

    Minimizes ``Σ_pairs ‖(z_i − o_{b(i)}) − (z_j − o_{b(j)})‖² + ε Σ_b ‖o_b‖²``: the normal
    equations are ``(L + εI) o = r`` with ``L`` the Laplacian of the batch graph weighted by
    pair counts, an ``n_batches × n_batches`` system.
    """
    diff = latent[rows].astype(np.float64) - latent[cols]
    bi, bj = codes[rows], codes[cols]
    laplacian = np.zeros((n_batches, n_batches))
    np.add.at(laplacian, (bi, bi), 1.0)
    np.add.at(laplacian, (bj, bj), 1.0)
    np.add.at(laplacian, (bi, bj), -1.0)
    np.add.at(laplacian, (bj, bi), -1.0)
    rhs = np.zeros((n_batches, latent.shape[1]))
    np.add.at(rhs, bi, diff)
    np.add.at(rhs, bj, -diff)
    return np.linalg.solve(laplacian + _OFFSET_RIDGE * np.eye(n_batches), rhs)


def find_mnn_pairs(
    latent: np.ndarray,
    batches: np.ndarray | pd.Series,
    n_neighbors: int = 20,
    random_state: int = 0,
    *,
    min_pairs: int = MIN_PAIRS,
    n_rounds: int = 10,
    normalize: bool = False,
    max_cells: int | None = None,
) -> sparse.csr_matrix:
    """Mutual nearest neighbours across every pair of batches.

    For each pair of batches ``(A, B)``, the ``n_neighbors`` nearest cells of ``B`` are
    found for every cell of ``A`` and vice versa, by Euclidean distance in ``latent``.
    ``(i, j)`` is a pair when ``j`` is among ``i``'s neighbours and ``i`` among ``j``'s.
    Batch pairs with up to ``EXACT_SEARCH_MAX`` (50 000²) cell pairs are searched exactly;
    larger ones with an index per batch: faiss HNSW when ``faiss`` is installed
    (``scetm-mnn[faiss]``; 0.98 of the exact pairs at a million cells), else a seeded
    :class:`pynndescent.NNDescent` (0.72–0.78; with a warning).

    With ``n_rounds > 1``, each round but the last estimates every batch's offset from the
    pairs it found (the per-batch translations that superimpose paired cells best, by least
    squares) and the next round searches with those offsets removed. Pairs found between
    shifted batches join the facing edges of each population, so their vectors
    under-estimate the shift (and more so the denser the data); each round removes part of
    what is left, and once the offsets are removed, mutual neighbours match cells of the
    same state across whole populations, and more cells find partners. The offset rounds
    search at most ``OFFSET_SAMPLE`` (5 000) cells per batch, one seeded subsample, and stop
    early once no offset changes by more than ``OFFSET_TOL`` (1 %) of the largest; the last
    round searches all cells (or ``max_cells`` per batch). The offsets only steer the
    search: the pairs are cells.

    With ``max_cells``, each batch larger than that is searched through one seeded
    subsample of ``max_cells`` cells: the pairs are then the exact mutual nearest
    neighbours among the sampled cells, and the cost is bounded by the sample, not the
    batch (:func:`~scetm_mnn.pp.mnn_correct` trains on at most ``max_epochs ×
    pairs_per_epoch`` pairs, far fewer than a large data set has).

    ``latent`` is searched as given, typically centred PCA scores of the log-normalized
    expression (as :func:`~scetm_mnn.pp.mnn_correct` does). Do not L2-normalize centred
    scores: that maps populations lying on one ray from the global mean (e.g. one type
    expressing a programme more strongly than another) onto the same point. MNN
    (Haghverdi et al. 2018) and fastMNN cosine-normalize the *expression* before the PCA
    instead.

    Parameters
    ----------
    latent
        Cells × dimensions, e.g. a PCA of the log-normalized expression.
    batches
        Batch label of each cell.
    n_neighbors
        Neighbours per cell. For a batch pair with a batch smaller than that, ``k`` is
        reduced to the smaller batch's size (logged).
    random_state
        Seed of the approximate search and of the subsample of the offset rounds.
    min_pairs
        Batch pairs with fewer MNN pairs than this are skipped (logged).
    n_rounds
        Most search rounds, the last included; ``1`` searches once, without estimating
        offsets.
    normalize
        L2-normalize the rows of ``latent`` first (cosine distance). Off by default; see
        above.
    max_cells
        Most cells per batch searched (a seeded subsample); ``None`` searches all.

    Returns
    -------
    Symmetric ``n_cells × n_cells`` CSR matrix (float32) with 1 at ``(i, j)`` and ``(j, i)``
    for each MNN pair of the last round. Only cells of different batches are ever paired.

    Examples
    --------
    >>> import numpy as np
    >>> import scetm_mnn as sm
    >>> latent = np.array([[0.0, 0.0], [5.0, 5.0], [0.1, 0.0], [5.1, 5.0]])
    >>> batches = np.array(["a", "a", "b", "b"])
    >>> pairs = sm.pp.find_mnn_pairs(latent, batches, n_neighbors=1, min_pairs=1)
    >>> sorted((int(i), int(j)) for i, j in zip(*pairs.nonzero()))  # twins across batches
    [(0, 2), (1, 3), (2, 0), (3, 1)]
    """
    return search_pairs(
        latent, batches, n_neighbors, random_state, min_pairs, n_rounds, normalize, max_cells
    )


def search_pairs(
    latent: np.ndarray,
    batches: np.ndarray | pd.Series,
    n_neighbors: int,
    random_state: int,
    min_pairs: int,
    n_rounds: int,
    normalize: bool,
    max_cells: int | None,
    engine: FitEngine | None = None,
) -> sparse.csr_matrix:
    """:func:`find_mnn_pairs`, its batch pairs shared among the ``engine``'s processes.

    Each round's batch pairs are dealt to the ranks by their cost (``n_a × n_b``) and
    their pairs gathered, and rank 0's batch offsets are every rank's, so every rank
    returns the matrix one process finds.
    """
    engine = engine or FitEngine()
    latent = np.asarray(latent, dtype=np.float32)
    batches = np.asarray(batches)
    if latent.ndim != 2 or latent.shape[0] != batches.shape[0]:
        raise ValueError(
            f"latent must be cells × dimensions with one batch label per cell; got latent "
            f"of shape {latent.shape} and {batches.shape[0]} batch labels."
        )
    if n_neighbors < 1:
        raise ValueError(f"n_neighbors must be at least 1, not {n_neighbors}.")
    if n_rounds < 1:
        raise ValueError(f"n_rounds must be at least 1, not {n_rounds}.")
    if max_cells is not None and max_cells < 1:
        raise ValueError(f"max_cells must be at least 1 (or None), not {max_cells}.")
    if normalize:
        latent = latent / np.maximum(np.linalg.norm(latent, axis=1, keepdims=True), 1e-12)
    codes, uniques = pd.factorize(batches)
    labels = uniques.tolist()
    members = {label: np.flatnonzero(codes == c) for c, label in enumerate(labels)}
    offsets = np.zeros((len(labels), latent.shape[1]), dtype=np.float32)
    rng = np.random.default_rng(random_state)
    sample = {label: _subsample(idx, OFFSET_SAMPLE, rng) for label, idx in members.items()}
    if max_cells is not None:
        members = {label: _subsample(idx, max_cells, rng) for label, idx in members.items()}
    for round_ in range(1, n_rounds):
        row, col = _search(
            latent, sample, offsets, n_neighbors, random_state, min_pairs, False, engine
        )
        if row.size == 0:
            logger.info("Round %d found no MNN pairs; the batch offsets stay as they are.", round_)
            break
        new = _batch_offsets(latent, codes, len(labels), row, col).astype(np.float32)
        new = engine.broadcast(new)  # rank 0's: every rank takes the same rounds
        change = float(np.linalg.norm(new - offsets, axis=1).max())
        offsets = new
        norms = np.linalg.norm(offsets, axis=1)
        logger.info(
            "Round %d: %d MNN pairs; batch offsets of norm %s (changed by %.3g).",
            round_,
            row.size,
            ", ".join(f"{v:.3g}" for v in norms),
            change,
        )
        if change <= OFFSET_TOL * norms.max():
            break
    row, col = _search(
        latent, members, offsets, n_neighbors, random_state, min_pairs, True, engine
    )
    n = batches.shape[0]
    rows, cols = np.concatenate([row, col]), np.concatenate([col, row])
    pairs = sparse.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, cols)), shape=(n, n))
    pairs.sum_duplicates()
    pairs.data[:] = 1.0
    return pairs


def _subsample(idx: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``idx`` itself when it has at most ``size`` entries, else a sorted random sample."""
    return idx if idx.size <= size else np.sort(rng.choice(idx, size, replace=False))


def _search(
    latent: np.ndarray,
    members: dict,
    offsets: np.ndarray,
    n_neighbors: int,
    random_state: int,
    min_pairs: int,
    verbose: bool,
    engine: FitEngine,
) -> tuple[np.ndarray, np.ndarray]:
    """One MNN search among the ``members`` of each batch, with ``offsets`` removed.

    Returns the pairs ``(row, col)`` as global cell indices, each pair once, in the order
    of the batch pairs whichever rank searched them. ``verbose`` logs reduced ``k`` and
    skipped batch pairs at INFO/WARNING (else at DEBUG).
    """
    labels = list(members)
    searchers = {label: _Searcher(latent[members[label]], random_state) for label in labels}
    info = logging.INFO if verbose else logging.DEBUG
    warning = logging.WARNING if verbose else logging.DEBUG
    jobs = list(combinations(enumerate(labels), 2))
    mine = engine.assign([members[a].size * members[b].size for (_, a), (_, b) in jobs])
    found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for job, ((ia, a), (ib, b)) in enumerate(jobs):
        if not mine[job]:
            continue
        in_a, in_b = members[a], members[b]
        k = min(n_neighbors, in_a.size, in_b.size)
        if k < n_neighbors:
            logger.log(
                info,
                "Batches %r (%d cells) and %r (%d cells): k reduced from %d to %d, the size "
                "of the smaller batch.",
                a,
                in_a.size,
                b,
                in_b.size,
                n_neighbors,
                k,
            )
        approximate = in_a.size * in_b.size > EXACT_SEARCH_MAX
        # (z_i − o_a) − (z_j − o_b) = (z_i − o_a + o_b) − z_j: translate the queries only.
        shift = offsets[ib] - offsets[ia]
        a_to_b = searchers[b].query(latent[in_a] + shift, k, approximate)
        b_to_a = searchers[a].query(latent[in_b] - shift, k, approximate)
        i, j = _mutual(a_to_b, b_to_a)
        if i.size < min_pairs:
            logger.log(
                warning,
                "Batches %r and %r: only %d MNN pairs (< min_pairs=%d); this batch pair is "
                "skipped.",
                a,
                b,
                i.size,
                min_pairs,
            )
            continue
        logger.log(info, "Batches %r and %r: %d MNN pairs.", a, b, i.size)
        found[job] = (in_a[i], in_b[j])
    found = engine.gather(found)
    rows = [found[job][0] for job in sorted(found)]
    cols = [found[job][1] for job in sorted(found)]
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(rows), np.concatenate(cols)


def pair_counts(pairs: sparse.spmatrix, batches: np.ndarray) -> dict[str, int]:
    """Number of MNN pairs for every pair of batches, keyed ``"<batch_a>|<batch_b>"``.

    Batch pairs without pairs (e.g. skipped ones) count 0. A ``/`` in a batch name becomes
    ``_`` in the key, which keeps the dict writable to h5ad.
    """
    codes, labels = pd.factorize(np.asarray(batches))
    n = len(labels)
    upper = sparse.triu(pairs, k=1).tocoo()
    lo = np.minimum(codes[upper.row], codes[upper.col])
    hi = np.maximum(codes[upper.row], codes[upper.col])
    found = np.bincount(lo * n + hi, minlength=n * n).reshape(n, n)
    return {
        f"{labels[a]}|{labels[b]}".replace("/", "_"): int(found[a, b])
        for a, b in zip(*np.triu_indices(n, k=1))
    }
