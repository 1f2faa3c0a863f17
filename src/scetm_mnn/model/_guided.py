"""Guided topics: the first topics tied to user gene sets by a prior on their gene logits.

``BatchCorrectedSCETM(adata, gene_sets={"beta": [...], ...})`` gives topic ``i`` (for the
``i``-th set) the decoder logits ``β_i = α_i · ρ + s · 1[g ∈ set_i]``: a fixed offset of
``s = gene_set_strength`` on its set's genes, a prior on ``α · ρ`` as p-scETM's fixed
pathway rows are (and Spectra's gene-set factors), not a hard mask. The offset makes the
topic's gene distribution ``e^s`` times likelier on its set's genes than its free part says,
so the cells that express the set reconstruct best through that topic; the free part
``α_i · ρ`` still learns the genes that go with the set in these data. The other topics stay
free. A guided topic is named after its set (``topic_names``), is never pruned, and a free
topic that copies it is folded into it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from .._gene_sets import as_gene_sets, membership

DEFAULT_STRENGTH = 4.0
"""The prior's offset ``s`` on a guided topic's set genes: ``e^4 ≈ 55`` times the weight."""

GeneSetsArg = str | os.PathLike | Mapping[str, Iterable[str]] | None

PARAMETERS = {
    "gene_sets": """gene_sets
    Gene sets that guide the first topics, one topic per set: a GMT file's path or a
    mapping of set name → genes. Topic ``i`` gets a prior on its gene logits, an offset
    of ``gene_set_strength`` on the genes of set ``i``, and is named after the set. Genes
    outside ``adata.var_names`` are dropped with a warning, and the sets kept are saved
    with the model. ``None``: every topic is free.""",
    "gene_set_strength": """gene_set_strength
    The guided topics' offset on their sets' genes (a logit; ``e^s`` times the weight):
    small values tie a topic softly, large ones pin it.""",
}


def guided_sets(
    gene_sets: GeneSetsArg, var_names: pd.Index, n_topics: int, strength: float
) -> dict[str, list[str]] | None:
    """The gene sets that guide topics, each cut to the genes of ``var_names``.

    Raises
    ------
    ValueError
        When the sets leave no free topic, a set is named like a free topic
        (``topic_<k>``), or the strength is not a finite positive number.
    """
    if gene_sets is None:
        return None
    if not np.isfinite(strength) or strength <= 0:
        raise ValueError(f"gene_set_strength must be a positive number, not {strength!r}.")
    sets = as_gene_sets(gene_sets)
    clash = [name for name in sets if re.fullmatch(r"topic_\d+", name)]
    if clash:
        raise ValueError(
            f"The gene set {clash[0]!r} is named like a free topic; rename it (e.g. "
            f"'{clash[0]}_set'), as guided topics take their set's name."
        )
    genes = pd.Index(var_names.astype(str))
    names, matrix = membership(sets, genes, "the model", stacklevel=4)
    if len(names) >= n_topics:
        raise ValueError(
            f"{len(names)} gene sets guide {len(names)} topics, but the model has "
            f"n_topics={n_topics}: leave at least one free topic (n_topics > {len(names)})."
        )
    member = matrix.toarray().astype(bool)  # genes × sets
    return {name: genes[member[:, j]].tolist() for j, name in enumerate(names)}


def topic_prior(sets: dict[str, list[str]] | None, var_names: pd.Index, strength: float):
    """The guided topics' offsets, sets × genes (``strength`` on members), or ``None``."""
    if not sets:
        return None
    position = pd.Index(var_names.astype(str))
    prior = np.zeros((len(sets), len(position)), dtype=np.float32)
    for i, members in enumerate(sets.values()):
        prior[i, position.get_indexer(members)] = strength
    return prior
