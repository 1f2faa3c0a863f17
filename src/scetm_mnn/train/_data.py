"""The train/validation split and the loaders Lightning iterates: a minibatch data path.

:class:`PreloadedDataSplitter` splits the cells and hands Lightning loaders that slice
whole minibatches from a :class:`~scetm_mnn.train.MinibatchSource` (:mod:`._source`), in
the order :func:`epoch_order` deals out to each process; no per-cell ``__getitem__``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import lightning.pytorch as pl
import numpy as np
import torch
from scvi import settings
from scvi.data import AnnDataManager

from .._distributed import check_world_size
from .._docstrings import shared_docstring
from ._source import source_from_manager

logger = logging.getLogger(__name__)


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


@shared_docstring
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
    %(registered)s
    >>> from scetm_mnn.train import PreloadedDataSplitter
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
        """Place the data for the trainer's device (:meth:`MinibatchSource.place`).

        In a script that already runs in several processes (e.g. started by
        ``mnn_correct(devices=N)``), a trainer for another number of them is refused.
        """
        trainer = self.trainer
        if trainer is None:
            return
        check_world_size(int(trainer.world_size), "model.train")
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
