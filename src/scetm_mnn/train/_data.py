"""A preloaded data path: whole minibatches sliced from CSR, no per-cell ``__getitem__``.

scvi-tools' default loader builds each minibatch from per-cell lookups; for a small linear
decoder that framework overhead dominates the step. Here the registered matrix is held
once (sparse stays sparse) and each step slices its rows at once and densifies only them.
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning.pytorch as pl
import numpy as np
import torch
from scipy import sparse
from scvi import REGISTRY_KEYS, settings
from scvi.data import AnnDataManager

from ..module import MNN_PAIRS_KEY

DENSE_PRELOAD_BYTES = 256 * 2**20
"""Sparse data up to this dense size (float32) is densified once; larger stays CSR."""


class MinibatchSource:
    """Registered data held in memory, sliced into minibatch tensors.

    Parameters
    ----------
    x
        Cells × genes, dense or sparse. Held as float32: dense when it fits in
        :data:`DENSE_PRELOAD_BYTES`, else CSR with only each minibatch densified.
    batch_index
        Integer batch code per cell, or ``None``.
    mnn_pairs
        Optional symmetric cells × cells matrix whose non-zeros are MNN pairs. When given,
        each cell of a training minibatch that has partners brings one partner, drawn at
        random, into the same minibatch, and the pairs are passed as ``tensors["mnn_pairs"]``.
    """

    def __init__(self, x, batch_index: np.ndarray | None = None, mnn_pairs=None):
        if sparse.issparse(x) and np.prod(x.shape) * 4 <= DENSE_PRELOAD_BYTES:
            self.x = np.asarray(x.toarray(), dtype=np.float32)
        elif sparse.issparse(x):
            self.x = sparse.csr_matrix(x, dtype=np.float32)
        else:
            self.x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        self.n_obs = self.x.shape[0]
        self.batch_index = (
            None
            if batch_index is None
            else torch.as_tensor(np.asarray(batch_index).reshape(-1, 1), dtype=torch.long)
        )
        self.pairs = None if mnn_pairs is None else sparse.csr_matrix(mnn_pairs)

    def tensors(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The minibatch for ``rows``: dense ``X`` and the batch index."""
        chunk = self.x[rows]
        dense = chunk.toarray() if sparse.issparse(chunk) else chunk
        out = {REGISTRY_KEYS.X_KEY: torch.from_numpy(dense)}
        if self.batch_index is not None:
            out[REGISTRY_KEYS.BATCH_KEY] = self.batch_index[torch.from_numpy(rows)]
        return out

    def with_partners(
        self, rows: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Add one random MNN partner per paired cell; return rows and (P × 2) pair positions."""
        degree = np.diff(self.pairs.indptr)[rows]
        has = np.flatnonzero(degree > 0)
        if has.size == 0:
            return rows, np.zeros((0, 2), dtype=np.int64)
        offsets = (rng.random(has.size) * degree[has]).astype(np.int64)
        partners = self.pairs.indices[self.pairs.indptr[rows[has]] + offsets]
        position = np.full(self.n_obs, -1, dtype=np.int64)
        position[rows] = np.arange(rows.size)
        missing = np.unique(partners[position[partners] < 0])
        position[missing] = rows.size + np.arange(missing.size)
        pairs = np.stack([has, position[partners]], axis=1)
        return np.concatenate([rows, missing]), pairs

    def iterate(
        self,
        indices: np.ndarray,
        batch_size: int,
        rng: np.random.Generator | None = None,
        with_pairs: bool = False,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Minibatches over ``indices``, shuffled when ``rng`` is given."""
        order = rng.permutation(indices) if rng is not None else np.asarray(indices)
        for start in range(0, order.size, batch_size):
            rows = order[start : start + batch_size]
            if rng is not None and rows.size < 2 and order.size >= 2:
                continue  # BatchNorm cannot train on a single cell
            if with_pairs and self.pairs is not None and rng is not None:
                rows, pairs = self.with_partners(rows, rng)
                batch = self.tensors(rows)
                batch[MNN_PAIRS_KEY] = torch.from_numpy(pairs)
                yield batch
            else:
                yield self.tensors(rows)


class _Loader:
    """A re-iterable, sized view of one data split for Lightning."""

    def __init__(self, source, indices, batch_size, rng=None, with_pairs=False):
        self.source, self.indices, self.batch_size = source, indices, batch_size
        self.rng, self.with_pairs = rng, with_pairs

    def __len__(self) -> int:
        n = len(self.indices)
        full, rest = divmod(n, self.batch_size)
        return full + int(rest >= 2 or (rest == 1 and self.rng is None) or n == 1)

    def __iter__(self):
        return self.source.iterate(self.indices, self.batch_size, self.rng, self.with_pairs)


def source_from_manager(adata_manager: AnnDataManager, mnn_pairs=None) -> MinibatchSource:
    """A :class:`MinibatchSource` over the data registered in ``adata_manager``."""
    registry = adata_manager.data_registry
    batch = (
        adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)
        if REGISTRY_KEYS.BATCH_KEY in registry
        else None
    )
    return MinibatchSource(
        adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY), batch, mnn_pairs=mnn_pairs
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
        Fraction of cells to train on; ``None`` means all of them.
    validation_size
        Fraction for validation; ``None`` means the rest.
    shuffle_set_split
        Shuffle cells before splitting.
    batch_size
        Cells per minibatch.
    mnn_pairs
        Optional MNN pair matrix; partners join each training minibatch.
    **kwargs
        Loader options of scvi's splitter (``load_sparse_tensor``, ``pin_memory``, ...);
        accepted and ignored.
    """

    def __init__(
        self,
        adata_manager: AnnDataManager,
        train_size: float | None = None,
        validation_size: float | None = None,
        shuffle_set_split: bool = True,
        batch_size: int = 2000,
        mnn_pairs=None,
        **kwargs,
    ):
        super().__init__()
        self.adata_manager = adata_manager
        self.batch_size = int(batch_size)
        self.source = source_from_manager(adata_manager, mnn_pairs=mnn_pairs)
        n = self.source.n_obs
        train_size = 1.0 if train_size is None else float(train_size)
        if not 0.0 < train_size <= 1.0:
            raise ValueError(f"train_size must be in (0, 1], got {train_size}.")
        val_size = 1.0 - train_size if validation_size is None else float(validation_size)
        if val_size < 0 or train_size + val_size > 1.0 + 1e-9:
            raise ValueError("train_size + validation_size must not exceed 1.")
        seed = settings.seed
        self._rng = np.random.default_rng(seed)
        order = self._rng.permutation(n) if shuffle_set_split else np.arange(n)
        self.n_train = max(1, round(train_size * n))
        self.n_val = min(n - self.n_train, round(val_size * n))
        self.train_idx = np.sort(order[: self.n_train])
        self.val_idx = np.sort(order[self.n_train : self.n_train + self.n_val])
        self.test_idx = np.sort(order[self.n_train + self.n_val :])

    def train_dataloader(self) -> _Loader:
        """Shuffled minibatches over the training cells (with MNN partners if any)."""
        return _Loader(self.source, self.train_idx, self.batch_size, self._rng, True)

    def val_dataloader(self) -> _Loader | list:
        """Minibatches over the validation cells; empty when there is no validation split."""
        if self.n_val == 0:
            return []
        return _Loader(self.source, self.val_idx, self.batch_size)
