"""The corrector network's training on MNN pairs, and what follows it.

:func:`train_network` runs Adam on minibatches of pairs; :func:`recalibrate_batchnorm`
then re-estimates the BatchNorm statistics for the final weights, and
:func:`restore_spread` gives the corrected coordinates back their within-batch spread.
:func:`coordinate_scale` sets the bottleneck network's output scale before training.
``scetm_mnn.pp._fitting`` runs them in this order.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .._optim import fused_adam
from .._rows import Rows, index_chunks
from ._checkpoint import FitCheckpoint
from ._distributed_fit import FitEngine
from ._network import SubspaceCorrector

logger = logging.getLogger(__name__)

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DISTANCES: dict[str, Distance] = {
    # Mean over rows and dimensions: deepMNN's L1, and the squared L2.
    "l1": lambda a, b: (a - b).abs().mean(),
    "l2": lambda a, b: (a - b).pow(2).mean(),
}
RECALIBRATION_PAIRS = 2048
"""Pairs whose minibatches re-estimate the BatchNorm statistics after training."""
_SCALE_SAMPLE = 10_000
"""Cells (a seeded sample) whose coordinates set the bottleneck network's output scale."""
_REL_TOL = 1e-3
"""An epoch improves on the best loss when it is lower by more than this fraction."""


def coordinate_scale(rows: Rows, basis: torch.Tensor, random_state: int) -> torch.Tensor:
    """Standard deviation of each coordinate ``x B`` over (a seeded sample of) the cells.

    The sample is read a chunk of cells at a time, so no more than a chunk is ever dense.
    """
    n = min(rows.n_obs, _SCALE_SAMPLE)
    if n < 2:
        return torch.ones(basis.shape[1])
    sample = np.sort(np.random.default_rng(random_state).choice(rows.n_obs, n, replace=False))
    basis64 = basis.to(torch.float64)
    total = torch.zeros(basis.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for _, cells in index_chunks(sample):
        u = torch.from_numpy(rows.take(cells)).double() @ basis64
        total += u.sum(dim=0)
        squares += u.pow(2).sum(dim=0)
    variance = (squares - total.pow(2) / n) / (n - 1)
    return variance.clamp_min(1e-12).sqrt().to(torch.float32)


@torch.inference_mode()
def restore_spread(
    net: SubspaceCorrector, rows: Rows, batches: np.ndarray, random_state: int
) -> float:
    """Give the corrected coordinates back the spread the cells had within their batches.

    MNN training only pulls pairs together, and shrinking every cell's coordinates towards
    a common point shortens all pair distances too: on Baron human the trained network left
    the cells' coordinates 38 times less variance than they had (6 times less spread), so
    the biology in the corrected layer was buried under the unchanged genes outside the
    corrector's subspace (a fresh PCA of that layer fell from ARI 0.92 to 0.55). Aligning
    batches removes between-batch variance only, so the pooled within-batch variance of
    the coordinates is what the correction should keep. One scalar ``s`` (the ratio of the
    pooled within-batch standard deviations, uncorrected over corrected, on a seeded sample
    of cells) rescales the corrected coordinates about their mean: neighbourhoods, and
    with them pairs, clusters and mixing, are unchanged. Returns ``s``.
    """
    n = min(rows.n_obs, _SCALE_SAMPLE)
    sample = np.sort(np.random.default_rng(random_state).choice(rows.n_obs, n, replace=False))
    before, after = [], []
    for _, cells in index_chunks(sample):
        x = torch.from_numpy(rows.take(cells))
        coords = net.coordinates(x)
        before.append(coords.double())
        after.append((coords + net.raw_shift(x)).double())
    u, v = torch.cat(before), torch.cat(after)
    codes = torch.from_numpy(pd.factorize(np.asarray(batches)[sample])[0])
    within_u = within_v = 0.0
    for code in codes.unique():
        members = codes == code
        if int(members.sum()) > 1:
            within_u += float(u[members].var(dim=0).sum() * (members.sum() - 1))
            within_v += float(v[members].var(dim=0).sum() * (members.sum() - 1))
    if within_v <= 0.0 or within_u <= 0.0:
        return 1.0
    spread = float(np.sqrt(within_u / within_v))
    net.restore_spread(spread, v.mean(dim=0).to(torch.float32))
    return spread


def _pair_rows(rows: Rows, pairs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The cells of pairs ``idx``: all first cells, then all second cells (2m × genes)."""
    return torch.from_numpy(rows.take(pairs[idx].T.reshape(-1).numpy()))


def train_network(
    net: torch.nn.Module,
    space: torch.nn.Module,
    rows: Rows,
    pairs: torch.Tensor,
    *,
    batch_weight: float,
    rec_weight: float,
    distance: Distance,
    max_epochs: int,
    batch_size: int,
    pairs_per_epoch: int,
    lr: float,
    patience: int,
    generator: torch.Generator,
    checkpoint: FitCheckpoint | None = None,
    engine: FitEngine | None = None,
) -> list[float]:
    """Adam on minibatches of pairs; returns the loss of each epoch.

    An epoch is a pass over ``min(n_pairs, pairs_per_epoch)`` pairs drawn without
    replacement, split into equal minibatches of about ``batch_size`` pairs. Training stops
    early when the epoch loss has not improved for ``patience`` epochs. With a
    ``checkpoint``, training continues from its saved epoch (the network, Adam, the
    counters and ``generator`` as they were then) and saves its state after epochs.

    Under an ``engine`` of several processes, every rank draws the same minibatches and
    trains on its share of each (:meth:`FitEngine.share`) through Fabric's DDP; the epoch
    loss is that of all shares, so every rank stops at the same epoch. ``net`` stays on
    the engine's device.
    """
    engine = engine or FitEngine()
    net.to(engine.device)
    optimizer = fused_adam(net.parameters(), lr=lr)
    n_pairs = pairs.shape[0]
    per_epoch = min(n_pairs, pairs_per_epoch)
    n_steps = max(1, math.ceil(per_epoch / batch_size))
    history: list[float] = []
    best, waited, start, done = math.inf, 0, 0, False
    saved = checkpoint.training() if checkpoint is not None else None
    if saved is not None:
        net.load_state_dict(saved["net"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        history = [float(v) for v in saved["history"]]
        best, waited, start, done = saved["best"], saved["waited"], saved["epoch"], saved["done"]
    model, stepper = engine.setup(net, optimizer)
    space = engine.on_device(space)
    net.train()
    epochs = tqdm(
        range(start, 0 if done else max_epochs),
        desc="mnn_correct",
        unit="epoch",
        initial=start,
        total=max_epochs,
        disable=None if engine.is_global_zero else True,
    )
    for epoch in epochs:
        order = torch.randperm(n_pairs, generator=generator)[:per_epoch]
        total, count = 0.0, 0
        for idx in torch.tensor_split(order, n_steps):
            idx = engine.share(idx)
            m = idx.numel()
            x_in = _pair_rows(rows, pairs, idx).to(engine.device)
            out = model(x_in)
            z = space(out)
            loss = batch_weight * distance(z[:m], z[m:]) + rec_weight * distance(out, x_in)
            stepper.zero_grad(set_to_none=True)
            engine.backward(loss)
            stepper.step()
            total += loss.item() * m
            count += m
        history.append(engine.mean(total, count))
        epochs.set_postfix(loss=f"{history[-1]:.4g}", refresh=False)
        if epoch == 0 or history[-1] < best - _REL_TOL * abs(best):
            best, waited = history[-1], 0
        else:
            waited += 1
            done = waited >= patience
        if checkpoint is not None:
            state = {
                "net": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "history": list(history),
                "best": float(best),
                "waited": waited,
                "epoch": epoch + 1,
                "done": done or epoch + 1 == max_epochs,
            }
            checkpoint.save_training(state, final=state["done"])
        if done:
            logger.info("Early stopping after epoch %d (loss %.4g).", epoch + 1, best)
            break
    epochs.close()
    return history


@torch.no_grad()
def recalibrate_batchnorm(
    net: torch.nn.Module,
    rows: Rows,
    pairs: torch.Tensor,
    batch_size: int,
    n_pairs: int,
    generator: torch.Generator,
    engine: FitEngine | None = None,
) -> None:
    """Recompute the BatchNorm running statistics of the trained network.

    During training they are exponential averages over minibatches seen with older
    weights, which after few steps are far from the final network's statistics (and would
    then shift every corrected cell in eval mode). They are reset and re-estimated as the
    plain average over minibatches of ``n_pairs`` pairs drawn like the training ones.
    Under an ``engine`` of several processes each rank passes its share of every
    minibatch, and synchronised BatchNorm (``engine.synced``) gives every rank the
    statistics of the whole minibatches.
    """
    engine = engine or FitEngine()
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    net.train()
    order = torch.randperm(pairs.shape[0], generator=generator)[:n_pairs]
    for idx in torch.tensor_split(order, max(1, math.ceil(order.numel() / batch_size))):
        net(_pair_rows(rows, pairs, engine.share(idx)).to(engine.device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    net.eval()
