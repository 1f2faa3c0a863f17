"""The per-batch adapter that aligns a new (query) batch to a fitted corrector's reference.

The reference network is frozen: it removes the batch effects it learnt, and a new batch
brings a shift it has not seen. After the frozen network, every cell is described by its
coordinates ``u = (x̂ − μ) B`` in the corrector's subspace (``B``, genes × d, the directions
the corrector may change). MNN pairs ``(q_i, r_i)`` between the query batch and the
corrected reference give, for each paired query cell, the change ``r_i − q_i`` that would
put it on its reference partner. The adapter is the map from a query cell's coordinates
to its change, fitted to the pairs by least squares:

- ``"shift"``: one translation ``b`` (the mean change over the pairs);
- ``"affine"``: ``b + (u − ū) A``, with ``A`` (d × d) shrunk towards zero by a ridge
  penalty ``ridge · tr(UᵀU)/d · ‖A‖²`` (``U``: the centred coordinates of the paired query
  cells), so that with few pairs it falls back to the translation.

Both are closed-form; the change lies in the span of ``B``, like the network's, so the
corrected query is again ``x + C Bᵀ``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Adapter = Literal["affine", "shift", "none"]
ADAPTERS = ("affine", "shift", "none")


@dataclass(frozen=True)
class FittedAdapter:
    """``delta(u) = offset + (u − center) @ linear``: the change of coordinates ``u``."""

    offset: np.ndarray
    center: np.ndarray
    linear: np.ndarray | None = None

    def __call__(self, coords: np.ndarray) -> np.ndarray:
        """The change (cells × d) of the cells with coordinates ``coords`` (cells × d)."""
        delta = np.broadcast_to(self.offset, coords.shape).astype(np.float32)
        if self.linear is not None:
            delta = delta + (coords - self.center) @ self.linear
        return np.ascontiguousarray(delta, dtype=np.float32)

    @property
    def shift_norm(self) -> float:
        """Norm of the change of a cell at the centre of the paired query cells."""
        return float(np.linalg.norm(self.offset))


def fit_adapter(
    query: np.ndarray, target: np.ndarray, kind: Adapter, ridge: float = 1.0
) -> FittedAdapter:
    """Fit an adapter on paired coordinates: ``query[i]`` should move to ``target[i]``.

    Parameters
    ----------
    query, target
        Pairs × d coordinates of the paired query cells and of their reference partners.
    kind
        ``"affine"``, ``"shift"`` or ``"none"`` (no change).
    ridge
        Relative ridge penalty of the affine map (see the module docstring).
    """
    query = np.asarray(query, dtype=np.float64)
    change = np.asarray(target, dtype=np.float64) - query
    d = query.shape[1]
    if kind == "none" or query.shape[0] == 0:
        return FittedAdapter(np.zeros(d, np.float32), np.zeros(d, np.float32))
    center = query.mean(axis=0)
    mean_change = change.mean(axis=0)
    if kind == "shift":
        return FittedAdapter(mean_change.astype(np.float32), center.astype(np.float32))
    u = query - center
    gram = u.T @ u
    penalty = ridge * max(np.trace(gram), 1e-12) / d
    linear = np.linalg.solve(gram + penalty * np.eye(d), u.T @ (change - mean_change))
    return FittedAdapter(
        mean_change.astype(np.float32), center.astype(np.float32), linear.astype(np.float32)
    )
