"""Fitting the corrector on a reference: latent space, MNN pairs, network, training.

:func:`fit_reference` is what :meth:`~scetm_mnn.pp.MNNCorrector.fit` runs (the method of
:func:`~scetm_mnn.pp.mnn_correct`): it returns the fitted state (:class:`Fitted`) and the
corrected reference cells. The training loop itself is in ``scetm_mnn.pp._training``; the
processes the fit runs in (one, or Lightning Fabric's) in ``scetm_mnn.pp._distributed_fit``.
"""

from __future__ import annotations

import logging
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import sparse

from .._rows import Rows, map_chunks
from ._checkpoint import FitCheckpoint, fingerprint
from ._distributed_fit import FitEngine, launch
from ._latent import (
    FrozenPCA,
    apply_frozen,
    centre_of,
    fit_autoencoder,
    fit_pca,
    visible_basis,
)
from ._network import SubspaceCorrector, build_network, correct_all
from ._pairs import MIN_PAIRS, pair_counts, search_pairs
from ._training import (
    DISTANCES,
    RECALIBRATION_PAIRS,
    coordinate_scale,
    recalibrate_batchnorm,
    restore_spread,
    train_network,
)

logger = logging.getLogger(__name__)

AUTO_RESIDUAL_MAX_CELLS = 50_000
"""``network="auto"`` uses deepMNN's residual network up to this many cells, the
bottleneck network above (``benchmarks/results/corrector_network.md``)."""


@dataclass
class Fitted:
    """A fitted corrector's state: what :meth:`MNNCorrector.save` keeps.

    ``search`` is a PCA of the corrected reference's coordinates ``reference_coords``
    (cells × d, in the network's subspace), in which new batches are paired with the
    reference; ``reference_codes`` are the cells' batches (indices into
    ``reference_batches``); ``info`` holds ``pair_counts``, ``n_pairs`` and ``timing``.
    ``reference_shift`` is the network's change of each reference cell in those
    coordinates (``None`` in correctors saved before it was kept), which the
    ``"mixture"`` mapping of new batches needs.
    """

    net: SubspaceCorrector
    space: torch.nn.Module
    network: str
    history: list[float]
    search: FrozenPCA
    reference_coords: np.ndarray
    reference_codes: np.ndarray
    reference_batches: list[str]
    info: dict[str, Any]
    reference_shift: np.ndarray | None = None


def resolve_network(network: str, n_obs: int) -> str:
    """``"auto"``: the residual network up to ``AUTO_RESIDUAL_MAX_CELLS`` cells."""
    if network != "auto":
        return network
    return "residual" if n_obs <= AUTO_RESIDUAL_MAX_CELLS else "bottleneck"


def search_latent(
    x, z: np.ndarray, space: torch.nn.Module, n_comps: int, random_state: int
) -> np.ndarray:
    """The latent in which ``mnn_correct`` searches MNN pairs: ``n_comps`` centred PCA scores.

    With a PCA loss space of at least ``n_comps`` components, its leading ``n_comps``
    scores ``z`` (no second fit); otherwise a PCA of ``x`` fitted for the search.
    """
    if isinstance(space, FrozenPCA) and z.shape[1] >= n_comps:
        return np.ascontiguousarray(z[:, :n_comps])
    return apply_frozen(fit_pca(x, n_comps, random_state=random_state), x)


def _initial_network(p: dict, x: Rows, space: torch.nn.Module) -> tuple[SubspaceCorrector, str]:
    """The network for ``x`` at its seeded initialization (the identity), and its kind."""
    network = resolve_network(p["network"], x.n_obs)
    seed = p["random_state"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        basis = visible_basis(space)
        net = build_network(network, x.n_vars, p["n_blocks"], p["n_hidden"], basis)
        if network == "bottleneck":
            net.corrector.scale.copy_(coordinate_scale(x, basis, seed))
    return net, network


def _train(
    p: dict, net, space, x: Rows, batches: np.ndarray, upper, checkpoint, engine: FitEngine
) -> list[float]:
    """Train ``net`` on the pairs ``upper`` (row < col), then recalibrate and rescale it.

    Under several processes, the network ends with rank 0's state on every rank.
    """
    seed = p["random_state"]
    pairs_t = torch.from_numpy(np.stack([upper.row, upper.col], axis=1).astype(np.int64))
    generator = torch.Generator().manual_seed(seed)
    with engine.synced(net):
        history = train_network(
            net,
            space,
            x,
            pairs_t,
            batch_weight=p["batch_weight"],
            rec_weight=p["rec_weight"],
            distance=DISTANCES[p["distance"]],
            max_epochs=p["max_epochs"],
            batch_size=p["batch_size"],
            pairs_per_epoch=p["pairs_per_epoch"],
            lr=p["lr"],
            patience=p["early_stopping_patience"],
            generator=generator,
            checkpoint=checkpoint,
            engine=engine,
        )
        recalibrate_batchnorm(
            net, x, pairs_t, p["batch_size"], RECALIBRATION_PAIRS, generator, engine
        )
    net.to("cpu")
    spread = restore_spread(net, x, batches, seed)
    engine.sync_module(net)
    logger.info("Corrected coordinates scaled by %.3g to their batches' spread.", spread)
    return history


def _search(
    p: dict, x: Rows, z, space, batches, timing: dict, checkpoint, engine: FitEngine
) -> sparse.csr_matrix:
    """The MNN pairs: those of the checkpoint, or found (and saved in the checkpoint)."""
    if checkpoint is not None and (saved := checkpoint.pairs()) is not None:
        pairs, timing["pairs"] = saved
        return pairs
    tic = time.perf_counter()
    seed = p["random_state"]
    pairs = search_pairs(
        search_latent(x, z, space, p["n_search_comps"], seed),
        batches,
        p["n_neighbors"],
        seed,
        MIN_PAIRS,
        p["search_rounds"],
        False,
        p["max_search_cells"],
        engine,
    )
    timing["pairs"] = time.perf_counter() - tic
    if checkpoint is not None:
        checkpoint.save_pairs(pairs, timing["pairs"])
    return pairs


def fit_reference(
    p: dict[str, Any],
    x: Rows,
    batches: np.ndarray,
    dense: bool,
    batch_key: str,
    ckpt_path: str | Path | None = None,
    resume: bool = False,
):
    """Fit on the cells ``x`` of ``batches`` with the corrector's parameters ``p``.

    Returns ``(fitted, fit_id, x̂ or None, latent, C, pairs)``, the last four of ``x``'s
    cells. With a ``ckpt_path``, the fit keeps a :class:`FitCheckpoint` there (``resume``:
    the pairs it holds are not searched again and the training continues from its epoch).
    With ``p``'s runtime arguments (``devices``, ...) for several processes, they are
    launched first (:func:`~scetm_mnn.pp._distributed_fit.launch`); every rank returns the
    same fit, and only rank 0 writes the checkpoint.
    """
    engine = launch(p)
    checkpoint = None
    if ckpt_path is not None:
        print_ = fingerprint(p, x, batches)
        checkpoint = FitCheckpoint(ckpt_path, print_, resume, write=engine.is_global_zero)
    seed, chunk = p["random_state"], p["chunk_size"]
    timing: dict[str, float] = {}
    tic = time.perf_counter()
    if p["latent"] == "pca":
        space = fit_pca(x, p["n_comps"], random_state=seed)
    else:
        space = fit_autoencoder(x, p["n_comps"], random_state=seed)
    engine.sync_module(space)  # rank 0's, should the ranks' arithmetic differ
    z = apply_frozen(space, x, chunk)
    timing["latent"] = time.perf_counter() - tic
    net, network = _initial_network(p, x, space)
    history: list[float] = []
    if np.unique(batches).size < 2:
        warnings.warn(
            f"adata.obs[{batch_key!r}] holds a single batch, so there is nothing to "
            "correct; the corrector is the identity on it, and the corrected layer an "
            "unchanged copy of the data.",
            UserWarning,
            stacklevel=4,
        )
        pairs = sparse.csr_matrix((x.n_obs, x.n_obs), dtype=np.float32)
    else:
        pairs = _search(p, x, z, space, batches, timing, checkpoint, engine)
        upper = sparse.triu(pairs, k=1).tocoo()
        if upper.nnz == 0:
            raise ValueError(
                f"No mutual nearest neighbours were found between the batches of "
                f"adata.obs[{batch_key!r}]. Check that batch_key names the batches "
                "(not, e.g., cell types) and that batches share cell types, or increase "
                "n_neighbors."
            )
        logger.info("%d MNN pairs between %d batches.", upper.nnz, np.unique(batches).size)
        tic = time.perf_counter()
        history = _train(p, net, space, x, batches, upper, checkpoint, engine)
        timing["train"] = time.perf_counter() - tic
    tic = time.perf_counter()
    corrected, corrected_latent, shift = correct_all(net, space, x, dense, chunk)
    basis = net.basis.numpy()
    mean = centre_of(space)
    project = lambda block: (block - mean) @ basis  # noqa: E731
    coords = map_chunks(project, x, chunk, desc="corrected coordinates") + shift
    timing["apply"] = time.perf_counter() - tic
    logger.info(
        "mnn_correct: %d epochs, loss %s; %s",
        len(history),
        f"{history[0]:.4g} → {history[-1]:.4g}" if history else "not trained",
        ", ".join(f"{k} {v:.1f}s" for k, v in timing.items()),
    )
    codes, uniques = pd.factorize(batches)
    fitted = Fitted(
        net=net.eval(),
        space=space,
        network=network,
        history=[float(v) for v in history],
        search=fit_pca(coords, p["n_search_comps"], random_state=seed),
        reference_coords=np.ascontiguousarray(coords, dtype=np.float32),
        reference_codes=codes.astype(np.int64),
        reference_batches=[str(b) for b in uniques],
        reference_shift=np.ascontiguousarray(shift, dtype=np.float32),
        info={
            "pair_counts": pair_counts(pairs, batches),
            "n_pairs": int(pairs.nnz // 2),
            "timing": timing,
        },
    )
    fit_id = engine.broadcast(uuid.uuid4().hex)
    return fitted, fit_id, corrected, corrected_latent, shift, pairs
