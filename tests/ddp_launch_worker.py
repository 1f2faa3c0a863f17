"""A small DDP training as users launch it: by Lightning, by ``torchrun``, or failing.

Run as ``python tests/ddp_launch_worker.py OUT_DIR DEVICES NUM_NODES [raise|hang RANK]``
(Lightning starts the other local ranks by running this script again), or under
``torchrun --nnodes=2 --nproc-per-node=1 ... tests/ddp_launch_worker.py OUT_DIR 1 2``.
Each rank writes ``OUT_DIR/rank{r}.json`` with what it saw; rank 0 saves the model in
``OUT_DIR/model``. With ``raise RANK`` that rank raises in its third training step; with
``hang RANK`` it stops there for ten minutes, which the collectives' timeout must end.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

import scetm_mnn as sm

TIMEOUT_S = 30.0
"""The collectives' timeout here (the package's default is ``DEFAULT_TIMEOUT_S``)."""


class FailAt(Callback):
    """Raise (or hang) in ``rank``'s ``step``-th training step."""

    def __init__(self, how: str, rank: int, step: int = 2):
        self.how, self.rank, self.step = how, rank, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            if self.how == "hang":
                time.sleep(600)
            raise RuntimeError(f"rank {self.rank} fails on purpose")


def main(out: Path, devices: int, num_nodes: int, fail: tuple[str, int] | None) -> None:
    torch.set_num_threads(1)
    adata = sm.datasets.simulate(n_cells=400, n_genes=50, n_batches=2, random_state=0)
    sm.model.BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch")
    model = sm.model.BatchCorrectedSCETM(adata, n_topics=4, n_emb=8)
    model.train(
        max_epochs=3,
        batch_size=64,
        accelerator="cpu",
        devices=devices,
        num_nodes=num_nodes,
        strategy=sm.train.ddp_strategy(timeout=TIMEOUT_S),
        callbacks=[] if fail is None else [FailAt(*fail)],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer = model.trainer
    (out / f"rank{trainer.global_rank}.json").write_text(
        json.dumps(
            {
                "world_size": trainer.world_size,
                "node_rank": trainer.node_rank,
                "steps": trainer.global_step,
                "history_rows": len(model.history.get("elbo_train", [])),
                "latent_sum": float(model.get_latent_representation().sum()),
            }
        )
    )
    model.save(out / "model", overwrite=True)  # rank 0 only


if __name__ == "__main__":
    main(
        Path(sys.argv[1]),
        int(sys.argv[2]),
        int(sys.argv[3]),
        (sys.argv[4], int(sys.argv[5])) if len(sys.argv) > 5 else None,
    )
