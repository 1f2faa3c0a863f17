"""Differential expression and differential topic usage through scvi-tools' DE framework.

Both reuse scvi-tools' group loop, Bayes factors, ``"change"``-mode LFC summaries and FDR
control. Two of its names are private, with no public equivalent in scvi-tools 1.4:

- ``scvi.model.base._de_core._de_core``: the group loop that ``RNASeqMixin`` itself calls
  (``scvi.model.base.DifferentialComputation``, public, does one comparison only);
- ``scvi.model._utils.scrna_raw_counts_properties``: the raw-count columns (``raw_mean1``,
  ``non_zeros_proportion1``, ...) of scvi-tools' DE tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi.model._utils import scrna_raw_counts_properties
from scvi.model.base._de_core import _de_core

from .._validation import check_obs_key
from ._docs import shared_parameters
from ._minibatches import cell_indices, overall_draws, posterior_draws, samples_per_cell

RAW_SCALING_KEY = "_scvi_raw_norm_scaling"
"""Column that ``scrna_raw_counts_properties`` leaves in ``obs``; removed again here."""


def _raw_count_properties(adata_manager, idx1, idx2) -> dict[str, np.ndarray]:
    """scvi-tools' raw-count DE columns, without leaving a column in the caller's ``obs``."""
    obs = adata_manager.adata.obs
    had = RAW_SCALING_KEY in obs
    try:
        return scrna_raw_counts_properties(adata_manager, idx1, idx2)
    finally:
        if not had and RAW_SCALING_KEY in obs:
            del obs[RAW_SCALING_KEY]


def _check_groups(adata: AnnData, groupby, group1, group2, idx1) -> None:
    if idx1 is not None:
        return
    if groupby is None:
        raise ValueError("Pass groupby (a column of adata.obs) or idx1 to choose the cells.")
    check_obs_key(adata, groupby, "groupby")
    present = set(adata.obs[groupby].astype(str))
    wanted = [] if group1 is None else [group1] if isinstance(group1, str) else list(group1)
    missing = [g for g in [*wanted, group2] if g is not None and str(g) not in present]
    if missing:
        raise ValueError(
            f"groups {missing} are not in adata.obs[{groupby!r}]; its values are "
            f"{sorted(present)[:10]}."
        )


def _de(
    model,
    adata: AnnData,
    model_fn,
    names: pd.Index,
    groups: tuple,
    mode: str,
    delta: float,
    fdr_target: float,
    silent: bool,
    all_stats: bool = False,
    batchid1: Sequence[str] | None = None,
    batchid2: Sequence[str] | None = None,
    batch_correction: bool = False,
    **kwargs,
) -> pd.DataFrame:
    """scvi-tools' DE group loop over ``groups`` (``groupby, group1, group2, idx1, idx2``).

    ``model_fn`` draws the posterior samples of the cells it is given, one column per name
    of ``names``; ``all_stats`` adds the raw-count columns of the genes.
    """
    _check_groups(adata, *groups[:4])
    return _de_core(
        model.get_anndata_manager(adata, required=True),
        model_fn,
        None,
        *groups,
        all_stats,
        _raw_count_properties,
        names,
        mode,
        batchid1,
        batchid2,
        delta,
        batch_correction,
        fdr_target,
        silent,
        **kwargs,
    )


class DEMixin:
    """Differential expression and differential topic usage between groups of cells.

    Mixed into :class:`~scetm_mnn.model.BatchCorrectedSCETM`. Groups are given as in
    scvi-tools: ``groupby`` with ``group1`` (and ``group2``, default the rest), or masks or
    index lists ``idx1`` / ``idx2``. Both methods run each comparison through scvi-tools'
    DE framework (Bayes factors on posterior samples, ``"change"`` mode by default).

    Examples
    --------
    >>> from scetm_mnn.model import BatchCorrectedSCETM, DEMixin
    >>> issubclass(BatchCorrectedSCETM, DEMixin)
    True
    """

    @shared_parameters
    def differential_expression(
        self,
        adata: AnnData | None = None,
        groupby: str | None = None,
        group1: str | Sequence[str] | None = None,
        group2: str | None = None,
        idx1: Sequence[int] | Sequence[bool] | str | None = None,
        idx2: Sequence[int] | Sequence[bool] | str | None = None,
        mode: Literal["vanilla", "change"] = "change",
        delta: float = 0.25,
        batch_size: int | None = None,
        all_stats: bool = True,
        batch_correction: bool = False,
        batchid1: Sequence[str] | None = None,
        batchid2: Sequence[str] | None = None,
        fdr_target: float = 0.05,
        silent: bool = True,
        **kwargs,
    ) -> pd.DataFrame:
        """Differential expression of the decoded expression, scvi-tools' DE framework.

        The posterior samples are
        :meth:`~scetm_mnn.model.ExpressionMixin.get_normalized_expression` draws of each group's
        cells; with ``batch_correction=True`` they are decoded with each batch's ``λ`` in
        turn (``transform_batch``), so that both groups are compared in the same batches.

        Parameters
        ----------
        %(adata)s
        %(groups)s
        mode
            ``"change"`` (LFC beyond ``delta``, Boyeau et al. 2019) or ``"vanilla"``.
        delta
            LFC (log2) threshold of ``"change"`` mode.
        %(batch_size)s
        all_stats
            Add scvi-tools' raw-count columns (means, non-zero fractions).
        batch_correction
            Decode with every batch's ``λ`` rather than each cell's own batch.
        batchid1
            Batches to decode group 1 with (``batch_correction=True``; default: all).
        batchid2
            Batches to decode group 2 with (default: all).
        %(de_tail)s
        **kwargs
            Passed to :meth:`scvi.model.base.DifferentialComputation.get_bayes_factors`
            (``n_samples_overall``, ``pseudocounts``, ...).

        Returns
        -------
        scvi-tools' DE table: one row per gene and comparison, sorted by ``proba_de``
        (``"change"``) or ``bayes_factor`` (``"vanilla"``).

        Examples
        --------
        %(trained_model)s
        >>> de = model.differential_expression(groupby="cell_type", group1="type_0")
        >>> de.shape[0], {"proba_de", "lfc_mean", "is_de_fdr_0.05"} <= set(de.columns)
        (50, True)
        """
        adata = self._validate_anndata(adata)
        model_fn = partial(
            self.get_normalized_expression, return_numpy=True, n_samples=1, batch_size=batch_size
        )
        return _de(
            self, adata, model_fn, adata.var_names, (groupby, group1, group2, idx1, idx2),
            mode, delta, fdr_target, silent, all_stats=all_stats, batchid1=batchid1,
            batchid2=batchid2, batch_correction=batch_correction, **kwargs,
        )  # fmt: skip

    @torch.inference_mode()
    def _topic_draws(
        self,
        adata: AnnData,
        indices: Sequence[int],
        transform_batch=None,
        n_samples_overall: int = 5000,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """``n_samples_overall`` draws of ``θ`` pooled over the cells (the DE model_fn).

        ``θ`` comes from the encoder, which never sees the batch: ``transform_batch`` is
        accepted for scvi-tools' DE framework and has no effect.
        """
        n_samples = samples_per_cell(n_samples_overall, len(cell_indices(adata, indices)))
        _, _, draws = posterior_draws(
            self, adata, indices, batch_size, n_samples, lambda _, out: out["theta"]
        )
        return self._expose_theta(overall_draws(draws, n_samples_overall))

    @shared_parameters
    def differential_topic_usage(
        self,
        adata: AnnData | None = None,
        groupby: str | None = None,
        group1: str | Sequence[str] | None = None,
        group2: str | None = None,
        idx1: Sequence[int] | Sequence[bool] | str | None = None,
        idx2: Sequence[int] | Sequence[bool] | str | None = None,
        mode: Literal["vanilla", "change"] = "change",
        delta: float = 1.0,
        pseudocounts: float = 0.01,
        n_top_genes: int = 10,
        batch_size: int | None = None,
        fdr_target: float = 0.05,
        silent: bool = True,
        **kwargs,
    ) -> pd.DataFrame:
        """Which topics (gene programmes) one group of cells uses more than another.

        The posterior samples are draws of the topic mixtures ``θ = softmax(δ)``,
        ``δ ~ q(δ | x)``, of each group's cells; the effect size is the log2 fold change of
        ``θ``. As the encoder does not see the batch, no batch handling is needed.

        Parameters
        ----------
        %(adata)s
        %(groups)s
        mode
            ``"change"`` (log2 fold change of ``θ`` beyond ``delta``) or ``"vanilla"``
            (``P(θ₁ > θ₂)``).
        delta
            Log2 fold-change threshold of ``"change"`` mode.
        pseudocounts
            Added to ``θ`` before every log2 fold change: a topic below this share of a
            cell counts as unused. Unlike for genes, the reported ``lfc_*`` columns use it
            too (scvi-tools' default divides it by 1000 there, which makes the LFC of topics
            that a cell does not use, ``θ`` near 0, arbitrarily large).
        n_top_genes
            Genes listed per topic in ``top_genes`` (largest ``β``).
        %(batch_size)s
        %(de_tail)s
        **kwargs
            Passed to :meth:`scvi.model.base.DifferentialComputation.get_bayes_factors`
            (``n_samples_overall``, ``test_mode``, ...).

        Returns
        -------
        One row per topic and comparison: ``theta1`` and ``theta2`` (mean ``θ`` of the
        topic in each group), ``log2_fold_change`` (of those means), ``lfc_mean`` /
        ``lfc_median`` / ``lfc_std`` (of the posterior log2 fold change between random
        cells of the two groups, scvi-tools' effect size),
        ``proba_de`` and ``bayes_factor`` (``"change"``; ``proba_m1`` in ``"vanilla"``),
        ``is_de_fdr_<target>``, ``comparison`` (with ``groupby``), and ``top_genes``.
        Within each comparison, rows are sorted by ``proba_de`` (or ``bayes_factor``), then
        by ``log2_fold_change``, enriched topics first.

        Examples
        --------
        %(trained_model)s
        >>> usage = model.differential_topic_usage(groupby="cell_type", group1="type_0")
        >>> sorted(usage.index), len(usage["top_genes"].iloc[0].split(", "))
        (['topic_0', 'topic_1', 'topic_2', 'topic_3'], 10)
        """
        adata = self._validate_anndata(adata)
        if mode == "change":
            kwargs["pseudocounts"] = pseudocounts

            def log_fold(theta1, theta2, _pseudocounts):  # three arguments, as scvi asks
                return np.log2(theta1 + pseudocounts) - np.log2(theta2 + pseudocounts)

            kwargs.setdefault("change_fn", log_fold)
        model_fn = partial(self._topic_draws, batch_size=batch_size)
        topics = pd.Index(self.topic_names, name="topic")
        groups = (groupby, group1, group2, idx1, idx2)
        result = _de(
            self, adata, model_fn, topics, groups, mode, delta, fdr_target, silent, **kwargs
        ).rename(columns={"scale1": "theta1", "scale2": "theta2"})
        ratio = (result["theta1"] + pseudocounts) / (result["theta2"] + pseudocounts)
        result.insert(2, "log2_fold_change", np.log2(ratio))
        top = self.get_top_genes(n_top_genes)
        result["top_genes"] = [", ".join(top[topic]) for topic in result.index]
        return _sort_enriched_first(result, "proba_de" if mode == "change" else "bayes_factor")


def _sort_enriched_first(result: pd.DataFrame, key: str) -> pd.DataFrame:
    """Sort each comparison's rows by ``key``, then by ``log2_fold_change``, largest first."""
    comparison = result["comparison"] if "comparison" in result else np.zeros(len(result))
    frame = result.assign(_order=pd.factorize(np.asarray(comparison))[0])
    frame = frame.sort_values(
        ["_order", key, "log2_fold_change"], ascending=[True, False, False], kind="stable"
    )
    return frame.drop(columns="_order")
