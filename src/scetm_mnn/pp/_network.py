"""The deepMNN residual correction network (Zou et al. 2021)."""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """``x + f(x)``, f = Linear(d, 2d) → BatchNorm → PReLU → Linear(2d, d) → BatchNorm → PReLU.

    The scale of the last BatchNorm starts at zero, so the block starts as the identity and
    training starts from the uncorrected data rather than from a random map.
    """

    def __init__(self, n_features: int, width_factor: int = 2):
        super().__init__()
        hidden = width_factor * n_features
        last_norm = nn.BatchNorm1d(n_features)
        nn.init.zeros_(last_norm.weight)
        self.f = nn.Sequential(
            nn.Linear(n_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.PReLU(),
            nn.Linear(hidden, n_features),
            last_norm,
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


class SubspaceCorrector(nn.Module):
    """``x ↦ x + P (f(x) − x)``: a corrector ``f`` whose change is kept to a subspace.

    ``P = B Bᵀ`` projects onto the span of the orthonormal columns of ``basis`` (genes ×
    dimensions), e.g. the loadings of the frozen PCA in which the corrector's loss compares
    MNN pairs. Outside that span the loss sees nothing, so any change there would be
    unsupervised; with the projection the expression is left exactly as it was there.
    """

    def __init__(self, corrector: nn.Module, basis: torch.Tensor):
        super().__init__()
        self.corrector = corrector
        self.register_buffer("basis", basis.to(torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Correct ``x`` within the subspace."""
        return x + (self.corrector(x) - x) @ self.basis @ self.basis.T
