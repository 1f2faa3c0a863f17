"""Matching a query's genes to the genes a fitted corrector was trained on.

The corrector's network reads the reference genes, in the reference order. A query may hold
them in another order, hold extra genes, or lack a few: :func:`align_genes` works out the
mapping once (or raises a clear error), and :class:`AlignedRows` serves the query's rows
over the reference genes, chunk by chunk, without densifying the whole matrix.
:func:`match_genes`, the matching itself, also serves the model's query mapping
(``scetm_mnn.model.QueryMixin.prepare_query_anndata``).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._rows import Rows, _RowAccess

logger = logging.getLogger(__name__)

_SHOWN = 5
"""Gene names quoted in a message."""


@dataclass(frozen=True)
class GeneAlignment:
    """Where each reference gene is in the query.

    ``columns[g]`` is the query column of reference gene ``g``, or ``-1`` when the query
    lacks it; ``identical`` when the query holds exactly the reference genes, in order.
    """

    columns: np.ndarray
    n_query_genes: int

    @property
    def identical(self) -> bool:
        """Whether the query's genes are the reference genes, in the same order."""
        return self.n_query_genes == self.columns.size and bool(
            np.array_equal(self.columns, np.arange(self.columns.size))
        )

    @property
    def missing(self) -> np.ndarray:
        """Reference genes (indices) that the query lacks."""
        return np.flatnonzero(self.columns < 0)

    @property
    def n_extra(self) -> int:
        """Number of the query's genes that are not reference genes."""
        return self.n_query_genes - int((self.columns >= 0).sum())

    def query_basis(self, basis: np.ndarray) -> np.ndarray:
        """``basis`` (reference genes × d) over the query's genes: zero rows for extra genes.

        The corrector changes only the reference genes, so ``x + C Bᵀ`` with these rows is
        the corrected query over its own genes, its extra genes unchanged.
        """
        out = np.zeros((self.n_query_genes, basis.shape[1]), dtype=np.float32)
        present = self.columns >= 0
        out[self.columns[present]] = basis[present]
        return out


def _quote(names) -> str:
    names = list(names)
    shown = ", ".join(repr(str(n)) for n in names[:_SHOWN])
    return shown + (", ..." if len(names) > _SHOWN else "")


def match_genes(reference: pd.Index | np.ndarray, query: pd.Index) -> GeneAlignment:
    """Where each ``reference`` gene is among the ``query``'s genes, matched by name.

    Raises
    ------
    ValueError
        The query's names are not unique.
    """
    query = pd.Index(query)
    if not query.is_unique:
        dup = query[query.duplicated()].unique()
        raise ValueError(
            f"The query's var_names are not unique (duplicate gene names {_quote(dup)}), so "
            "its genes cannot be matched to the reference's by name. Make them unique first, "
            "e.g. `query.var_names_make_unique()`."
        )
    return GeneAlignment(query.get_indexer(pd.Index(reference)).astype(np.int64), len(query))


def align_genes(
    reference: pd.Index | np.ndarray, query: pd.Index, max_missing: float
) -> GeneAlignment:
    """Map the reference genes onto the query's ``var_names``.

    Extra query genes are ignored (logged). Up to a fraction ``max_missing`` of the
    reference genes may be absent from the query: they are filled with the reference mean
    (warned). More than that raises.

    Raises
    ------
    ValueError
        The query's ``var_names`` are not unique, or more than ``max_missing`` of the
        reference genes are missing.
    """
    reference = pd.Index(reference)
    alignment = match_genes(reference, query)
    missing = alignment.missing
    if missing.size > max_missing * reference.size:
        raise ValueError(
            f"The query lacks {missing.size} of the corrector's {reference.size} genes "
            f"({_quote(reference[missing])}); at most max_missing_genes={max_missing:g} of "
            "them may be missing. Check that the query's var_names use the same gene "
            "identifiers as the reference (symbols or Ensembl IDs), or fit the corrector on "
            "genes both data sets measure."
        )
    if missing.size:
        warnings.warn(
            f"The query lacks {missing.size} of the corrector's {reference.size} genes "
            f"({_quote(reference[missing])}); they are filled with the reference's mean "
            "expression for the correction (they are not written).",
            UserWarning,
            stacklevel=3,
        )
    if alignment.n_extra:
        logger.info(
            "The query has %d genes the corrector was not fitted on; they are left uncorrected.",
            alignment.n_extra,
        )
    return alignment


class AlignedRows(_RowAccess):
    """Rows of a query over the reference genes: reordered, missing genes filled.

    Parameters
    ----------
    rows
        The query's rows (:class:`~scetm_mnn._rows.Rows`).
    alignment
        From :func:`align_genes`.
    fill
        Value of each reference gene (length: reference genes) used where the query lacks it.
    """

    def __init__(self, rows: Rows, alignment: GeneAlignment, fill: np.ndarray):
        self.rows = rows
        self.columns = alignment.columns
        self.present = np.flatnonzero(self.columns >= 0)
        self.fill = np.asarray(fill, dtype=np.float32)
        self.shape = (rows.n_obs, self.columns.size)

    def _align(self, block: np.ndarray) -> np.ndarray:
        out = np.broadcast_to(self.fill, (block.shape[0], self.fill.size)).copy()
        out[:, self.present] = block[:, self.columns[self.present]]
        return out

    def take(self, rows: np.ndarray, dense: bool = True) -> np.ndarray:
        """The rows ``rows`` over the reference genes (dense float32)."""
        return self._align(self.rows.take(rows))

    def chunk(self, start: int, stop: int, dense: bool = True) -> np.ndarray:
        """Cells ``start:stop`` over the reference genes (dense float32)."""
        return self._align(self.rows.chunk(start, stop))
