"""Data-parallel training (Lightning DDP, gloo on the CPU) against one process, same work.

The data (``--cells`` × 2000 genes, 4 batches, 8 types, ``scetm_mnn.datasets.simulate``
seed 0) are written once to an h5ad file. Each run is a fresh process (``--worker``) that
reads it, registers the counts and trains the default topic model for ``--epochs`` epochs
at a global minibatch of ``--batch-size`` cells (the seed's 2,000 by default; under DDP
each of the 2 ranks takes half, so every run takes the same optimizer steps over the same
samples). The runs:

- 1 process × 1 torch thread and 2 processes × 1 thread, for each of ``--seeds`` seeds
  (how far seeds fall apart is the yardstick for the fit); the 2 processes share
  BatchNorm statistics and random draws (the default, ``scetm_mnn.train.SyncRanks``);
- 1 process × 2 threads (seed 0);
- with ``--ablation`` also 2 processes × 1 thread without
  sharing (each rank normalises over its own half of the minibatch and draws its own noise),
  and with the gradients all-reduced in float16 (torch's ``fp16_compress_hook``; its
  bfloat16 twin needs CUDA).

5 % of the cells are held out; their ELBO and reconstruction loss (``elbo_validation``,
the same cells on every rank) compare the fits. Cells/s counts the training cells seen
per second of ``fit`` (start-up and data loading excluded; listed).

Run: ``.venv/bin/python benchmarks/ddp.py [--cells 100000] [--epochs 6]
[--batch-size 2000] [--seeds 3] [--ablation] [--out benchmarks/results/ddp.md]``
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


def runs(seeds: int, ablation: bool) -> list[tuple[int, int, int, bool, str]]:
    """(processes, threads per process, seed, layers shared, gradient hook) of each run."""
    out = []
    for seed in range(seeds):  # 1 and 2 processes, paired by seed
        out += [(1, 1, seed, True, "none"), (2, 1, seed, True, "none")]
    out.append((1, 2, 0, True, "none"))
    if ablation:
        out += [(2, 1, 0, False, "none"), (2, 1, 0, True, "fp16")]
    return out


def worker(
    path: str,
    devices: int,
    threads: int,
    epochs: int,
    batch: int,
    seed: int,
    sync: bool,
    hook: str,
) -> None:
    """Train on ``path``; rank 0 prints one JSON line."""
    tic = time.perf_counter()
    import anndata as ad
    import torch
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.plugins import LayerSync

    torch.set_num_threads(threads)
    from scetm_mnn.model import BatchCorrectedSCETM

    class FitClock(Callback):
        def on_fit_start(self, trainer, pl_module):
            self.start = time.perf_counter()
            if hook == "fp16" and trainer.world_size > 1:
                from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

                trainer.strategy.model.register_comm_hook(None, default_hooks.fp16_compress_hook)

        def on_fit_end(self, trainer, pl_module):
            self.seconds = time.perf_counter() - self.start

    class PerRank(LayerSync):  # the ablation: BatchNorm over each rank's own cells
        def apply(self, model):
            return model

        def revert(self, model):
            return model

    adata = ad.read_h5ad(path)
    BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch")
    model = BatchCorrectedSCETM(adata)
    loaded = time.perf_counter() - tic
    clock = FitClock()
    model.train(
        max_epochs=epochs,
        batch_size=batch,
        validation_size=0.05,
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        seed=seed,
        callbacks=[clock],
        plugins=None if sync else [PerRank()],
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
                "threads": threads,
                "seed": seed,
                "ranks share": ("BatchNorm, noise" if sync else "nothing") if devices > 1 else "",
                "hook": hook if devices > 1 else "",
                "steps": int(model.trainer.global_step),
                "samples seen": int(model.trainer.global_step) * batch,
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


def _relative(a: dict, b: dict, key: str) -> float:
    return a[key] / b[key] - 1


def summary(rows: list[dict]) -> dict[str, float]:
    """Speed-ups and fit differences between the runs (relative differences are signed)."""
    import numpy as np

    def find(processes, threads, seed=0, shared="BatchNorm, noise", hook="none"):
        for row in rows:
            if (row["processes"], row["threads"], row["seed"]) == (processes, threads, seed) and (
                processes == 1 or (row["ranks share"], row["hook"]) == (shared, hook)
            ):
                return row
        return None

    one, two_threads, ddp = find(1, 1), find(1, 2), find(2, 1)
    seeds = sorted({row["seed"] for row in rows if row["processes"] == 1 and row["threads"] == 1})
    ones = [find(1, 1, s) for s in seeds]
    twos = [find(2, 1, s) for s in seeds]
    out = {
        "held-out ELBO, 1 process × 2 threads vs × 1 thread, seed 0 (relative; rounding only)": (
            _relative(two_threads, one, "ELBO (held out)")
        ),
        "2 processes × 1 thread against 1 × 1 (cells/s)": ddp["cells/s"] / one["cells/s"],
        "2 processes × 1 thread against 1 × 2 threads (cells/s)": ddp["cells/s"]
        / two_threads["cells/s"],
        "1 process × 2 threads against 1 × 1 (cells/s)": two_threads["cells/s"] / one["cells/s"],
    }
    for key, name in (("ELBO (held out)", "ELBO"), ("rec. loss (held out)", "rec. loss")):
        a = np.array([r[key] for r in ones])
        b = np.array([r[key] for r in twos])
        out[f"held-out {name}, 2 processes vs 1, seed 0 (relative)"] = b[0] / a[0] - 1
        if len(seeds) > 1:
            out[f"held-out {name}, 2 processes vs 1, mean over {len(seeds)} seeds (relative)"] = (
                b.mean() / a.mean() - 1
            )
            out[f"held-out {name}, 1 process, sd over {len(seeds)} seeds (relative)"] = (
                a.std(ddof=1) / a.mean()
            )
            out[f"held-out {name}, 2 processes, sd over {len(seeds)} seeds (relative)"] = (
                b.std(ddof=1) / b.mean()
            )
    if (alone := find(2, 1, shared="nothing")) is not None:
        out["held-out ELBO, 2 processes sharing nothing vs 1, seed 0 (relative)"] = _relative(
            alone, one, "ELBO (held out)"
        )
    if (fp16 := find(2, 1, hook="fp16")) is not None:
        out["held-out ELBO, 2 processes with fp16 gradients vs 1, seed 0 (relative)"] = _relative(
            fp16, one, "ELBO (held out)"
        )
        out["2 processes with fp16 gradients against 1 × 1 (cells/s)"] = (
            fp16["cells/s"] / one["cells/s"]
        )
    return out


def main(argv: list[str] | None = None) -> None:
    """Write the data, run every configuration, print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the 1-vs-2 pairs")
    parser.add_argument("--ablation", action="store_true", help="sharing nothing, fp16 hook")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ddp.md"))
    parser.add_argument("--worker", nargs=8, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        path, *numbers, sync, hook = args.worker
        worker(path, *map(int, numbers), sync == "1", hook)
        return
    import pandas as pd

    import scetm_mnn as sm

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "atlas.h5ad"
        sm.datasets.simulate(
            n_cells=args.cells, n_genes=2000, n_batches=4, n_cell_types=8, random_state=0
        ).write_h5ad(path)
        for devices, threads, seed, sync, hook in runs(args.seeds, args.ablation):
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
            cmd = [sys.executable, __file__, "--worker", str(path), str(devices), str(threads)]
            cmd += [str(args.epochs), str(args.batch_size), str(seed), str(int(sync)), hook]
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode:
                raise RuntimeError(done.stderr[-4000:])
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    ratios = summary(rows)
    text = (
        "# Data-parallel training: 1 process against 2 (DDP, gloo)\n\n"
        f"`benchmarks/ddp.py --cells {args.cells} --epochs {args.epochs} --batch-size "
        f"{args.batch_size} --seeds {args.seeds}{' --ablation' if args.ablation else ''}` on "
        f"{platform.node()} "
        f"({os.cpu_count()} cores), {time.strftime('%Y-%m-%d')}.\n\n"
        + pd.DataFrame(rows).round(4).to_markdown(index=False)
        + "\n\n"
        + "\n".join(
            f"- {k}: {v:+.4f}" if "relative" in k else f"- {k}: {v:.2f}" for k, v in ratios.items()
        )
        + "\n"
    )
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
