"""Baron et al. (2016) pancreas data (GEO GSE84133): human donors and mouse."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import anndata as ad
import pandas as pd
from scipy import sparse

logger = logging.getLogger(__name__)

DATA_ENV = "SCETM_MNN_DATA"
_BATCH_COLUMNS = ("donor", "batch")
_LABEL_COLUMNS = ("cell_type1", "assigned_cluster", "cell_type")


def _search_dirs(data_dir: str | os.PathLike | None) -> list[Path]:
    dirs = [Path(data_dir)] if data_dir is not None else []
    if os.environ.get(DATA_ENV):
        dirs.append(Path(os.environ[DATA_ENV]))
    return dirs


def _find_h5ad(species: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        for root in (d / "baron_pancreas", d):
            hits = sorted(root.glob(f"baron_{species}*.h5ad"))
            if hits:
                return hits[0]
    return None


def _standardize(adata: ad.AnnData, species: str) -> ad.AnnData:
    """Give the AnnData the package's conventions: CSR counts, ``batch``/``cell_type``."""
    batch_col = next((c for c in _BATCH_COLUMNS if c in adata.obs), None)
    label_col = next((c for c in _LABEL_COLUMNS if c in adata.obs), None)
    if batch_col is None or label_col is None:
        raise ValueError(
            f"The Baron {species} file lacks a donor or cell-type column "
            f"(obs columns: {list(adata.obs.columns)})."
        )
    adata.obs["batch"] = pd.Categorical(adata.obs[batch_col].astype(str))
    adata.obs["cell_type"] = pd.Categorical(adata.obs[label_col].astype(str))
    if not sparse.isspmatrix_csr(adata.X):
        adata.X = sparse.csr_matrix(adata.X)
    adata.var_names_make_unique()
    adata.uns["dataset"] = f"baron_{species}"
    return adata


def baron_pancreas(
    species: Literal["human", "mouse"] = "human",
    data_dir: str | os.PathLike | None = None,
) -> ad.AnnData:
    """Load the Baron et al. (2016) pancreas data with raw counts.

    Parameters
    ----------
    species
        ``"human"`` (4 donors, 14 cell types) or ``"mouse"`` (2 mice, 13 cell types).
    data_dir
        Directory to search first; then ``$SCETM_MNN_DATA``. Either may hold
        ``baron_pancreas/baron_{species}*.h5ad``.

    Returns
    -------
    AnnData with raw counts in ``X`` (CSR), categorical ``obs["batch"]`` (donor) and
    ``obs["cell_type"]`` (Baron's ``assigned_cluster``).
    """
    if species not in ("human", "mouse"):
        raise ValueError(f"species must be 'human' or 'mouse', not {species!r}.")
    dirs = _search_dirs(data_dir)
    path = _find_h5ad(species, dirs)
    if path is None:
        searched = ", ".join(map(str, dirs)) or f"nothing (set ${DATA_ENV})"
        raise FileNotFoundError(
            f"No Baron {species} data found; searched {searched}. "
            f"Set ${DATA_ENV} to the folder holding baron_pancreas/."
        )
    logger.info("Reading %s", path)
    return _standardize(ad.read_h5ad(path), species)
