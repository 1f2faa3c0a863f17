"""The deepMNN residual correction network."""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """``x + f(x)`` with f = Linear(d, 2d) → BN → PReLU → Linear(2d, d) → BN → PReLU."""

    def __init__(self, n_features: int, width_factor: int = 2):
        super().__init__()
        hidden = width_factor * n_features
        self.f = nn.Sequential(
            nn.Linear(n_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.PReLU(),
            nn.Linear(hidden, n_features),
            nn.BatchNorm1d(n_features),
            nn.PReLU(),
        )
        # Zero-init the last BatchNorm scale: every block starts as the identity, so
        # training starts from the uncorrected data rather than a random map.
        nn.init.zeros_(self.f[4].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        return x + self.f(x)


class ResidualCorrector(nn.Sequential):
    """A stack of :class:`ResidualBlock` (deepMNN, Zou et al. 2021)."""

    def __init__(self, n_features: int, n_blocks: int = 2, width_factor: int = 2):
        super().__init__(*(ResidualBlock(n_features, width_factor) for _ in range(n_blocks)))
