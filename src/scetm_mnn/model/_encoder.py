"""The topic model's encoder, as the model builds it: its layers, linear path and map.

Where the encoder reads the corrector's latent (``corrected_input="latent"``), the
defaults make it one conformal linear map (:class:`~scetm_mnn.module.ConformalLinear`), so
that ``μ`` keeps the latent's distance ratios; on counts or the corrected genes it is
scETM's network with one hidden layer of 128. :func:`encoder_kwargs` resolves the
``None`` defaults of :class:`~scetm_mnn.model.BatchCorrectedSCETM` into the module's
arguments.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from scvi.data import AnnDataManager

from ._setup import n_encoder_input

logger = logging.getLogger(__name__)

PARAMETERS = {
    "hidden_sizes": """hidden_sizes
    Encoder hidden-layer widths. ``None``: none where the encoder reads the
    corrector's latent through the linear path (a linear encoder; see
    ``conformal_encoder``), ``(128,)`` where it reads counts or the corrected genes.""",
    "encoder_skip": """encoder_skip
    Give ``δ``'s heads a linear path from the encoder's input beside its hidden layer.
    ``None``: on when the encoder reads the corrector's latent (``corrected_input=
    "latent"``), which it carries into ``δ``; off otherwise.""",
    "conformal_encoder": """conformal_encoder
    Make the linear path a scaled rotation (:class:`~scetm_mnn.module.ConformalLinear`),
    so that with no hidden layer ``μ`` keeps every distance ratio of the corrector's
    latent, and clustering on ``μ`` gives what clustering on that latent gives. ``None``:
    on for the linear encoder of the corrector's latent when ``n_topics`` is at least
    its dimension; off otherwise.""",
}


def encoder_kwargs(
    hidden_sizes: Sequence[int] | None,
    encoder_skip: bool | None,
    conformal_encoder: bool | None,
    n_topics: int,
    adata_manager: AnnDataManager,
) -> dict:
    """The :class:`~scetm_mnn.module.ETMModule` arguments that shape the encoder."""
    n_latent = n_encoder_input(adata_manager)  # None: the encoder reads genes
    skip = resolve_encoder_skip(encoder_skip, n_latent)
    hidden = resolve_hidden_sizes(hidden_sizes, skip, n_latent)
    conformal = resolve_conformal(conformal_encoder, hidden, skip, n_topics, n_latent)
    return {
        "hidden_sizes": hidden,
        "encoder_skip": skip,
        "conformal_encoder": conformal,
        "n_encoder_input": n_latent,
    }


def resolve_encoder_skip(encoder_skip: bool | None, n_latent: int | None) -> bool:
    """``None``: the linear path to ``δ`` when the encoder reads the corrector's latent."""
    if encoder_skip is None:
        return n_latent is not None
    return bool(encoder_skip)


LATENT_HIDDEN_SIZES: tuple[int, ...] = ()
"""The encoder's hidden layers by default where it reads the corrector's latent: none, a
linear (conformal) map."""
COUNTS_HIDDEN_SIZES: tuple[int, ...] = (128,)
"""The encoder's hidden layers by default where it reads counts or the corrected genes."""


def resolve_hidden_sizes(
    hidden_sizes: Sequence[int] | None, skip: bool, n_latent: int | None
) -> tuple[int, ...]:
    """``None``: :data:`LATENT_HIDDEN_SIZES` on the latent with the path, else ``(128,)``.

    That is, no hidden layer where the encoder reads the corrector's latent (of
    ``n_latent`` dimensions) through the linear path (``skip``);
    :data:`COUNTS_HIDDEN_SIZES` otherwise.
    """
    if hidden_sizes is None:
        return LATENT_HIDDEN_SIZES if n_latent is not None and skip else COUNTS_HIDDEN_SIZES
    return tuple(int(h) for h in hidden_sizes)


def resolve_conformal(
    conformal: bool | None, hidden_sizes: tuple[int, ...], skip: bool, n_topics: int,
    n_latent: int | None,
) -> bool:  # fmt: skip
    """``None``: on for a linear encoder of the corrector's latent with ``K ≥ d`` topics.

    With fewer topics than the latent has dimensions no map into ``δ`` keeps its distances,
    so the encoder stays a plain linear map, and the log says so.
    """
    if conformal is not None:
        return bool(conformal)
    if n_latent is None or hidden_sizes or not skip:
        return False
    if n_topics < n_latent:
        logger.info(
            "%d topics cannot keep the distances of the corrector's %d-dimensional latent; "
            "the encoder is a plain linear map (set n_topics >= %d for the conformal one).",
            n_topics, n_latent, n_latent,
        )  # fmt: skip
        return False
    return True
