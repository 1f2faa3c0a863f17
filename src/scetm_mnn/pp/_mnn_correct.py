"""``mnn_correct``: the deep MNN residual corrector as an AnnData transform."""

from __future__ import annotations

import logging
import time
import warnings
from typing import Literal

import numpy as np
import torch
from anndata import AnnData
from scipy import sparse
from tqdm.auto import tqdm

from .._validation import check_finite, check_obs_key, get_matrix
from ._latent import fit_autoencoder, fit_pca
from ._network import ResidualCorrector
from ._pairs import find_mnn_pairs

logger = logging.getLogger(__name__)

_DISTANCES = {
    "l1": lambda a, b: (a - b).abs().mean(),
    "l2": lambda a, b: (a - b).pow(2).mean(),
}


def _write(adata: AnnData, key: str, corrected, latent, pairs, info: dict) -> None:
    adata.layers[key] = corrected
    adata.obsm[f"X_{key}"] = latent
    adata.obsp[f"{key}_pairs"] = pairs
    adata.uns[key] = info


@torch.inference_mode()
def _apply(module: torch.nn.Module, x: np.ndarray, chunk: int = 4096) -> np.ndarray:
    module.eval()
    return np.concatenate(
        [module(torch.from_numpy(x[i : i + chunk])).numpy() for i in range(0, len(x), chunk)]
    )


def _train(
    net: ResidualCorrector,
    latent: torch.nn.Module,
    x: torch.Tensor,
    pairs: np.ndarray,
    *,
    batch_weight: float,
    rec_weight: float,
    distance: str,
    max_epochs: int,
    batch_size: int,
    pairs_per_epoch: int,
    lr: float,
    patience: int,
    generator: torch.Generator,
) -> list[float]:
    dist = _DISTANCES[distance]
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    history: list[float] = []
    best, waited = np.inf, 0
    n_pairs = len(pairs)
    pairs = torch.from_numpy(pairs)
    bar = tqdm(range(max_epochs), desc="mnn_correct", unit="epoch", leave=False)
    for _ in bar:
        net.train()
        order = torch.randperm(n_pairs, generator=generator)[: min(n_pairs, pairs_per_epoch)]
        total = 0.0
        for idx in order.split(batch_size):
            if idx.numel() < 2:
                continue
            a, b = pairs[idx, 0], pairs[idx, 1]
            xin = torch.cat([x[a], x[b]])
            out = net(xin)
            z = latent(out)
            loss_batch = dist(z[: len(idx)], z[len(idx) :])
            loss = batch_weight * loss_batch + rec_weight * dist(out, xin)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss) * len(idx)
        history.append(total / max(1, order.numel()))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
        if history[-1] < best - 1e-6:
            best, waited = history[-1], 0
        else:
            waited += 1
            if waited >= patience:
                logger.info("Early stopping after %d epochs", len(history))
                break
    return history


def mnn_correct(
    adata: AnnData,
    batch_key: str,
    *,
    layer: str | None = None,
    n_neighbors: int = 20,
    n_comps: int = 50,
    latent: Literal["pca", "autoencoder"] = "pca",
    n_blocks: int = 2,
    batch_weight: float = 1.0,
    rec_weight: float = 0.1,
    distance: Literal["l1", "l2"] = "l1",
    max_epochs: int = 10,
    batch_size: int = 256,
    pairs_per_epoch: int = 2048,
    lr: float = 2e-3,
    early_stopping_patience: int = 10,
    key_added: str = "mnn_corrected",
    random_state: int = 0,
    copy: bool = False,
) -> AnnData | None:
    """Remove batch effects with a residual network trained on MNN pairs (deepMNN).

    Mutual nearest neighbours between batches are found in a frozen latent space (PCA by
    default). A residual network ``x + f(x)`` over the genes is then trained so that the two
    cells of each pair land close together in that latent space, while the output stays
    close to the input:
    ``loss = batch_weight · d(z(x̂_a), z(x̂_b)) + rec_weight · d(x̂, x)``.

    Parameters
    ----------
    adata
        Log-normalized expression in ``X`` (or ``layers[layer]``), dense or sparse.
    batch_key
        ``obs`` column with batches.
    layer
        Layer to correct instead of ``X``.
    n_neighbors
        Neighbours per cell in the MNN search.
    n_comps
        Dimensions of the latent space.
    latent
        ``"pca"`` (PCA on all cells, loadings frozen) or ``"autoencoder"`` (an
        autoencoder pretrained on all cells, encoder frozen).
    n_blocks
        Residual blocks.
    batch_weight
        Weight of the pair distance ``L_batch``.
    rec_weight
        Weight of the reconstruction distance ``L_rec``.
    distance
        ``"l1"`` (mean absolute difference, deepMNN) or ``"l2"`` (mean squared difference).
    max_epochs
        Maximum epochs; an epoch sees at most ``pairs_per_epoch`` pairs.
    batch_size
        Pairs per minibatch.
    pairs_per_epoch
        Pairs drawn per epoch (all of them when fewer). The network's cost per pair does
        not depend on the number of cells, so this bounds the cost on large data.
    lr
        Adam learning rate.
    early_stopping_patience
        Stop when the epoch loss has not improved for this many epochs.
    key_added
        Output keys: ``layers[key_added]`` (corrected expression), ``obsm["X_" +
        key_added]`` (latent of the corrected data), ``obsp[key_added + "_pairs"]`` (MNN
        pairs), ``uns[key_added]`` (parameters, pair counts, loss history, timing).
    random_state
        Seed for the latent, the pair search and the training.
    copy
        Return a new AnnData instead of writing the keys into ``adata``.

    Returns
    -------
    The new AnnData when ``copy=True``, else ``None``. ``X`` is never modified.
    """
    check_obs_key(adata, batch_key, "batch_key")
    if distance not in _DISTANCES:
        raise ValueError(f"distance must be 'l1' or 'l2', not {distance!r}.")
    if latent not in ("pca", "autoencoder"):
        raise ValueError(f"latent must be 'pca' or 'autoencoder', not {latent!r}.")
    x = get_matrix(adata, layer)
    name = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    check_finite(x, name)
    x = np.ascontiguousarray(x.toarray() if sparse.issparse(x) else x, dtype=np.float32)
    if copy:
        adata = adata.copy()
    elif adata.is_view:
        adata._init_as_actual(adata.copy())
    batches = adata.obs[batch_key].astype(str).to_numpy()
    params = {
        "batch_key": batch_key,
        "layer": layer or "X",
        "n_neighbors": n_neighbors,
        "n_comps": n_comps,
        "latent": latent,
        "n_blocks": n_blocks,
        "batch_weight": batch_weight,
        "rec_weight": rec_weight,
        "distance": distance,
        "max_epochs": max_epochs,
        "batch_size": batch_size,
        "pairs_per_epoch": pairs_per_epoch,
        "lr": lr,
        "random_state": random_state,
    }
    torch.manual_seed(random_state)
    timing = {}
    start = time.perf_counter()
    fit = fit_pca if latent == "pca" else fit_autoencoder
    space = fit(x, n_comps, random_state=random_state)
    z = _apply(space, x)
    timing["latent_s"] = time.perf_counter() - start

    if len(set(batches)) < 2:
        warnings.warn(
            f"adata.obs[{batch_key!r}] has a single batch; nothing to correct. The data are "
            f"copied unchanged into layers[{key_added!r}].",
            UserWarning,
            stacklevel=2,
        )
        empty = sparse.csr_matrix((adata.n_obs, adata.n_obs), dtype=np.float32)
        info = {"params": params, "pair_counts": {}, "history": [], "timing": timing}
        _write(adata, key_added, x, z, empty, info)
        return adata if copy else None

    start = time.perf_counter()
    pairs, counts = find_mnn_pairs(z, batches, n_neighbors, random_state=random_state)
    timing["pairs_s"] = time.perf_counter() - start
    if pairs.nnz == 0:
        raise ValueError(
            "No mutual nearest neighbours were found between any batches. Check that "
            f"{batch_key!r} labels batches (not cell types), that the batches share cell "
            "types, or increase n_neighbors."
        )
    upper = sparse.triu(pairs, k=1).tocoo()
    pair_list = np.stack([upper.row, upper.col], axis=1).astype(np.int64)
    logger.info("%d MNN pairs: %s", len(pair_list), counts)

    start = time.perf_counter()
    generator = torch.Generator().manual_seed(random_state)
    net = ResidualCorrector(x.shape[1], n_blocks=n_blocks)
    space.requires_grad_(False)
    history = _train(
        net,
        space,
        torch.from_numpy(x),
        pair_list,
        batch_weight=batch_weight,
        rec_weight=rec_weight,
        distance=distance,
        max_epochs=max_epochs,
        batch_size=batch_size,
        pairs_per_epoch=pairs_per_epoch,
        lr=lr,
        patience=early_stopping_patience,
        generator=generator,
    )
    timing["train_s"] = time.perf_counter() - start
    start = time.perf_counter()
    corrected = _apply(net, x)
    corrected_latent = _apply(space, corrected)
    timing["apply_s"] = time.perf_counter() - start
    info = {
        "params": params,
        "pair_counts": counts,
        "n_pairs": len(pair_list),
        "history": np.asarray(history, dtype=np.float64),
        "timing": timing,
    }
    _write(adata, key_added, corrected, corrected_latent, pairs, info)
    return adata if copy else None
