"""Decoded expression and posterior predictive counts, with scvi-tools' ``RNASeqMixin`` API."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import sparse
import torch
import torch.nn.functional as F
from anndata import AnnData
from scvi import REGISTRY_KEYS

from ._docs import shared_parameters
from ._minibatches import (
    batch_codes,
    cell_indices,
    minibatches,
    overall_draws,
    posterior_draws,
    samples_per_cell,
    with_batch,
)


def gene_mask(adata: AnnData, gene_list: Sequence[str] | None) -> np.ndarray | None:
    """Positions of ``gene_list`` in ``adata.var_names`` (in their order there), or ``None``."""
    if gene_list is None:
        return None
    if isinstance(gene_list, str):
        raise TypeError(f"gene_list must be a list of gene names, not the string {gene_list!r}.")
    missing = pd.Index(gene_list).difference(adata.var_names)
    if len(missing):
        raise KeyError(
            f"{len(missing)} genes of gene_list are not in adata.var_names "
            f"(e.g. {list(missing[:3])}); pick them from the model's genes."
        )
    return np.flatnonzero(adata.var_names.isin(gene_list))


class ExpressionMixin:
    """Normalized expression and posterior predictive counts of the topic decoder.

    Mixed into :class:`~scetm_mnn.model.BatchCorrectedSCETM`. The decoder's expression of a
    cell is ``softmax(θ · β + λ_s)``: topic mixtures ``θ`` from the encoder, topic × gene
    logits ``β`` and, with the batch bias on, the gene bias ``λ_s`` of batch ``s``.

    Examples
    --------
    >>> from scetm_mnn.model import BatchCorrectedSCETM, ExpressionMixin
    >>> issubclass(BatchCorrectedSCETM, ExpressionMixin)
    True
    """

    @shared_parameters
    @torch.inference_mode()
    def get_normalized_expression(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        transform_batch: str | int | Sequence[str | int] | None = None,
        gene_list: Sequence[str] | None = None,
        library_size: float | Literal["latent"] = 1,
        n_samples: int = 1,
        n_samples_overall: int | None = None,
        batch_size: int | None = None,
        return_mean: bool = True,
        return_numpy: bool | None = None,
    ) -> np.ndarray | pd.DataFrame:
        """The decoded expression ``softmax(θ · β [+ λ])`` of each cell, as in scvi-tools.

        ``θ = softmax(δ)`` for draws ``δ ~ q(δ | x)`` of the encoder. ``transform_batch``
        acts only through the batch bias ``λ``: without it (``batch_bias`` off, e.g. one
        batch) every choice gives the same expression.

        Parameters
        ----------
        %(adata)s
        %(indices)s
        transform_batch
            Batch whose ``λ`` to decode with: ``None`` (each cell's own batch), a batch
            category or its integer code, or a list of them (the expression is then
            averaged over those batches).
        gene_list
            Genes to return (default: all), in the order of ``adata.var_names``.
        library_size
            Scale of the rows: they sum to ``library_size`` over all genes (1: proportions),
            or, with ``"latent"``, to each cell's observed total count (the multinomial's
            total; the ETM has no latent library size).
        n_samples
            Draws of ``δ`` per cell.
        n_samples_overall
            Draws in all, pooled over the cells and resampled (as scvi-tools' DE asks);
            replaces ``n_samples`` and returns an ``(n_samples_overall, n_genes)`` array.
        %(batch_size)s
        return_mean
            Average the ``n_samples`` draws.
        return_numpy
            Return an array instead of a DataFrame (cells × genes, named). Default: a
            DataFrame, except for ``n_samples > 1`` with ``return_mean=False``, which is
            always an ``(n_samples, n_cells, n_genes)`` array.

        Returns
        -------
        Cells × genes DataFrame or array, or the arrays described above.

        Examples
        --------
        %(trained_model)s
        >>> expr = model.get_normalized_expression(transform_batch="batch_0")
        >>> expr.shape, bool(np.allclose(expr.sum(axis=1), 1.0, atol=1e-4))
        ((200, 50), True)
        >>> model.get_normalized_expression(indices=[0, 1], gene_list=["gene_3"]).shape
        (2, 1)
        """
        if library_size != "latent" and not (
            isinstance(library_size, int | float) and library_size > 0
        ):
            raise ValueError(f"library_size must be > 0 or 'latent', not {library_size!r}.")
        adata = self._validate_anndata(adata)
        if n_samples_overall is not None:
            if int(n_samples_overall) < 1:
                raise ValueError(f"n_samples_overall must be >= 1, got {n_samples_overall}.")
            n_samples = samples_per_cell(n_samples_overall, len(cell_indices(adata, indices)))
        codes = batch_codes(self, adata, transform_batch)
        genes = gene_mask(adata, gene_list)
        module = self.module

        def decode(tensors: dict, inference_outputs: dict) -> torch.Tensor:
            expr = 0.0
            for code in codes:
                generative_input = module._get_generative_input(
                    with_batch(tensors, code), inference_outputs
                )
                expr = expr + F.softmax(module.generative(**generative_input)["logits"], dim=-1)
            expr = expr / len(codes)
            if genes is not None:
                expr = expr[..., torch.from_numpy(genes).to(expr.device)]
            if library_size == "latent":
                return expr * tensors[REGISTRY_KEYS.X_KEY].sum(-1, keepdim=True)
            return expr * library_size

        adata, indices, exprs = posterior_draws(
            self, adata, indices, batch_size, n_samples, decode
        )
        if n_samples_overall is not None:
            return overall_draws(exprs, n_samples_overall)
        if n_samples > 1:
            if not return_mean:
                return exprs
            exprs = exprs.mean(0)
        if return_numpy:
            return exprs
        columns = adata.var_names if genes is None else adata.var_names[genes]
        return pd.DataFrame(exprs, index=adata.obs_names[indices], columns=columns)

    @shared_parameters
    @torch.inference_mode()
    def posterior_predictive_sample(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        transform_batch: str | int | None = None,
        n_samples: int = 1,
        gene_list: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> sparse.GCXS:
        """Counts drawn from the posterior predictive ``p(x̂ | x)``, as in scvi-tools.

        Each draw takes ``δ ~ q(δ | x)``, then multinomial counts at the cell's library size
        (its observed total count) from ``softmax(θ · β [+ λ])``. All cells of a minibatch
        are drawn at once (:meth:`~scetm_mnn.module.ETMModule.sample`).

        Parameters
        ----------
        %(adata)s
        indices
            Cells to draw for (default: all).
        transform_batch
            Batch whose ``λ`` to decode with (``None``: each cell's own), a category or code.
        n_samples
            Draws per cell.
        gene_list
            Genes to return (default: all). The draws are made over all genes, so a subset's
            counts sum to less than the library size.
        %(batch_size)s

        Returns
        -------
        A ``sparse.GCXS`` array (pydata ``sparse``, as scvi-tools returns) of float counts,
        ``(n_cells, n_genes)`` for one draw, ``(n_cells, n_genes, n_samples)`` for more.

        Examples
        --------
        %(trained_model)s
        >>> counts = model.posterior_predictive_sample(n_samples=3)
        >>> counts.shape
        (200, 50, 3)
        >>> bool(np.array_equal(counts.todense().sum(axis=1)[:, 0], adata.X.sum(axis=1).A1))
        True
        """
        if isinstance(transform_batch, list | tuple | np.ndarray):
            raise TypeError(
                "posterior_predictive_sample draws counts for one batch's λ: pass a single "
                "transform_batch (or None for each cell's own batch), not a list."
            )
        if int(n_samples) < 1:
            raise ValueError(f"n_samples must be at least 1, got {n_samples}.")
        adata, _, batches = minibatches(self, adata, indices, batch_size)
        (code,) = batch_codes(self, adata, transform_batch)
        genes = gene_mask(adata, gene_list)
        draws = []
        for tensors in batches:
            counts = self.module.sample(with_batch(tensors, code), n_samples=int(n_samples))
            if n_samples > 1:  # (n_samples, cells, genes) -> (cells, genes, n_samples)
                counts = counts.permute(1, 2, 0)
            if genes is not None:
                counts = counts[:, torch.from_numpy(genes).to(counts.device)]
            draws.append(sparse.COO.from_numpy(counts.cpu().numpy()))
        if not draws:
            raise ValueError("No cells selected: indices is empty.")
        # Concatenated as COO and compressed once: concatenating GCXS is far slower.
        return sparse.concatenate(draws, axis=0).asformat("gcxs")
