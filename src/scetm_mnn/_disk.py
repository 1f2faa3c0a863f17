"""Free disk space, checked before a large write: the model folder, the output h5ad.

:func:`check_free_space` refuses a write that cannot fit, before it starts, with the path
and the needed and free bytes; :func:`anndata_bytes` estimates what an AnnData takes on
disk (its arrays uncompressed, as ``write_h5ad`` writes them by default). A write that
fails anyway on a full disk is cleaned up by :mod:`scetm_mnn._atomic`.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np
from anndata import AnnData
from scipy import sparse

_OVERHEAD = 1 << 20
"""Bytes added to every estimate: HDF5's metadata, the annotations' small columns."""


def array_bytes(value: object) -> int:
    """Bytes of an array's values: dense ``nbytes``, or a sparse matrix's three arrays."""
    if sparse.issparse(value):
        parts = ("data", "indices", "indptr") if hasattr(value, "indptr") else ("data",)
        return int(sum(getattr(value, part).nbytes for part in parts))
    nbytes = getattr(value, "nbytes", None)
    if nbytes is not None:
        return int(nbytes)
    return int(np.asarray(value).nbytes) if hasattr(value, "__array__") else 0


def anndata_bytes(adata: AnnData) -> int:
    """About how many bytes ``adata.write_h5ad`` writes: X, layers, obsm, varm, obsp, obs, var."""
    total = array_bytes(adata.X) if adata.X is not None else 0
    for mapping in (adata.layers, adata.obsm, adata.varm, adata.obsp, adata.varp):
        total += sum(array_bytes(value) for value in mapping.values())
    frames = adata.obs.shape[0] * adata.obs.shape[1] + adata.var.shape[0] * adata.var.shape[1]
    return total + 8 * frames + _OVERHEAD


def check_free_space(
    path: str | os.PathLike,
    needed: int,
    what: str = "the output",
    fix: str = "free some space or write elsewhere",
) -> None:
    """Refuse, before writing, when the disk of ``path`` has fewer than ``needed`` bytes free.

    ``fix`` ends the message: what the user can do.

    Raises
    ------
    OSError
        With ``errno.ENOSPC``, naming the path and the needed and free bytes.
    """
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(
            errno.ENOSPC,
            f"Not enough free disk space to write {what} to {path}: it needs about "
            f"{needed:,} bytes and {free:,} are free; free some space or write elsewhere",
        )
