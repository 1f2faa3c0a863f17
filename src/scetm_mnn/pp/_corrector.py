"""``MNNCorrector``: the deepMNN corrector as an object that is fitted, applied and saved.

:func:`~scetm_mnn.pp.mnn_correct` (``scetm_mnn.pp._mnn_correct``) is its scanpy-style
functional form (``fit_transform`` in one call). The class is the public face; its pieces
are, by concept: the documentation, written once, and the parameters' checks
(``_corrector_doc``), the fit (``_fitting``, with the training loop in ``_training``), the
correction of new batches (``_adapter``), the saved form (``_persistence``) and the
AnnData outputs (``_corrected``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from .._rows import Rows
from ._adapter import Adapter, correct_cells, query_cells
from ._corrected import dense_default, output_target, read_input, write_corrected
from ._corrector_doc import CORRECTOR_DOC, check_parameters, check_transform, document, recorded
from ._fitting import Fitted, fit_reference
from ._genes import align_genes
from ._network import SubspaceCorrector
from ._persistence import read_corrector, write_corrector


@document
class MNNCorrector:
    __doc__ = CORRECTOR_DOC

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
        devices: int = 1,
        strategy: Literal["auto", "ddp"] = "auto",
        accelerator: Literal["cpu", "gpu", "cuda", "auto"] = "cpu",
        num_nodes: int = 1,
        adapter: Adapter = "mixture",
        adapter_ridge: float = 1.0,
    ):
        # The arguments, in the signature's order, before any other name is bound.
        self._kwargs: dict[str, Any] = {k: v for k, v in locals().items() if k != "self"}
        check_parameters(self._kwargs)
        self.genes_: list[str] | None = None
        self.reference_batches_: list[str] | None = None
        self.net_: SubspaceCorrector | None = None
        self.space_: torch.nn.Module | None = None
        self.history_: list[float] = []
        self.network_: str | None = None
        self._fitted: Fitted | None = None
        self._fit_id: str | None = None

    @property
    def batch_key(self) -> str:
        """The ``obs`` column of the batches."""
        return self._kwargs["batch_key"]

    @property
    def params(self) -> dict[str, Any]:
        """The parameters as recorded in ``uns[key_added]["params"]`` (``layer`` "X" for X)."""
        params = recorded(self._kwargs)
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
            f"{len(self.reference_batches_)} batches, {self._fitted.reference_coords.shape[0]} "
            f"cells × {len(self.genes_)} genes)"
        )

    def _check_fitted(self, what: str) -> None:
        if not self.is_fitted:
            raise ValueError(
                f"This MNNCorrector is not fitted, so it cannot {what}. Call "
                "`corrector.fit(reference)` first, or `MNNCorrector.load(path)`."
            )

    def _keep(self, genes: list[str], fitted: Fitted, fit_id: str) -> None:
        """Hold a fitted state (from :meth:`fit` or :meth:`load`)."""
        self.genes_ = list(genes)
        self.reference_batches_ = list(fitted.reference_batches)
        self.net_, self.space_ = fitted.net, fitted.space
        self.network_ = fitted.network
        self.history_ = list(fitted.history)
        self._fitted, self._fit_id = fitted, fit_id

    def _fit(self, adata: AnnData, x: Rows, batches: np.ndarray, dense: bool, ckpt, resume):
        """Fit on ``x``; returns ``(x̂ or None, latent, C, pairs)`` of its cells."""
        out = fit_reference(self._kwargs, x, batches, dense, self.batch_key, ckpt, resume)
        self._keep([str(g) for g in adata.var_names], *out[:2])  # the fit and its id
        return out[2:]

    @document
    def fit(
        self, adata: AnnData, *, ckpt_path: str | Path | None = None, resume: bool = False
    ) -> MNNCorrector:
        """Fit the corrector on a reference; ``adata`` is not modified.

        Parameters
        ----------
        adata
            Log-normalized expression in ``X`` (or ``layers[layer]``) over the genes to
            correct, e.g. the output of :func:`~scetm_mnn.pp.preprocess`; dense, sparse or
            backed, any float dtype.
        %(checkpoint)s

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
        x, batches = read_input(adata, self._kwargs["layer"], self.batch_key)
        self._fit(adata, x, batches, False, ckpt_path, resume)
        return self

    @document
    def fit_transform(
        self,
        adata: AnnData,
        *,
        key_added: str = "mnn_corrected",
        dense_layer: bool | None = None,
        copy: bool = False,
        ckpt_path: str | Path | None = None,
        resume: bool = False,
    ) -> AnnData | None:
        """Fit on ``adata`` and write its corrected expression (what ``mnn_correct`` does).

        Parameters
        ----------
        adata
            As for :meth:`fit`. A view is made an actual AnnData when ``copy=False``.
        key_added
            Prefix of the output keys.
        %(writing)s
        %(checkpoint)s

        Returns
        -------
        %(outputs)s
        %(fit_outputs)s

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
        x, batches = read_input(adata, self._kwargs["layer"], self.batch_key)
        target = output_target(adata, copy, "mnn_correct")
        dense_layer = dense_default(x) if dense_layer is None else bool(dense_layer)
        outputs = self._fit(adata, x, batches, dense_layer, ckpt_path, resume)
        corrected, latent, shift, pairs = outputs
        info = {
            "params": {**self.params, "dense_layer": dense_layer},
            "pair_counts": self._fitted.info["pair_counts"],
            "n_pairs": self._fitted.info["n_pairs"],
            "history": list(self.history_),
            "timing": dict(self._fitted.info["timing"]),
        }
        basis = self.net_.basis.numpy()
        write_corrected(
            target, "mnn_correct", key_added, corrected, latent, shift, basis, pairs, info
        )
        return target if copy else None

    @document
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
        %(writing)s

        Returns
        -------
        %(outputs)s
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
        %(three_batches)s
        >>> is_new = (adata.obs["batch"] == "batch_2").to_numpy()
        >>> corrector = sm.pp.MNNCorrector("batch", max_epochs=2).fit(adata[~is_new])
        >>> out = corrector.transform(adata, copy=True)  # reference and new cells together
        >>> out.uns["mnn_corrected"]["query_batches"]
        ['batch_2']
        >>> out.layers["mnn_corrected"].shape
        (600, 100)
        """
        self._check_fitted("transform")
        check_transform(known_batches, max_missing_genes, adapter)
        kind = self._kwargs["adapter"] if adapter is None else adapter
        rows, batches = read_input(adata, self._kwargs["layer"], self.batch_key)
        alignment = align_genes(self.genes_, adata.var_names, max_missing_genes)
        is_query = query_cells(batches, self.reference_batches_, known_batches, self.batch_key)
        target = output_target(adata, copy, "MNNCorrector.transform")
        dense_layer = dense_default(rows) if dense_layer is None else bool(dense_layer)
        corrected, latent, shift, adapters, timing = correct_cells(
            rows, alignment, batches, is_query, dense_layer, kind, self._kwargs, self._fitted
        )
        info = {
            "params": {**self.params, "dense_layer": dense_layer},
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
        write_corrected(target, caller, key_added, corrected, latent, shift, basis, None, info)
        return target if copy else None

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the fitted corrector: tensors to a ``.pt`` file, the rest to a JSON sidecar.

        The ``.pt`` file holds tensors only (the network, the latent space, the reference
        coordinates), so :meth:`load` reads it with ``torch.load(..., weights_only=True)``;
        the JSON sidecar holds the parameters, the genes, the reference batches, the
        package version and an id that the ``.pt`` file repeats. Both are written
        atomically: a save that is killed or meets a full disk leaves the old pair (or
        the new one), never a mix, and no partial file.

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
            The files exist and ``overwrite`` is false (they are left untouched).
        OSError
            With ``errno.ENOSPC`` when the disk has too little space.

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
        self._check_fitted("be saved")
        return write_corrector(
            path, overwrite, self._kwargs, self.genes_, self._fitted, self._fit_id
        )

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
            A file is truncated, of another kind (random bytes, a pickle, other tensors)
            or of another layout, or the two were not written together; the message names
            the file and the reason.

        Examples
        --------
        See :meth:`save`.
        """
        params, genes, fitted, fit_id = read_corrector(path)
        corrector = cls(**params)
        corrector._keep(genes, fitted, fit_id)
        return corrector
