"""Writing an ``.h5ad`` a block of cells at a time, so the matrices never have to fit in memory.

:func:`write_blocks` writes the annotations at once and then appends each block of rows to
``X`` and to the layers, through anndata's own sparse datasets (``anndata.io.write_elem``
and ``sparse_dataset(...).append``): a file :func:`anndata.read_h5ad` reads as any other,
written through a temporary sibling and renamed into place (:mod:`scetm_mnn._atomic`).
The simulator (:func:`scetm_mnn.datasets.simulate` with ``filename``) and the streamed
preprocessing (:func:`scetm_mnn.pp.preprocess` with ``filename``) write through it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping

import anndata as ad
import pandas as pd
from scipy import sparse

from ._atomic import atomic_path

logger = logging.getLogger(__name__)


def write_blocks(
    filename: str | os.PathLike,
    obs: pd.DataFrame,
    var: pd.DataFrame,
    blocks: Iterable[Mapping[str, sparse.csr_matrix]],
    *,
    uns: Mapping | None = None,
    obsm: Mapping | None = None,
    varm: Mapping | None = None,
) -> ad.AnnData:
    """Write an h5ad whose matrices are appended block by block; return it opened backed.

    Parameters
    ----------
    filename
        The file to write (replaced if it exists, only once the whole file is written).
    obs, var
        The cells' and genes' annotations (all cells, all genes).
    blocks
        Consecutive blocks of rows, each a mapping ``{"X": csr, layer name: csr, ...}``
        with the same keys in every block; their rows add up to ``obs``'s.
    uns, obsm, varm
        Written as they are.

    Returns
    -------
    The written file, opened with ``backed="r"``.
    """
    import h5py
    from anndata.io import sparse_dataset, write_elem

    with atomic_path(filename) as temporary, h5py.File(temporary, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        for key, value in (("obs", obs), ("var", var)):
            write_elem(f, key, value)
        for key, value in (("uns", uns), ("obsm", obsm), ("varm", varm)):
            write_elem(f, key, dict(value or {}))
        write_elem(f, "layers", {})
        datasets: dict[str, object] = {}
        for block in blocks:
            for name, matrix in block.items():
                group, key = (f, "X") if name == "X" else (f["layers"], name)
                if name not in datasets:
                    write_elem(group, key, sparse.csr_matrix(matrix))
                    datasets[name] = sparse_dataset(group[key])
                else:
                    datasets[name].append(sparse.csr_matrix(matrix))
    logger.info("Wrote %d cells × %d genes to %s.", obs.shape[0], var.shape[0], filename)
    return ad.read_h5ad(filename, backed="r")


def write_in_memory_parts(adata: ad.AnnData) -> None:
    """Write what a backed ``adata`` holds in memory into its own file, and reopen it.

    The annotations (``obs``, ``var``, ``uns``), ``obsm``, ``varm``, ``obsp`` and the layers
    not stored in the file replace the file's; its ``X`` and stored layers are kept. The
    file is closed for the write and ``adata`` is backed on it (``"r"``) again afterwards.
    """
    import h5py
    from anndata.io import write_elem

    filename = adata.filename
    stored = set(adata.file["layers"].keys()) if "layers" in adata.file else set()
    parts = {
        "obs": adata.obs,
        "var": adata.var,
        "uns": dict(adata.uns),
        "obsm": dict(adata.obsm),
        "varm": dict(adata.varm),
        "obsp": dict(adata.obsp),
    }
    added = {k: v for k, v in adata.layers.items() if k not in stored}
    adata.file.close()
    try:
        with h5py.File(filename, "r+") as f:
            for key, value in parts.items():
                if key in f:
                    del f[key]
                write_elem(f, key, value)
            for key, value in added.items():
                write_elem(f["layers"], key, value)
    finally:
        adata.file.open(filename, "r")
    logger.info("Wrote the results into %s.", filename)
