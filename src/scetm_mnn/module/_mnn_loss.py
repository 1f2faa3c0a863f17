r"""The MNN term: how far apart the latents of MNN-paired cells are.

Every form takes the posterior means ``μ`` of the cells of one minibatch and the pairs as
row positions into it.

``"local"`` (the default) pulls a pair together only until each cell's partner is as close
as the cell's own :data:`LOCAL_NEIGHBOURS`-th nearest same-batch cell in the minibatch,
the radius ``r`` of its own-batch neighbourhood. It is scaled by the mean squared distance
between two random cells of the minibatch:

.. math:: L = \frac{\operatorname{mean}_{(a,b)}
             \max\bigl(0, \lVert μ_a - μ_b \rVert^2 - \max(r_a, r_b)\bigr)}
             {2 \sum_d \operatorname{Var}_d(μ)}

A pair whose cells already sit in each other's neighbourhood, i.e. batches that are mixed
there, adds nothing. The term therefore asks for mixing, not for tighter clusters.

``"normalized"`` is the mean squared pair distance over the same denominator. It is ``≈ 1``
when pairs are no closer than random cells. It keeps pulling mixed pairs, so it tightens
clusters and, through the MNN pairs that join different cell types, merges some of them.

Both are invariant to the scale of ``μ``. Shrinking every ``μ`` does not lower them, so the
topic space cannot collapse to satisfy them.

``"euclidean"`` is the mean Euclidean pair distance. This is the original term. Its
cheapest minimum is to shrink every ``μ`` towards 0. ``θ = softmax(μ)`` then becomes flat,
and the decoder compensates with larger ``β``. It is kept only for the ablation that
shows this collapse (``benchmarks/pancreas.py``).
"""

from __future__ import annotations

from typing import Literal

import torch

MNNLoss = Literal["local", "normalized", "euclidean"]
MNN_LOSSES: tuple[str, ...] = ("local", "normalized", "euclidean")
SCALE_INVARIANT_LOSSES: tuple[str, ...] = ("local", "normalized")
"""The forms that depend on ``μ`` only through ratios of distances (not ``"euclidean"``)."""
LOCAL_NEIGHBOURS = 5
"""``"local"``: a pair is mixed once each cell's partner is as close as its 5th nearest
same-batch cell of the minibatch."""


def _local_radius(mu: torch.Tensor, rows: torch.Tensor, batch: torch.Tensor, k: int):
    """Squared distance from each cell in ``rows`` to its ``k``-th nearest same-batch cell."""
    d2 = torch.cdist(mu[rows], mu).pow(2)
    other = batch[rows][:, None] != batch[None, :]
    d2 = d2.masked_fill(other, float("inf"))
    d2[torch.arange(rows.numel()), rows] = float("inf")  # not the cell itself
    k = max(1, min(k, d2.shape[1] - 1))
    radius = d2.topk(k, dim=1, largest=False).values[:, -1]
    # a cell alone in its batch in this minibatch has no radius: require full overlap
    return torch.where(torch.isfinite(radius), radius, torch.zeros_like(radius))


def mnn_loss(
    mu: torch.Tensor,
    pairs: torch.Tensor,
    kind: MNNLoss = "local",
    batch: torch.Tensor | None = None,
) -> torch.Tensor:
    """The MNN term of one minibatch.

    Parameters
    ----------
    mu
        Posterior means of the minibatch's cells (cells × K).
    pairs
        MNN pairs as row positions into ``mu`` (P × 2, integer).
    kind
        ``"local"``, ``"normalized"`` (both scale-invariant) or ``"euclidean"`` (collapses;
        see the module docstring).
    batch
        Batch code of each row of ``mu``; needed by ``"local"``.

    Returns
    -------
    A scalar tensor.

    Examples
    --------
    >>> import torch
    >>> mu = torch.tensor([[0.0, 0.0], [0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    >>> float(mnn_loss(mu, torch.tensor([[0, 1]]), "normalized"))
    0.0
    >>> pair = torch.tensor([[0, 2]])
    >>> float(mnn_loss(2 * mu, pair, "normalized")) == float(mnn_loss(mu, pair, "normalized"))
    True
    >>> batch = torch.tensor([0, 1, 0, 1])
    >>> float(mnn_loss(mu, pair, "local", batch)) > 0  # 0 and 2 are not neighbours
    True
    """
    diff = mu[pairs[:, 0]] - mu[pairs[:, 1]]
    if kind == "euclidean":
        return diff.norm(dim=-1).mean()
    if kind not in ("normalized", "local"):
        raise ValueError(f"mnn_loss must be one of {MNN_LOSSES}, not {kind!r}.")
    spread = (2.0 * mu.var(dim=0, unbiased=False).sum()).clamp(min=1e-8)
    d2 = diff.pow(2).sum(dim=-1)
    if kind == "normalized":
        return d2.mean() / spread
    if batch is None:
        raise ValueError("mnn_loss='local' needs the batch of each cell.")
    batch = batch.reshape(-1)
    radius = torch.maximum(
        _local_radius(mu, pairs[:, 0], batch, LOCAL_NEIGHBOURS),
        _local_radius(mu, pairs[:, 1], batch, LOCAL_NEIGHBOURS),
    )
    return torch.relu(d2 - radius).mean() / spread
