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


@shared_parameters
class TopicOutputsMixin:
    """Topic mixtures, the topic × gene matrix, top genes, gene and topic embeddings.

    Mixed into :class:`~scetm_mnn.model.BatchCorrectedSCETM`. The decoder's logits are
    ``θ · β`` with ``β = α · ρ``: topic embeddings ``α`` (K × L) times gene embeddings
    ``ρ`` (L × G), so a topic reads as the genes it weights most.

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

    def get_top_genes(self, n: int = 10) -> pd.DataFrame:
        """The ``n`` genes with the largest ``β`` per topic (rows: rank, columns: topics)."""
        beta = self.get_topic_gene_matrix()
        n = min(int(n), beta.shape[1])
        order = np.argsort(-beta.to_numpy(), axis=1)[:, :n]
        genes = np.asarray(beta.columns)[order].T
        return pd.DataFrame(genes, columns=beta.index, index=pd.RangeIndex(n, name="rank"))

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
