"""``mnn_correct``: the deepMNN residual corrector as an AnnData transform."""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from anndata import AnnData
from scipy import sparse
from tqdm.auto import tqdm

from .._rows import CHUNK_SIZE, Rows, map_chunks, rows_of
from .._validation import (
    check_finite,
    check_log_scale,
    check_not_view,
    check_obs_key,
    get_matrix,
)
from ._actual import make_actual
from ._corrected import DENSE_LAYER_MAX_BYTES, basis_key, shift_key
from ._latent import FrozenPCA, fit_autoencoder, fit_pca, visible_basis
from ._network import BottleneckShift, ResidualCorrector, SubspaceCorrector
from ._pairs import find_mnn_pairs, pair_counts

logger = logging.getLogger(__name__)

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_DISTANCES: dict[str, Distance] = {
    # Mean over rows and dimensions: deepMNN's L1, and the squared L2.
    "l1": lambda a, b: (a - b).abs().mean(),
    "l2": lambda a, b: (a - b).pow(2).mean(),
}
_RECALIBRATION_PAIRS = 2048
"""Pairs whose minibatches re-estimate the BatchNorm statistics after training."""
AUTO_RESIDUAL_MAX_CELLS = 50_000
"""``network="auto"`` uses deepMNN's residual network up to this many cells, the
bottleneck network above (``benchmarks/results/corrector_network.md``)."""
_SCALE_SAMPLE = 10_000
"""Cells (a seeded sample) whose coordinates set the bottleneck network's output scale."""
_REL_TOL = 1e-3
"""An epoch improves on the best loss when it is lower by more than this fraction."""


@torch.inference_mode()
def _apply(module: torch.nn.Module, x, chunk_size: int | None = None) -> np.ndarray:
    """``module(x)`` in eval mode, a chunk of cells at a time, as float32 numpy.

    ``x`` is anything ``Rows`` (``scetm_mnn._rows``) reads: dense, sparse or on disk.
    """
    module.eval()
    return map_chunks(lambda block: module(torch.from_numpy(block)).numpy(), Rows(x), chunk_size)


@torch.inference_mode()
def _correct_all(
    net: SubspaceCorrector,
    space: torch.nn.Module,
    rows: Rows,
    dense: bool,
    chunk_size: int | None = None,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Correct every cell in one pass of chunks: ``(x̂ or None, latent of x̂, C)``.

    ``x̂ = x + C Bᵀ`` with ``C = (f(x) − x) B`` (see ``scetm_mnn.pp._corrected``); the
    dense ``x̂`` is only assembled when ``dense``.
    """
    net.eval()
    basis = net.basis
    corrected = np.empty(rows.shape, dtype=np.float32) if dense else None
    shift = np.empty((rows.n_obs, basis.shape[1]), dtype=np.float32)
    latent = None
    for start, block in rows.chunks(chunk_size):
        x = torch.from_numpy(block)
        c = net.shift(x)
        out = x + c @ basis.T
        z = space(out).numpy()
        if latent is None:
            latent = np.empty((rows.n_obs, z.shape[1]), dtype=np.float32)
        stop = start + block.shape[0]
        shift[start:stop] = c.numpy()
        latent[start:stop] = z
        if corrected is not None:
            corrected[start:stop] = out.numpy()
        del block, x, out  # before the next chunk is read
    return corrected, latent, shift


def _coordinate_scale(rows: Rows, basis: torch.Tensor, random_state: int) -> torch.Tensor:
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
    for start in range(0, n, CHUNK_SIZE):
        u = torch.from_numpy(rows.take(sample[start : start + CHUNK_SIZE])).double() @ basis64
        total += u.sum(dim=0)
        squares += u.pow(2).sum(dim=0)
    variance = (squares - total.pow(2) / n) / (n - 1)
    return variance.clamp_min(1e-12).sqrt().to(torch.float32)


def _resolve_network(network: str, n_obs: int) -> str:
    """``"auto"``: the residual network up to ``AUTO_RESIDUAL_MAX_CELLS`` cells."""
    if network != "auto":
        return network
    return "residual" if n_obs <= AUTO_RESIDUAL_MAX_CELLS else "bottleneck"


def _adam(params, lr: float) -> torch.optim.Adam:
    """Adam, fused where this torch supports it (about twice as fast a step on CPU)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:  # pragma: no cover - torch < 2.4 has no fused CPU Adam
        return torch.optim.Adam(params, lr=lr)


def _pair_rows(rows: Rows, pairs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The cells of pairs ``idx``: all first cells, then all second cells (2m × genes)."""
    return torch.from_numpy(rows.take(pairs[idx].T.reshape(-1).numpy()))


def _train(
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
) -> list[float]:
    """Adam on minibatches of pairs; returns the loss of each epoch.

    An epoch is a pass over ``min(n_pairs, pairs_per_epoch)`` pairs drawn without
    replacement, split into equal minibatches of about ``batch_size`` pairs. Training stops
    early when the epoch loss has not improved for ``patience`` epochs.
    """
    optimizer = _adam(net.parameters(), lr)
    n_pairs = pairs.shape[0]
    per_epoch = min(n_pairs, pairs_per_epoch)
    n_steps = max(1, math.ceil(per_epoch / batch_size))
    history: list[float] = []
    best, waited = math.inf, 0
    net.train()
    epochs = tqdm(range(max_epochs), desc="mnn_correct", unit="epoch", disable=None)
    for epoch in epochs:
        order = torch.randperm(n_pairs, generator=generator)[:per_epoch]
        total = 0.0
        for idx in torch.tensor_split(order, n_steps):
            m = idx.numel()
            x_in = _pair_rows(rows, pairs, idx)
            out = net(x_in)
            z = space(out)
            loss = batch_weight * distance(z[:m], z[m:]) + rec_weight * distance(out, x_in)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * m
        history.append(total / per_epoch)
        epochs.set_postfix(loss=f"{history[-1]:.4g}", refresh=False)
        if epoch == 0 or history[-1] < best - _REL_TOL * abs(best):
            best, waited = history[-1], 0
        else:
            waited += 1
            if waited >= patience:
                logger.info("Early stopping after epoch %d (loss %.4g).", epoch + 1, best)
                break
    epochs.close()
    return history


@torch.no_grad()
def _recalibrate_batchnorm(
    net: torch.nn.Module,
    rows: Rows,
    pairs: torch.Tensor,
    batch_size: int,
    n_pairs: int,
    generator: torch.Generator,
) -> None:
    """Recompute the BatchNorm running statistics of the trained network.

    During training they are exponential averages over minibatches seen with older
    weights, which after few steps are far from the final network's statistics (and would
    then shift every corrected cell in eval mode). They are reset and re-estimated as the
    plain average over minibatches of ``n_pairs`` pairs drawn like the training ones.
    """
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    net.train()
    order = torch.randperm(pairs.shape[0], generator=generator)[:n_pairs]
    for idx in torch.tensor_split(order, max(1, math.ceil(order.numel() / batch_size))):
        net(_pair_rows(rows, pairs, idx))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    net.eval()


def _search_latent(
    x, z: np.ndarray, space: torch.nn.Module, n_comps: int, random_state: int
) -> np.ndarray:
    """The latent in which ``mnn_correct`` searches MNN pairs: ``n_comps`` centred PCA scores.

    With a PCA loss space of at least ``n_comps`` components, its leading ``n_comps``
    scores ``z`` (no second fit); otherwise a PCA of ``x`` fitted for the search.
    """
    if isinstance(space, FrozenPCA) and z.shape[1] >= n_comps:
        return np.ascontiguousarray(z[:, :n_comps])
    return _apply(fit_pca(x, n_comps, random_state=random_state), x)


def _write(adata: AnnData, key: str, corrected, latent, shift, basis, pairs, info: dict) -> None:
    make_actual(adata, "mnn_correct")  # only now: a call that fails leaves a view a view
    if corrected is not None:
        adata.layers[key] = corrected
    adata.obsm[f"X_{key}"] = latent
    adata.obsm[shift_key(key)] = shift
    adata.varm[basis_key(key)] = np.asarray(basis, dtype=np.float32)
    adata.obsp[f"{key}_pairs"] = pairs
    adata.uns[key] = info


def mnn_correct(
    adata: AnnData,
    batch_key: str,
    *,
    layer: str | None = None,
    n_neighbors: int = 20,
    n_search_comps: int = 30,
    search_rounds: int = 10,
    max_search_cells: int | None = 10_000,
    n_comps: int = 50,
    latent: Literal["pca", "autoencoder"] = "pca",
    network: Literal["auto", "bottleneck", "residual"] = "auto",
    n_hidden: int = 1024,
    n_blocks: int = 2,
    batch_weight: float = 1.0,
    rec_weight: float = 0.1,
    distance: Literal["l1", "l2"] = "l1",
    max_epochs: int = 20,
    batch_size: int = 256,
    pairs_per_epoch: int = 512,
    lr: float = 0.1,
    early_stopping_patience: int = 10,
    key_added: str = "mnn_corrected",
    random_state: int = 0,
    dense_layer: bool | None = None,
    chunk_size: int | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Remove batch effects with a residual network trained on MNN pairs (deepMNN).

    1. A frozen latent space is fitted on all cells: PCA (``z = (x − mean) @ W``) or the
       encoder of a small pretrained autoencoder.
    2. Mutual nearest neighbours between every pair of batches are found by Euclidean
       distance in the leading ``n_search_comps`` centred PCA scores of the log-expression
       (:func:`~scetm_mnn.pp.find_mnn_pairs`, at most ``search_rounds`` rounds: each
       round after the first searches with the batch offsets estimated from the previous
       round's pairs removed, so that pairs join the same states rather than the facing
       edges of shifted populations). Batches larger than ``max_search_cells`` are
       searched through a seeded sample of that many cells.
    3. A network is trained so that the two cells of each pair land close together in the
       latent space while the output stays close to the input::

           x̂ = x + C(x) Bᵀ
           loss = batch_weight · d(z(x̂_a), z(x̂_b)) + rec_weight · d(x̂, x)

       where ``d`` is the mean absolute (``"l1"``) or mean squared (``"l2"``) difference
       over the latent dimensions or genes, averaged over the minibatch, and ``B`` is an
       orthonormal basis of the gene-space directions the latent map sees (the PCA
       loadings, or the row space of the encoder's first layer). Outside them the loss is
       blind, and an unconstrained network adds batch-specific changes there that grow with
       the data (``benchmarks/results/corrector.md``); there the expression is kept as it
       was. The shift ``C`` (cells × ``n_comps``) comes from ``network``: ``"bottleneck"``
       reads all genes through ``n_hidden`` units and writes ``C`` directly;
       ``"residual"`` is deepMNN's residual network over the genes (``n_blocks`` blocks
       ``x + g(x)``), ``C = (f(x) − x) B``.
    4. The BatchNorm statistics are re-estimated for the final weights, and all cells are
       corrected with the network in eval mode, in chunks.

    Training costs at most ``max_epochs × pairs_per_epoch`` pairs (10 240 by default)
    whatever the number of cells or pairs: the pairs of a larger data set are more samples
    of the same alignment problem, and the budget removes the same fraction of the batch
    gap at 10 000, 100 000 and 300 000 simulated cells (``benchmarks/results/corrector.md``).
    The same holds for the pair search, bounded by ``max_search_cells`` per batch; only
    the PCA and correcting every cell grow, linearly (``benchmarks/results/scale.md``).
    The bottleneck network has ``n_genes · n_hidden`` weights in its first layer, the
    residual network ``4 · n_blocks · n_genes²``, so select genes first (e.g. 2000 HVGs).

    Parameters
    ----------
    adata
        Log-normalized expression in ``X`` (or ``layers[layer]``) over the genes to correct,
        e.g. the output of :func:`~scetm_mnn.pp.preprocess`; dense or sparse, any float
        dtype. A view is made an actual AnnData when ``copy=False``.
    batch_key
        ``obs`` column with the batch of each cell.
    layer
        Layer to correct instead of ``X``.
    n_neighbors
        Neighbours per cell in the MNN search (reduced, with a log message, for batches
        smaller than that).
    n_search_comps
        Leading PCA components in which MNN pairs are searched (the loss space's own with
        ``latent="pca"`` and ``n_comps >= n_search_comps``, else a PCA fitted for the
        search). With a single round, 30 and 50 components pair different cell types
        about equally often on the Baron pancreas (10.1 % against 10.1 % human, 3.9 %
        against 4.0 % mouse), and 30 finds more pairs on mouse (6,474 against 5,801;
        ``benchmarks/results/pairs.md``).
    search_rounds
        Most rounds of the MNN search (``n_rounds`` of :func:`~scetm_mnn.pp.find_mnn_pairs`;
        the offset rounds stop early once the offsets have converged); 1 searches once,
        between the uncorrected batches.
    max_search_cells
        Most cells per batch searched for MNN pairs (``max_cells`` of
        :func:`~scetm_mnn.pp.find_mnn_pairs`: one seeded sample per batch; the pairs are
        the exact mutual nearest neighbours among the sampled cells). 10 000 cells per
        batch give far more pairs than training uses and bound the search's cost whatever
        the data's size; ``None`` searches every cell.
    n_comps
        Dimensions of the latent space.
    latent
        ``"pca"`` (PCA of all cells, loadings frozen) or ``"autoencoder"`` (an autoencoder
        pretrained on all cells, encoder frozen).
    network
        ``"residual"`` (deepMNN's residual network over the genes, ``n_blocks`` blocks),
        ``"bottleneck"`` (all genes → ``n_hidden`` → ``n_hidden`` → the shift ``C``; about a
        tenth of the arithmetic per cell at 2000 genes), or ``"auto"`` (the default): the
        residual network up to ``AUTO_RESIDUAL_MAX_CELLS`` (50 000) cells, the bottleneck
        above, where correcting every cell with the residual network would dominate the
        run. Both keep the change to the span of ``B``. On the Baron pancreas the
        residual network mixes the donors most and the bottleneck still more than Harmony
        (``benchmarks/results/corrector_network.md``). The choice is recorded in
        ``uns[key_added]["params"]["network"]``.
    n_hidden
        Hidden units of the bottleneck network.
    n_blocks
        Residual blocks of the residual network; each starts as the identity.
    batch_weight
        Weight of the pair term ``L_batch``.
    rec_weight
        Weight of the reconstruction term ``L_rec``; larger keeps the output closer to
        the input (less correction).
    distance
        ``"l1"`` (mean absolute difference, as deepMNN) or ``"l2"`` (mean squared
        difference).
    max_epochs
        Maximum number of epochs (0 leaves the network at its initialization, the
        identity).
    batch_size
        Pairs per minibatch (each minibatch holds twice as many cells).
    pairs_per_epoch
        Pairs drawn (without replacement) per epoch; all of them when there are fewer.
    lr
        Adam learning rate; 0.1 as in deepMNN (every linear layer is followed by
        BatchNorm, so its weights' scale does not matter), which corrects well within the
        short default budget.
    early_stopping_patience
        Stop when the epoch loss has not improved for this many epochs.
    key_added
        Prefix of the output keys.
    random_state
        Seed of the latent space, the pair search, the initialization and the minibatches.
        The global torch RNG is left untouched; the same seed gives the same result on the
        same machine and thread count.
    dense_layer
        Also write the corrected matrix densely to ``layers[key_added]``. ``None`` (the
        default) writes it when it takes at most
        ``DENSE_LAYER_MAX_BYTES`` (128 MiB, about 16 000 cells
        × 2000 genes). Either way the exact low-rank form is stored, which the model reads
        per minibatch and :func:`~scetm_mnn.pp.corrected_expression` exports in chunks.
    chunk_size
        Cells densified at a time when passing over all cells (PCA, correcting every cell);
        2048 (``scetm_mnn._rows.CHUNK_SIZE``) by default. It bounds the memory, not the
        result: other chunk sizes give the same output up to float rounding.
    copy
        Return a new AnnData instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the new AnnData when ``copy=True``. ``X`` and existing keys are never
    modified; these keys are added:

    ``layers[key_added]``
        Corrected expression (dense float32, cells × genes), when ``dense_layer`` (by
        default for data up to 128 MiB dense).
    ``obsm[key_added + "_shift"]``, ``varm[key_added + "_basis"]``
        The same corrected expression, exactly, in low-rank form: ``x̂ = x + C Bᵀ``, with
        ``C`` (cells × d) and the orthonormal basis ``B`` (genes × d) of the gene-space
        directions the corrector changes (the PCA loadings). See
        :func:`~scetm_mnn.pp.corrected_expression`.
    ``obsm["X_" + key_added]``
        Latent of the corrected expression in the frozen space (cells × ``n_comps``).
    ``obsp[key_added + "_pairs"]``
        Symmetric sparse MNN pair matrix (1 for each pair).
    ``uns[key_added]``
        ``params``; ``pair_counts`` (``"<batch_a>|<batch_b>"`` → MNN pairs used);
        ``n_pairs`` (their total); ``history`` (loss per epoch); ``timing`` (seconds spent
        on the ``latent``, ``pairs``, ``train`` and ``apply`` steps).

    Raises
    ------
    KeyError
        ``batch_key`` is not an ``obs`` column, or ``layer`` is not a layer.
    ValueError
        Non-finite values; data that look like raw counts rather than log-scale (maximum
        above 50, or integer-valued with maximum above 10); invalid parameters; or no MNN
        pairs between any batches.

    Examples
    --------
    >>> import scetm_mnn as sm
    >>> adata = sm.datasets.simulate(n_cells=600, n_genes=200, n_batches=3, random_state=0)
    >>> sm.pp.preprocess(adata, n_top_genes=200, batch_key="batch")
    >>> sm.pp.mnn_correct(adata, "batch", max_epochs=2)
    >>> adata.layers["mnn_corrected"].shape, adata.obsm["X_mnn_corrected"].shape
    ((600, 200), (600, 50))
    >>> adata.uns["mnn_corrected"]["n_pairs"] > 0
    True
    """
    check_obs_key(adata, batch_key, "batch_key")
    if distance not in _DISTANCES:
        raise ValueError(f"distance must be 'l1' or 'l2', not {distance!r}.")
    if network not in ("auto", "bottleneck", "residual"):
        raise ValueError(f"network must be 'auto', 'bottleneck' or 'residual', not {network!r}.")
    if latent not in ("pca", "autoencoder"):
        raise ValueError(f"latent must be 'pca' or 'autoencoder', not {latent!r}.")
    for name, value, minimum in [
        ("n_neighbors", n_neighbors, 1),
        ("n_search_comps", n_search_comps, 1),
        ("search_rounds", search_rounds, 1),
        ("n_comps", n_comps, 1),
        ("n_hidden", n_hidden, 1),
        ("n_blocks", n_blocks, 1),
        ("max_epochs", max_epochs, 0),
        ("batch_size", batch_size, 1),
        ("pairs_per_epoch", pairs_per_epoch, 1),
        ("early_stopping_patience", early_stopping_patience, 1),
        ("chunk_size", 1 if chunk_size is None else chunk_size, 1),
        ("max_search_cells", 1 if max_search_cells is None else max_search_cells, 1),
    ]:
        if value < minimum:
            raise ValueError(f"{name} must be at least {minimum}, not {value}.")
    matrix = get_matrix(adata, layer, argument="layer")
    name = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    check_finite(matrix, name)
    check_log_scale(matrix, name)
    x = rows_of(adata, layer)
    batches = adata.obs[batch_key].astype(str).to_numpy()
    if copy and adata.isbacked:
        raise ValueError(
            "copy=True would load the whole backed AnnData into memory. Use copy=False: the "
            "results are added to the (read-only) backed object in memory, and X stays on "
            "disk; or load it first with `adata = adata.to_memory()`."
        )
    if copy:
        adata = adata.copy()
    elif adata.isbacked:
        check_not_view(adata, "mnn_correct")  # before the work: _write could not make it actual

    params = {
        "batch_key": batch_key,
        "layer": "X" if layer is None else layer,
        "n_neighbors": n_neighbors,
        "n_search_comps": n_search_comps,
        "search_rounds": search_rounds,
        "max_search_cells": max_search_cells,
        "n_comps": n_comps,
        "latent": latent,
        "network": _resolve_network(network, adata.n_obs),
        "n_hidden": n_hidden,
        "n_blocks": n_blocks,
        "batch_weight": batch_weight,
        "rec_weight": rec_weight,
        "distance": distance,
        "max_epochs": max_epochs,
        "batch_size": batch_size,
        "pairs_per_epoch": pairs_per_epoch,
        "lr": lr,
        "early_stopping_patience": early_stopping_patience,
        "random_state": random_state,
    }
    if dense_layer is None:
        dense_layer = x.n_obs * x.n_vars * 4 <= DENSE_LAYER_MAX_BYTES
    params["dense_layer"] = bool(dense_layer)
    timing: dict[str, float] = {}
    tic = time.perf_counter()
    if latent == "pca":
        space = fit_pca(x, n_comps, random_state=random_state)
    else:
        space = fit_autoencoder(x, n_comps, random_state=random_state)
    z = _apply(space, x, chunk_size)
    timing["latent"] = time.perf_counter() - tic

    if np.unique(batches).size < 2:
        warnings.warn(
            f"adata.obs[{batch_key!r}] holds a single batch, so there is nothing to correct; "
            f"layers[{key_added!r}] holds an unchanged copy of the data.",
            UserWarning,
            stacklevel=2,
        )
        info = {
            "params": params,
            "pair_counts": pair_counts(sparse.csr_matrix((x.n_obs,) * 2), batches),
            "n_pairs": 0,
            "history": [],
            "timing": timing,
        }
        empty = sparse.csr_matrix((x.n_obs, x.n_obs), dtype=np.float32)
        basis = visible_basis(space).numpy()
        unchanged = _apply(torch.nn.Identity(), x, chunk_size) if dense_layer else None
        shift = np.zeros((x.n_obs, basis.shape[1]), dtype=np.float32)
        _write(adata, key_added, unchanged, z, shift, basis, empty, info)
        return adata if copy else None

    tic = time.perf_counter()
    search = _search_latent(x, z, space, n_search_comps, random_state)
    pairs = find_mnn_pairs(
        search,
        batches,
        n_neighbors=n_neighbors,
        random_state=random_state,
        n_rounds=search_rounds,
        max_cells=max_search_cells,
    )
    timing["pairs"] = time.perf_counter() - tic
    upper = sparse.triu(pairs, k=1).tocoo()
    if upper.nnz == 0:
        raise ValueError(
            f"No mutual nearest neighbours were found between the batches of "
            f"adata.obs[{batch_key!r}]. Check that batch_key names the batches (not, e.g., "
            "cell types) and that batches share cell types, or increase n_neighbors."
        )
    counts = pair_counts(pairs, batches)
    logger.info("%d MNN pairs between %d batches.", upper.nnz, np.unique(batches).size)

    tic = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(random_state)
        basis = visible_basis(space)
        if params["network"] == "residual":
            net = SubspaceCorrector(
                ResidualCorrector(x.n_vars, n_blocks=n_blocks), basis, residual=True
            )
        else:
            shift_net = BottleneckShift(x.n_vars, basis.shape[1], n_hidden)
            shift_net.scale.copy_(_coordinate_scale(x, basis, random_state))
            net = SubspaceCorrector(shift_net, basis)
    pairs_t = torch.from_numpy(np.stack([upper.row, upper.col], axis=1).astype(np.int64))
    generator = torch.Generator().manual_seed(random_state)
    history = _train(
        net,
        space,
        x,
        pairs_t,
        batch_weight=batch_weight,
        rec_weight=rec_weight,
        distance=_DISTANCES[distance],
        max_epochs=max_epochs,
        batch_size=batch_size,
        pairs_per_epoch=pairs_per_epoch,
        lr=lr,
        patience=early_stopping_patience,
        generator=generator,
    )
    _recalibrate_batchnorm(net, x, pairs_t, batch_size, _RECALIBRATION_PAIRS, generator)
    timing["train"] = time.perf_counter() - tic
    tic = time.perf_counter()
    corrected, corrected_latent, shift = _correct_all(net, space, x, dense_layer, chunk_size)
    timing["apply"] = time.perf_counter() - tic
    logger.info(
        "mnn_correct: %d epochs, loss %s; %s",
        len(history),
        f"{history[0]:.4g} → {history[-1]:.4g}" if history else "not trained",
        ", ".join(f"{k} {v:.1f}s" for k, v in timing.items()),
    )
    info = {
        "params": params,
        "pair_counts": counts,
        "n_pairs": int(upper.nnz),
        "history": [float(v) for v in history],
        "timing": timing,
    }
    _write(adata, key_added, corrected, corrected_latent, shift, net.basis.numpy(), pairs, info)
    return adata if copy else None
