"""Train the original scETM 0.5.0 on one h5ad file and save its cell embedding δ.

Runs inside ``.venv-scetm`` (``make bench-env``) and imports only scETM and its own
dependencies, never scetm_mnn:

    .venv-scetm/bin/python benchmarks/_scetm_runner.py --input X.h5ad --output emb.npy \
        [--n-epochs 12000 | --steps N] [--batch-size 2000] [--seed 0] [--threads 0] \
        [--device cpu]

The input holds raw counts in ``X`` (scETM normalizes them itself) and integer batches in
``obs["batch_indices"]``. The model uses scETM's defaults (K=50 topics, L=400 gene
embedding dimensions, encoder (128,), batch bias on) and is trained with
``UnsupervisedTrainer.train(eval=False)`` on ``--device`` (``cpu`` by default; ``auto``:
CUDA when torch sees it, as scETM's own default); no checkpoint or log file is written
(``ckpt_dir=None``), and the process works in a temporary directory.

Outputs: ``--output`` (float32 array, cells × K, ``obsm["delta"]``); beside it
``<stem>_theta.npy`` (θ, cells × K) and ``<stem>_beta.npy`` (the topic-gene matrix
``α · ρ``, K × genes); and the same path with suffix ``.json``: ``train_seconds``
(``trainer.train`` only, excluding data loading, model construction and embedding
extraction), ``steps``, ``ms_per_step``, ``cells_per_s``
(batch size × steps / train seconds), ``wall_seconds`` (whole script) and the settings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

START = time.perf_counter()

import anndata  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scETM import UnsupervisedTrainer, scETM  # noqa: E402

#: The README of scETM 0.5.0 trains the pancreas data for 12000 epochs with batch size 2000
#: (one epoch is max(n_cells / batch_size, 1) optimizer steps).
DEFAULT_EPOCHS = 12000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--n-epochs", type=int, default=None)
    group.add_argument("--steps", type=int, default=None, help="throughput mode: train N steps")
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-samplers", type=int, default=4, help="scETM's sampler threads")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: default")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    inp, out = args.input.resolve(), args.output.resolve()
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    adata = anndata.read_h5ad(inp)
    if "batch_indices" not in adata.obs:
        raise KeyError(f"{inp} has no obs['batch_indices'].")
    n_batches = int(adata.obs["batch_indices"].nunique())
    # UnsupervisedTrainer counts epochs as steps / max(n_cells / batch_size, 1) and needs an
    # integer number of epochs, so --steps is met to within one epoch (see "steps" in the JSON).
    steps_per_epoch = max(adata.n_obs / args.batch_size, 1.0)
    if args.steps is not None:
        n_epochs = max(1, round(args.steps / steps_per_epoch))
    else:
        n_epochs = DEFAULT_EPOCHS if args.n_epochs is None else args.n_epochs

    with tempfile.TemporaryDirectory(prefix="scetm_runner_") as tmp:
        os.chdir(tmp)  # whatever scETM or its dependencies write lands here
        model = scETM(adata.n_vars, n_batches, device=device)
        trainer = UnsupervisedTrainer(
            model, adata, ckpt_dir=None, batch_size=args.batch_size, seed=args.seed
        )
        # scETM prints one line per step to stdout; send it nowhere.
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            t0 = time.perf_counter()
            trainer.train(
                n_epochs=n_epochs,
                eval_every=max(1, math.ceil(n_epochs / 4)),
                n_samplers=args.n_samplers,
                eval=False,
                save_model_ckpt=False,
            )
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # the last step's kernels, inside the clock
            train_seconds = time.perf_counter() - t0
        model.get_all_embeddings_and_nll(
            adata, batch_size=args.batch_size, emb_names=["delta", "theta"]
        )
    delta = np.asarray(adata.obsm["delta"], dtype=np.float32)
    np.save(out, delta)
    # θ and the topic-gene matrix β = α · ρ (topics × genes), for the topic measures.
    np.save(out.with_name(out.stem + "_theta.npy"), np.asarray(adata.obsm["theta"], np.float32))
    beta = np.asarray(adata.uns["alpha"]) @ np.asarray(adata.varm["rho"]).T
    np.save(out.with_name(out.stem + "_beta.npy"), beta.astype(np.float32))
    steps = int(trainer.step)
    info = {
        "method": "scETM 0.5.0",
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "n_batches": n_batches,
        "batch_size": args.batch_size,
        "n_epochs": n_epochs,
        "steps": steps,
        "seed": args.seed,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "train_seconds": train_seconds,
        "ms_per_step": 1000 * train_seconds / max(steps, 1),
        "cells_per_s": min(args.batch_size, adata.n_obs) * steps / train_seconds,
        "wall_seconds": time.perf_counter() - START,
    }
    out.with_suffix(".json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info), file=sys.stderr)


if __name__ == "__main__":
    main()
