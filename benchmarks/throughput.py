"""Training throughput: BatchCorrectedSCETM against the original scETM 0.5.0.

Both train the same model (K=50, L=400, encoder 128, batch bias on, batch size 2000) for
the same number of optimizer steps on the same data, on the CPU. scETM runs in its own
venv (``make bench-env``) through ``benchmarks/_scetm_runner.py``.

``--precisions 32-true bf16-mixed`` also trains ours under bf16 autocast
(``model.train(precision="bf16-mixed")``), which is fast on CPUs with native bf16
arithmetic (AVX512-BF16, AMX).

Run: ``.venv/bin/python benchmarks/throughput.py [--steps 300] [--threads 2]
[--precisions 32-true bf16-mixed]``
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scvi
import torch

from scetm_mnn.datasets import baron_pancreas, simulate
from scetm_mnn.model import BatchCorrectedSCETM

HERE = Path(__file__).resolve().parent
SCETM_PYTHON = HERE.parent / ".venv-scetm" / "bin" / "python"


def _datasets(n_sim: int) -> dict:
    human = baron_pancreas("human")
    counts = human.X.copy()
    sc.pp.normalize_total(human, target_sum=1e4)
    sc.pp.log1p(human)
    hvg = sc.pp.highly_variable_genes(human, n_top_genes=2000, batch_key="batch", inplace=False)[
        "highly_variable"
    ].to_numpy()
    human = sc.AnnData(counts[:, hvg], obs=human.obs[["batch", "cell_type"]].copy())
    return {
        "Baron human (2142 × 2000 HVG)": human,
        f"simulate ({n_sim} × 2000)": simulate(n_cells=n_sim, n_genes=2000, n_batches=4),
    }


def train_ours(
    adata, steps: int, batch_size: int, **train_kwargs
) -> tuple[BatchCorrectedSCETM, float, int]:
    """A default model trained for about ``steps`` steps, the seconds of ``model.train``,
    and the cells seen.

    Training goes by epochs, so an epoch of ``n`` cells is ``ceil(n / batch_size)`` steps
    and its last step is smaller (Baron human: 2,000 and 142 cells): the cells seen, not
    the steps, are what compares with scETM's steps of ``batch_size`` cells each.
    ``train_kwargs`` go to ``model.train`` (e.g. ``accelerator``, ``precision``).
    """
    scvi.settings.seed = 0
    adata = adata.copy()
    BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch")
    model = BatchCorrectedSCETM(adata)
    train_size = 1.0 - (train_kwargs.get("validation_size") or 0.0)
    steps_per_epoch = int(np.ceil(adata.n_obs * train_size / batch_size))
    epochs = max(1, steps // steps_per_epoch)
    train_kwargs.setdefault("enable_progress_bar", False)
    start = time.perf_counter()
    model.train(max_epochs=epochs, batch_size=batch_size, **train_kwargs)
    seconds = time.perf_counter() - start
    return model, seconds, len(model.train_indices) * epochs


def time_ours(
    adata, steps: int, batch_size: int, precision: str = "32-true"
) -> tuple[float, int, int]:
    """Seconds of ``model.train`` for about ``steps`` steps, the steps, and the cells seen
    (:func:`train_ours`), at Lightning's ``precision``."""
    model, seconds, cells = train_ours(adata, steps, batch_size, precision=precision)
    return seconds, model.trainer.global_step, cells


def time_scetm(
    adata, steps: int, batch_size: int, python: Path = SCETM_PYTHON, device: str = "cpu"
) -> tuple[float, int, int]:
    """Seconds of scETM's training loop for ``steps`` steps (in its own venv), the steps,
    and the cells seen (each of its steps samples ``min(batch_size, n)`` cells).

    scETM gets the same number of torch threads as our model. ``python`` is the venv's
    interpreter, ``device`` where scETM trains (``_scetm_runner.py --device``).
    """
    if not Path(python).exists():
        raise FileNotFoundError(f"No {python}: run `make bench-env` first.")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.h5ad"
        # The same matrix, not a copy: at a million cells a copy is 5 GB that scETM's own
        # process then lacks.
        obs = adata.obs.assign(batch_indices=adata.obs["batch"].cat.codes.astype(int))
        ad.AnnData(X=adata.X, obs=obs, var=adata.var).write_h5ad(path)
        out = Path(tmp) / "emb.npy"
        cmd = [
            str(python), str(HERE / "_scetm_runner.py"),
            "--input", str(path), "--output", str(out),
            "--steps", str(steps), "--batch-size", str(batch_size), "--seed", "0",
            "--threads", str(torch.get_num_threads()), "--device", device,
        ]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        info = json.loads(out.with_suffix(".json").read_text())
    return info["train_seconds"], info["steps"], min(batch_size, adata.n_obs) * info["steps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--n-sim", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["32-true"],
        help="Lightning precisions to train ours at (e.g. 32-true bf16-mixed)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run every method this many times, in turn, and report the medians (a shared "
        "machine's other jobs slow single runs by up to 2x)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    timers = {
        "scetm-mnn" if p == "32-true" else f"scetm-mnn ({p})": (
            lambda adata, steps, size, p=p: time_ours(adata, steps, size, p)
        )
        for p in args.precisions
    }
    timers["scETM 0.5.0"] = time_scetm
    rows = []
    for name, adata in _datasets(args.n_sim).items():
        for repeat in range(args.repeats):  # the methods in turn, so they share the noise
            for method, timer in timers.items():
                seconds, steps, cells = timer(adata, args.steps, args.batch_size)
                gc.collect()  # the last model's copy of the data, before the next loads its own
                rows.append(
                    {
                        "data": name,
                        "method": method,
                        "repeat": repeat,
                        "steps": steps,
                        "ms/step": 1000 * seconds / steps,
                        "cells/s": cells / seconds,
                    }
                )
                print(rows[-1], file=sys.stderr, flush=True)
    runs = pd.DataFrame(rows)
    table = runs.groupby(["data", "method"], sort=False).agg(
        steps=("steps", "first"),
        runs=("repeat", "size"),
        **{"ms/step": ("ms/step", "median"), "cells/s": ("cells/s", "median")},
        **{"cells/s min": ("cells/s", "min"), "cells/s max": ("cells/s", "max")},
    )
    table = table.round({"ms/step": 1}).round({"cells/s": 0, "cells/s min": 0, "cells/s max": 0})
    table = table.reset_index()
    ratio = table.pivot(index="data", columns="method", values="cells/s")
    for method in timers:
        if method != "scETM 0.5.0":
            ratio[f"{method} / scETM"] = (ratio[method] / ratio["scETM 0.5.0"]).round(2)
    print(
        f"\nCPU threads: {args.threads}, batch size {args.batch_size}, medians of "
        f"{args.repeats} run(s) per method\n"
    )
    print(table.to_markdown(index=False))
    print()
    print(ratio.to_markdown())


if __name__ == "__main__":
    main()
