"""A minibatch data path: whole minibatches sliced from the rows, no per-cell ``__getitem__``.

scvi-tools' default loader builds each minibatch from per-cell lookups; for a small linear
decoder that framework overhead dominates the step. Here the registered matrices are
served by ``scetm_mnn._rows.Rows`` (the package's one row-access path, shared with
:mod:`scetm_mnn.pp`): held once in memory (small sparse data densified, larger data kept
CSR) or read from disk for a backed AnnData, and each step reads its rows at once and
densifies only them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import lightning.pytorch as pl
import numpy as np
import torch
from scipy import sparse
from scvi import REGISTRY_KEYS, settings
from scvi.data import AnnDataManager

from .._rows import Rows, ShiftedRows, rows_of
from ..module import ANCHOR_KEY, CORRECTED_KEY, MNN_PAIRS_KEY
from ..pp._corrected import basis_key

CORRECTED_SHIFT_KEY = "corrected_shift"
"""Registry key of the low-rank coefficients of a corrected layer kept in low-rank form.

With it registered, ``CORRECTED_KEY`` names the uncorrected log-expression, and each
minibatch is corrected as ``x + C Bᵀ`` (``ShiftedRows`` (``scetm_mnn._rows``)).
"""


def _as_rows(x) -> Rows | ShiftedRows:
    return x if isinstance(x, Rows | ShiftedRows) else Rows(x, preload=True)


def _tensor(rows: Rows | ShiftedRows, index: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rows.take(index))


class MinibatchSource:
    """Registered data held in memory, sliced into minibatch tensors.

    Parameters
    ----------
    x
        Counts, cells × genes: dense, sparse, an on-disk array or a
        ``Rows`` (``scetm_mnn._rows``). In memory it is held as float32, dense when it fits
        in ``DENSE_PRELOAD_BYTES`` (256 MiB), else CSR with only each
        minibatch densified; on disk each minibatch reads its rows from the file.
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
        self.x = _as_rows(x)
        self.corrected = None if corrected is None else _as_rows(corrected)
        self.n_obs = self.x.shape[0]
        self.batch_index = (
            None
            if batch_index is None
            else torch.as_tensor(np.asarray(batch_index).reshape(-1, 1), dtype=torch.long)
        )
        self.pairs = None if mnn_pairs is None else sparse.csr_matrix(mnn_pairs)

    def tensors(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The minibatch for ``rows``: dense ``X``, the corrected layer and the batch index."""
        out = {REGISTRY_KEYS.X_KEY: _tensor(self.x, rows)}
        if self.corrected is not None:
            out[CORRECTED_KEY] = _tensor(self.corrected, rows)
        if self.batch_index is not None:
            out[REGISTRY_KEYS.BATCH_KEY] = self.batch_index[torch.from_numpy(rows)]
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
        indices: np.ndarray,
        batch_size: int,
        rng: np.random.Generator | None = None,
        pairs: sparse.csr_matrix | None = None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Minibatches over ``indices``, shuffled when ``rng`` is given.

        With ``pairs`` (and ``rng``), each paired cell of a minibatch brings one partner,
        drawn at random from ``pairs``; the minibatch then holds ``tensors["mnn_pairs"]``
        and the mask ``tensors["anchor"]`` of its ``batch_size`` sampled cells.
        """
        order = rng.permutation(indices) if rng is not None else np.asarray(indices)
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


class _Loader:
    """A re-iterable, sized view of one data split for Lightning."""

    def __init__(self, source, indices, batch_size, rng=None, pairs=None):
        self.source, self.indices, self.batch_size = source, indices, batch_size
        self.rng, self.pairs = rng, pairs

    def __len__(self) -> int:
        n = len(self.indices)
        full, rest = divmod(n, self.batch_size)
        return full + int(rest >= 2 or (rest == 1 and self.rng is None) or n == 1)

    def __iter__(self):
        return self.source.iterate(self.indices, self.batch_size, self.rng, self.pairs)


def registered_rows(adata_manager: AnnDataManager, key: str) -> Rows | None:
    """``Rows`` (``scetm_mnn._rows``) of a registered matrix (``None`` if not registered).

    ``X`` and layers are read through ``scetm_mnn._rows.rows_of``, so the matrices of
    a backed AnnData stay on disk.
    """
    registry = adata_manager.data_registry
    if key not in registry:
        return None
    field = registry[key]
    if field.attr_name == "X":
        return rows_of(adata_manager.adata, None, preload=True)
    if field.attr_name == "layers":
        return rows_of(adata_manager.adata, field.attr_key, preload=True)
    return Rows(adata_manager.get_from_registry(key), preload=True)


def source_from_manager(adata_manager: AnnDataManager, mnn_pairs=None) -> MinibatchSource:
    """A :class:`MinibatchSource` over the data registered in ``adata_manager``.

    Examples
    --------
    >>> import scetm_mnn as sm
    >>> from scetm_mnn.train import source_from_manager
    >>> adata = sm.datasets.simulate(n_cells=200, n_genes=50, random_state=0)
    >>> sm.model.BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch")
    >>> model = sm.model.BatchCorrectedSCETM(adata, n_topics=4)
    >>> source_from_manager(model.adata_manager).n_obs
    200
    """
    registry = adata_manager.data_registry
    batch = (
        adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)
        if REGISTRY_KEYS.BATCH_KEY in registry
        else None
    )
    corrected = registered_rows(adata_manager, CORRECTED_KEY)
    if CORRECTED_SHIFT_KEY in registry:
        key = adata_manager.registry["setup_args"]["corrected_layer"]
        corrected = ShiftedRows(
            corrected,
            adata_manager.get_from_registry(CORRECTED_SHIFT_KEY),
            adata_manager.adata.varm[basis_key(key)],
        )
    return MinibatchSource(
        registered_rows(adata_manager, REGISTRY_KEYS.X_KEY),
        batch,
        mnn_pairs=mnn_pairs,
        corrected=corrected,
    )


class PreloadedDataSplitter(pl.LightningDataModule):
    """Train/validation split served from a :class:`MinibatchSource`.

    A drop-in for :class:`scvi.dataloaders.DataSplitter`. Unlike it, all cells train by
    default (``train_size=1.0``); a validation split is made only when asked for.

    Parameters
    ----------
    adata_manager
        The model's registered AnnData manager.
    train_size
        Fraction of cells to train on; ``None`` means ``1 - validation_size`` (all cells
        when that is ``None`` too).
    validation_size
        Fraction for validation; ``None`` means the rest.
    shuffle_set_split
        Shuffle cells before splitting.
    batch_size
        Cells sampled per minibatch (256, as :meth:`~scetm_mnn.model.BatchCorrectedSCETM.train`).
    mnn_pairs
        Optional MNN pair matrix. Each training minibatch draws one partner per paired cell,
        from the training cells only; the validation minibatches hold no partners.
    seed
        Seed of the split and of the minibatch order and partner draws; ``None`` takes
        ``scvi.settings.seed``, and 0 when that is unset.
    **kwargs
        Loader options of scvi's splitter (``load_sparse_tensor``, ``pin_memory``, ...);
        accepted and ignored.

    Examples
    --------
    >>> import scetm_mnn as sm
    >>> from scetm_mnn.train import PreloadedDataSplitter
    >>> adata = sm.datasets.simulate(n_cells=200, n_genes=50, random_state=0)
    >>> sm.model.BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch")
    >>> manager = sm.model.BatchCorrectedSCETM(adata, n_topics=4).adata_manager
    >>> splitter = PreloadedDataSplitter(manager, train_size=0.9, seed=0)
    >>> splitter.n_train, splitter.n_val
    (180, 20)
    """

    def __init__(
        self,
        adata_manager: AnnDataManager,
        train_size: float | None = None,
        validation_size: float | None = None,
        shuffle_set_split: bool = True,
        batch_size: int = 256,
        mnn_pairs=None,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__()
        self.adata_manager = adata_manager
        self.batch_size = int(batch_size)
        self.source = source_from_manager(adata_manager, mnn_pairs=mnn_pairs)
        n = self.source.n_obs
        if train_size is None:
            train_size = 1.0 if validation_size is None else 1.0 - float(validation_size)
        train_size = float(train_size)
        if not 0.0 < train_size <= 1.0:
            raise ValueError(f"train_size must be in (0, 1], got {train_size}.")
        val_size = 1.0 - train_size if validation_size is None else float(validation_size)
        if val_size < 0 or train_size + val_size > 1.0 + 1e-9:
            raise ValueError(
                f"train_size ({train_size}) + validation_size ({val_size}) must not exceed 1."
            )
        self.seed = resolve_seed(seed)
        self._rng = np.random.default_rng(self.seed)
        order = self._rng.permutation(n) if shuffle_set_split else np.arange(n)
        self.n_train = max(1, round(train_size * n))
        self.n_val = min(n - self.n_train, round(val_size * n))
        self.train_idx = np.sort(order[: self.n_train])
        self.val_idx = np.sort(order[self.n_train : self.n_train + self.n_val])
        self.test_idx = np.sort(order[self.n_train + self.n_val :])
        self.train_pairs = self.source.split_pairs(self.train_idx)

    def train_dataloader(self) -> Iterable[dict[str, torch.Tensor]]:
        """Shuffled minibatches over the training cells (with MNN partners if any)."""
        return _Loader(self.source, self.train_idx, self.batch_size, self._rng, self.train_pairs)

    def val_dataloader(self) -> Iterable[dict[str, torch.Tensor]]:
        """Minibatches over the validation cells; empty when there is no validation split."""
        if self.n_val == 0:
            return []
        return _Loader(self.source, self.val_idx, self.batch_size)


def resolve_seed(seed: int | None) -> int:
    """``seed``, else ``scvi.settings.seed``, else 0: the seed training runs with.

    Examples
    --------
    >>> from scetm_mnn.train import resolve_seed
    >>> resolve_seed(7)
    7
    """
    if seed is not None:
        return int(seed)
    return 0 if settings.seed is None else int(settings.seed)
