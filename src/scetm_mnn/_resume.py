"""The state of a pipeline run in its output folder, so that a killed run resumes.

:func:`~scetm_mnn._pipeline.run_pipeline` with an ``out`` folder keeps its state in
``out/checkpoints/`` (:class:`RunState`): ``state.json`` (the run's fingerprint, its
finished phases and their costs) and what each finished phase produced: the preprocessed
data (``preprocessed.h5ad``), the corrected data (``corrected.h5ad``; the corrector's own
checkpoint, ``corrector_fit.ckpt``, while it trains), the topic model's Lightning
checkpoint while it trains (``topic_model.ckpt``) and the trained model (``model/``),
then the latent (``latent.npz``). ``resume=True`` skips the finished phases, reading what
they produced, and continues the unfinished one from its checkpoint; the phases after it
run as they would have. Every file is written to a temporary sibling and renamed into
place (Lightning's checkpoint through its own transaction), and ``state.json`` names a
phase only after its files are in place, so a kill at any moment leaves a state that
resumes to the uninterrupted run's result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
from scvi.train import SaveCheckpoint

from ._atomic import atomic_file, atomic_path, write_text
from ._h5ad import in_memory_parts, open_backed

logger = logging.getLogger(__name__)

STATE_DIR = "checkpoints"
"""The folder of the run's state inside ``out``."""
FORMAT = 1
"""Version of ``state.json``'s layout."""


def input_fingerprint(adata: ad.AnnData, batch_key: str) -> str:
    """The input by its shape, its cell and gene names and its batches."""
    digest = hashlib.sha256()
    for values in (adata.obs_names, adata.var_names, adata.obs[batch_key].astype(str)):
        digest.update("\x00".join(map(str, values)).encode())
    return f"{adata.n_obs}x{adata.n_vars}:{digest.hexdigest()}"


class _EpochCheckpoint(SaveCheckpoint):
    """A Lightning checkpoint after every epoch, and nothing else.

    scvi-tools' trainer adds its own :class:`~scvi.train.SaveCheckpoint` (a model folder in
    ``./scvi_log`` per checkpoint) to any run with checkpoints unless one is given; this
    one is that, without the model folders.
    """

    def on_save_checkpoint(self, trainer, *args) -> None:
        """No model folder: the Lightning checkpoint holds everything a resume needs."""


class RunState:
    """The finished phases of a run in ``out`` and the files they left.

    Parameters
    ----------
    out
        The run's output folder; ``None``: no state (nothing is kept or resumed).
    fingerprint
        What the run is: its arguments and its input (a state of another run is refused).
    resume
        Continue the run whose state is in ``out``; ``False`` starts afresh (the old
        state is replaced as the new run goes).
    write
        Write the state; ``False`` in the processes other than rank 0 of a run in several,
        which read it (to resume as rank 0 does) but leave every write to rank 0.
    """

    def __init__(
        self,
        out: str | Path | None,
        fingerprint: dict[str, Any],
        resume: bool,
        write: bool = True,
    ):
        self.enabled = out is not None
        self.write = bool(write)
        self.resume = bool(resume)
        if resume and out is None:
            raise ValueError("resume=True needs the out folder of the run to resume.")
        self.dir = Path(out) / STATE_DIR if out is not None else None
        self.fingerprint = json.loads(json.dumps(fingerprint, default=str))
        self.done: list[str] = []
        self.costs: list[dict[str, Any]] = []
        if self.enabled and resume:
            self._read()
        elif self.enabled and self.write and self.dir.exists():
            shutil.rmtree(self.dir)  # a fresh run: the old state must not be resumed

    def _read(self) -> None:
        file = self.dir / "state.json"
        if not file.exists():
            logger.info("No run to resume in %s: starting from the beginning.", self.dir)
            return
        state = json.loads(file.read_text())
        if state.get("format") != FORMAT or state.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"The run in {self.dir.parent} was started with other arguments or another "
                "input; resume it with the same ones, or run without resume (or with "
                "another output folder) to start afresh."
            )
        self.done, self.costs = list(state["done"]), list(state["costs"])
        logger.info("Resuming the run in %s after: %s.", self.dir.parent, ", ".join(self.done))

    def clear(self) -> None:
        """Delete the state: the run finished, its outputs are in place."""
        if self.enabled and self.write:
            shutil.rmtree(self.dir, ignore_errors=True)

    def path(self, name: str) -> Path | None:
        """The state file ``name`` (``None`` without state)."""
        return None if self.dir is None else self.dir / name

    def finished(self, phase: str) -> bool:
        """Whether ``phase`` finished in the run being resumed (or in this one)."""
        return phase in self.done

    def finish(self, phase: str, costs: list[dict[str, Any]], drop: tuple[str, ...] = ()) -> None:
        """Record ``phase`` as finished, with the cost rows so far.

        Then delete ``drop``, state files that no later phase needs.
        """
        if not self.enabled:
            return
        self.done.append(phase)
        self.costs = [dict(row) for row in costs]
        if not self.write:
            return
        state = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "done": self.done,
            "costs": self.costs,
        }
        write_text(self.dir / "state.json", json.dumps(state, indent=1))
        for name in drop:
            target = self.dir / name
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)

    def write_data(self, name: str, adata: ad.AnnData) -> None:
        """Write ``adata`` to the state file ``name`` (an h5ad).

        Of a backed AnnData only what is held in memory is written (annotations, ``obsm``,
        ``obsp``, ``varm``, ``uns`` and the layers added since it was opened): its matrices
        stay in its own file, which :meth:`read_data` opens again.
        """
        if not self.enabled or not self.write:
            return
        if adata.isbacked:
            parts, added = in_memory_parts(adata)
            adata = ad.AnnData(**parts, layers=added)
        with atomic_path(self.dir / name) as tmp:
            adata.write_h5ad(tmp)

    def read_data(self, name: str, backed_on: Path | None = None) -> ad.AnnData:
        """Read the state file ``name`` (an h5ad) into memory.

        With ``backed_on``, the data whose annotations :meth:`write_data` kept: that file
        opened ``backed="r"``, with the state file's annotations put back.
        """
        saved = ad.read_h5ad(self.dir / name)
        if backed_on is None:
            return saved
        data = open_backed(backed_on)
        data.obs, data.var, data.uns = saved.obs, saved.var, saved.uns
        for key in ("obsm", "varm", "obsp", "layers"):
            getattr(data, key).update(dict(getattr(saved, key)))
        return data

    def write_model(self, model) -> None:
        """Save the trained model to ``model/`` (through a temporary sibling folder)."""
        if not self.enabled or not self.write:
            return
        model.save(self.dir / "model", overwrite=True)  # atomic: a whole folder or none

    def read_model(self, cls, adata: ad.AnnData):
        """Load the trained model of ``model/`` on ``adata``."""
        return cls.load(self.dir / "model", adata=adata)

    def write_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        """Write ``arrays`` to the state file ``name`` (an ``.npz``)."""
        if not self.enabled or not self.write:
            return
        with atomic_file(self.dir / name, "wb") as handle:
            np.savez(handle, **arrays)

    def read_arrays(self, name: str) -> dict[str, np.ndarray]:
        """Read the arrays of the state file ``name``."""
        with np.load(self.dir / name, allow_pickle=False) as saved:
            return {key: saved[key] for key in saved.files}

    def topic_model_arguments(self) -> dict[str, Any]:
        """``train`` arguments: a checkpoint every epoch, and ``ckpt_path`` to resume."""
        if not self.enabled:
            return {}
        checkpoint = _EpochCheckpoint(
            dirpath=self.dir,
            monitor=None,
            filename="topic_model",
            every_n_epochs=1,
            save_top_k=1,
            enable_version_counter=False,
        )
        arguments: dict[str, Any] = {"callbacks": [checkpoint]}
        last = self.dir / "topic_model.ckpt"
        if self.resume and last.exists():
            arguments["ckpt_path"] = str(last)
        return arguments
