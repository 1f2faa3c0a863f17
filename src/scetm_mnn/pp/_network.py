"""The corrector networks: deepMNN's residual network (Zou et al. 2021) and a bottleneck."""

from __future__ import annotations

import torch
from torch import nn


def _layer(n_in: int, n_out: int) -> list[nn.Module]:
    """Linear → BatchNorm → PReLU."""
    return [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.PReLU()]


def _zero_norm(n_features: int) -> nn.BatchNorm1d:
    """A BatchNorm whose scale starts at zero: the layer's output starts at its bias, 0."""
    norm = nn.BatchNorm1d(n_features)
    nn.init.zeros_(norm.weight)
    return norm


class ResidualBlock(nn.Module):
    """``x + f(x)``, f = Linear(d, 2d) → BatchNorm → PReLU → Linear(2d, d) → BatchNorm → PReLU.

    The scale of the last BatchNorm starts at zero, so the block starts as the identity and
    training starts from the uncorrected data rather than from a random map.
    """

    def __init__(self, n_features: int, width_factor: int = 2):
        super().__init__()
        hidden = width_factor * n_features
        self.f = nn.Sequential(
            *_layer(n_features, hidden),
            nn.Linear(hidden, n_features),
            _zero_norm(n_features),
            nn.PReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        return x + self.f(x)


class ResidualCorrector(nn.Sequential):
    """``n_blocks`` :class:`ResidualBlock` in sequence; maps expression to expression."""

    def __init__(self, n_features: int, n_blocks: int = 2, width_factor: int = 2):
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be at least 1, not {n_blocks}.")
        super().__init__(*(ResidualBlock(n_features, width_factor) for _ in range(n_blocks)))


class BottleneckShift(nn.Module):
    """Expression (genes) → shift in a d-dimensional subspace, through ``n_hidden`` units.

    Linear(genes, h) → BatchNorm → PReLU → Linear(h, h) → BatchNorm → PReLU → Linear(h, d)
    → BatchNorm, times ``scale``. It reads every gene, so it sees what distinguishes cells
    and batches outside the subspace, but writes only the ``d`` coordinates the loss
    compares: ``genes · h`` weights rather than the residual network's
    ``4 · n_blocks · genes²``. ``scale`` (a buffer, ones until set) puts the output in the
    units of each coordinate, e.g. its standard deviation over the cells, so that the
    optimizer's steps move every coordinate in proportion to its spread. The scale of the
    last BatchNorm starts at zero, so the shift starts at zero (the identity correction).
    """

    def __init__(self, n_genes: int, n_dims: int, n_hidden: int = 1024):
        super().__init__()
        if n_hidden < 1:
            raise ValueError(f"n_hidden must be at least 1, not {n_hidden}.")
        self.f = nn.Sequential(
            *_layer(n_genes, n_hidden),
            *_layer(n_hidden, n_hidden),
            nn.Linear(n_hidden, n_dims),
            _zero_norm(n_dims),
        )
        self.register_buffer("scale", torch.ones(n_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The shift of each cell (cells × d)."""
        return self.f(x) * self.scale


class SubspaceCorrector(nn.Module):
    """``x ↦ x + C Bᵀ``: a corrector whose change is kept to the span of ``B``.

    ``B`` (``basis``, genes × d, orthonormal columns) spans the gene-space directions that
    the corrector's loss sees, e.g. the loadings of the frozen PCA in which MNN pairs are
    compared. Outside that span the loss sees nothing, so any change there would be
    unsupervised; the expression is left exactly as it was there. The shift ``C``
    (cells × d) is ``corrector(x)`` itself (a :class:`BottleneckShift`), or, with
    ``residual=True``, the projection ``(f(x) − x) B`` of an expression-to-expression
    network ``f`` (deepMNN's :class:`ResidualCorrector`).
    """

    def __init__(self, corrector: nn.Module, basis: torch.Tensor, residual: bool = False):
        super().__init__()
        self.corrector = corrector
        self.residual = bool(residual)
        self.register_buffer("basis", basis.to(torch.float32))
        # The spread restored after training (``restore_spread``); 1 and 0: none.
        self.register_buffer("spread", torch.ones(()))
        self.register_buffer("centre", torch.zeros(basis.shape[1]))

    def raw_shift(self, x: torch.Tensor) -> torch.Tensor:
        """The network's shift, before the spread is restored (what training sees)."""
        if self.residual:
            return (self.corrector(x) - x) @ self.basis
        return self.corrector(x)

    def shift(self, x: torch.Tensor) -> torch.Tensor:
        """The low-rank shift ``C`` of the cells ``x`` (cells × d).

        With a restored spread ``s`` about the centre ``m`` (``restore_spread``), the
        corrected coordinates are ``m + s (x B + C_raw − m)``: the network's alignment,
        scaled back to the spread the cells had within their batches.
        """
        raw = self.raw_shift(x)
        if bool(self.spread == 1.0) and not bool(self.centre.any()):
            return raw
        coords = x @ self.basis
        return self.centre + self.spread * (coords + raw - self.centre) - coords

    def restore_spread(self, spread: float, centre: torch.Tensor) -> None:
        """Scale the corrected coordinates by ``spread`` about ``centre`` from now on."""
        self.spread.fill_(float(spread))
        self.centre.copy_(torch.as_tensor(centre, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Correct ``x`` within the subspace."""
        return x + self.shift(x) @ self.basis.T
