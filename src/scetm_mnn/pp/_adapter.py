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
  cells), so that with few pairs it falls back to the translation;
- ``"local"``: the affine map, then what is left of each pair's change, smoothed over the
  query as in MNN correction (Haghverdi et al. 2018): each cell gets the Gaussian-weighted
  mean of the residual changes of its ``k`` nearest paired query cells (after the affine
  map; bandwidth: the distance to the ``k``-th), so that cell types shifted differently are
  each moved onto their own partners.

All are closed-form; the change lies in the span of ``B``, like the network's, so the
corrected query is again ``x + C Bᵀ``. :func:`correct_cells` is what
:meth:`~scetm_mnn.pp.MNNCorrector.transform` runs: the frozen network on every cell, then,
for each new batch, its MNN pairs with the reference (:func:`adapt_batch`) and its adapter.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from scipy import sparse

from .._rows import Rows, ShiftedRows, index_chunks, map_chunks
from ._genes import AlignedRows, GeneAlignment
from ._latent import apply_frozen, centre_of
from ._mapping import ReferenceMixture, map_batch, smoothed_field
from ._network import correct_all
from ._pairs import find_mnn_pairs

if TYPE_CHECKING:
    from ._fitting import Fitted

logger = logging.getLogger(__name__)

Adapter = Literal["mixture", "local", "affine", "shift", "none"]
ADAPTERS = ("mixture", "local", "affine", "shift", "none")


@dataclass(frozen=True)
class FittedAdapter:
    """``delta(u) = offset + (u − center) @ linear``, plus a smoothed local residual.

    With ``anchors`` (paired query cells' coordinates after the affine map) and their
    ``residuals``, a cell at ``u`` also gets the Gaussian-weighted mean residual of its
    ``n_neighbors`` nearest anchors, taken at ``u + offset + (u − center) @ linear``.
    """

    offset: np.ndarray
    center: np.ndarray
    linear: np.ndarray | None = None
    anchors: np.ndarray | None = None
    residuals: np.ndarray | None = None
    n_neighbors: int = 20

    def _affine(self, coords: np.ndarray) -> np.ndarray:
        delta = np.broadcast_to(self.offset, coords.shape).astype(np.float32)
        if self.linear is not None:
            delta = delta + (coords - self.center) @ self.linear
        return delta

    def __call__(self, coords: np.ndarray) -> np.ndarray:
        """The change (cells × d) of the cells with coordinates ``coords`` (cells × d)."""
        delta = self._affine(coords)
        if self.anchors is not None and len(coords):
            delta = delta + smoothed_field(
                coords + delta, self.anchors, self.residuals, self.n_neighbors
            )
        return np.ascontiguousarray(delta, dtype=np.float32)

    @property
    def shift_norm(self) -> float:
        """Norm of the change of a cell at the centre of the paired query cells."""
        return float(np.linalg.norm(self.offset))


def fit_adapter(
    query: np.ndarray,
    target: np.ndarray,
    kind: Adapter,
    ridge: float = 1.0,
    *,
    cells: np.ndarray | None = None,
    n_neighbors: int = 20,
) -> FittedAdapter:
    """Fit an adapter on paired coordinates: ``query[i]`` should move to ``target[i]``.

    Parameters
    ----------
    query, target
        Pairs × d coordinates of the paired query cells and of their reference partners.
    kind
        ``"local"``, ``"affine"``, ``"shift"`` or ``"none"`` (no change).
    ridge
        Relative ridge penalty of the affine map (see the module docstring).
    cells
        For ``"local"``: the query cell of each pair (any ids), so that the residuals of a
        cell's pairs are averaged into one anchor; each pair is its own anchor without.
    n_neighbors
        Anchors averaged by ``"local"``.
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
    affine = FittedAdapter(
        mean_change.astype(np.float32), center.astype(np.float32), linear.astype(np.float32)
    )
    if kind == "affine":
        return affine
    moved = query + affine(query.astype(np.float32))
    residual = np.asarray(target, dtype=np.float64) - moved
    ids = np.arange(query.shape[0]) if cells is None else np.asarray(cells)
    _, anchor_of, n_pairs = np.unique(ids, return_inverse=True, return_counts=True)
    anchors = np.zeros((n_pairs.size, d))
    residuals = np.zeros((n_pairs.size, d))
    np.add.at(anchors, anchor_of, moved)
    np.add.at(residuals, anchor_of, residual)
    return FittedAdapter(
        affine.offset,
        affine.center,
        affine.linear,
        (anchors / n_pairs[:, None]).astype(np.float32),
        (residuals / n_pairs[:, None]).astype(np.float32),
        n_neighbors,
    )


def query_cells(
    batches: np.ndarray, reference_batches: list[str], known_batches: str, batch_key: str
) -> np.ndarray:
    """Which cells get an adapter: those of new batches, or every cell (``"query"``).

    ``known_batches`` is what a batch named like a reference batch is (``"reference"``,
    ``"query"`` or ``"raise"``, see ``MNNCorrector.transform``).
    """
    known = np.isin(batches, reference_batches)
    if known_batches == "raise" and known.any():
        clash = sorted(set(batches[known]))
        raise ValueError(
            f"The batches {clash} of adata.obs[{batch_key!r}] have the names of "
            "reference batches. Rename them if they are new batches, or pass "
            "known_batches='reference' (corrected as those batches) or 'query' (aligned "
            "as new batches)."
        )
    return ~known if known_batches == "reference" else np.ones(known.size, dtype=bool)


def adapt_batch(
    name: str,
    coords: np.ndarray,
    reference_search: np.ndarray,
    kind: Adapter,
    p: dict[str, Any],
    fitted: Fitted,
) -> tuple[FittedAdapter, dict]:
    """MNN pairs between query batch ``name`` (its coordinates) and the reference; adapter.

    ``p`` are the corrector's parameters, ``fitted`` its state. Returns the adapter and
    what ``uns[key]["adapters"][name]`` records of it.
    """
    query_search = apply_frozen(fitted.search, coords)
    n_ref = reference_search.shape[0]
    labels = np.array(["reference"] * n_ref + [f"query {name!r}"] * len(coords))
    pairs = find_mnn_pairs(
        np.vstack([reference_search, query_search]),
        labels,
        n_neighbors=p["n_neighbors"],
        random_state=p["random_state"],
        n_rounds=p["search_rounds"],
        max_cells=p["max_search_cells"],
    )
    upper = sparse.triu(pairs, k=1).tocoo()  # the reference comes first: row < col
    ref, query = upper.row, upper.col - n_ref
    if ref.size == 0:
        warnings.warn(
            f"No MNN pairs were found between the query batch {name!r} and the "
            "reference, so it is corrected by the reference network alone. Check that it "
            "shares cell types with the reference, or increase n_neighbors.",
            UserWarning,
            stacklevel=4,
        )
    adapter = fit_adapter(
        coords[query],
        fitted.reference_coords[ref],
        kind,
        p["adapter_ridge"],
        cells=query,
        n_neighbors=p["n_neighbors"],
    )
    batches = fitted.reference_batches
    counts = np.bincount(fitted.reference_codes[ref], minlength=len(batches))
    info = {
        "n_pairs": int(ref.size),
        "shift_norm": adapter.shift_norm,
        "pair_counts": {b.replace("/", "_"): int(n) for b, n in zip(batches, counts)},
    }
    logger.info(
        "Query batch %r: %d MNN pairs with the reference; adapter %r, shift %.3g.",
        name,
        ref.size,
        kind,
        adapter.shift_norm,
    )
    return adapter, info


def _available(kind: Adapter, fitted: Fitted) -> Adapter:
    """``kind``, or ``"local"`` for ``"mixture"`` on a corrector saved without its shifts."""
    if kind == "mixture" and fitted.reference_shift is None:
        warnings.warn(
            "This corrector was saved before the reference's shifts were kept, so the "
            "'mixture' mapping cannot run; new batches are aligned with adapter='local'. "
            "Refit the corrector (and save it again) to use 'mixture'.",
            UserWarning,
            stacklevel=4,
        )
        return "local"
    return kind


def _mixture_info(change: np.ndarray, mixture: ReferenceMixture) -> dict:
    """What ``uns[key]["adapters"][batch]`` records of a batch's ``"mixture"`` mapping."""
    return {
        "n_pairs": 0,
        "shift_norm": float(np.linalg.norm(change.mean(axis=0))),
        "pair_counts": {},
        "n_clusters": int(mixture.centres.shape[0]),
    }


@torch.inference_mode()
def _latent_of(space: torch.nn.Module, block: np.ndarray) -> np.ndarray:
    return space(torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))).numpy()


def correct_cells(
    rows: Rows,
    alignment: GeneAlignment,
    batches: np.ndarray,
    is_query: np.ndarray,
    dense: bool,
    kind: Adapter,
    p: dict[str, Any],
    fitted: Fitted,
):
    """Correct ``rows``: the frozen network, then an adapter per batch of ``is_query``.

    Returns ``(x̂ over the query's genes or None, latent, C, adapters' info, timing)``.
    """
    chunk = p["chunk_size"]
    net, space = fitted.net, fitted.space
    mean = centre_of(space)
    aligned = rows if alignment.identical else AlignedRows(rows, alignment, mean)
    timing: dict[str, float] = {}
    tic = time.perf_counter()
    corrected, latent, shift = correct_all(
        net, space, aligned, dense and alignment.identical, chunk
    )
    timing["apply"] = time.perf_counter() - tic
    basis = net.basis.numpy()
    adapters: dict[str, dict] = {}
    if is_query.any():
        tic = time.perf_counter()
        kind = _available(kind, fitted)
        if kind == "mixture":
            uncorrected = fitted.reference_coords - fitted.reference_shift
            mixture = ReferenceMixture.fit(uncorrected, p["random_state"])
        else:
            reference_search = apply_frozen(fitted.search, fitted.reference_coords)
        for name in pd.unique(batches[is_query]):
            idx = np.flatnonzero(is_query & (batches == name))
            coords = np.empty((idx.size, basis.shape[1]), dtype=np.float32)
            for pos, cells in index_chunks(idx, chunk):
                coords[pos] = (aligned.take(cells) - mean) @ basis  # uncorrected
            key = str(name).replace("/", "_")
            if kind == "mixture":
                change = map_batch(coords, uncorrected, fitted.reference_shift, mixture) - coords
                shift[idx] = change
                adapters[key] = _mixture_info(change, mixture)
                continue
            coords += shift[idx]  # through the network
            adapter, adapters[key] = adapt_batch(
                str(name), coords, reference_search, kind, p, fitted
            )
            shift[idx] += adapter(coords)
        for _, cells in index_chunks(np.flatnonzero(is_query), chunk):
            out = aligned.take(cells) + shift[cells] @ basis.T
            latent[cells] = _latent_of(space, out)
            if corrected is not None:
                corrected[cells] = out
        timing["adapt"] = time.perf_counter() - tic
    if dense and corrected is None:
        shifted = ShiftedRows(rows, shift, alignment.query_basis(basis))
        corrected = map_chunks(lambda block: block, shifted, chunk)
    return corrected, latent, shift, adapters, timing
