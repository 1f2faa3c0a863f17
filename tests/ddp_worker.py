"""Train on simulated data with ``strategy="ddp"`` (one CPU process per device, gloo).

Run as a script: ``python tests/ddp_worker.py OUT_DIR DEVICES``. Lightning starts the other
ranks by running this script again. Each rank writes ``OUT_DIR/rank{r}.npz`` with the cells
it was served in each epoch, its parameters after training and its latent representation
(used by ``tests/test_ddp.py``).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

import scetm_mnn as sm
from scetm_mnn.train import MinibatchSource, _data

N_CELLS, N_GENES, BATCH_SIZE, N_EPOCHS = 1200, 100, 64, 20
"""1200 cells, a global minibatch of 64 (32 per rank on 2 ranks), 20 epochs: 380 steps."""


BATCH_EFFECT = 0.3
"""Milder than ``simulate``'s default 0.5, so that the single-process reference is not at the
mercy of its seed: at 0.5 the best Leiden ARI of the latent over seeds 0-4 was 0.75, 1.00,
0.99, 0.86 and 0.96 (the batches of one type stay apart in some runs); at 0.3 it was 1.00
for each. The test compares data-parallel training with one process, not the original
mode's integration."""


def data():
    """The simulated data set both the worker and the test use."""
    return sm.datasets.simulate(
        n_cells=N_CELLS,
        n_genes=N_GENES,
        n_batches=2,
        n_cell_types=4,
        batch_effect=BATCH_EFFECT,
        random_state=0,
    )


class StepLosses(Callback):
    """Each optimizer step's loss over the global minibatch (the mean over the ranks)."""

    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"].detach().clone()
        if trainer.world_size > 1:
            torch.distributed.all_reduce(loss)
            loss /= trainer.world_size
        self.losses.append(float(loss))


def train(devices: int, strategy: str = "auto", record=None, seed: int = 0, plugins=None):
    """A trained model, its data and its per-step losses; served rows go into ``record``.

    The caller sets the thread count (one, as each rank has; the test module's
    ``one_thread`` fixture restores it afterwards).
    """
    adata = data()
    sm.model.BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch")
    model = sm.model.BatchCorrectedSCETM(adata, n_topics=6, n_emb=16)
    if record is not None:
        order, served, epoch = _data.epoch_order, MinibatchSource.tensors, [0]

        def epoch_order(indices, seed, current, *args, **kwargs):
            epoch[0] = int(current)
            return order(indices, seed, current, *args, **kwargs)

        def tensors(self, rows):
            if model.module.training:
                record[epoch[0]].extend(np.asarray(rows).tolist())
            return served(self, rows)

        _data.epoch_order, MinibatchSource.tensors = epoch_order, tensors
    steps = StepLosses()
    model.train(
        max_epochs=N_EPOCHS,
        batch_size=BATCH_SIZE,
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        seed=seed,
        callbacks=[steps],
        plugins=plugins,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return model, adata, steps.losses


def last(model, metric: str) -> float:
    """The metric's value in the last epoch of ``model.history``."""
    return float(model.history[metric][metric].iloc[-1])


if __name__ == "__main__":
    torch.set_num_threads(1)
    out, devices = Path(sys.argv[1]), int(sys.argv[2])
    record: dict[int, list[int]] = defaultdict(list)
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    model, adata, losses = train(devices, "ddp", record, seed=seed)
    rank = model.trainer.global_rank
    params = torch.cat([p.detach().flatten() for p in model.module.parameters()]).numpy()
    np.savez(
        out / f"rank{rank}.npz",
        params=params,
        steps=model.trainer.global_step,
        latent=model.get_latent_representation(),
        history=len(model.history.get("elbo_train", [])),
        losses=np.asarray(losses),
        reconstruction=last(model, "reconstruction_loss_train") if rank == 0 else np.nan,
        **{f"epoch{e}": np.asarray(rows) for e, rows in record.items()},
    )
    model.save(out / "model", overwrite=True)
