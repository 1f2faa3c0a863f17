"""Writing an ``.h5ad`` a block of cells at a time, so the matrices never have to fit in memory.

:func:`write_blocks` writes the annotations at once and then appends each block of rows to
``X`` and to the layers, through anndata's own sparse datasets (``anndata.io.write_elem``
and ``sparse_dataset(...).append``): a file :func:`anndata.read_h5ad` reads as any other,
written through a temporary sibling and renamed into place (:mod:`scetm_mnn._atomic`).
The simulator (:func:`scetm_mnn.datasets.simulate` with ``filename``) and the streamed
preprocessing (:func:`scetm_mnn.pp.preprocess` with ``filename``) write through it, and
can compress the matrices (``compression``: HDF5's ``"lzf"`` or ``"gzip"`` filters, with
byte shuffling, in chunks small enough that reading one cell decompresses little):
:func:`stored_bytes` says what a block takes that way, for the disk checks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from ._atomic import atomic_path
from ._disk import array_bytes

logger = logging.getLogger(__name__)

COMPRESSIONS = ("lzf", "gzip")
"""The HDF5 filters ``compression`` may name (both ship with h5py)."""

COMPRESSED_CHUNK = 8192
"""Values per HDF5 chunk of a compressed matrix's arrays. A cell's values are read through
their chunks, so a minibatch of random cells decompresses about 2 × 32 KB per cell; larger
chunks compress a little better but make random reads slower."""


def dataset_kwargs(compression: str | None) -> dict:
    """The h5py dataset options for the matrices written with ``compression``.

    Raises
    ------
    ValueError
        ``compression`` is not ``None`` or one of :data:`COMPRESSIONS`.
    """
    if compression is None:
        return {}
    if compression not in COMPRESSIONS:
        raise ValueError(
            f"compression={compression!r} is not an HDF5 filter this package writes; "
            f"use one of {COMPRESSIONS} or None (uncompressed)."
        )
    return {"compression": compression, "shuffle": True, "chunks": (COMPRESSED_CHUNK,)}


def space_fix(compression: str | None) -> str:
    """What to do about a disk too small for a file written with ``compression``."""
    if compression is None:
        return "free some space, write elsewhere, or pass compression='lzf' (about a third)"
    return "free some space or write elsewhere"


def stored_bytes(matrix: sparse.csr_matrix, compression: str | None) -> int:
    """The bytes ``matrix``'s arrays take in a file written with ``compression``.

    Uncompressed, the arrays' sizes; compressed, measured by writing ``matrix`` the same
    way into an HDF5 file held in memory.
    """
    import h5py
    from anndata.io import write_elem

    if compression is None:
        return array_bytes(matrix)
    options = dataset_kwargs(compression)
    with h5py.File("in-memory.h5", "w", driver="core", backing_store=False) as f:
        write_elem(f, "X", sparse.csr_matrix(matrix), dataset_kwargs=options)
        return int(sum(f["X"][part].id.get_storage_size() for part in f["X"]))


def write_blocks(
    filename: str | os.PathLike,
    obs: pd.DataFrame,
    var: pd.DataFrame,
    blocks: Iterable[Mapping[str, sparse.csr_matrix]],
    *,
    uns: Mapping | None = None,
    obsm: Mapping | None = None,
    varm: Mapping | None = None,
    compression: str | None = None,
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
    compression
        ``None`` (uncompressed, anndata's default), ``"lzf"`` (fast, about a third of the
        size on counts) or ``"gzip"`` (smaller, slower to write): the HDF5 filter for the
        matrices (:data:`COMPRESSIONS`).

    Returns
    -------
    The written file, opened with ``backed="r"``.
    """
    import h5py
    from anndata.io import sparse_dataset, write_elem

    options = dataset_kwargs(compression)
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
                    write_elem(group, key, sparse.csr_matrix(matrix), dataset_kwargs=options)
                    _wide_indptr(group[key], options)
                    datasets[name] = sparse_dataset(group[key])
                else:
                    datasets[name].append(sparse.csr_matrix(matrix))
    logger.info("Wrote %d cells × %d genes to %s.", obs.shape[0], var.shape[0], filename)
    return open_backed(filename)


def _wide_indptr(group, options: dict) -> None:
    """Store a written sparse matrix's ``indptr`` as int64, so it can grow past 2³¹ values.

    scipy and anndata write int32 offsets when the first block's fit, and anndata's
    ``append`` then refuses the block that overflows them (5 million simulated cells hold
    about 3.4 billion non-zeros).
    """
    indptr = group["indptr"][...]
    if indptr.dtype == np.int64:
        return
    attrs = dict(group["indptr"].attrs)
    del group["indptr"]
    kwargs = {"maxshape": (None,), "chunks": group["data"].chunks, **options}
    group.create_dataset("indptr", data=indptr.astype(np.int64), **kwargs)
    group["indptr"].attrs.update(attrs)


def open_backed(filename: str | os.PathLike) -> ad.AnnData:
    """The h5ad opened as ``read_h5ad(filename, backed="r")``, its sparse layers left on disk.

    anndata's backed mode reads ``X`` from the file but loads every layer into memory; here
    a sparse layer is served from the file as well (an anndata ``CSRDataset``, which
    :func:`scetm_mnn._rows.rows_of` and the model's minibatches read a block of cells at a
    time), so a file whose counts do not fit in memory can be opened. Dense layers and
    the annotations are loaded, as anndata loads them.
    """
    import h5py
    from anndata.io import read_elem, sparse_dataset

    f = h5py.File(filename, "r")
    parts = {k: read_elem(f[k]) for k in ("obs", "var", "obsm", "varm", "obsp", "uns") if k in f}
    layers = {}
    for key, element in f["layers"].items() if "layers" in f else ():
        sparse_layer = isinstance(element, h5py.Group)
        layers[key] = sparse_dataset(element) if sparse_layer else read_elem(element)
    return ad.AnnData(filename=filename, filemode="r", layers=layers, **parts)


def close_backed(adata: ad.AnnData) -> None:
    """Close a backed ``adata``'s file and the handle its on-disk layers read through.

    Those layers are taken out of ``adata`` (a closed dataset fails anndata's checks,
    which every access of ``adata.layers`` runs).
    """
    stored = stored_layers(adata)
    for key in stored:
        adata._layers.pop(key)  # the raw mapping: adata.layers would read every layer
    adata.file.close()
    for handle in {id(v.group.file): v.group.file for v in stored.values()}.values():
        if handle:  # still open
            handle.close()


def stored_layers(adata: ad.AnnData) -> dict[str, object]:
    """The layers of a backed ``adata`` that are read from a file (:func:`open_backed`)."""
    from anndata.abc import CSRDataset

    return {k: v for k, v in adata.layers.items() if isinstance(v, CSRDataset)}


def in_memory_parts(adata: ad.AnnData) -> tuple[dict[str, object], dict[str, object]]:
    """What a backed ``adata`` holds in memory: its elements, and the layers not on disk.

    The elements are ``obs``, ``var``, ``uns``, ``obsm``, ``varm`` and ``obsp``; the layers
    are those added since the file was opened (the others are read from it).
    """
    stored = stored_layers(adata)
    parts = {
        "obs": adata.obs,
        "var": adata.var,
        "uns": dict(adata.uns),
        "obsm": dict(adata.obsm),
        "varm": dict(adata.varm),
        "obsp": dict(adata.obsp),
    }
    return parts, {k: v for k, v in adata.layers.items() if k not in stored}


def write_in_memory_parts(adata: ad.AnnData) -> None:
    """Write what a backed ``adata`` holds in memory into its own file, and reopen it.

    The annotations (``obs``, ``var``, ``uns``), ``obsm``, ``varm``, ``obsp`` and the layers
    held in memory replace the file's; its ``X`` and the layers read from it
    (:func:`open_backed`) are kept. The file is closed for the write, and ``adata`` reads
    it (``"r"``) again afterwards.
    """
    import h5py
    from anndata.io import sparse_dataset, write_elem

    filename = adata.filename
    stored = stored_layers(adata)
    parts, added = in_memory_parts(adata)
    close_backed(adata)  # the stored layers are read through the reopened file below
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
        if stored:
            layers = h5py.File(filename, "r")["layers"]
            for key in stored:
                adata.layers[key] = sparse_dataset(layers[key])
    logger.info("Wrote the results into %s.", filename)
