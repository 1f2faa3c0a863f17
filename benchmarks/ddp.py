"""One process against two with Lightning DDP (gloo, one torch thread each), same work.

The data (``--cells`` × 2000 genes, 4 batches, 8 types, ``scetm_mnn.datasets.simulate``
seed 0) are written once to an h5ad file. Each run is a fresh process that reads it,
registers the counts and trains the topic model for ``--epochs`` epochs with a global
minibatch of 256 cells (under DDP each of the 2 ranks takes 128 per step, so both runs
take the same optimizer steps and see the same samples). 5 % of the cells are held out;
their ELBO (``elbo_validation``, the same cells on every rank) and the last epoch's
training reconstruction loss compare the fits. Cells/s counts the training cells seen
per second of ``fit`` (process start-up and data loading excluded; they are listed). A
third run, one process with seed 1, shows how far two seeds of the same run fall apart.

Run: ``.venv/bin/python benchmarks/ddp.py [--cells 100000] [--epochs 3]
[--out benchmarks/results/ddp.md]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH = 256


def worker(path: str, devices: int, epochs: int, seed: int = 0) -> None:
    """Train on ``path`` with ``devices`` processes; rank 0 prints one JSON line."""
    tic = time.perf_counter()
    import anndata as ad
    import torch
    from lightning.pytorch.callbacks import Callback

    torch.set_num_threads(1)
    from scetm_mnn.model import BatchCorrectedSCETM

    class FitClock(Callback):
        def on_fit_start(self, trainer, pl_module):
            self.start = time.perf_counter()

        def on_fit_end(self, trainer, pl_module):
            self.seconds = time.perf_counter() - self.start

    adata = ad.read_h5ad(path)
    BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch")
    model = BatchCorrectedSCETM(adata)
    loaded = time.perf_counter() - tic
    clock = FitClock()
    model.train(
        max_epochs=epochs,
        batch_size=BATCH,
        validation_size=0.05,
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        seed=seed,
        callbacks=[clock],
        check_val_every_n_epoch=epochs,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    if model.trainer.global_rank != 0:
        return
    history = model.history
    n_train = len(model.train_indices)
    print(
        json.dumps(
            {
                "processes": devices,
                "seed": seed,
                "steps": int(model.trainer.global_step),
                "samples seen": int(model.trainer.global_step) * BATCH,
                "start-up s": round(loaded, 1),
                "fit s": round(clock.seconds, 1),
                "cells/s": round(epochs * n_train / clock.seconds),
                "rec. loss (train)": history["reconstruction_loss_train"].iloc[-1, 0],
                "ELBO (held out)": history["elbo_validation"].iloc[-1, 0],
                "rec. loss (held out)": history["reconstruction_loss_validation"].iloc[-1, 0],
            }
        ),
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    """Write the data, run 1 and 2 processes, print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ddp.md"))
    parser.add_argument("--worker", nargs=4, metavar=("PATH", "DEVICES", "EPOCHS", "SEED"))
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], *map(int, args.worker[1:]))
        return
    import pandas as pd

    import scetm_mnn as sm

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "atlas.h5ad"
        sm.datasets.simulate(
            n_cells=args.cells, n_genes=2000, n_batches=4, n_cell_types=8, random_state=0
        ).write_h5ad(path)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        # 1 and 2 processes with seed 0, and 1 process with seed 1: how far two seeds of
        # the same run fall apart, the yardstick for the 1-against-2 difference.
        for devices, seed in ((1, 0), (2, 0), (1, 1)):
            cmd = [sys.executable, __file__, "--worker", str(path)]
            cmd += [str(devices), str(args.epochs), str(seed)]
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode:
                raise RuntimeError(done.stderr[-4000:])
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    one, two, other_seed = rows
    ratio = {
        "speed-up (cells/s)": two["cells/s"] / one["cells/s"],
        "held-out ELBO, 2 vs 1 (relative)": two["ELBO (held out)"] / one["ELBO (held out)"] - 1,
        "held-out rec. loss, 2 vs 1 (relative)": two["rec. loss (held out)"]
        / one["rec. loss (held out)"]
        - 1,
        "held-out ELBO, seed 1 vs seed 0, 1 process (relative)": other_seed["ELBO (held out)"]
        / one["ELBO (held out)"]
        - 1,
        "held-out rec. loss, seed 1 vs seed 0, 1 process (relative)": other_seed[
            "rec. loss (held out)"
        ]
        / one["rec. loss (held out)"]
        - 1,
    }
    text = (
        f"# Data-parallel training: 1 process against 2 (DDP, gloo)\n\n"
        f"`benchmarks/ddp.py --cells {args.cells} --epochs {args.epochs}` on "
        f"{platform.node()} ({os.cpu_count()} cores), one torch thread per process, "
        f"global minibatch {BATCH}.\n\n"
        + table.round(4).to_markdown(index=False)
        + "\n\n"
        + "\n".join(
            f"- {k}: {v:+.4f}" if "relative" in k else f"- {k}: {v:.2f}" for k, v in ratio.items()
        )
        + "\n"
    )
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
