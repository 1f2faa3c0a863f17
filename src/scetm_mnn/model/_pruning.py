"""Which topics a trained model exposes: the live and distinct ones (dead and copies pruned).

A topic model with more topics than gene programmes leaves some topics unused (no cell
gives them weight) and splits others into near copies (the same top genes). Neither can be
named. After training, :meth:`TopicPruningMixin.prune_topics` keeps the topics that cells
use and that differ from every more-used topic, and the topic outputs (``topic_names``,
``θ``, ``β``, ``α``, the topic DE) carry only those. A copy's weight in ``θ`` goes to the
topic it copies, so ``θ`` still sums to 1 over the exposed topics. The network keeps every
topic: the cell embedding (``get_latent_representation``) and the decoder use all ``K``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from ._docs import shared_parameters
from ._relevance import RELEVANCE_WEIGHT, topic_relevance

logger = logging.getLogger(__name__)

MAX_OVERLAP = 0.8
"""A topic sharing more than 80 % of its top genes with a more-used topic is a copy of it."""
N_TOP_GENES = 20
"""Top genes per topic compared for copies (the topic diversity's 20)."""
DEAD_FRACTION = 0.1
"""A topic is dead when its mean θ is below ``DEAD_FRACTION / K`` (a tenth of uniform)."""


def topic_map(
    theta: np.ndarray,
    scores: np.ndarray,
    min_usage: float | None = None,
    max_overlap: float = MAX_OVERLAP,
    n_top: int = N_TOP_GENES,
    n_guided: int = 0,
) -> np.ndarray:
    """For each topic, the topic it is exposed as: itself, a more-used copy, or -1 (dead).

    The first ``n_guided`` topics (guided by gene sets) are always kept, and visited first;
    the others are visited from the most used (mean ``θ``) down. A topic below
    ``min_usage`` is dead (-1). A live topic whose top ``n_top`` genes (by ``scores``) share
    more than ``max_overlap`` of them with an already kept topic is a copy of the first
    such topic; otherwise it is kept. The most-used topic is always kept.

    Parameters
    ----------
    theta
        Topic proportions, cells × K.
    scores
        Topic × gene scores whose rows rank the genes, K × G (the model passes the
        relevance of ``scetm_mnn.model._relevance``; β ranks the same way at weight 1).
    min_usage
        Smallest mean ``θ`` of a live topic; ``None``: ``DEAD_FRACTION / K``.
    max_overlap
        Largest fraction of shared top genes of two distinct topics, in ``[0, 1]``.
    n_top
        Top genes compared.
    n_guided
        How many of the first topics are guided, so kept whatever their usage.

    Returns
    -------
    An integer array of length K.

    Examples
    --------
    >>> import numpy as np
    >>> from scetm_mnn.model._pruning import topic_map
    >>> theta = np.array([[0.6, 0.3, 0.1, 0.0], [0.5, 0.4, 0.1, 0.0]])
    >>> beta = np.array([[3.0, 2, 0, 0], [3.0, 2, 0, 0], [0, 0, 3.0, 2], [0, 3.0, 0, 2]])
    >>> topic_map(theta, beta, n_top=2).tolist()  # 1 copies 0; 3 is unused
    [0, 0, 2, -1]
    """
    theta, scores = np.asarray(theta, dtype=np.float64), np.asarray(scores)
    n_topics = theta.shape[1]
    if scores.shape[0] != n_topics:
        raise ValueError(f"scores has {scores.shape[0]} topics, theta {n_topics}.")
    if not 0.0 <= max_overlap <= 1.0:
        raise ValueError(f"max_overlap must be in [0, 1], got {max_overlap}.")
    usage = theta.mean(axis=0)
    floor = DEAD_FRACTION / n_topics if min_usage is None else float(min_usage)
    n_top = max(1, min(int(n_top), scores.shape[1]))
    top = [set(row) for row in np.argsort(-scores, axis=1, kind="stable")[:, :n_top]]
    mapping = np.full(n_topics, -1, dtype=np.int64)
    mapping[:n_guided] = np.arange(n_guided)
    kept: list[int] = list(range(n_guided))
    for k in np.argsort(-usage[n_guided:], kind="stable") + n_guided:
        if kept and usage[k] < floor:
            continue
        copy_of = next((j for j in kept if len(top[k] & top[j]) / n_top > max_overlap), None)
        if copy_of is None:
            kept.append(int(k))
            mapping[k] = k
        else:
            mapping[k] = copy_of
    return mapping


@shared_parameters
class TopicPruningMixin:
    """Expose only the live, distinct topics of a trained topic model.

    Mixed into :class:`~scetm_mnn.model.BatchCorrectedSCETM`, whose ``train()`` calls
    :meth:`prune_topics` at its end. A model saved before pruning existed (no
    ``topic_map_``) exposes all its topics.

    Examples
    --------
    %(trained_model)s
    >>> table = model.prune_topics(max_overlap=1.0)  # no topic counts as a copy
    >>> list(table.columns), model.n_live_topics == int((table["status"] == "live").sum())
    (['usage', 'status', 'exposed_as'], True)
    """

    topic_map_: list[int] | None = None
    topic_usage_: list[float] | None = None

    def _topic_usage(self) -> np.ndarray:
        """Mean ``θ`` of every topic over the cells :meth:`prune_topics` last read.

        A model saved before usage was stored computes it once from its own data.
        """
        if self.topic_usage_ is None:
            self.topic_usage_ = self._full_topic_proportions(None, None).mean(axis=0).tolist()
        return np.asarray(self.topic_usage_, dtype=np.float64)

    def _relevance_of_all_topics(self, weight: float) -> np.ndarray:
        """Relevance of every gene to every topic (all ``K``), K × G."""
        beta = self.module.topic_gene_logits().detach().cpu().numpy()
        return topic_relevance(beta, self._topic_usage(), weight)

    def prune_topics(
        self,
        adata: AnnData | None = None,
        min_usage: float | None = None,
        max_overlap: float = MAX_OVERLAP,
        n_top: int = N_TOP_GENES,
        batch_size: int | None = None,
    ) -> pd.DataFrame:
        """Choose the exposed topics: drop the unused ones, fold copies into their original.

        A topic is dead when its mean ``θ`` over the cells is below ``min_usage``, and a
        copy when more than ``max_overlap`` of its ``n_top`` top genes (by relevance, as
        :meth:`~scetm_mnn.model.TopicOutputsMixin.get_top_genes` ranks them) are those of a
        more-used topic (see ``topic_map`` in ``scetm_mnn.model._pruning``). From then on,
        :attr:`topic_names`, the topic outputs of
        :class:`~scetm_mnn.model.TopicOutputsMixin` (``θ`` with a copy's weight added to
        its original's, ``β``, the top genes, ``α``) and the topic DE carry only the
        exposed topics. The network is unchanged: calling it again with other thresholds
        re-decides.

        Parameters
        ----------
        adata
            Cells whose ``θ`` decides usage (default: the model's training data).
        min_usage
            Smallest mean ``θ`` of a live topic; ``None``: a tenth of uniform, ``0.1 / K``.
        max_overlap
            Largest fraction of shared top genes between two exposed topics.
        n_top
            Top genes compared.
        batch_size
            Cells per forward pass.

        Returns
        -------
        One row per topic (all ``K``): ``usage`` (mean ``θ``), ``status`` (``"live"``,
        ``"dead"`` or ``"copy"``) and ``exposed_as`` (the topic it is shown as, or empty).
        """
        theta = self._full_topic_proportions(adata, batch_size)
        self.topic_usage_ = theta.mean(axis=0).tolist()
        n_guided = self.module.n_guided
        relevance = self._relevance_of_all_topics(RELEVANCE_WEIGHT)
        mapping = topic_map(theta, relevance, min_usage, max_overlap, n_top, n_guided)
        self.topic_map_ = mapping.tolist()
        names = np.array(self._names_of_all_topics())
        status = np.where(
            mapping < 0, "dead", np.where(mapping == np.arange(len(mapping)), "live", "copy")
        )
        table = pd.DataFrame(
            {
                "usage": theta.mean(axis=0),
                "status": status,
                "exposed_as": np.where(mapping < 0, "", names[np.maximum(mapping, 0)]),
            },
            index=pd.Index(names, name="topic"),
        )
        n_dead, n_copy = int((status == "dead").sum()), int((status == "copy").sum())
        logger.info(
            "%d of %d topics exposed: %d unused (mean θ < %.2g) and %d copies (top-%d gene "
            "overlap > %.0f%%) pruned.",
            self.n_live_topics, len(mapping), n_dead,
            DEAD_FRACTION / len(mapping) if min_usage is None else min_usage,
            n_copy, n_top, 100 * max_overlap,
        )  # fmt: skip
        if self.n_live_topics < 2:
            logger.warning(
                "Only %d topic is in use: the data may hold a single cell type or programme. "
                "The model trained; its embedding still has %d dimensions.",
                self.n_live_topics, len(mapping),
            )  # fmt: skip
        return table

    @property
    def exposed_topics(self) -> np.ndarray:
        """Indices of the exposed topics (all ``K`` before pruning), in topic order."""
        mapping = self.topic_map_
        if mapping is None:
            return np.arange(self.module.n_topics)
        mapping = np.asarray(mapping)
        return np.flatnonzero(mapping == np.arange(mapping.size))

    @property
    def n_live_topics(self) -> int:
        """How many topics the model exposes (``K`` before pruning)."""
        return int(self.exposed_topics.size)

    @property
    def topic_names(self) -> list[str]:
        """The exposed topics' names, each a guided topic's gene set or ``topic_<k>``.

        ``k`` is the topic's index among all ``K`` (guided topics come first).
        """
        names = self._names_of_all_topics()
        return [names[k] for k in self.exposed_topics]

    def _names_of_all_topics(self) -> list[str]:
        guided = list(getattr(self, "gene_set_names_", None) or ())
        return guided + [f"topic_{k}" for k in range(len(guided), self.module.n_topics)]

    @property
    def topic_labels(self) -> list[str]:
        """The exposed topics' readable labels, e.g. ``"topic 7 · beta (FDR 3e-12)"``.

        Those that :func:`scetm_mnn.tl.annotate_topics` wrote with
        ``key_added="topic_annotation"`` to the model's AnnData; a topic without one keeps
        its name from :attr:`topic_names`.
        """
        record = self.adata.uns.get("topic_annotation") if self.adata is not None else None
        labels = record.get("labels", {}) if isinstance(record, dict) else {}
        return [str(labels.get(name, name)) for name in self.topic_names]

    def _expose_theta(self, theta: np.ndarray) -> np.ndarray:
        """``θ`` over all topics (..., K) → over the exposed ones, copies folded in."""
        if self.topic_map_ is None:
            return theta
        mapping = np.asarray(self.topic_map_)
        exposed = self.exposed_topics
        column = np.full(mapping.size, -1)
        column[exposed] = np.arange(exposed.size)
        fold = np.zeros((mapping.size, exposed.size), dtype=theta.dtype)
        live = np.flatnonzero(mapping >= 0)
        fold[live, column[mapping[live]]] = 1.0
        folded = theta @ fold
        return folded / folded.sum(axis=-1, keepdims=True).clip(min=np.finfo(theta.dtype).tiny)

    def _full_topic_proportions(
        self, adata: AnnData | None, batch_size: int | None, indices: Sequence[int] | None = None
    ) -> np.ndarray:
        mu = torch.from_numpy(self.get_latent_representation(adata, indices, batch_size))
        return torch.softmax(mu, dim=-1).numpy()
