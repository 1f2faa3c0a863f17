"""Which genes a topic stands for: its weights, discounted by how much every topic uses them.

A topic's largest weights ``β`` are often genes that every cell expresses highly (``MALAT1``,
``ACTG1``, and the hormones in islet cells): they top many topics at once, so the topics
look alike though their cells differ. Sievert & Shirley (2014, *LDAvis*) rank a topic's
terms by their **relevance** instead,

``r(g | k) = λ log φ_kg + (1 − λ) log(φ_kg / p_g)``,

where ``φ_k = softmax(β_k)`` is the expression of a cell made of topic ``k`` alone and
``p_g = Σ_k u_k φ_kg`` the expression of the average cell (``u``: the topics' usage, their
mean ``θ``). ``λ = 1`` ranks by ``β``; ``λ = 0`` by the lift ``φ_kg / p_g``, which favours
rare genes. :data:`RELEVANCE_WEIGHT` is 0.6, the value their user study found best for
naming topics; it was not chosen on our benchmarks.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax, logsumexp

RELEVANCE_WEIGHT = 0.6
"""The relevance weight λ of Sievert & Shirley (2014): 0.6, their study's best for naming."""


def topic_relevance(
    beta: np.ndarray, usage: np.ndarray, weight: float = RELEVANCE_WEIGHT
) -> np.ndarray:
    """Relevance of each gene to each topic, ``λ log φ_kg + (1 − λ) log(φ_kg / p_g)``.

    Parameters
    ----------
    beta
        Topic × gene logits ``β`` (K × G); each row's softmax is the topic's expression.
    usage
        How much the cells use each topic (mean ``θ``, length K); rescaled to sum to 1.
    weight
        ``λ`` in ``[0, 1]``: 1 ranks by ``β``, 0 by the lift over the average cell.

    Returns
    -------
    A K × G float64 array; rank a row to get the topic's genes. Rows of one topic are
    comparable, rows of different topics only up to a constant.

    Examples
    --------
    >>> import numpy as np
    >>> from scetm_mnn.model._relevance import topic_relevance
    >>> beta = np.log([[0.6, 0.3, 0.1], [0.6, 0.1, 0.3]])  # gene 0 tops both topics
    >>> np.argmax(topic_relevance(beta, [0.5, 0.5], weight=1.0), axis=1).tolist()
    [0, 0]
    >>> np.argmax(topic_relevance(beta, [0.5, 0.5], weight=0.0), axis=1).tolist()
    [1, 2]
    """
    beta = np.asarray(beta, dtype=np.float64)
    usage = np.asarray(usage, dtype=np.float64)
    if beta.ndim != 2 or usage.shape != (beta.shape[0],):
        raise ValueError(
            f"usage needs one value per topic (beta has {beta.shape[0]} rows), "
            f"got shape {usage.shape}."
        )
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"The relevance weight must be in [0, 1], got {weight}.")
    if not np.all(np.isfinite(usage)) or np.any(usage < 0) or usage.sum() <= 0:
        raise ValueError("usage must be finite, non-negative and not all zero.")
    log_phi = log_softmax(beta, axis=1)
    log_p = logsumexp(log_phi, axis=0, b=(usage / usage.sum())[:, None])
    return log_phi - (1.0 - weight) * log_p
