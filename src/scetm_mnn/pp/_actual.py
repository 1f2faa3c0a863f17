"""``make_actual``: turn a view into an actual AnnData in place, through public anndata API."""

from __future__ import annotations

import logging
import warnings

from anndata import AnnData, ImplicitModificationWarning

from .._validation import check_not_view

logger = logging.getLogger(__name__)

_PROBE = "__scetm_mnn_make_actual__"
"""``uns`` key written (and removed at once) to make a view actual."""


def make_actual(adata: AnnData, caller: str) -> None:
    """Make the view ``adata`` an actual AnnData in place; do nothing to an actual one.

    anndata makes a view actual when it is modified (copy on write): the view's data are
    copied into it and its parent is left as it was. Writing, then deleting, one ``uns`` key
    triggers that through public API only (anndata's ``ImplicitModificationWarning`` about
    it is silenced: ``caller`` logs what happened instead).

    Raises
    ------
    ValueError
        ``adata`` is a view of a backed AnnData (anndata cannot make it actual in place).
    """
    if not adata.is_view:
        return
    if adata.isbacked:  # anndata would have to copy the file
        check_not_view(adata, caller)
    logger.info("%s received a view of an AnnData; making it an actual AnnData.", caller)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImplicitModificationWarning)
        adata.uns[_PROBE] = None
    del adata.uns[_PROBE]
