"""``MNNCorrector``: the deepMNN corrector as an object that is fitted, applied and saved.

:func:`mnn_correct` is its scanpy-style functional form (``fit_transform`` in one call).
The training and correction steps themselves are in ``scetm_mnn.pp._mnn_correct``.
"""

from __future__ import annotations

import inspect
import json
import logging
import textwrap
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse

from .._rows import Rows, ShiftedRows, index_chunks, map_chunks, rows_of
from .._validation import (
    check_finite,
    check_log_scale,
    check_not_view,
    check_obs_key,
    get_matrix,
)
from ._actual import make_actual
from ._adapter import ADAPTERS, Adapter, fit_adapter
from ._corrected import DENSE_LAYER_MAX_BYTES, basis_key, latent_key, shift_key
from ._genes import AlignedRows, GeneAlignment, align_genes
from ._latent import (
    Centering,
    FrozenPCA,
    build_encoder,
    fit_autoencoder,
    fit_pca,
    freeze,
    visible_basis,
)
from ._mnn_correct import (
    _DISTANCES,
    _RECALIBRATION_PAIRS,
    _apply,
    _coordinate_scale,
    _correct_all,
    _recalibrate_batchnorm,
    _resolve_network,
    _restore_spread,
    _search_latent,
    _train,
)
from ._network import BottleneckShift, ResidualCorrector, SubspaceCorrector
from ._pairs import find_mnn_pairs, pair_counts

logger = logging.getLogger(__name__)

STATE_FILE = "corrector.pt"
"""Name of the tensors' file when :meth:`MNNCorrector.save` is given a directory."""
META_FILE = "corrector.json"
"""Name of the JSON sidecar when :meth:`MNNCorrector.save` is given a directory."""
_FORMAT = 1
"""Version of the saved layout; :meth:`MNNCorrector.load` refuses others."""
KNOWN_BATCHES = ("reference", "query", "raise")

_PARAMS_DOC = """\
    layer
        Layer to correct instead of ``X`` (the same layer is read by ``transform``).
    n_neighbors
        Neighbours per cell in the MNN search (reduced, with a log message, for batches
        smaller than that). Against 20 (fastMNN's), 40 finds 2.3 times the pairs on the
        Baron pancreas and raises the mean ARI of the corrected latent over a Leiden sweep
        (0.913 → 0.915 human, 0.842 → 0.888 mouse, seeds 0–4), at a slightly lower batch
        entropy (``benchmarks/results/pairs.md``).
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
    random_state
        Seed of the latent space, the pair search, the initialization and the minibatches.
        The global torch RNG is left untouched; the same seed gives the same result on the
        same machine and thread count.
    chunk_size
        Cells densified at a time when passing over all cells (PCA, correcting every cell);
        2048 (``scetm_mnn._rows.CHUNK_SIZE``) by default. It bounds the memory, not the
        result: other chunk sizes give the same output up to float rounding."""

_OUTPUT_DOC = """\
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
        Latent of the corrected expression in the frozen space (cells × ``n_comps``)."""

_DENSE_DOC = """\
    dense_layer
        Also write the corrected matrix densely to ``layers[key_added]``. ``None`` (the
        default) writes it when it takes at most
        ``DENSE_LAYER_MAX_BYTES`` (128 MiB, about 16 000 cells
        × 2000 genes). Either way the exact low-rank form is stored, which the model reads
        per minibatch and :func:`~scetm_mnn.pp.corrected_expression` exports in chunks."""


def _doc(**parts: str):
    """Fill the ``{name}`` lines of a docstring with the shared ``parts``, re-indented."""

    def decorate(obj):
        lines = []
        for line in obj.__doc__.splitlines():
            name = line.strip()[1:-1]
            if line.strip().startswith("{") and name in parts:
                indent = line[: len(line) - len(line.lstrip())]
                lines.append(textwrap.indent(textwrap.dedent(parts[name]), indent))
            else:
                lines.append(line)
        obj.__doc__ = "\n".join(lines)
        return obj

    return decorate


def _read_rows(adata: AnnData, layer: str | None) -> Rows:
    """Checked row access to the log-expression the corrector reads."""
    matrix = get_matrix(adata, layer, argument="layer")
    name = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    check_finite(matrix, name)
    check_log_scale(matrix, name)
    return rows_of(adata, layer)


def _target(adata: AnnData, copy: bool, caller: str) -> AnnData:
    """The AnnData to write into: a copy, or ``adata`` itself (checked before any work)."""
    if copy and adata.isbacked:
        raise ValueError(
            "copy=True would load the whole backed AnnData into memory. Use copy=False: the "
            "results are added to the (read-only) backed object in memory, and X stays on "
            "disk; or load it first with `adata = adata.to_memory()`."
        )
    if copy:
        return adata.copy()
    if adata.isbacked:
        check_not_view(adata, caller)  # before the work: _write could not make it actual
    return adata


def _write(
    adata: AnnData, caller: str, key: str, corrected, latent, shift, basis, pairs, info: dict
) -> None:
    make_actual(adata, caller)  # only now: a call that fails leaves a view a view
    if corrected is not None:
        adata.layers[key] = corrected
    adata.obsm[latent_key(key)] = latent
    adata.obsm[shift_key(key)] = shift
    adata.varm[basis_key(key)] = np.asarray(basis, dtype=np.float32)
    if pairs is not None:
        adata.obsp[f"{key}_pairs"] = pairs
    adata.uns[key] = info


def _build_network(
    network: str, n_genes: int, n_blocks: int, n_hidden: int, basis: torch.Tensor
) -> SubspaceCorrector:
    """The corrector network at its initialization (the identity), for fitting or loading.

    ``network`` is ``"residual"`` or ``"bottleneck"`` (resolved from ``"auto"``); the
    bottleneck's output scale is left at ones, for the caller to set or load.
    """
    if network == "residual":
        return SubspaceCorrector(
            ResidualCorrector(n_genes, n_blocks=n_blocks), basis, residual=True
        )
    return SubspaceCorrector(BottleneckShift(n_genes, basis.shape[1], n_hidden), basis)


def _centre(space: torch.nn.Module) -> np.ndarray:
    """The per-gene mean that the latent space subtracts first (PCA and encoder alike)."""
    centring = next(m for m in space.modules() if isinstance(m, Centering))
    return centring.mean.numpy()


@torch.inference_mode()
def _space_of(space: torch.nn.Module, block: np.ndarray) -> np.ndarray:
    return space(torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))).numpy()


@_doc(params=_PARAMS_DOC, outputs=_OUTPUT_DOC, dense=_DENSE_DOC)
class MNNCorrector:
    """The deepMNN corrector of :func:`~scetm_mnn.pp.mnn_correct`, kept to correct new cells.

    :meth:`fit` trains the residual network on MNN pairs of a reference (the method of
    :func:`~scetm_mnn.pp.mnn_correct`); :meth:`transform` corrects any cells over the same
    genes with it, including cells of batches it has never seen; :meth:`save` and
    :meth:`load` keep it on disk. It holds the genes, the parameters, the frozen latent
    space, the network, the reference batches and, for the alignment of new batches, the
    corrected reference cells' coordinates in the corrector's subspace (cells × ``d``
    float32, ``d`` = ``n_comps`` with the PCA latent), not the reference expression.

    **New batches.** The network removes the batch effects it learnt; a new batch brings
    one it has not seen. :meth:`transform` therefore passes the cells of a batch that is
    not a reference batch through the frozen network, finds MNN pairs between them and
    the corrected reference (pooled, in a PCA of the reference's coordinates, with the
    offset rounds of :func:`~scetm_mnn.pp.find_mnn_pairs`), and fits a small adapter
    for that batch on those pairs, the reference network staying frozen (as in scArches'
    architecture surgery): ``adapter="affine"`` maps each cell's coordinates ``u`` to a
    change ``b + (u − ū) A`` in the corrector's subspace, fitted by ridge least squares
    so that paired query cells land on their reference partners; ``"local"`` (the
    default) adds to it what is left of the pairs' changes, smoothed over each cell's
    ``n_neighbors`` nearest paired query cells (as MNN correction does), so that cell
    types shifted differently each meet their partners; ``"shift"`` fits the
    translation ``b`` alone; ``"none"`` applies the network only. See the user guide's
    section "Correcting new cells".

    **Batch names.** Cells whose batch name is one of the reference batches are, by
    default (``known_batches="reference"`` of :meth:`transform`), corrected as that batch:
    by the frozen network alone, so the reference cells get exactly the output
    :meth:`fit_transform` gave them. Pass ``known_batches="query"`` to align such a batch
    as a new one anyway (e.g. another study's ``"donor1"``), or ``"raise"`` to refuse
    names that clash.

    Parameters
    ----------
    batch_key
        ``obs`` column with the batch of each cell (in the reference and in queries).
    {params}
    adapter
        How :meth:`transform` aligns a batch the corrector was not fitted on: ``"local"``,
        ``"affine"``, ``"shift"`` or ``"none"`` (see above).
    adapter_ridge
        Ridge penalty of the affine adapter, relative to the spread of the paired query
        cells; larger stays closer to a translation.

    Attributes
    ----------
    genes_
        The genes it was fitted on (``var_names``, in order).
    reference_batches_
        The reference batch names.
    net_
        The network (:class:`torch.nn.Module`), eval mode.
    network_
        Its kind, ``"residual"`` or ``"bottleneck"`` (``network="auto"`` resolved).
    space_
        The frozen latent space (:class:`torch.nn.Module`).
    history_
        Loss per training epoch.

    Examples
    --------
    >>> import scetm_mnn as sm
    >>> adata = sm.datasets.simulate(n_cells=600, n_genes=100, n_batches=3, random_state=0)
    >>> sm.pp.preprocess(adata, n_top_genes=100, batch_key="batch")
    >>> reference = adata[adata.obs["batch"] != "batch_2"].copy()
    >>> query = adata[adata.obs["batch"] == "batch_2"].copy()
    >>> corrector = sm.pp.MNNCorrector("batch", max_epochs=2).fit(reference)
    >>> corrector.reference_batches_
    ['batch_0', 'batch_1']
    >>> corrector.transform(query)
    >>> query.obsm["X_mnn_corrected"].shape == (query.n_obs, 50)
    True
    >>> query.uns["mnn_corrected"]["adapters"]["batch_2"]["n_pairs"] > 0
    True
    """

    def __init__(
        self,
        batch_key: str,
        *,
        layer: str | None = None,
        n_neighbors: int = 40,
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
        random_state: int = 0,
        chunk_size: int | None = None,
        adapter: Adapter = "local",
        adapter_ridge: float = 1.0,
    ):
        if distance not in _DISTANCES:
            raise ValueError(f"distance must be 'l1' or 'l2', not {distance!r}.")
        if network not in ("auto", "bottleneck", "residual"):
            raise ValueError(
                f"network must be 'auto', 'bottleneck' or 'residual', not {network!r}."
            )
        if latent not in ("pca", "autoencoder"):
            raise ValueError(f"latent must be 'pca' or 'autoencoder', not {latent!r}.")
        if adapter not in ADAPTERS:
            raise ValueError(f"adapter must be one of {ADAPTERS}, not {adapter!r}.")
        if not adapter_ridge >= 0:
            raise ValueError(f"adapter_ridge must be at least 0, not {adapter_ridge}.")
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
        self._kwargs: dict[str, Any] = {
            "batch_key": batch_key,
            "layer": layer,
            "n_neighbors": n_neighbors,
            "n_search_comps": n_search_comps,
            "search_rounds": search_rounds,
            "max_search_cells": max_search_cells,
            "n_comps": n_comps,
            "latent": latent,
            "network": network,
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
            "chunk_size": chunk_size,
            "adapter": adapter,
            "adapter_ridge": adapter_ridge,
        }
        self.genes_: list[str] | None = None
        self.reference_batches_: list[str] | None = None
        self.net_: SubspaceCorrector | None = None
        self.space_: torch.nn.Module | None = None
        self.history_: list[float] = []
        self.network_: str | None = None
        self._search: FrozenPCA | None = None
        self._reference_coords: np.ndarray | None = None
        self._reference_codes: np.ndarray | None = None
        self._fit_info: dict[str, Any] = {}
        self._fit_id: str | None = None

    # -- state ------------------------------------------------------------------------------

    @property
    def batch_key(self) -> str:
        """The ``obs`` column of the batches."""
        return self._kwargs["batch_key"]

    @property
    def params(self) -> dict[str, Any]:
        """The parameters as recorded in ``uns[key_added]["params"]`` (``layer`` "X" for X)."""
        params = {k: v for k, v in self._kwargs.items() if k != "chunk_size"}
        params["layer"] = "X" if params["layer"] is None else params["layer"]
        if self.network_ is not None:  # "auto", resolved by the fit
            params["network"] = self.network_
        return params

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` (or :meth:`load`) has given it a network."""
        return self.net_ is not None

    def __repr__(self) -> str:
        if not self.is_fitted:
            return f"MNNCorrector(batch_key={self.batch_key!r}, not fitted)"
        return (
            f"MNNCorrector(batch_key={self.batch_key!r}, fitted on "
            f"{len(self.reference_batches_)} batches, {self._reference_coords.shape[0]} "
            f"cells × {len(self.genes_)} genes)"
        )

    def _check_fitted(self, what: str) -> None:
        if not self.is_fitted:
            raise ValueError(
                f"This MNNCorrector is not fitted, so it cannot {what}. Call "
                "`corrector.fit(reference)` first, or `MNNCorrector.load(path)`."
            )

    # -- fitting ----------------------------------------------------------------------------

    def _inputs(self, adata: AnnData) -> tuple[Rows, np.ndarray]:
        check_obs_key(adata, self.batch_key, "batch_key")
        rows = _read_rows(adata, self._kwargs["layer"])
        return rows, adata.obs[self.batch_key].astype(str).to_numpy()

    def _fit(self, adata: AnnData, x: Rows, batches: np.ndarray, dense: bool):
        """Fit on ``x``; returns ``(x̂ or None, latent, C, pairs)`` of its cells."""
        p = self._kwargs
        seed, chunk = p["random_state"], p["chunk_size"]
        timing: dict[str, float] = {}
        tic = time.perf_counter()
        if p["latent"] == "pca":
            space = fit_pca(x, p["n_comps"], random_state=seed)
        else:
            space = fit_autoencoder(x, p["n_comps"], random_state=seed)
        z = _apply(space, x, chunk)
        timing["latent"] = time.perf_counter() - tic
        network = _resolve_network(p["network"], x.n_obs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            basis = visible_basis(space)
            net = _build_network(network, x.n_vars, p["n_blocks"], p["n_hidden"], basis)
            if network == "bottleneck":
                net.corrector.scale.copy_(_coordinate_scale(x, basis, seed))
        history: list[float] = []
        if np.unique(batches).size < 2:
            warnings.warn(
                f"adata.obs[{self.batch_key!r}] holds a single batch, so there is nothing to "
                "correct; the corrector is the identity on it, and the corrected layer an "
                "unchanged copy of the data.",
                UserWarning,
                stacklevel=3,
            )
            pairs = sparse.csr_matrix((x.n_obs, x.n_obs), dtype=np.float32)
        else:
            tic = time.perf_counter()
            search = _search_latent(x, z, space, p["n_search_comps"], seed)
            pairs = find_mnn_pairs(
                search,
                batches,
                n_neighbors=p["n_neighbors"],
                random_state=seed,
                n_rounds=p["search_rounds"],
                max_cells=p["max_search_cells"],
            )
            timing["pairs"] = time.perf_counter() - tic
            upper = sparse.triu(pairs, k=1).tocoo()
            if upper.nnz == 0:
                raise ValueError(
                    f"No mutual nearest neighbours were found between the batches of "
                    f"adata.obs[{self.batch_key!r}]. Check that batch_key names the batches "
                    "(not, e.g., cell types) and that batches share cell types, or increase "
                    "n_neighbors."
                )
            logger.info("%d MNN pairs between %d batches.", upper.nnz, np.unique(batches).size)
            tic = time.perf_counter()
            pairs_t = torch.from_numpy(np.stack([upper.row, upper.col], axis=1).astype(np.int64))
            generator = torch.Generator().manual_seed(seed)
            history = _train(
                net,
                space,
                x,
                pairs_t,
                batch_weight=p["batch_weight"],
                rec_weight=p["rec_weight"],
                distance=_DISTANCES[p["distance"]],
                max_epochs=p["max_epochs"],
                batch_size=p["batch_size"],
                pairs_per_epoch=p["pairs_per_epoch"],
                lr=p["lr"],
                patience=p["early_stopping_patience"],
                generator=generator,
            )
            _recalibrate_batchnorm(
                net, x, pairs_t, p["batch_size"], _RECALIBRATION_PAIRS, generator
            )
            spread = _restore_spread(net, x, batches, seed)
            logger.info("Corrected coordinates scaled by %.3g to their batches' spread.", spread)
            timing["train"] = time.perf_counter() - tic
        tic = time.perf_counter()
        corrected, corrected_latent, shift = _correct_all(net, space, x, dense, chunk)
        basis = net.basis.numpy()
        mean = _centre(space)
        coords = map_chunks(lambda block: (block - mean) @ basis, x, chunk) + shift
        timing["apply"] = time.perf_counter() - tic
        logger.info(
            "mnn_correct: %d epochs, loss %s; %s",
            len(history),
            f"{history[0]:.4g} → {history[-1]:.4g}" if history else "not trained",
            ", ".join(f"{k} {v:.1f}s" for k, v in timing.items()),
        )
        codes, uniques = pd.factorize(batches)
        self.genes_ = [str(g) for g in adata.var_names]
        self.reference_batches_ = [str(b) for b in uniques]
        self.net_, self.space_ = net.eval(), space
        self.network_ = network
        self.history_ = [float(v) for v in history]
        self._search = fit_pca(coords, p["n_search_comps"], random_state=seed)
        self._reference_coords = np.ascontiguousarray(coords, dtype=np.float32)
        self._reference_codes = codes.astype(np.int64)
        self._fit_info = {
            "pair_counts": pair_counts(pairs, batches),
            "n_pairs": int(pairs.nnz // 2),
            "timing": timing,
        }
        self._fit_id = uuid.uuid4().hex
        return corrected, corrected_latent, shift, pairs

    def fit(self, adata: AnnData) -> MNNCorrector:
        """Fit the corrector on a reference; ``adata`` is not modified.

        Parameters
        ----------
        adata
            Log-normalized expression in ``X`` (or ``layers[layer]``) over the genes to
            correct, e.g. the output of :func:`~scetm_mnn.pp.preprocess`; dense, sparse or
            backed, any float dtype.

        Returns
        -------
        The fitted corrector itself.

        Raises
        ------
        KeyError
            ``batch_key`` is not an ``obs`` column, or ``layer`` is not a layer.
        ValueError
            Non-finite values; data that look like raw counts rather than log-scale; or no
            MNN pairs between any batches.

        Examples
        --------
        >>> import scetm_mnn as sm
        >>> adata = sm.datasets.simulate(n_cells=300, n_genes=100, random_state=0)
        >>> sm.pp.preprocess(adata, n_top_genes=100, batch_key="batch")
        >>> corrector = sm.pp.MNNCorrector("batch", max_epochs=1).fit(adata)
        >>> corrector.is_fitted, len(corrector.genes_)
        (True, 100)
        """
        x, batches = self._inputs(adata)
        self._fit(adata, x, batches, dense=False)
        return self

    @_doc(outputs=_OUTPUT_DOC, dense=_DENSE_DOC)
    def fit_transform(
        self,
        adata: AnnData,
        *,
        key_added: str = "mnn_corrected",
        dense_layer: bool | None = None,
        copy: bool = False,
    ) -> AnnData | None:
        """Fit on ``adata`` and write its corrected expression (what ``mnn_correct`` does).

        Parameters
        ----------
        adata
            As for :meth:`fit`. A view is made an actual AnnData when ``copy=False``.
        key_added
            Prefix of the output keys.
        {dense}
        copy
            Return a new AnnData instead of writing into ``adata``.

        Returns
        -------
        {outputs}
        ``obsp[key_added + "_pairs"]``
            Symmetric sparse MNN pair matrix (1 for each pair).
        ``uns[key_added]``
            ``params``; ``pair_counts`` (``"<batch_a>|<batch_b>"`` → MNN pairs used);
            ``n_pairs`` (their total); ``history`` (loss per epoch); ``timing`` (seconds
            spent on the ``latent``, ``pairs``, ``train`` and ``apply`` steps).

        Examples
        --------
        >>> import scetm_mnn as sm
        >>> adata = sm.datasets.simulate(n_cells=300, n_genes=100, random_state=0)
        >>> sm.pp.preprocess(adata, n_top_genes=100, batch_key="batch")
        >>> corrector = sm.pp.MNNCorrector("batch", max_epochs=1)
        >>> corrector.fit_transform(adata)
        >>> again = corrector.transform(adata, copy=True)  # the reference: the same output
        >>> bool((again.layers["mnn_corrected"] == adata.layers["mnn_corrected"]).all())
        True
        """
        x, batches = self._inputs(adata)
        target = _target(adata, copy, "mnn_correct")
        if dense_layer is None:
            dense_layer = x.n_obs * x.n_vars * 4 <= DENSE_LAYER_MAX_BYTES
        corrected, latent, shift, pairs = self._fit(adata, x, batches, bool(dense_layer))
        info = {
            "params": {**self.params, "dense_layer": bool(dense_layer)},
            "pair_counts": self._fit_info["pair_counts"],
            "n_pairs": self._fit_info["n_pairs"],
            "history": list(self.history_),
            "timing": dict(self._fit_info["timing"]),
        }
        basis = self.net_.basis.numpy()
        _write(target, "mnn_correct", key_added, corrected, latent, shift, basis, pairs, info)
        return target if copy else None

    # -- correcting -------------------------------------------------------------------------

    def _adapt(self, name: str, coords: np.ndarray, reference_search: np.ndarray, kind: Adapter):
        """Pairs between query batch ``name`` (its coordinates) and the reference; adapter."""
        p = self._kwargs
        query_search = _apply(self._search, coords)
        n_ref = reference_search.shape[0]
        labels = np.array(["reference"] * n_ref + [f"query {name!r}"] * len(coords))
        pairs = find_mnn_pairs(
            np.vstack([reference_search, query_search]),
            labels,
            n_neighbors=p["n_neighbors"],
            random_state=p["random_state"],
            n_rounds=p["search_rounds"],
            max_cells=p["max_search_cells"],
        )
        upper = sparse.triu(pairs, k=1).tocoo()  # the reference comes first: row < col
        ref, query = upper.row, upper.col - n_ref
        if ref.size == 0:
            warnings.warn(
                f"No MNN pairs were found between the query batch {name!r} and the "
                "reference, so it is corrected by the reference network alone. Check that it "
                "shares cell types with the reference, or increase n_neighbors.",
                UserWarning,
                stacklevel=4,
            )
        adapter = fit_adapter(
            coords[query],
            self._reference_coords[ref],
            kind,
            p["adapter_ridge"],
            cells=query,
            n_neighbors=p["n_neighbors"],
        )
        counts = np.bincount(self._reference_codes[ref], minlength=len(self.reference_batches_))
        info = {
            "n_pairs": int(ref.size),
            "shift_norm": adapter.shift_norm,
            "pair_counts": {
                b.replace("/", "_"): int(n) for b, n in zip(self.reference_batches_, counts)
            },
        }
        logger.info(
            "Query batch %r: %d MNN pairs with the reference; adapter %r, shift %.3g.",
            name,
            ref.size,
            kind,
            adapter.shift_norm,
        )
        return adapter, info

    def _correct(
        self,
        rows: Rows,
        alignment: GeneAlignment,
        batches: np.ndarray,
        is_query: np.ndarray,
        dense: bool,
        kind: Adapter,
    ):
        """``(x̂ over the query's genes or None, latent, C, adapters' info, timing)``."""
        chunk = self._kwargs["chunk_size"]
        mean = _centre(self.space_)
        aligned = rows if alignment.identical else AlignedRows(rows, alignment, mean)
        timing: dict[str, float] = {}
        tic = time.perf_counter()
        corrected, latent, shift = _correct_all(
            self.net_, self.space_, aligned, dense and alignment.identical, chunk
        )
        timing["apply"] = time.perf_counter() - tic
        basis = self.net_.basis.numpy()
        adapters: dict[str, dict] = {}
        if is_query.any():
            tic = time.perf_counter()
            reference_search = _apply(self._search, self._reference_coords)
            for name in pd.unique(batches[is_query]):
                idx = np.flatnonzero(is_query & (batches == name))
                coords = np.empty((idx.size, basis.shape[1]), dtype=np.float32)
                for pos, cells in index_chunks(idx, chunk):
                    coords[pos] = (aligned.take(cells) - mean) @ basis + shift[cells]
                adapter, adapters[str(name).replace("/", "_")] = self._adapt(
                    str(name), coords, reference_search, kind
                )
                shift[idx] += adapter(coords)
            for _, cells in index_chunks(np.flatnonzero(is_query), chunk):
                out = aligned.take(cells) + shift[cells] @ basis.T
                latent[cells] = _space_of(self.space_, out)
                if corrected is not None:
                    corrected[cells] = out
            timing["adapt"] = time.perf_counter() - tic
        if dense and corrected is None:
            shifted = ShiftedRows(rows, shift, alignment.query_basis(basis))
            corrected = map_chunks(lambda block: block, shifted, chunk)
        return corrected, latent, shift, adapters, timing

    @_doc(outputs=_OUTPUT_DOC, dense=_DENSE_DOC)
    def transform(
        self,
        adata: AnnData,
        *,
        key_added: str = "mnn_corrected",
        known_batches: Literal["reference", "query", "raise"] = "reference",
        adapter: Adapter | None = None,
        max_missing_genes: float = 0.1,
        dense_layer: bool | None = None,
        copy: bool = False,
    ) -> AnnData | None:
        """Correct the cells of ``adata``, from reference batches or new ones.

        Cells of a reference batch go through the frozen network; those of any other
        batch through the network and then that batch's adapter, fitted here on its MNN
        pairs with the reference (see the class docstring). The corrector itself is not
        changed: the same call gives the same output. The genes are matched by name:
        other order and extra genes are fine (extra genes are left uncorrected: zero rows
        of ``varm[key_added + "_basis"]``); up to ``max_missing_genes`` of the
        corrector's genes may be absent (filled with the reference mean, warned).

        Parameters
        ----------
        adata
            Log-normalized expression in ``X`` (or the corrector's ``layer``), with the
            corrector's ``batch_key`` in ``obs``. A view is made an actual AnnData when
            ``copy=False``.
        key_added
            Prefix of the output keys.
        known_batches
            What a batch named like a reference batch is: ``"reference"`` (that batch: the
            frozen network only, no adapter), ``"query"`` (a new batch like any other,
            with its own adapter) or ``"raise"`` (a ``ValueError``).
        adapter
            The adapter of the new batches for this call; the corrector's ``adapter`` by
            default.
        max_missing_genes
            Largest fraction of the corrector's genes that ``adata`` may lack.
        {dense}
        copy
            Return a new AnnData instead of writing into ``adata``.

        Returns
        -------
        {outputs}
        ``uns[key_added]``
            ``params``; ``reference_batches``; ``query_batches`` (the batches given an
            adapter); ``adapter`` (its kind); ``adapters`` (per query batch: ``n_pairs``
            with the reference, ``pair_counts`` per reference batch, ``shift_norm``, the
            size of its mean change); ``n_pairs`` (their total); ``history`` (the fit's
            loss per epoch); ``timing`` (``apply``, and ``adapt`` with query batches). No
            ``obsp`` pairs.

        Raises
        ------
        KeyError
            ``batch_key`` is not an ``obs`` column, or ``layer`` is not a layer.
        ValueError
            The corrector is not fitted; the data are not log-scale or not finite; too
            many genes are missing or ``var_names`` are not unique; or, with
            ``known_batches="raise"``, a batch is named like a reference batch.

        Examples
        --------
        >>> import scetm_mnn as sm
        >>> adata = sm.datasets.simulate(n_cells=600, n_genes=100, n_batches=3, random_state=0)
        >>> sm.pp.preprocess(adata, n_top_genes=100, batch_key="batch")
        >>> is_new = (adata.obs["batch"] == "batch_2").to_numpy()
        >>> corrector = sm.pp.MNNCorrector("batch", max_epochs=2).fit(adata[~is_new])
        >>> out = corrector.transform(adata, copy=True)  # reference and new cells together
        >>> out.uns["mnn_corrected"]["query_batches"]
        ['batch_2']
        >>> out.layers["mnn_corrected"].shape
        (600, 100)
        """
        self._check_fitted("transform")
        if known_batches not in KNOWN_BATCHES:
            raise ValueError(
                f"known_batches must be one of {KNOWN_BATCHES}, not {known_batches!r}."
            )
        if not 0 <= max_missing_genes < 1:
            raise ValueError(
                f"max_missing_genes must be a fraction in [0, 1), not {max_missing_genes}."
            )
        kind = self._kwargs["adapter"] if adapter is None else adapter
        if kind not in ADAPTERS:
            raise ValueError(f"adapter must be one of {ADAPTERS}, not {kind!r}.")
        rows, batches = self._inputs(adata)
        alignment = align_genes(self.genes_, adata.var_names, max_missing_genes)
        known = np.isin(batches, self.reference_batches_)
        if known_batches == "raise" and known.any():
            clash = sorted(set(batches[known]))
            raise ValueError(
                f"The batches {clash} of adata.obs[{self.batch_key!r}] have the names of "
                "reference batches. Rename them if they are new batches, or pass "
                "known_batches='reference' (corrected as those batches) or 'query' (aligned "
                "as new batches)."
            )
        is_query = ~known if known_batches == "reference" else np.ones(known.size, dtype=bool)
        target = _target(adata, copy, "MNNCorrector.transform")
        if dense_layer is None:
            dense_layer = rows.n_obs * rows.n_vars * 4 <= DENSE_LAYER_MAX_BYTES
        corrected, latent, shift, adapters, timing = self._correct(
            rows, alignment, batches, is_query, bool(dense_layer), kind
        )
        info = {
            "params": {**self.params, "dense_layer": bool(dense_layer)},
            "reference_batches": list(self.reference_batches_),
            "query_batches": [str(b) for b in pd.unique(batches[is_query])],
            "adapter": kind,
            "adapters": adapters,
            "n_pairs": int(sum(a["n_pairs"] for a in adapters.values())),
            "history": list(self.history_),
            "timing": timing,
        }
        basis = alignment.query_basis(self.net_.basis.numpy())
        caller = "MNNCorrector.transform"
        _write(target, caller, key_added, corrected, latent, shift, basis, None, info)
        return target if copy else None

    # -- saving -----------------------------------------------------------------------------

    @staticmethod
    def _paths(path: str | Path) -> tuple[Path, Path]:
        path = Path(path)
        if path.suffix in (".pt", ".json"):
            return path.with_suffix(".pt"), path.with_suffix(".json")
        return path / STATE_FILE, path / META_FILE

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the fitted corrector: tensors to a ``.pt`` file, the rest to a JSON sidecar.

        The ``.pt`` file holds tensors only (the network, the latent space, the reference
        coordinates), so :meth:`load` reads it with ``torch.load(..., weights_only=True)``;
        the JSON sidecar holds the parameters, the genes, the reference batches, the
        package version and an id that the ``.pt`` file repeats.

        Parameters
        ----------
        path
            A directory (created if needed; the files are ``corrector.pt`` and
            ``corrector.json`` in it) or a file name ending in ``.pt`` (the sidecar is the
            same name ending in ``.json``).
        overwrite
            Replace existing files.

        Returns
        -------
        The path of the ``.pt`` file.

        Raises
        ------
        FileExistsError
            The files exist and ``overwrite`` is false.

        Examples
        --------
        >>> import tempfile
        >>> import scetm_mnn as sm
        >>> adata = sm.datasets.simulate(n_cells=300, n_genes=100, random_state=0)
        >>> sm.pp.preprocess(adata, n_top_genes=100, batch_key="batch")
        >>> corrector = sm.pp.MNNCorrector("batch", max_epochs=1).fit(adata)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     corrector.save(tmp).name
        ...     sm.pp.MNNCorrector.load(tmp).genes_ == corrector.genes_
        'corrector.pt'
        True
        """
        from .. import __version__

        self._check_fitted("be saved")
        state_path, meta_path = self._paths(path)
        existing = [str(p) for p in (state_path, meta_path) if p.exists()]
        if existing and not overwrite:
            raise FileExistsError(
                f"{', '.join(existing)} already exist; pass overwrite=True to replace them."
            )
        state_path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "format": _FORMAT,
            "fit_id": self._fit_id,
            "net": self.net_.state_dict(),
            "space": self.space_.state_dict(),
            "search": self._search.state_dict(),
            "reference_coords": torch.from_numpy(self._reference_coords),
            "reference_codes": torch.from_numpy(self._reference_codes),
        }
        meta = {
            "format": _FORMAT,
            "fit_id": self._fit_id,
            "scetm_mnn_version": __version__,
            "params": self._kwargs,
            "network": self.network_,
            "genes": self.genes_,
            "reference_batches": self.reference_batches_,
            "n_reference_cells": int(self._reference_coords.shape[0]),
            "history": self.history_,
            **self._fit_info,
        }
        torch.save(state, state_path)
        meta_path.write_text(json.dumps(meta, indent=1))
        logger.info("Saved the corrector to %s and %s.", state_path, meta_path)
        return state_path

    @classmethod
    def load(cls, path: str | Path) -> MNNCorrector:
        """Read a corrector written by :meth:`save`.

        Parameters
        ----------
        path
            What was passed to :meth:`save` (a directory or the ``.pt`` file; the ``.json``
            sidecar works too).

        Returns
        -------
        The fitted corrector; its :meth:`transform` gives the saved one's output.

        Raises
        ------
        FileNotFoundError
            The ``.pt`` file or its JSON sidecar is missing.
        ValueError
            The files were not written together, by a layout this version reads.

        Examples
        --------
        See :meth:`save`.
        """
        state_path, meta_path = cls._paths(path)
        for p in (state_path, meta_path):
            if not p.is_file():
                raise FileNotFoundError(
                    f"{p} does not exist; MNNCorrector.load needs both the .pt file and its "
                    ".json sidecar that MNNCorrector.save wrote."
                )
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != _FORMAT:
            raise ValueError(
                f"{meta_path} has layout {meta.get('format')!r}; this version of scetm-mnn "
                f"reads layout {_FORMAT}. Fit and save the corrector again."
            )
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("fit_id") != meta["fit_id"]:
            raise ValueError(
                f"{state_path} and {meta_path} were not saved together (their fit ids "
                "differ); keep the pair that MNNCorrector.save wrote."
            )
        corrector = cls(**meta["params"])
        space_state = state["space"]
        if meta["params"]["latent"] == "pca":
            space = FrozenPCA(space_state["center.mean"].numpy(), space_state["loadings"].numpy())
        else:
            space = build_encoder(
                space_state["0.mean"].numpy(),
                space_state["1.weight"].shape[0],
                space_state["3.weight"].shape[0],
            )
        space.load_state_dict(space_state)
        params = meta["params"]
        net = _build_network(
            meta["network"],
            len(meta["genes"]),
            params["n_blocks"],
            params["n_hidden"],
            state["net"]["basis"],
        )
        # Correctors saved before the spread was restored have no spread: 1 and 0 (none).
        net.load_state_dict({**net.state_dict(), **state["net"]})
        search = FrozenPCA(
            state["search"]["center.mean"].numpy(), state["search"]["loadings"].numpy()
        )
        coords = state["reference_coords"].numpy()
        if coords.shape[0] != meta["n_reference_cells"]:
            raise ValueError(f"{state_path} does not hold the reference {meta_path} describes.")
        corrector.genes_ = list(meta["genes"])
        corrector.reference_batches_ = list(meta["reference_batches"])
        corrector.net_, corrector.space_ = net.eval(), freeze(space)
        corrector.network_ = meta["network"]
        corrector.history_ = list(meta["history"])
        corrector._search = freeze(search)
        corrector._reference_coords = coords
        corrector._reference_codes = state["reference_codes"].numpy()
        corrector._fit_info = {k: meta[k] for k in ("pair_counts", "n_pairs", "timing")}
        corrector._fit_id = meta["fit_id"]
        return corrector


@_doc(params=_PARAMS_DOC, outputs=_OUTPUT_DOC, dense=_DENSE_DOC)
def mnn_correct(
    adata: AnnData,
    batch_key: str,
    *,
    layer: str | None = None,
    n_neighbors: int = 40,
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
    return_corrector: bool = False,
) -> AnnData | MNNCorrector | tuple[AnnData, MNNCorrector] | None:
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

    This is ``MNNCorrector(batch_key, ...).fit_transform(adata)``
    (:class:`~scetm_mnn.pp.MNNCorrector`); pass ``return_corrector=True`` to keep the
    fitted corrector, e.g. to correct cells of new batches later or to save it.

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
    {params}
    key_added
        Prefix of the output keys.
    {dense}
    copy
        Return a new AnnData instead of writing into ``adata``.
    return_corrector
        Also return the fitted :class:`~scetm_mnn.pp.MNNCorrector`: alone, or as
        ``(adata, corrector)`` with ``copy=True``.

    Returns
    -------
    {outputs}
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
    # The signature mirrors MNNCorrector's (plus the output arguments): forward the rest.
    arguments = locals()
    corrector = MNNCorrector(
        **{name: arguments[name] for name in _CORRECTOR_ARGUMENTS if name in arguments}
    )
    out = corrector.fit_transform(adata, key_added=key_added, dense_layer=dense_layer, copy=copy)
    if return_corrector:
        return (out, corrector) if copy else corrector
    return out


_CORRECTOR_ARGUMENTS = tuple(inspect.signature(MNNCorrector).parameters)
"""The arguments of :class:`MNNCorrector`; :func:`mnn_correct` has them all but the
adapter's (which only ``transform`` uses), and passes them on."""
