"""Frozen latent spaces in which MNN pairs are found and compared."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class FrozenLinearLatent(nn.Module):
    """``z = (x − mean) · W`` with fixed ``mean`` and loadings ``W`` (d × c)."""

    def __init__(self, mean: np.ndarray, loadings: np.ndarray):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("loadings", torch.as_tensor(loadings, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project expression onto the latent."""
        return (x - self.mean) @ self.loadings


def fit_pca(x: np.ndarray, n_comps: int, random_state: int = 0) -> FrozenLinearLatent:
    """PCA on all cells (randomized SVD, seeded); loadings frozen."""
    from sklearn.utils.extmath import randomized_svd

    mean = x.mean(axis=0)
    n_comps = min(n_comps, min(x.shape) - 1)
    _, _, vt = randomized_svd(x - mean, n_comps, random_state=random_state)
    return FrozenLinearLatent(mean, vt.T)


def fit_autoencoder(
    x: np.ndarray,
    n_comps: int,
    random_state: int = 0,
    n_epochs: int = 20,
    batch_size: int = 512,
) -> nn.Module:
    """An autoencoder pretrained on all cells; returns its encoder, frozen."""
    generator = torch.Generator().manual_seed(random_state)
    torch.manual_seed(random_state)
    d = x.shape[1]
    hidden = min(256, 2 * d)
    encoder = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, n_comps))
    decoder = nn.Sequential(nn.Linear(n_comps, hidden), nn.ReLU(), nn.Linear(hidden, d))
    data = torch.as_tensor(x, dtype=torch.float32)
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    for _ in range(n_epochs):
        for idx in torch.randperm(data.shape[0], generator=generator).split(batch_size):
            loss = nn.functional.mse_loss(decoder(encoder(data[idx])), data[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    encoder.requires_grad_(False)
    return encoder.eval()
