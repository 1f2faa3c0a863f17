"""Fit the corrector with ``devices=N, strategy="ddp"``, then a topic model in the same processes.

Run as a script: ``python tests/ddp_corrector_worker.py OUT_DIR DEVICES``. Lightning Fabric
starts the other ranks by running this script again, at ``mnn_correct``; the topic model's
``train(devices=N, strategy="ddp")`` then runs in those processes. Each rank writes
``OUT_DIR/rank{r}.npz`` (its corrector, pairs, outputs and topic model), and points the
library's own writes (the corrector's checkpoint and save, the model's save) at
``OUT_DIR/*_rank{r}``, so that ``tests/test_ddp_corrector.py`` can tell which rank wrote.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import scetm_mnn as sm

N_CELLS, N_GENES, N_BATCHES = 1200, 200, 3
CORRECT = {
    "n_comps": 20,
    "n_search_comps": 20,
    "network": "bottleneck",
    "n_hidden": 64,
    "random_state": 0,
}
"""The bottleneck network, with the default budget (20 epochs of 512 pairs in minibatches of
256, an even split on 2 ranks). The residual network is not compared: at this size its fit
is at the mercy of float rounding, in one process too (its kNN batch entropy here is 0.72
on one thread and 0.76 on two), while the bottleneck's moves by 0.0001."""
MODEL_EPOCHS, MODEL_BATCH = 3, 128


def data():
    """Preprocessed simulated cells in three batches (three batch pairs to search)."""
    adata = sm.datasets.simulate(
        n_cells=N_CELLS, n_genes=N_GENES, n_batches=N_BATCHES, n_cell_types=4, random_state=0
    )
    sm.pp.preprocess(adata, n_top_genes=N_GENES, batch_key="batch")
    return adata


def correct(adata, **runtime):
    """``mnn_correct`` with the worker's parameters; returns the corrector and seconds."""
    tic = time.perf_counter()
    corrector = sm.pp.mnn_correct(
        adata, "batch", dense_layer=True, return_corrector=True, **CORRECT, **runtime
    )
    return corrector, time.perf_counter() - tic


def flat(module: torch.nn.Module) -> np.ndarray:
    """Every parameter and buffer of ``module``, in one float64 vector."""
    return torch.cat([t.detach().double().flatten() for t in module.state_dict().values()]).numpy()


def pair_list(adata) -> np.ndarray:
    """The MNN pairs (row < col), sorted."""
    pairs = adata.obsp["mnn_corrected_pairs"].tocoo()
    upper = pairs.row < pairs.col
    return np.unique(np.stack([pairs.row[upper], pairs.col[upper]], axis=1), axis=0)


if __name__ == "__main__":
    torch.set_num_threads(1)
    out, devices = Path(sys.argv[1]), int(sys.argv[2])
    rank = int(os.environ.get("LOCAL_RANK", 0))  # set by the launcher for ranks >= 1
    adata = data()
    corrector, seconds = correct(
        adata,
        devices=devices,
        strategy="ddp",
        accelerator="cpu",
        ckpt_path=out / f"ckpt_rank{rank}",
    )
    corrector.save(out / f"saved_rank{rank}")
    sm.model.BatchCorrectedSCETM.setup_anndata(
        adata, layer="counts", batch_key="batch", corrected_layer="mnn_corrected"
    )
    model = sm.model.BatchCorrectedSCETM(adata, n_topics=6, n_emb=16)
    model.train(
        max_epochs=MODEL_EPOCHS,
        batch_size=MODEL_BATCH,
        accelerator="cpu",
        devices=devices,
        strategy="ddp",
        seed=0,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model.save(out / f"model_rank{rank}")
    np.savez(
        out / f"rank{rank}.npz",
        world_size=torch.distributed.get_world_size(),
        net=flat(corrector.net_),
        space=flat(corrector.space_),
        pairs=pair_list(adata),
        layer=adata.layers["mnn_corrected"],
        latent=adata.obsm["X_mnn_corrected"],
        history=np.asarray(corrector.history_),
        fit_id=corrector._fit_id,
        seconds=seconds,
        timing=[adata.uns["mnn_corrected"]["timing"][k] for k in ("pairs", "train")],
        model=flat(model.module),
        model_steps=model.trainer.global_step,
        model_world_size=model.trainer.world_size,
    )
