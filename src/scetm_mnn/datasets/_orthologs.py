"""One-to-one human–mouse orthologs, for mapping a query onto a reference of the other species."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import anndata as ad
import pandas as pd

from ._baron import DATA_ENV, _search_dirs

logger = logging.getLogger(__name__)

ORTHOLOG_FILE = "gene_matches_1v1_human2mouse.csv.gz"
"""The ortholog table's file name (Ensembl one-to-one human–mouse gene pairs)."""
_COLUMNS = {"human.gene.name": "human", "gene.name": "mouse"}
_TYPE_COLUMN = "human.homology.type"
Species = Literal["human", "mouse"]


def load_orthologs(data_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """The one-to-one human–mouse ortholog pairs of ``gene_matches_1v1_human2mouse.csv.gz``.

    The file is looked for in ``data_dir``, then ``$SCETM_MNN_DATA``, in each in the
    subfolder ``baron_pancreas/`` and in the folder itself. Only pairs whose homology type
    is ``ortholog_one2one`` are kept, and of those only symbols that occur once on each
    side, so every gene maps to exactly one gene of the other species.

    Parameters
    ----------
    data_dir
        Directory to search first.

    Returns
    -------
    A DataFrame with columns ``"human"`` and ``"mouse"`` (gene symbols), one row per pair.

    Raises
    ------
    FileNotFoundError
        When the file is in none of the folders searched.

    Examples
    --------
    >>> from scetm_mnn.datasets import load_orthologs
    >>> pairs = load_orthologs()  # needs the data folder in $SCETM_MNN_DATA
    >>> list(pairs.columns), pairs["human"].is_unique and pairs["mouse"].is_unique
    (['human', 'mouse'], True)
    >>> pairs.set_index("human").loc["GCG", "mouse"]  # INS is not 1:1 (mouse Ins1, Ins2)
    'Gcg'
    """
    for directory in _search_dirs(data_dir):
        for sub in ("baron_pancreas", "."):
            path = Path(directory) / sub / ORTHOLOG_FILE
            if path.exists():
                return _read_pairs(path)
    searched = ", ".join(map(str, _search_dirs(data_dir))) or f"nothing (set ${DATA_ENV})"
    raise FileNotFoundError(
        f"No {ORTHOLOG_FILE} found; searched {searched} (and their baron_pancreas/). Set "
        f"${DATA_ENV} to the shared data folder, or pass data_dir=."
    )


def _read_pairs(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path)
    missing = [c for c in (*_COLUMNS, _TYPE_COLUMN) if c not in table.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}; it is not the ortholog table.")
    table = table.loc[table[_TYPE_COLUMN] == "ortholog_one2one", list(_COLUMNS)]
    table = table.rename(columns=_COLUMNS).astype(str)
    unique = ~table["human"].duplicated(keep=False) & ~table["mouse"].duplicated(keep=False)
    pairs = table.loc[unique].reset_index(drop=True)
    logger.info("Read %d one-to-one ortholog pairs from %s.", len(pairs), path)
    return pairs


def to_orthologs(
    adata: ad.AnnData,
    source: Species,
    target: Species,
    orthologs: pd.DataFrame | None = None,
) -> ad.AnnData:
    """A copy of ``adata`` over its one-to-one orthologs, its genes named as in ``target``.

    Genes without a one-to-one ortholog are dropped; the others are renamed to the other
    species' symbols (the original name is kept in ``var[f"{source}_gene"]``), so a mouse
    query can be mapped onto a human reference
    (:meth:`~scetm_mnn.model.QueryMixin.prepare_query_anndata`) or compared with human
    data gene by gene. ``X``, the layers, ``obs``, ``obsm`` and
    ``obsp`` are kept; ``adata`` is not changed.

    Parameters
    ----------
    adata
        Data with gene symbols of ``source`` as ``var_names``.
    source
        The species of ``adata``: ``"human"`` or ``"mouse"``.
    target
        The species whose symbols the genes get.
    orthologs
        The pairs (columns ``"human"`` and ``"mouse"``); default :func:`load_orthologs`.

    Returns
    -------
    The renamed copy, over the genes with a one-to-one ortholog, in ``adata``'s order.

    Raises
    ------
    ValueError
        When ``source`` or ``target`` is not a species, or no gene has an ortholog (e.g.
        ``source`` is the wrong species).

    Examples
    --------
    >>> import anndata as ad
    >>> import numpy as np
    >>> import pandas as pd
    >>> from scetm_mnn.datasets import to_orthologs
    >>> pairs = pd.DataFrame({"human": ["INS", "GCG"], "mouse": ["Ins2", "Gcg"]})
    >>> mouse = ad.AnnData(np.ones((2, 3)), var=pd.DataFrame(index=["Gcg", "Xist", "Ins2"]))
    >>> human = to_orthologs(mouse, "mouse", "human", orthologs=pairs)
    >>> list(human.var_names), list(human.var["mouse_gene"])
    (['GCG', 'INS'], ['Gcg', 'Ins2'])
    """
    for name, value in (("source", source), ("target", target)):
        if value not in ("human", "mouse"):
            raise ValueError(f"{name} must be 'human' or 'mouse', not {value!r}.")
    if source == target:
        raise ValueError(f"source and target are both {source!r}; nothing to map.")
    pairs = load_orthologs() if orthologs is None else orthologs
    mapping = pd.Series(pairs[target].to_numpy(), index=pairs[source].to_numpy())
    names = pd.Index(adata.var_names.astype(str))
    keep = names.isin(mapping.index)
    if not keep.any():
        raise ValueError(
            f"None of the {adata.n_vars} genes is a {source} gene of the ortholog table "
            f"(e.g. {list(names[:3])}). Check source= (mouse symbols are capitalised: "
            "'Ins2', human ones upper case: 'INS')."
        )
    out = adata[:, keep].copy()
    out.var[f"{source}_gene"] = out.var_names.astype(str)
    out.var_names = pd.Index(mapping.loc[names[keep]].to_numpy(), dtype=str)
    logger.info(
        "Kept %d of %d %s genes with a one-to-one %s ortholog.",
        int(keep.sum()), adata.n_vars, source, target,
    )  # fmt: skip
    return out
