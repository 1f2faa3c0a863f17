"""The count likelihood of the ETM: multinomial log-probabilities and draws, vectorised.

The training loss (:meth:`~scetm_mnn.module.ETMModule.loss`) is scETM's: the multinomial
negative log-likelihood of each cell's count *proportions*. The functions here work with the
counts themselves, the multinomial at each cell's library size, so that the ELBO, the
importance-sampled marginal log-likelihood and the posterior predictive draws are those of a
proper probability model of the count vectors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

MAX_DRAWS = 2**23
"""Category draws held at once by :func:`sample_multinomial` (64 MiB of int64 indices)."""


class _ProportionsNLL(torch.autograd.Function):
    """``−Σ_g p_g log softmax(l)_g`` per row; its backward ``g · (softmax(l) Σp − p)``."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        log_px = F.log_softmax(logits, dim=-1)
        ctx.save_for_backward(log_px, p)
        return -torch.linalg.vecdot(p, log_px)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        log_px, p = ctx.saved_tensors
        grad_logits = log_px.exp()  # the one cells × genes array of the backward
        grad_logits.mul_((grad * p.sum(-1))[..., None])
        grad_logits.addcmul_(p, grad[..., None], value=-1.0)
        return grad_logits, None


def proportions_nll(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The reconstruction loss of scETM, ``−Σ_g p_g log softmax(logits)_g`` per cell, fused.

    The same value and gradient (with respect to ``logits``; ``p`` is data) as
    ``-(p * F.log_softmax(logits, -1)).sum(-1)``, without the product with ``p`` or the
    backward's intermediate arrays: the forward and the backward make one cells × genes
    array each (the log-probabilities, the gradient), where the composed form makes four.
    It is computed in float32 (or float64) even under autocast (bf16 logits are cast up).
    At a minibatch of 2,000 cells × 2,000 genes each such array is 16 MB, and on the CPU
    making them, not the arithmetic, is most of what this loss costs.

    Parameters
    ----------
    logits
        ``(..., G)`` decoder logits.
    p
        ``(..., G)`` non-negative weights, a cell's count proportions (rows sum to 1, or
        to 0 for an empty cell, whose loss is then 0).

    Returns
    -------
    ``(...)`` the loss per row.

    Examples
    --------
    >>> import torch
    >>> from scetm_mnn.module import proportions_nll
    >>> logits, p = torch.randn(3, 5), torch.softmax(torch.randn(3, 5), -1)
    >>> composed = -(p * torch.log_softmax(logits, -1)).sum(-1)
    >>> bool(torch.allclose(proportions_nll(logits, p), composed, atol=1e-6))
    True
    """
    if logits.shape != p.shape:
        raise ValueError(
            f"logits and p must have the same shape, got {tuple(logits.shape)} and "
            f"{tuple(p.shape)}."
        )
    # In float32 at least, autocast or not (as autocast itself runs log_softmax and nll_loss),
    # and in one dtype: CUDA autocast would return log_softmax in float32 and run vecdot in
    # bf16, so p and the loss would be rounded to bf16 (3 significant digits).
    dtype = torch.promote_types(logits.dtype, torch.float32)
    with torch.autocast(logits.device.type, enabled=False):
        return _ProportionsNLL.apply(logits.to(dtype), p.to(dtype))


def multinomial_log_prob(x: torch.Tensor, log_px: torch.Tensor) -> torch.Tensor:
    """``log Mult(x | n = Σx, p = exp(log_px))`` per cell (the last axis is the genes).

    ``log_px`` may carry leading sample axes (``(S, B, G)`` against ``x`` of ``(B, G)``).
    """
    n = x.sum(-1)
    coefficient = torch.lgamma(n + 1) - torch.lgamma(x + 1).sum(-1)
    return coefficient + (x * log_px).sum(-1)


def sample_multinomial(
    probs: torch.Tensor, totals: torch.Tensor, max_draws: int = MAX_DRAWS
) -> torch.Tensor:
    """Multinomial counts with per-row totals: ``totals[i]`` draws from ``probs[i]``, all at once.

    Exact, and vectorised over the rows (``torch.distributions.Multinomial`` takes one total
    for all rows only). Most of each row comes from independent Poisson counts of mean
    ``λᵢ pᵢ`` with ``λᵢ = nᵢ − 3√nᵢ``: given their sum ``m``, such counts are
    ``Mult(m, pᵢ)``, so adding ``Mult(nᵢ − m, pᵢ)`` gives exactly ``Mult(nᵢ, pᵢ)``. The
    remainder, about ``3√nᵢ`` draws, is drawn category by category; the rare row whose
    Poisson sum exceeds ``nᵢ`` (probability about 0.1 %) is drawn that way in full, and so
    are rows with small totals (``nᵢ < G / 4 + 3√nᵢ``), for which that is cheaper. The cost
    is one Poisson draw per gene plus ``O(√n)`` category draws per row, instead of ``n``
    category draws.

    Parameters
    ----------
    probs
        ``(..., G)`` probabilities (rows sum to 1).
    totals
        ``(...)`` non-negative integer totals.
    max_draws
        Bound on the category draws (rows × the chunk's largest remainder) held at once.

    Returns
    -------
    Float counts of ``probs``' shape whose rows sum to ``totals``.
    """
    shape = probs.shape
    flat = probs.reshape(-1, shape[-1])
    n = totals.reshape(-1).to(flat.dtype)
    poisson_mean = (n - 3 * n.sqrt()).clamp(min=0)
    # A Poisson draw per gene costs about a quarter of a category draw (CPU): small
    # libraries (n < G / 4 + 3√n) are drawn category by category alone.
    poisson_mean[n < flat.shape[-1] / 4 + 3 * n.sqrt()] = 0
    counts = torch.zeros_like(flat)
    big = poisson_mean > 0
    if big.any():
        counts[big] = torch.poisson(flat[big] * poisson_mean[big, None])
    rest = n - counts.sum(-1)
    over = rest < 0
    rest[over] = 0
    counts += _categorical_counts(flat, rest.long(), max_draws)
    if over.any():  # apart, so that their full totals do not set every row's draw count
        counts[over] = _categorical_counts(flat[over], n[over].long(), max_draws)
    return counts.reshape(shape)


def _categorical_counts(probs: torch.Tensor, totals: torch.Tensor, max_draws: int) -> torch.Tensor:
    """``totals[i]`` category draws from each row ``probs[i]``, counted (rows in chunks).

    Every row of a chunk draws the chunk's largest total; draws past a row's own total are
    masked out before they are counted.
    """
    out = torch.zeros_like(probs)
    n_rows = probs.shape[0]
    largest = int(totals.max()) if n_rows else 0
    chunk = max(1, max_draws // max(largest, 1))
    for start in range(0, n_rows, chunk):
        stop = min(start + chunk, n_rows)
        rows_totals = totals[start:stop]
        n_draws = int(rows_totals.max())
        if n_draws == 0:
            continue
        draws = torch.multinomial(probs[start:stop], n_draws, replacement=True)
        keep = torch.arange(n_draws, device=draws.device) < rows_totals[:, None]
        out[start:stop].scatter_add_(1, draws, keep.to(out.dtype))
    return out


def kl_standard_normal(qz: Normal) -> torch.Tensor:
    """``KL(q(δ) ‖ N(0, I))`` per cell, summed over the topics."""
    prior = Normal(torch.zeros_like(qz.loc), torch.ones_like(qz.scale))
    return kl_divergence(qz, prior).sum(-1)


def log_importance_weights(
    qz: Normal, delta: torch.Tensor, log_px_given_delta: torch.Tensor
) -> torch.Tensor:
    """``log p(x | δ) + log p(δ) − log q(δ | x)`` for samples ``δ`` of ``q`` (``(S, B)``)."""
    log_prior = Normal(0.0, 1.0).log_prob(delta).sum(-1)
    log_q = qz.log_prob(delta).sum(-1)
    return log_px_given_delta + log_prior - log_q


def log_mean_exp(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``log(mean(exp(values)))`` along ``dim``, computed stably."""
    return torch.logsumexp(values, dim=dim) - math.log(values.shape[dim])
