"""Frozen latent spaces in which MNN pairs are searched and compared.

Both are :class:`torch.nn.Module` with frozen parameters, so the corrector's loss can be
back-propagated through them.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from .._rows import Rows, map_chunks

logger = logging.getLogger(__name__)

SCATTER_BLOCK = 1024
"""Cells per block of the PCA's scatter matrix (fixed, so that results do not depend on
the chunk size a caller passes; 1024 × 2000 genes dense is 8 MiB)."""


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


def fit_pca(x, n_comps: int, random_state: int = 0) -> FrozenPCA:
    """PCA of all cells (exact, centred); the loadings are then frozen.

    One pass over the cells in chunks accumulates the gene means and the gene × gene
    scatter matrix of the centred data (float64); its leading eigenvectors are the
    loadings. The centring is implicit: sparse or on-disk input is never densified beyond
    one block of ``SCATTER_BLOCK`` (1024) cells, and memory is ``O(genes²)`` whatever the
    number of cells. The blocks are fixed, so callers' chunk sizes cannot change the
    result, and no random seed enters it.

    Parameters
    ----------
    x
        Cells × genes: dense, sparse, on disk, or ``Rows`` (``scetm_mnn._rows``).
    n_comps
        Components, capped at ``min(x.shape) - 1``.
    random_state
        Unused (the decomposition is exact); kept so that every latent space is fitted
        with the same signature.
    """
    from scipy.linalg import eigh

    del random_state
    rows = Rows(x)
    n, n_genes = rows.shape
    mean = rows.mean(SCATTER_BLOCK)
    mean32 = mean.astype(np.float32)
    scatter = np.zeros((n_genes, n_genes), dtype=np.float64)
    for _, block in rows.chunks(SCATTER_BLOCK, desc="PCA"):
        if rows.is_sparse or rows.on_disk:  # a fresh dense block: centre it in place
            block -= mean32
        else:  # a view of the caller's dense data
            block = block - mean32
        np.add(scatter, block.T @ block, out=scatter)  # buffered cast: no float64 temporary
        del block
    n_comps = max(1, min(n_comps, n_genes, n - 1))
    scatter /= max(n - 1, 1)
    total_variance = float(np.trace(scatter))
    # Only the leading eigenpairs, in place: no second genes × genes array.
    values, vectors = eigh(
        scatter, subset_by_index=[n_genes - n_comps, n_genes - 1], overwrite_a=True
    )
    del scatter
    loadings = vectors[:, ::-1]
    # Sign convention (as sklearn's svd_flip): the largest |loading| of each component > 0.
    signs = np.sign(loadings[np.abs(loadings).argmax(axis=0), np.arange(n_comps)])
    loadings = loadings * np.where(signs == 0, 1.0, signs)
    logger.debug(
        "PCA: %d components explain %.3f of the variance.",
        n_comps,
        values.sum() / max(total_variance, 1e-12),
    )
    return freeze(FrozenPCA(mean32, loadings.astype(np.float32)))


def build_encoder(mean: np.ndarray, n_hidden: int, n_comps: int) -> nn.Sequential:
    """The encoder of :func:`fit_autoencoder`, freshly initialized (also used to load one).

    ``centre → Linear(genes, n_hidden) → ReLU → Linear(n_hidden, n_comps)``, over
    ``len(mean)`` genes.
    """
    return nn.Sequential(
        Centering(mean),
        nn.Linear(len(mean), n_hidden),
        nn.ReLU(),
        nn.Linear(n_hidden, n_comps),
    )


def freeze(module: nn.Module) -> nn.Module:
    """``module`` with its parameters frozen, in eval mode (a fitted latent space)."""
    module.requires_grad_(False)
    return module.eval()


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
        Cells × genes: dense, sparse, on disk, or ``Rows`` (``scetm_mnn._rows``) (each step
        reads its ``batch_size`` rows).
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
    rows = Rows(x)
    n_obs, n_genes = rows.shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(random_state)
        encoder = build_encoder(rows.mean().astype(np.float32), n_hidden, n_comps)
        decoder = nn.Sequential(
            nn.Linear(n_comps, n_hidden), nn.ReLU(), nn.Linear(n_hidden, n_genes)
        )
    generator = torch.Generator().manual_seed(random_state)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=lr)
    for step in range(n_steps):
        idx = torch.randint(n_obs, (min(batch_size, n_obs),), generator=generator)
        batch = torch.from_numpy(rows.take(idx.numpy()))
        loss = nn.functional.mse_loss(decoder(encoder(batch)), encoder[0](batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == n_steps - 1:
            logger.info("Autoencoder pretrained: %d steps, final MSE %.4f", n_steps, loss.item())
    return freeze(encoder)


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


def centre_of(space: nn.Module) -> np.ndarray:
    """The per-gene mean that a latent space subtracts first (PCA and encoder alike)."""
    centring = next(m for m in space.modules() if isinstance(m, Centering))
    return centring.mean.numpy()


@torch.inference_mode()
def apply_frozen(module: nn.Module, x, chunk_size: int | None = None) -> np.ndarray:
    """``module(x)`` in eval mode, a chunk of cells at a time, as float32 numpy.

    ``x`` is anything ``Rows`` (``scetm_mnn._rows``) reads: dense, sparse or on disk.
    """
    module.eval()
    encode = lambda block: module(torch.from_numpy(block)).numpy()  # noqa: E731
    return map_chunks(encode, Rows(x), chunk_size, desc="latent")
