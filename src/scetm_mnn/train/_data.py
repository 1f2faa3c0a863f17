"""A minibatch data path: whole minibatches sliced from the rows, no per-cell ``__getitem__``.

scvi-tools' default loader builds each minibatch from per-cell lookups; for a small linear
decoder that framework overhead dominates the step. Here the registered matrices are
served by ``scetm_mnn._rows.Rows`` (the package's one row-access path, shared with
:mod:`scetm_mnn.pp`): held once in memory (small sparse data densified, larger data kept
CSR) or read from disk for a backed AnnData, and each step reads its rows at once and
densifies only them.
"""

from __future__ import annotations

import logging
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
from ._device import DeviceRows, device_budget, device_bytes

logger = logging.getLogger(__name__)

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


def epoch_order(
    indices: np.ndarray, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> np.ndarray:
    """The training cells that process ``rank`` of ``world_size`` visits in ``epoch``, in order.

    :class:`torch.utils.data.DistributedSampler`'s semantics: one shuffle of ``indices``
    seeded by ``(seed, epoch)`` and shared by all ranks, padded by wrapping around to a
    multiple of ``world_size`` so that every rank gets as many cells (and minibatches), then
    dealt out: rank ``r`` takes positions ``r, r + world_size, ...``. The shards of one
    epoch are disjoint up to the padding (fewer than ``world_size`` cells repeat) and
    together cover ``indices``. With one process it is a plain seeded shuffle.

    Examples
    --------
    >>> import numpy as np
    >>> from scetm_mnn.train import epoch_order
    >>> shards = [epoch_order(np.arange(7), seed=0, epoch=0, rank=r, world_size=2) for r in (0, 1)]
    >>> [len(s) for s in shards]
    [4, 4]
    >>> sorted(set(np.concatenate(shards).tolist()))
    [0, 1, 2, 3, 4, 5, 6]
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"Need 0 <= rank < world_size, got rank={rank}, world_size={world_size}.")
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(np.asarray(indices))
    total = -(-order.size // world_size) * world_size
    if total > order.size:
        order = np.concatenate([order, np.resize(order, total - order.size)])
    return order[rank::world_size]


class _Loader:
    """A re-iterable, sized view of one data split for Lightning.

    Training loaders (``train=True``) visit :func:`epoch_order`'s shard of the epoch and
    process (from ``splitter``'s trainer); others visit ``indices`` in order. Lightning
    tells the loader the epoch through ``sampler.set_epoch``, as it does a
    :class:`~torch.utils.data.DistributedSampler` (so a run resumed from a checkpoint
    visits what the uninterrupted run would).
    """

    def __init__(self, splitter, indices, train=False, pairs=None):
        self.splitter, self.indices, self.train, self.pairs = splitter, indices, train, pairs
        self.epoch = 0
        if train:  # Lightning calls ``sampler.set_epoch`` at every epoch start
            self.sampler, self.batch_sampler = self, None

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose shuffle the next pass visits."""
        self.epoch = int(epoch)

    def _order(self) -> np.ndarray:
        if not self.train:
            return self.indices
        rank, world_size = self.splitter.rank_and_world_size()
        return epoch_order(self.indices, self.splitter.seed, self.epoch, rank, world_size)

    def _batch_size(self) -> int:
        """Cells per step on this rank: the global minibatch shared out over the ranks."""
        if not self.train:
            return self.splitter.batch_size
        world_size = self.splitter.rank_and_world_size()[1]
        return -(-self.splitter.batch_size // world_size)

    def __len__(self) -> int:
        n = len(self.indices)
        if self.train:
            world_size = self.splitter.rank_and_world_size()[1]
            n = -(-n // world_size)
        full, rest = divmod(n, self._batch_size())
        return full + int(rest >= 2 or (rest == 1 and not self.train) or n == 1)

    def __iter__(self):
        # A generator: the epoch is read at the first minibatch, not when Lightning asks
        # for the iterator (which, on resuming, it does before ``set_epoch``).
        rng = None
        if self.train:
            rank = self.splitter.rank_and_world_size()[0]
            rng = np.random.default_rng([self.splitter.seed, self.epoch, rank, 1])
        source = self.splitter.source
        yield from source.iterate(self._order(), self._batch_size(), rng, self.pairs)


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
    >>> import scetm_mnn as sm
    >>> from scetm_mnn.train import source_from_manager
    >>> adata = sm.datasets.simulate(n_cells=200, n_genes=50, random_state=0)
    >>> sm.model.BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch")
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
        Cells sampled per optimizer step (256, as
        :meth:`~scetm_mnn.model.BatchCorrectedSCETM.train`), over all processes under DDP.
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
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(n) if shuffle_set_split else np.arange(n)
        self.n_train = max(1, round(train_size * n))
        if self.n_train < 2:
            raise ValueError(
                f"Training needs at least 2 cells, got {self.n_train} (of {n}): BatchNorm "
                "cannot train on a single cell. Train on more cells (or a larger train_size)."
            )
        self.n_val = min(n - self.n_train, round(val_size * n))
        self.train_idx = np.sort(order[: self.n_train])
        self.val_idx = np.sort(order[self.n_train : self.n_train + self.n_val])
        self.test_idx = np.sort(order[self.n_train + self.n_val :])
        self.train_pairs = self.source.split_pairs(self.train_idx)

    def setup(self, stage: str | None = None) -> None:
        """Place the data for the trainer's device (:meth:`MinibatchSource.place`)."""
        trainer = self.trainer
        if trainer is None:
            return
        device = trainer.strategy.root_device
        if device.type != "cpu":
            placement = self.source.place(device)
            logger.info("Minibatches for %s are served from the %s.", device, placement)

    def rank_and_world_size(self) -> tuple[int, int]:
        """The global rank of this process and the number of processes (``(0, 1)`` alone)."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def train_dataloader(self) -> Iterable[dict[str, torch.Tensor]]:
        """Shuffled minibatches over this process's shard of the training cells.

        Each epoch reshuffles (seeded by the seed and the epoch, :func:`epoch_order`); under
        DDP every rank gets its own disjoint shard, of the same length on all ranks, and
        ``batch_size`` stays the global minibatch: each of N ranks takes
        ``ceil(batch_size / N)`` cells per step, so N processes take the optimizer steps
        one process would, each on a share of the cells. MNN partners come from all
        training cells, whichever shard they are in.
        """
        return _Loader(self, self.train_idx, train=True, pairs=self.train_pairs)

    def val_dataloader(self) -> Iterable[dict[str, torch.Tensor]]:
        """Minibatches over the validation cells, the same on every rank (empty without any)."""
        if self.n_val == 0:
            return []
        return _Loader(self, self.val_idx)


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
