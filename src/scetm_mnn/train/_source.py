"""The minibatches themselves: registered matrices held once, sliced into whole minibatches.

scvi-tools' default loader builds each minibatch from per-cell lookups; for a small linear
decoder that framework overhead dominates the step. Here the registered matrices are
served by ``scetm_mnn._rows.Rows`` (the package's one row-access path, shared with
:mod:`scetm_mnn.pp`): held once in memory (small sparse data densified, larger data kept
CSR) or read from disk for a backed AnnData, and each step reads its rows at once and
densifies only them. :mod:`._data` splits the cells and serves these minibatches to
Lightning.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from scipy import sparse
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager

from .._docstrings import shared_docstring
from .._rows import Rows, ShiftedRows, rows_of
from ..module import ANCHOR_KEY, CORRECTED_KEY, MNN_PAIRS_KEY
from ..pp._corrected import basis_key
from ._device import DeviceRows, device_budget, device_bytes

CORRECTED_SHIFT_KEY = "corrected_shift"
"""Registry key of the low-rank coefficients of a corrected layer kept in low-rank form.

With it registered, ``CORRECTED_KEY`` names the uncorrected log-expression, and each
minibatch is corrected as ``x + C Bᵀ`` (``ShiftedRows`` (``scetm_mnn._rows``)).
"""


def _as_rows(x) -> Rows | ShiftedRows:
    return x if isinstance(x, Rows | ShiftedRows) else Rows(x, preload=True)


def _tensor(rows: Rows | ShiftedRows | DeviceRows, index: np.ndarray, pin: bool) -> torch.Tensor:
    if isinstance(rows, DeviceRows):
        return rows.take(torch.from_numpy(index))
    out = torch.from_numpy(rows.take(index))
    return out.pin_memory() if pin else out


class MinibatchSource:
    """Registered data held in memory, sliced into minibatch tensors.

    Parameters
    ----------
    x
        Counts, cells × genes: dense, sparse, an on-disk array or a
        ``Rows`` (``scetm_mnn._rows``). In memory it is held as float32, dense when it fits
        in ``DENSE_PRELOAD_BYTES`` (256 MiB), else CSR with only each
        minibatch densified; on disk each minibatch reads its rows from the file.
        ``None`` with ``corrected`` given: minibatches for an encoder that reads only that.
    batch_index
        Integer batch code per cell, or ``None``.
    mnn_pairs
        Optional symmetric cells × cells matrix whose non-zeros are MNN pairs. Training
        minibatches draw partners from it (:meth:`split_pairs`, :meth:`iterate`).
    corrected
        Optional corrected expression (same shape as ``x``) that the encoder reads, served
        as ``tensors["corrected"]``.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import sparse
    >>> from scetm_mnn.train import MinibatchSource
    >>> counts = sparse.random(10, 6, density=0.5, format="csr", random_state=0)
    >>> source = MinibatchSource(counts, batch_index=np.arange(10) % 2)
    >>> [b["X"].shape[0] for b in source.iterate(np.arange(10), 4)]
    [4, 4, 2]
    """

    def __init__(self, x, batch_index: np.ndarray | None = None, mnn_pairs=None, corrected=None):
        if x is None and corrected is None:
            raise ValueError("A MinibatchSource needs the counts x, or a corrected input.")
        self.x = None if x is None else _as_rows(x)
        self.corrected = None if corrected is None else _as_rows(corrected)
        self.n_obs = (self.corrected if self.x is None else self.x).shape[0]
        self.batch_index = (
            None
            if batch_index is None
            else torch.as_tensor(np.asarray(batch_index).reshape(-1, 1), dtype=torch.long)
        )
        self.pairs = None if mnn_pairs is None else sparse.csr_matrix(mnn_pairs)
        self.placement = "host"
        self._pin = False

    def place(self, device: torch.device | str, budget_bytes: int | None = None) -> str:
        """Serve minibatches for ``device``: from data held there when they fit, else pinned.

        Parameters
        ----------
        device
            The training device.
        budget_bytes
            Bytes the data may take on ``device``; ``None``: half its free memory
            (``DEVICE_DATA_FRACTION`` in ``scetm_mnn.train._device``; 0 for the CPU).

        Returns
        -------
        ``"device"`` (the registered matrices were moved to ``device``; minibatches are
        sliced and densified there), ``"pinned"`` (built on the host in pinned memory, for
        an asynchronous copy; CUDA only) or ``"host"``.

        Examples
        --------
        >>> import numpy as np
        >>> import torch
        >>> from scetm_mnn.train import MinibatchSource
        >>> MinibatchSource(np.ones((6, 3))).place(torch.device("cpu"), budget_bytes=10**6)
        'device'
        >>> MinibatchSource(np.ones((6, 3))).place(torch.device("cpu"), budget_bytes=0)
        'host'
        """
        device = torch.device(device)
        if self.placement == "device":
            return self.placement
        budget = device_budget(device) if budget_bytes is None else int(budget_bytes)
        sizes = [device_bytes(m) for m in (self.x, self.corrected) if m is not None]
        if all(size is not None for size in sizes) and sum(sizes) <= budget:
            self.x = DeviceRows(self.x, device)
            if self.corrected is not None:
                self.corrected = DeviceRows(self.corrected, device)
            if self.batch_index is not None:
                self.batch_index = self.batch_index.to(device)
            self.placement, self._pin = "device", False
        else:
            pinned = device.type == "cuda" and torch.cuda.is_available()
            self.placement, self._pin = ("pinned", True) if pinned else ("host", False)
        return self.placement

    def tensors(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The minibatch for ``rows``: dense ``X``, the corrected layer and the batch index.

        A source without counts (``x=None``) leaves ``X`` out.
        """
        out = {} if self.x is None else {REGISTRY_KEYS.X_KEY: _tensor(self.x, rows, self._pin)}
        if self.corrected is not None:
            out[CORRECTED_KEY] = _tensor(self.corrected, rows, self._pin)
        if self.batch_index is not None:
            index = torch.from_numpy(rows).to(self.batch_index.device)
            out[REGISTRY_KEYS.BATCH_KEY] = self.batch_index[index]
        return out

    def split_pairs(self, indices: np.ndarray) -> sparse.csr_matrix | None:
        """The MNN pairs whose two cells are both in ``indices`` (``None`` without pairs).

        A split's minibatches draw partners only from these, so no cell of another split
        (e.g. a validation cell) ever enters them.
        """
        if self.pairs is None:
            return None
        inside = np.zeros(self.n_obs, dtype=np.float32)
        inside[np.asarray(indices)] = 1.0
        keep = sparse.diags(inside)
        pairs = sparse.csr_matrix(keep @ self.pairs @ keep)
        pairs.eliminate_zeros()
        return pairs

    @staticmethod
    def with_partners(
        rows: np.ndarray, rng: np.random.Generator, pairs: sparse.csr_matrix
    ) -> tuple[np.ndarray, np.ndarray]:
        """Add one random MNN partner per paired cell; return rows and (P × 2) pair positions.

        The sampled ``rows`` come first; partners not among them are appended.
        """
        degree = np.diff(pairs.indptr)[rows]
        has = np.flatnonzero(degree > 0)
        if has.size == 0:
            return rows, np.zeros((0, 2), dtype=np.int64)
        offsets = (rng.random(has.size) * degree[has]).astype(np.int64)
        partners = pairs.indices[pairs.indptr[rows[has]] + offsets]
        position = np.full(pairs.shape[0], -1, dtype=np.int64)
        position[rows] = np.arange(rows.size)
        missing = np.unique(partners[position[partners] < 0])
        position[missing] = rows.size + np.arange(missing.size)
        return np.concatenate([rows, missing]), np.stack([has, position[partners]], axis=1)

    def iterate(
        self,
        order: np.ndarray,
        batch_size: int,
        rng: np.random.Generator | None = None,
        pairs: sparse.csr_matrix | None = None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Minibatches of ``batch_size`` consecutive cells of ``order``.

        ``rng`` marks a training pass: a last minibatch of a single cell is dropped
        (BatchNorm cannot train on one cell), and with ``pairs`` each paired cell of a
        minibatch brings one partner, drawn at random from ``pairs``; the minibatch then
        holds ``tensors["mnn_pairs"]`` and the mask ``tensors["anchor"]`` of its sampled
        cells. The order itself is the caller's (:func:`epoch_order` for training).
        """
        order = np.asarray(order)
        for start in range(0, order.size, batch_size):
            rows = order[start : start + batch_size]
            if rng is not None and rows.size < 2 and order.size >= 2:
                continue  # BatchNorm cannot train on a single cell
            if pairs is None or rng is None:
                yield self.tensors(rows)
                continue
            n_sampled = rows.size
            rows, positions = self.with_partners(rows, rng, pairs)
            batch = self.tensors(rows)
            batch[MNN_PAIRS_KEY] = torch.from_numpy(positions)
            anchor = torch.zeros(rows.size, dtype=torch.bool)
            anchor[:n_sampled] = True
            batch[ANCHOR_KEY] = anchor
            yield batch


def registered_rows(adata_manager: AnnDataManager, key: str, preload: bool = True) -> Rows | None:
    """``Rows`` (``scetm_mnn._rows``) of a registered matrix (``None`` if not registered).

    ``X`` and layers are read through ``scetm_mnn._rows.rows_of``, so the matrices of
    a backed AnnData stay on disk. ``preload``: see ``Rows``.
    """
    registry = adata_manager.data_registry
    if key not in registry:
        return None
    field = registry[key]
    if field.attr_name == "X":
        return rows_of(adata_manager.adata, None, preload=preload)
    if field.attr_name == "layers":
        return rows_of(adata_manager.adata, field.attr_key, preload=preload)
    return Rows(adata_manager.get_from_registry(key), preload=preload)


@shared_docstring
def source_from_manager(
    adata_manager: AnnDataManager,
    mnn_pairs=None,
    preload: bool = True,
    encoder_only: bool = False,
) -> MinibatchSource:
    """A :class:`MinibatchSource` over the data registered in ``adata_manager``.

    ``preload=False`` keeps in-memory sparse data sparse, so that a pass over a few cells
    densifies only their rows (inference); ``True`` densifies small data once (training).
    ``encoder_only=True`` serves only what the encoder reads: where it reads a corrected
    input, the counts are left out and never read (encoding every cell).

    Examples
    --------
    %(registered)s
    >>> from scetm_mnn.train import source_from_manager
    >>> model = sm.model.BatchCorrectedSCETM(adata, n_topics=4)
    >>> source_from_manager(model.adata_manager).n_obs
    200
    >>> source_from_manager(model.adata_manager, encoder_only=True).x is None  # reads counts
    False
    """
    registry = adata_manager.data_registry
    batch = (
        adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)
        if REGISTRY_KEYS.BATCH_KEY in registry
        else None
    )
    corrected = registered_rows(adata_manager, CORRECTED_KEY, preload)
    if CORRECTED_SHIFT_KEY in registry:
        key = adata_manager.registry["setup_args"]["corrected_layer"]
        corrected = ShiftedRows(
            corrected,
            adata_manager.get_from_registry(CORRECTED_SHIFT_KEY),
            adata_manager.adata.varm[basis_key(key)],
        )
    counts = None
    if corrected is None or not encoder_only:
        counts = registered_rows(adata_manager, REGISTRY_KEYS.X_KEY, preload)
    return MinibatchSource(
        counts,
        batch,
        mnn_pairs=mnn_pairs,
        corrected=corrected,
    )
