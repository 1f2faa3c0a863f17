"""Frozen latent spaces in which MNN pairs are searched and compared.

Both are :class:`torch.nn.Module` with frozen parameters, so the corrector's loss can be
back-propagated through them.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)


class Centering(nn.Module):
    """Subtract a fixed per-gene mean."""

    def __init__(self, mean: np.ndarray):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Centre ``x``."""
        return x - self.mean


class FrozenPCA(nn.Module):
    """``z = (x − mean) @ loadings`` with a fixed mean and loadings (genes × components)."""

    def __init__(self, mean: np.ndarray, loadings: np.ndarray):
        super().__init__()
        self.center = Centering(mean)
        self.register_buffer("loadings", torch.as_tensor(loadings, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project expression onto the principal components."""
        return self.center(x) @ self.loadings


def _freeze(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module.eval()


def fit_pca(x: np.ndarray, n_comps: int, random_state: int = 0) -> FrozenPCA:
    """PCA of all cells (centred, seeded randomized SVD); the loadings are then frozen.

    Parameters
    ----------
    x
        Dense cells × genes (float32).
    n_comps
        Components, capped at ``min(x.shape) - 1``.
    random_state
        Seed of the randomized SVD.
    """
    from sklearn.utils.extmath import randomized_svd

    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    n_comps = max(1, min(n_comps, min(x.shape) - 1))
    _, _, vt = randomized_svd(x - mean, n_comps, random_state=random_state)
    return _freeze(FrozenPCA(mean, vt.T))


def fit_autoencoder(
    x: np.ndarray,
    n_comps: int,
    random_state: int = 0,
    *,
    n_hidden: int = 256,
    n_steps: int = 1000,
    batch_size: int = 256,
    lr: float = 1e-3,
) -> nn.Module:
    """Pretrain a small autoencoder on all cells and return its encoder, frozen.

    The encoder is ``centre → Linear(genes, n_hidden) → ReLU → Linear(n_hidden, n_comps)``
    and the decoder mirrors it; both are trained with Adam on the mean squared error for
    ``n_steps`` minibatches, so the cost does not grow with the number of cells.

    Parameters
    ----------
    x
        Dense cells × genes (float32).
    n_comps
        Latent dimensions.
    random_state
        Seed of the initialization and the minibatches (the global torch RNG is untouched).
    n_hidden
        Hidden units.
    n_steps
        Optimizer steps.
    batch_size
        Cells per step.
    lr
        Adam learning rate.
    """
    n_genes = x.shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(random_state)
        encoder = nn.Sequential(
            Centering(x.mean(axis=0, dtype=np.float64).astype(np.float32)),
            nn.Linear(n_genes, n_hidden),
            nn.ReLU(),
            nn.Linear(n_hidden, n_comps),
        )
        decoder = nn.Sequential(
            nn.Linear(n_comps, n_hidden), nn.ReLU(), nn.Linear(n_hidden, n_genes)
        )
    generator = torch.Generator().manual_seed(random_state)
    data = torch.from_numpy(x)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=lr)
    for step in range(n_steps):
        idx = torch.randint(data.shape[0], (min(batch_size, data.shape[0]),), generator=generator)
        batch = data[idx]
        loss = nn.functional.mse_loss(decoder(encoder(batch)), encoder[0](batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == n_steps - 1:
            logger.info("Autoencoder pretrained: %d steps, final MSE %.4f", n_steps, loss.item())
    return _freeze(encoder)


def visible_basis(space: nn.Module) -> torch.Tensor:
    """Orthonormal basis (genes × d) of the gene-space directions that ``space`` can see.

    ``space`` maps expression through a first linear map (the PCA loadings, or the first
    layer of the autoencoder's encoder); changes orthogonal to that map's row space do not
    change the latent at all. For :class:`FrozenPCA` this is its loadings.
    """
    if isinstance(space, FrozenPCA):
        weight = space.loadings
    else:
        first = next(m for m in space.modules() if isinstance(m, nn.Linear))
        weight = first.weight.T  # genes × hidden
    q, _ = torch.linalg.qr(weight.detach().to(torch.float64))
    return q.to(torch.float32)
