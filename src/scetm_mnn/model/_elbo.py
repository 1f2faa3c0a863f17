"""ELBO, reconstruction error and marginal log-likelihood, with scvi-tools' ``VAEMixin`` API.

All three use the multinomial likelihood of the *counts* at each cell's library size
(``multinomial_log_prob`` in ``scetm_mnn.module._likelihood``), so that
``get_marginal_ll ≥ get_elbo`` holds as for any VAE. scETM's training loss is the same
likelihood divided by the library size, without the multinomial coefficient, and with the
KL weighted by the annealed ``kl_weight``; it is not comparable with these numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from anndata import AnnData
from scvi import REGISTRY_KEYS

from ..module._likelihood import (
    kl_standard_normal,
    log_importance_weights,
    log_mean_exp,
    multinomial_log_prob,
)
from ._docs import shared_parameters
from ._minibatches import minibatches

MARGINAL_LL_FLOATS = 2**25
"""Decoded values (samples × cells × genes) held at once by ``get_marginal_ll`` (128 MiB)."""


def _summary(values: list[torch.Tensor], return_mean: bool) -> float | np.ndarray:
    per_cell = torch.cat(values).cpu().numpy().astype(np.float64)
    return float(per_cell.mean()) if return_mean else per_cell


class LikelihoodMixin:
    """ELBO, reconstruction error and importance-sampled marginal log-likelihood.

    Mixed into :class:`~scetm_mnn.model.BatchCorrectedSCETM`. The likelihood is the
    multinomial of each cell's counts at its library size; the prior is ``δ ~ N(0, I)``.
    All methods work on any AnnData registered like the training data, held-out cells
    included; as in scvi-tools, higher ELBO and marginal log-likelihood are better, and the
    reconstruction error is a negative log-likelihood (lower is better).

    Examples
    --------
    >>> from scetm_mnn.model import BatchCorrectedSCETM, LikelihoodMixin
    >>> issubclass(BatchCorrectedSCETM, LikelihoodMixin)
    True
    """

    def _per_cell(
        self,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        batch_size: int | None,
        terms: Callable[[dict], dict[str, torch.Tensor]],
    ) -> dict[str, list[torch.Tensor]]:
        _, _, batches = minibatches(self, adata, indices, batch_size)
        out: dict[str, list[torch.Tensor]] = {}
        for tensors in batches:
            for key, value in terms(tensors).items():
                out.setdefault(key, []).append(value)
        if not out:
            raise ValueError("No cells selected: indices is empty.")
        return out

    def _elbo_terms(self, tensors: dict) -> dict[str, torch.Tensor]:
        """``-log p(x | δ)`` for one draw ``δ ~ q(δ | x)``, and ``KL(q ‖ p)`` per cell."""
        module = self.module
        inference_outputs = module.inference(**module._get_inference_input(tensors))
        generative_input = module._get_generative_input(tensors, inference_outputs)
        log_px = F.log_softmax(module.generative(**generative_input)["logits"], dim=-1)
        return {
            "reconstruction_loss": -multinomial_log_prob(tensors[REGISTRY_KEYS.X_KEY], log_px),
            "kl_local": kl_standard_normal(inference_outputs["qz"]),
        }

    @shared_parameters
    @torch.inference_mode()
    def get_elbo(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        return_mean: bool = True,
    ) -> float | np.ndarray:
        """The evidence lower bound ``E_q[log p(x | δ)] − KL(q(δ | x) ‖ p(δ))``.

        One draw of ``δ`` per cell estimates the expectation. As in scvi-tools this is the
        ELBO itself, not its negative: higher is better, and it is at most the marginal
        log-likelihood (:meth:`get_marginal_ll`).

        Parameters
        ----------
        %(cells)s
        %(return_mean)s

        Returns
        -------
        The mean ELBO, or an array of one ELBO per cell.

        Examples
        --------
        %(trained_model)s
        >>> elbo = model.get_elbo(return_mean=False)
        >>> elbo.shape, bool((elbo < 0).all())
        ((200,), True)
        """
        terms = self._per_cell(adata, indices, batch_size, self._elbo_terms)
        elbo = [-(rec + kl) for rec, kl in zip(terms["reconstruction_loss"], terms["kl_local"])]
        return _summary(elbo, return_mean)

    @shared_parameters
    @torch.inference_mode()
    def get_reconstruction_error(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        return_mean: bool = True,
    ) -> dict[str, float | np.ndarray]:
        """The reconstruction error ``−log p(x | δ)`` for one draw ``δ ~ q(δ | x)``.

        As in scvi-tools, a dict ``{"reconstruction_loss": ...}`` of the negative
        multinomial log-likelihood of the counts (lower is better).

        Parameters
        ----------
        %(cells)s
        %(return_mean)s

        Returns
        -------
        ``{"reconstruction_loss": mean}``, or the per-cell array in its place.

        Examples
        --------
        %(trained_model)s
        >>> error = model.get_reconstruction_error(indices=range(10))
        >>> list(error), error["reconstruction_loss"] > 0
        (['reconstruction_loss'], True)
        """
        terms = self._per_cell(adata, indices, batch_size, self._elbo_terms)
        return {"reconstruction_loss": _summary(terms["reconstruction_loss"], return_mean)}

    @shared_parameters
    @torch.inference_mode()
    def get_marginal_ll(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_mc_samples: int = 1000,
        batch_size: int | None = None,
        return_mean: bool = True,
        n_mc_samples_per_pass: int = 100,
    ) -> float | np.ndarray:
        """The marginal log-likelihood ``log p(x)``, importance sampled with ``q(δ | x)``.

        ``log (1/S) Σₛ p(x | δₛ) p(δₛ) / q(δₛ | x)`` over ``S = n_mc_samples`` draws
        ``δₛ ~ q(δ | x)``: a lower bound on ``log p(x)`` in expectation that tightens as
        ``S`` grows and is never below the ELBO's in expectation. Higher is better.

        Parameters
        ----------
        %(adata)s
        %(indices)s
        n_mc_samples
            Importance samples per cell.
        batch_size
            Cells per forward pass (default: as many as keep the decoded samples of a pass
            within ``MARGINAL_LL_FLOATS`` values).
        %(return_mean)s
        n_mc_samples_per_pass
            Samples decoded per forward pass.

        Returns
        -------
        The mean marginal log-likelihood, or an array of one value per cell.

        Examples
        --------
        %(trained_model)s
        >>> model.get_marginal_ll(n_mc_samples=200) >= model.get_elbo()
        True
        """
        n_mc_samples = int(n_mc_samples)
        if n_mc_samples < 1:
            raise ValueError(f"n_mc_samples must be at least 1, got {n_mc_samples}.")
        per_pass = max(1, min(int(n_mc_samples_per_pass), n_mc_samples))
        if batch_size is None:
            batch_size = max(1, MARGINAL_LL_FLOATS // (per_pass * self.module.n_input))
        module = self.module

        def terms(tensors: dict) -> dict[str, torch.Tensor]:
            x = tensors[REGISTRY_KEYS.X_KEY]
            log_weights = []
            for start in range(0, n_mc_samples, per_pass):
                n = min(per_pass, n_mc_samples - start)
                inference_outputs = module.inference(
                    **module._get_inference_input(tensors), n_samples=n
                )
                generative_input = module._get_generative_input(tensors, inference_outputs)
                log_px = F.log_softmax(module.generative(**generative_input)["logits"], dim=-1)
                delta = inference_outputs["z"]
                if n == 1:  # inference drops the sample axis for a single draw
                    delta, log_px = delta[None], log_px[None]
                log_weights.append(
                    log_importance_weights(
                        inference_outputs["qz"], delta, multinomial_log_prob(x, log_px)
                    )
                )
            return {"marginal_ll": log_mean_exp(torch.cat(log_weights), dim=0)}

        values = self._per_cell(adata, indices, batch_size, terms)["marginal_ll"]
        return _summary(values, return_mean)
