"""The ``"mixture"`` mapping of a new batch onto a fitted corrector's reference.

Two closed-form steps, the reference frozen, in the corrector's subspace coordinates
(``u = (x − μ) B``, a rotation of the PCA latent, so its distances are the latent's):

1. **Align** the new batch with the *uncorrected* reference, as Symphony maps a query
   into a Harmony reference (Kang et al. 2021): soft clusters of the uncorrected
   reference (soft k-means on the unit sphere, bandwidth ``SIGMA``), each query cell's
   soft membership ``r_k``, and per cluster ``k`` the ridge-shrunk difference between
   the query's and the reference's cluster means,
   ``w_k = N_k n_k (q̄_k − ȳ_k) / (N_k n_k + RIDGE (N_k + n_k))``
   (``N_k``, ``n_k``: the reference's and the query's soft cluster sizes); each cell
   moves by ``−Σ_k r_k w_k``. The query differs from the reference by its batch effect
   only, so the clusters it is assigned to are those of its own cell types.
2. **Correct** each aligned cell as the network corrected the reference cells around
   it: the Gaussian-weighted mean of the shifts ``C`` of its ``FIELD_NEIGHBORS``
   nearest uncorrected reference cells (bandwidth: the distance to the farthest), as
   fastMNN smooths correction vectors (Haghverdi et al. 2018).

The query lands where the reference cells of its types were put by the corrector, and
a cell far from every reference cell (a type the reference lacks) moves with its
neighbours without being pulled onto them. Both steps read only the reference's
coordinates and shifts, which the corrector keeps (and saves); the clusters are
recomputed, with the corrector's seed, by each call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.neighbors import NearestNeighbors

logger = logging.getLogger(__name__)

SIGMA = 0.1
"""Bandwidth of the soft clusters, on the unit sphere (Harmony's and Symphony's default)."""
RIDGE = 1.0
"""Ridge penalty of each cluster's shift (Symphony's default λ)."""
CELLS_PER_CLUSTER = 30
MAX_CLUSTERS = 100
"""Reference clusters: one per ``CELLS_PER_CLUSTER`` cells, 10 to ``MAX_CLUSTERS``."""
MAX_CLUSTER_CELLS = 50_000
"""The cluster centres are fitted on at most this many reference cells (seeded sample)."""
SOFT_ROUNDS = 10
FIELD_NEIGHBORS = 20
"""Reference cells whose shifts are averaged for each aligned query cell."""


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _membership(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Soft membership (cells × clusters) of ``x`` in the clusters of unit ``centres``."""
    distance = 2.0 * (1.0 - _unit(x) @ centres.T)
    logits = -(distance - distance.min(axis=1, keepdims=True)) / SIGMA
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class ReferenceMixture:
    """The uncorrected reference's soft clusters: unit centres, sizes, coordinate sums."""

    centres: np.ndarray
    sizes: np.ndarray
    sums: np.ndarray

    @classmethod
    def fit(cls, coords: np.ndarray, random_state: int = 0) -> ReferenceMixture:
        """Soft k-means of ``coords`` (cells × d) on the unit sphere, started by k-means."""
        n = coords.shape[0]
        k = int(np.clip(n // CELLS_PER_CLUSTER, min(10, n), MAX_CLUSTERS))
        rng = np.random.default_rng(random_state)
        sample = coords if n <= MAX_CLUSTER_CELLS else coords[rng.choice(n, MAX_CLUSTER_CELLS)]
        unit = _unit(sample.astype(np.float64))
        centres = KMeans(k, n_init=1, random_state=random_state).fit(unit).cluster_centers_
        for _ in range(SOFT_ROUNDS):
            centres = _unit(_membership(unit, _unit(centres)).T @ unit)
        membership = _membership(coords.astype(np.float64), centres)
        return cls(centres, membership.sum(axis=0), membership.T @ coords)

    def align(self, query: np.ndarray) -> np.ndarray:
        """``query`` (cells × d) moved onto the reference by the clusters' shrunk shifts."""
        query = query.astype(np.float64)
        membership = _membership(query, self.centres)
        n = membership.sum(axis=0)
        sums = membership.T @ query
        big_n = self.sizes
        shift = (big_n[:, None] * sums - n[:, None] * self.sums) / (
            big_n * n + RIDGE * (big_n + n)
        )[:, None]
        return query - membership @ shift


def smoothed_field(
    points: np.ndarray, reference: np.ndarray, field: np.ndarray, n_neighbors: int
) -> np.ndarray:
    """Gaussian-weighted mean of ``field`` over each point's nearest ``reference`` cells."""
    k = min(n_neighbors, reference.shape[0])
    distance, index = NearestNeighbors(n_neighbors=k).fit(reference).kneighbors(points)
    bandwidth = np.maximum(distance[:, -1:], 1e-6)
    weights = np.exp(-0.5 * (distance / bandwidth) ** 2)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("ck,ckd->cd", weights, field[index])


def map_batch(
    coords: np.ndarray,
    uncorrected: np.ndarray,
    reference_shift: np.ndarray,
    mixture: ReferenceMixture,
) -> np.ndarray:
    """The corrected coordinates of a new batch's uncorrected ``coords`` (cells × d).

    ``uncorrected`` are the reference's coordinates before the network and
    ``reference_shift`` the network's change of each; ``mixture`` the clusters of
    ``uncorrected`` (:meth:`ReferenceMixture.fit`).
    """
    aligned = mixture.align(coords)
    moved = aligned + smoothed_field(aligned, uncorrected, reference_shift, FIELD_NEIGHBORS)
    return moved.astype(np.float32)
