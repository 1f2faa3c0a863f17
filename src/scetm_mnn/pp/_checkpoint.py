"""Checkpoints of the corrector's fit, so that a killed fit resumes where it stopped.

:meth:`~scetm_mnn.pp.MNNCorrector.fit` (and ``fit_transform``, ``mnn_correct``) given a
``ckpt_path`` writes a :class:`FitCheckpoint` there: the MNN pairs once they are found, and
during training the network, the optimizer, the epoch, the early-stopping counters, the
loss history and the minibatch generator's state. Training draws its minibatches from that
one ``torch.Generator`` (nothing else random enters it: no dropout, no numpy or python
``random``), so a fit resumed from the checkpoint of epoch ``k`` takes exactly the steps
the uninterrupted fit took after epoch ``k`` and gives the same corrector. The file is a
dict of tensors and plain values, read with ``torch.load(..., weights_only=True)``, and
every write replaces it atomically (a temporary sibling, fsynced, then renamed): a kill
leaves the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import sparse

from .._atomic import atomic_file
from .._rows import Rows
from ._distributed_fit import RUNTIME

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "corrector_fit.ckpt"
"""Name of the checkpoint file when ``ckpt_path`` is a directory."""
FORMAT = 1
"""Version of the checkpoint's layout; another one is refused."""
INTERVAL_ENV = "SCETM_MNN_CHECKPOINT_INTERVAL"
"""Environment variable: least seconds between two training checkpoints (default
:data:`DEFAULT_INTERVAL`; 0 writes one after every epoch)."""
DEFAULT_INTERVAL = 30.0
"""Least seconds between two training checkpoints. The residual network's checkpoint at
2000 genes is about 400 MB (its weights and Adam's two moments), so one per epoch would
write gigabytes in a fit that takes two minutes; the last epoch is always written."""
_DIGEST_CELLS = 256
"""Cells whose values enter the data's fingerprint (with the batches and the shape)."""


def checkpoint_file(path: str | Path) -> Path:
    """The checkpoint file of ``ckpt_path``.

    The path itself when it has a suffix, else :data:`CHECKPOINT_FILE` in that directory.
    """
    path = Path(path)
    if path.suffix and not path.is_dir():
        return path
    return path / CHECKPOINT_FILE


def fingerprint(params: dict[str, Any], x: Rows, batches: np.ndarray) -> str:
    """What a checkpoint must have been written for: the parameters and the data.

    The data enter by their shape, their batches and the values of their first cells, so a
    checkpoint of other data or other parameters is refused rather than silently resumed.
    ``chunk_size`` and the runtime arguments (``devices``, ``strategy``, ...) do not enter:
    every rank draws the same minibatches from the same generator, so a fit checkpointed
    in some number of processes resumes in any other.
    """
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(x.take(np.arange(min(x.n_obs, _DIGEST_CELLS)))).tobytes())
    digest.update("\x00".join(map(str, batches)).encode())
    record = {k: v for k, v in sorted(params.items()) if k not in ("chunk_size", *RUNTIME)}
    record.update(n_obs=int(x.n_obs), n_vars=int(x.n_vars), data=digest.hexdigest())
    return json.dumps(record, sort_keys=True, default=str)


def _save_atomic(state: dict[str, Any], file: Path) -> None:
    """``torch.save(state, file)`` through a fsynced temporary sibling and a rename."""
    with atomic_file(file, "wb") as handle:
        torch.save(state, handle)


def _interval() -> float:
    value = os.environ.get(INTERVAL_ENV)
    if value is None:
        return DEFAULT_INTERVAL
    try:
        return max(0.0, float(value))
    except ValueError:
        raise ValueError(f"${INTERVAL_ENV} must be a number of seconds, not {value!r}.") from None


class FitCheckpoint:
    """The checkpoint file of one fit: what it holds, and its writes.

    Parameters
    ----------
    path
        ``ckpt_path``: a file, or a directory holding :data:`CHECKPOINT_FILE`.
    print_
        :func:`fingerprint` of the fit.
    resume
        Read the existing checkpoint (none: start afresh). ``False`` ignores it; the first
        write replaces it.
    write
        Write the checkpoint; ``False`` on the ranks other than 0 of a fit in several
        processes, which read it but leave the writing to rank 0.
    """

    def __init__(self, path: str | Path, print_: str, resume: bool, write: bool = True):
        self.file = checkpoint_file(path)
        self.write = bool(write)
        self.fingerprint = print_
        self.state: dict[str, Any] = self._read() if resume else {}
        self.interval = _interval()
        self._written = time.monotonic()

    def _read(self) -> dict[str, Any]:
        if not self.file.exists():
            logger.info("No corrector checkpoint at %s: the fit starts afresh.", self.file)
            return {}
        state = torch.load(self.file, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(
                f"{self.file} is not a corrector checkpoint of layout {FORMAT}; delete it, "
                "or pass resume=False to start the fit afresh."
            )
        if state.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"{self.file} was written by a fit of other data or other parameters; "
                "resume with the same data and parameters, or pass resume=False (or "
                "another ckpt_path) to start afresh."
            )
        logger.info(
            "Resuming the corrector's fit from %s (%s).",
            self.file,
            f"epoch {state['training']['epoch']}" if "training" in state else "pairs found",
        )
        return state

    def _write(self) -> None:
        if not self.write:
            return
        _save_atomic({**self.state, "format": FORMAT, "fingerprint": self.fingerprint}, self.file)
        self._written = time.monotonic()

    def pairs(self) -> tuple[sparse.csr_matrix, float] | None:
        """The saved MNN pair matrix and the seconds its search took, if any."""
        if "pairs" not in self.state:
            return None
        saved = self.state["pairs"]
        shape = tuple(int(n) for n in saved["shape"])
        matrix = sparse.csr_matrix(
            (saved["data"].numpy(), saved["indices"].numpy(), saved["indptr"].numpy()),
            shape=shape,
        )
        return matrix, float(saved["seconds"])

    def save_pairs(self, pairs: sparse.csr_matrix, seconds: float) -> None:
        """Keep the MNN pair matrix (written at once: the search can take minutes)."""
        pairs = sparse.csr_matrix(pairs)
        self.state["pairs"] = {
            "data": torch.from_numpy(np.asarray(pairs.data)),
            "indices": torch.from_numpy(np.asarray(pairs.indices)),
            "indptr": torch.from_numpy(np.asarray(pairs.indptr)),
            "shape": list(pairs.shape),
            "seconds": float(seconds),
        }
        self.state.pop("training", None)
        self._write()

    def training(self) -> dict[str, Any] | None:
        """The saved training state (:func:`~scetm_mnn.pp._training.train_network`'s)."""
        return self.state.get("training")

    def save_training(self, state: dict[str, Any], final: bool) -> None:
        """Keep the training state after an epoch.

        It is written when ``final`` or when ``interval`` seconds have passed since the
        last write.
        """
        if not final and time.monotonic() - self._written < self.interval:
            return
        self.state["training"] = state
        self._write()
