"""The topic outputs: topic mixtures ``θ``, topic × gene matrix ``β``, top genes, embeddings.

Each carries the exposed topics only (:class:`~scetm_mnn.model.TopicPruningMixin`): the
rows or columns are named by ``topic_names``, and ``θ`` folds a copy's weight into the
topic it copies. The gene embeddings ``ρ`` belong to the genes and keep every column.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from ._docs import shared_parameters
from ._relevance import RELEVANCE_WEIGHT


@shared_parameters
class TopicOutputsMixin:
    """Topic mixtures, the topic × gene matrix, top genes, gene and topic embeddings.

    Mixed into :class:`~scetm_mnn.model.BatchCorrectedSCETM`. The decoder's logits are
    ``θ · β`` with ``β = α · ρ``: topic embeddings ``α`` (K × L) times gene embeddings
    ``ρ`` (L × G), so a topic reads as the genes it weights most, less those that every
    topic weights (:meth:`get_topic_gene_relevance`).

    Examples
    --------
    %(trained_model)s
    >>> top = model.get_top_genes(3)  # one column per exposed topic
    >>> list(top.columns) == model.topic_names, top.shape[0]
    (True, 3)
    """

    @shared_parameters
    def get_topic_proportions(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Topic mixtures ``θ = softmax(μ)`` over the exposed topics; rows sum to 1.

        One column per name in :attr:`~scetm_mnn.model.TopicPruningMixin.topic_names`:
        after training (which prunes unused topics and copies,
        :meth:`~scetm_mnn.model.TopicPruningMixin.prune_topics`) a copy's weight is added to
        the topic it copies and the unused topics' weight is dropped before the rows are
        renormalised.

        Parameters
        ----------
        %(cells)s
        """
        return self._expose_theta(self._full_topic_proportions(adata, batch_size, indices))

    @torch.inference_mode()
    def get_topic_gene_matrix(self) -> pd.DataFrame:
        """``β = α · ρ``: exposed topics × gene logits, columns are ``var_names``."""
        beta = self.module.topic_gene_logits().cpu().numpy()[self.exposed_topics]
        return pd.DataFrame(beta, index=self.topic_names, columns=self.adata.var_names)

    @torch.inference_mode()
    def get_topic_gene_relevance(self, weight: float = RELEVANCE_WEIGHT) -> pd.DataFrame:
        """Relevance of each gene to each exposed topic: its ``β``, less the average cell's.

        ``λ log φ_kg + (1 − λ) log(φ_kg / p_g)`` (Sievert & Shirley 2014), with
        ``φ_k = softmax(β_k)`` and ``p_g`` the expression of the average cell (the topics
        weighted by their mean ``θ`` over the training cells). It ranks a topic's genes as
        :meth:`get_top_genes` does: genes every topic weights (``MALAT1``, ``ACTG1``) fall
        behind the genes this topic stands for.

        Parameters
        ----------
        weight
            ``λ`` in ``[0, 1]``; 1 ranks as ``β``, 0 by the lift ``φ_kg / p_g`` alone.

        Returns
        -------
        Exposed topics × genes, columns are ``var_names``.
        """
        relevance = self._relevance_of_all_topics(weight)[self.exposed_topics]
        return pd.DataFrame(relevance, index=self.topic_names, columns=self.adata.var_names)

    def get_top_genes(self, n: int = 10, relevance: float = RELEVANCE_WEIGHT) -> pd.DataFrame:
        """The ``n`` most relevant genes per topic (rows: rank, columns: topics).

        Parameters
        ----------
        n
            Genes per topic.
        relevance
            The relevance weight ``λ`` of :meth:`get_topic_gene_relevance`: the default
            0.6 is Sievert & Shirley's; 1 gives the genes with the largest ``β``.
        """
        scores = self.get_topic_gene_relevance(relevance)
        n = min(int(n), scores.shape[1])
        order = np.argsort(-scores.to_numpy(), axis=1, kind="stable")[:, :n]
        genes = np.asarray(scores.columns)[order].T
        return pd.DataFrame(genes, columns=scores.index, index=pd.RangeIndex(n, name="rank"))

    @torch.inference_mode()
    def get_gene_embeddings(self) -> pd.DataFrame:
        """Gene embeddings ``ρᵀ`` (G × (L + P)), fixed rows included as ``fixed_*`` columns."""
        rho = self.module.gene_embeddings.cpu().numpy().T
        n_fixed = self.module.rho_fixed.shape[0]
        cols = [f"emb_{i}" for i in range(self.module.n_emb)]
        cols += [f"fixed_{i}" for i in range(n_fixed)]
        return pd.DataFrame(rho, index=self.adata.var_names, columns=cols)

    @torch.inference_mode()
    def get_topic_embeddings(self) -> pd.DataFrame:
        """Topic embeddings ``α`` of the exposed topics, same columns as the gene embeddings."""
        alpha = self.module.alpha.cpu().numpy()[self.exposed_topics]
        return pd.DataFrame(
            alpha, index=self.topic_names, columns=self.get_gene_embeddings().columns
        )
