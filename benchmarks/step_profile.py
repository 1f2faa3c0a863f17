"""Where one training step's time goes: the data path, encoder, decoder, likelihood, optimizer.

The default :class:`~scetm_mnn.model.BatchCorrectedSCETM` (K=50, L=400, encoder 128, batch
bias on) on simulated counts (``--cells`` × ``--genes``, 4 batches), one minibatch of
``--batch-size`` cells. Each part runs on its own, forward and backward (a fixed random
gradient from above), and is timed as the fastest of ``--repeats`` runs (the least
disturbed by other jobs):

- **data**: the minibatch's tensors from the training data (``MinibatchSource.tensors``:
  rows gathered, densified to float32);
- **encoder**: proportions, the encoder MLP, the heads of ``μ`` and ``log σ``, the draw of
  ``δ`` and ``θ = softmax(δ)``;
- **decoder**: ``β = α · ρ`` and the logits ``[θ, one-hot(s)] · [β; λ]``;
- **likelihood**: the multinomial NLL of the proportions over the genes (the fused
  ``proportions_nll``: log-softmax, its backward's softmax);
- **KL**: the Gaussian KL term;
- **optimizer**: gradient clipping, Adam's fused step and zeroing the gradients;
- **step**: all of it as training runs it (one forward, one backward, one optimizer step),
  without Lightning's loop.

Each row is measured in float32 and under ``torch.autocast("cpu", torch.bfloat16)``
(Lightning's ``precision="bf16-mixed"``), which runs the matrix products in bf16: fast on
CPUs with native bf16 arithmetic (AVX512-BF16, AMX), no faster elsewhere.

Run: ``.venv/bin/python benchmarks/step_profile.py [--threads 1] [--batch-size 2000]``
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import scvi
import torch

from scetm_mnn.datasets import simulate
from scetm_mnn.model import BatchCorrectedSCETM
from scetm_mnn.module import proportions_nll
from scetm_mnn.train import source_from_manager


def fastest_ms(run: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` runs of ``run`` (after one warm-up run), in ms."""
    run()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        run()
        times.append(time.perf_counter() - tic)
    return 1000 * min(times)


def parts(model: BatchCorrectedSCETM, batch_size: int, bf16: bool) -> dict[str, Callable]:
    """The step's parts as callables, each a forward and a backward (or the data path)."""
    module = model.module
    source = source_from_manager(model.adata_manager)
    rows = np.sort(np.random.default_rng(0).choice(model.adata.n_obs, batch_size, False))
    tensors = source.tensors(rows)
    optimizer = torch.optim.Adam(module.parameters(), lr=5e-3, fused=True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def with_grad(out: torch.Tensor) -> None:
        out.backward(torch.ones_like(out) / out.numel())

    def encoder():
        with autocast:
            theta = module.inference(**module._get_inference_input(tensors))["theta"]
        with_grad(theta)

    inferred = module.inference(**module._get_inference_input(tensors))
    theta = inferred["theta"].detach().requires_grad_(True)

    def decoder():
        with autocast:
            logits = module.generative(theta, tensors["batch"])["logits"]
        with_grad(logits)

    with torch.no_grad(), autocast:
        logits0 = module.generative(theta, tensors["batch"])["logits"]
    logits = logits0.detach().float().requires_grad_(True)
    p = inferred["p"].detach()

    def likelihood():
        with_grad(proportions_nll(logits, p))

    loc = inferred["qz"].loc.detach().requires_grad_(True)
    log_scale = inferred["qz"].scale.log().detach().requires_grad_(True)

    def kl():
        with_grad(
            (0.5 * (loc**2 + (2 * log_scale).exp() - 1) - log_scale).sum(-1)  # KL(N ‖ N(0, 1))
        )

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            inference = module.inference(**module._get_inference_input(tensors))
            generative = module.generative(**module._get_generative_input(tensors, inference))
            loss = module.loss(tensors, inference, generative, kl_weight=1.0).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 50.0)
        optimizer.step()

    step()  # every parameter has a gradient for the optimizer's row

    def optimize():
        torch.nn.utils.clip_grad_norm_(module.parameters(), 50.0)
        optimizer.step()
        for parameter in module.parameters():  # zeroed and refilled: the step's own work
            if parameter.grad is not None:
                parameter.grad.mul_(0.5)

    return {
        "data": lambda: source.tensors(rows),
        "encoder": encoder,
        "decoder": decoder,
        "likelihood": likelihood,
        "KL": kl,
        "optimizer": optimize,
        "step": step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as model.train does
    adata = simulate(n_cells=args.cells, n_genes=args.genes, n_batches=4, n_cell_types=8)
    BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch")
    scvi.settings.seed = 0
    model = BatchCorrectedSCETM(adata)
    table = {}
    for name, bf16 in (("float32 ms", False), ("bf16 autocast ms", True)):
        table[name] = {
            part: round(fastest_ms(run, args.repeats), 2)
            for part, run in parts(model, args.batch_size, bf16).items()
        }
    frame = pd.DataFrame(table)
    frame.loc["sum of the parts"] = frame.drop(index="step").sum().round(2)
    frame["float32 share of the step"] = (
        100 * frame["float32 ms"] / frame.loc["step", "float32 ms"]
    ).map(lambda v: f"{v:.0f} %")
    frame["bf16 speed-up"] = (frame["float32 ms"] / frame["bf16 autocast ms"]).round(2)
    print(
        f"{args.cells} cells × {args.genes} genes, minibatch {args.batch_size}, "
        f"{args.threads} torch thread(s), bf16 native: "
        f"{torch.ops.mkldnn._is_mkldnn_bf16_supported()}\n"
    )
    print(frame.to_markdown())
    step_ms = frame.loc["step"]
    for name in ("float32 ms", "bf16 autocast ms"):
        print(f"\n{name[:-3]}: {1000 * args.batch_size / step_ms[name]:,.0f} cells/s per step")


if __name__ == "__main__":
    main()
