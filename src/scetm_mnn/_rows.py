"""Row access to a cells × genes matrix, wherever it lives: the package's one data path.

:class:`Rows` serves rows of a matrix held in memory (a dense ``ndarray`` or a scipy sparse
matrix, kept as CSR) or on disk (the ``X`` of an AnnData opened with ``backed="r"``, an
h5py dataset, or a layer of a backed h5ad read through the file, see :func:`rows_of`).
Callers ask for two things only: the rows of an index array (:meth:`Rows.take`, densified,
for a minibatch) and consecutive chunks of cells (:meth:`Rows.chunks`, for a pass over all
cells). Neither ever holds more than the requested rows dense, so the preprocessing
(:mod:`scetm_mnn.pp`) and the model's data loader (:mod:`scetm_mnn.train`) scale with the
chunk size, not the matrix.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from ._progress import cell_progress

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

__all__ = [
    "CHUNK_SIZE",
    "DENSE_PRELOAD_BYTES",
    "Rows",
    "ShiftedRows",
    "index_chunks",
    "is_on_disk",
    "map_chunks",
    "rows_of",
]

CHUNK_SIZE = 2048
"""Cells per chunk of a pass over all cells (2048 × 2000 genes dense is 16 MiB)."""
DENSE_PRELOAD_BYTES = 256 * 2**20
"""In-memory sparse data up to this dense size (float32) is densified once; larger stays CSR."""


def is_on_disk(x) -> bool:
    """Whether ``x`` is an on-disk array (an anndata sparse dataset or an h5py/zarr array)."""
    from anndata.abc import CSCDataset, CSRDataset

    if isinstance(x, CSRDataset | CSCDataset):
        return True
    module = type(x).__module__
    return module.startswith(("h5py", "zarr"))


class _RowAccess:
    """What :class:`Rows` and :class:`ShiftedRows` share: a shape and chunked passes."""

    shape: tuple[int, int]

    def chunk(self, start: int, stop: int, dense: bool = True):  # pragma: no cover - abstract
        """Cells ``start:stop``."""
        raise NotImplementedError

    @property
    def n_obs(self) -> int:
        """Number of cells (rows)."""
        return self.shape[0]

    @property
    def n_vars(self) -> int:
        """Number of genes (columns)."""
        return self.shape[1]

    def chunks(
        self, chunk_size: int | None = None, dense: bool = True, desc: str | None = None
    ) -> Iterator[tuple[int, np.ndarray | sparse.csr_matrix]]:
        """Consecutive chunks ``(start, rows start:start + chunk_size)`` over all cells.

        ``desc`` names the pass in a progress bar, shown for many cells
        (:func:`scetm_mnn._progress.cell_progress`).
        """
        size = CHUNK_SIZE if chunk_size is None else int(chunk_size)
        if size < 1:
            raise ValueError(f"chunk_size must be at least 1, not {size}.")
        with cell_progress(self.n_obs, desc) as bar:
            for start in range(0, self.n_obs, size):
                stop = min(start + size, self.n_obs)
                yield start, self.chunk(start, stop, dense)
                bar.update(stop - start)


class Rows(_RowAccess):
    """Rows of a cells × genes matrix, in memory or on disk, served as float32.

    Parameters
    ----------
    x
        Dense ``ndarray``, scipy sparse matrix (kept as CSR, converted once if needed), or
        an on-disk array: an anndata ``CSRDataset`` (the ``X`` of ``read_h5ad(...,
        backed="r")``) or an h5py/zarr dense dataset.
    preload
        For in-memory sparse ``x``: densify it once when its dense float32 size is at most
        :data:`DENSE_PRELOAD_BYTES` (fast minibatches for small data); otherwise keep CSR.
        On-disk data are never loaded.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import sparse
    >>> from scetm_mnn._rows import Rows
    >>> rows = Rows(sparse.csr_matrix(np.arange(12.0).reshape(4, 3)))
    >>> rows.take(np.array([2, 0]))
    array([[6., 7., 8.],
           [0., 1., 2.]], dtype=float32)
    >>> [(start, chunk.shape) for start, chunk in rows.chunks(3)]
    [(0, (3, 3)), (3, (1, 3))]
    """

    def __init__(self, x: Any, preload: bool = False):
        if isinstance(x, Rows):
            x = x.data
        self.on_disk = is_on_disk(x)
        if self.on_disk:
            from anndata.abc import CSCDataset

            if isinstance(x, CSCDataset):
                raise ValueError(
                    "The backed matrix is stored column-wise (CSC), so reading cells means "
                    "reading the whole file. Convert it to CSR once, e.g. "
                    "`adata = adata.to_memory(); adata.X = adata.X.tocsr()` and write it again."
                )
        elif sparse.issparse(x):
            fits = np.prod(x.shape, dtype=np.float64) * 4 <= DENSE_PRELOAD_BYTES
            if preload and fits:
                x = np.asarray(x.toarray(), dtype=np.float32)
            else:
                x = sparse.csr_matrix(x, dtype=np.float32)
        else:
            x = np.ascontiguousarray(np.asarray(x), dtype=np.float32)
        self.data = x
        self.shape: tuple[int, int] = (int(x.shape[0]), int(x.shape[1]))
        # Read per minibatch (``_read``), so decided once here rather than per call.
        self.is_sparse: bool = sparse.issparse(x) or _is_csr_dataset(x)
        """Whether the rows are stored sparse (in memory or on disk)."""

    def _read(self, rows: np.ndarray):
        """Stored rows ``rows`` (increasing for on-disk data), sparse or dense."""
        if self.on_disk and not self.is_sparse:
            return np.asarray(self.data[rows])  # h5py: increasing indices
        return self.data[rows]

    def take(self, rows: np.ndarray, dense: bool = True) -> np.ndarray | sparse.csr_matrix:
        """The rows ``rows`` in the given order, as float32 (dense unless ``dense=False``).

        On-disk rows are read in increasing order (what h5py requires, and what reads the
        file sequentially) and then put in the requested order.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if not self.on_disk:
            block = self.data[rows]
        elif rows.size < 2 or np.all(np.diff(rows) > 0):
            block = self._read(rows)
        else:
            unique, inverse = np.unique(rows, return_inverse=True)
            block = self._read(unique)[inverse]
        return _as_float32(block, dense)

    def chunk(self, start: int, stop: int, dense: bool = True) -> np.ndarray | sparse.csr_matrix:
        """Cells ``start:stop`` as float32 (dense unless ``dense=False``).

        A chunk of dense float32 data in memory is a view of it: read it, never write it.
        """
        return _as_float32(self.data[start:stop], dense)

    def mean(self, chunk_size: int | None = None) -> np.ndarray:
        """Per-gene mean over all cells (float64 accumulation), one pass in chunks."""
        total = np.zeros(self.n_vars, dtype=np.float64)
        for _, block in self.chunks(chunk_size, dense=False):
            total += np.asarray(block.sum(axis=0), dtype=np.float64).ravel()
            del block
        return total / max(self.n_obs, 1)


class ShiftedRows(_RowAccess):
    """Rows of ``x + shift · basisᵀ``: a matrix plus a low-rank change, never stored dense.

    The corrector of :func:`scetm_mnn.pp.mnn_correct` changes expression only within a
    ``d``-dimensional subspace of the genes, so its output is the input ``x`` plus
    ``shift`` (cells × d) times ``basisᵀ`` (d × genes). Served this way, the corrected
    expression of a million cells costs ``4·d`` bytes per cell instead of ``4·genes``, and
    each minibatch or chunk is computed from its rows alone.

    Parameters
    ----------
    rows
        The uncorrected expression (:class:`Rows`, or anything it reads).
    shift
        Cells × d coefficients (in memory).
    basis
        Genes × d orthonormal basis.
    """

    def __init__(self, rows, shift: np.ndarray, basis: np.ndarray):
        self.rows = rows if isinstance(rows, Rows) else Rows(rows, preload=True)
        self.shift = np.ascontiguousarray(shift, dtype=np.float32)
        self.basis_t = np.ascontiguousarray(np.asarray(basis, dtype=np.float32).T)
        if self.shift.shape[0] != self.rows.n_obs or self.basis_t.shape != (
            self.shift.shape[1],
            self.rows.n_vars,
        ):
            raise ValueError(
                f"A low-rank shift of shape {self.shift.shape} and basis of shape "
                f"{self.basis_t.T.shape} do not fit a matrix of shape {self.rows.shape}."
            )
        self.shape = self.rows.shape
        self.on_disk = self.rows.on_disk
        self.is_sparse = False

    def take(self, rows: np.ndarray, dense: bool = True) -> np.ndarray:
        """The rows ``rows`` in the given order (always dense float32)."""
        rows = np.asarray(rows, dtype=np.int64)
        return self.rows.take(rows) + self.shift[rows] @ self.basis_t

    def chunk(self, start: int, stop: int, dense: bool = True) -> np.ndarray:
        """Cells ``start:stop`` (always dense float32)."""
        return self.rows.chunk(start, stop) + self.shift[start:stop] @ self.basis_t


def _is_csr_dataset(x) -> bool:
    from anndata.abc import CSRDataset

    return isinstance(x, CSRDataset)


def _as_float32(block, dense: bool):
    if sparse.issparse(block):
        block = sparse.csr_matrix(block, dtype=np.float32)
        return np.asarray(block.toarray()) if dense else block
    block = np.ascontiguousarray(np.asarray(block), dtype=np.float32)
    return block if dense else sparse.csr_matrix(block)


def index_chunks(
    idx: np.ndarray, chunk_size: int | None = None, desc: str | None = None
) -> Iterator[tuple[slice, np.ndarray]]:
    """Consecutive pieces ``(positions, cells)`` of the cell indices ``idx``.

    Each piece holds ``chunk_size`` (default ``CHUNK_SIZE``) cells, for ``Rows.take`` a
    piece at a time. ``desc`` names the pass in a progress bar, shown for many cells.
    """
    size = CHUNK_SIZE if chunk_size is None else int(chunk_size)
    with cell_progress(idx.size, desc) as bar:
        for start in range(0, idx.size, size):
            piece = idx[start : start + size]
            yield slice(start, start + size), piece
            bar.update(piece.size)


def map_chunks(
    fn: Callable[[np.ndarray], np.ndarray],
    rows: Rows,
    chunk_size: int | None = None,
    out: np.ndarray | None = None,
    desc: str | None = None,
) -> np.ndarray:
    """``fn`` applied to consecutive dense chunks of ``rows``, stacked (cells × d).

    ``out``, when given, receives the result (e.g. a preallocated or memory-mapped array);
    otherwise a float32 array is allocated after the first chunk. ``desc``: the pass's
    progress bar, for many cells.
    """
    for start, block in rows.chunks(chunk_size, desc=desc):
        result = np.asarray(fn(block))
        if out is None:
            out = np.empty((rows.n_obs, *result.shape[1:]), dtype=np.float32)
        out[start : start + block.shape[0]] = result
        del block, result  # before the next chunk is read, not after
    if out is None:  # no cells
        out = np.empty((0, 0), dtype=np.float32)
    return out


def rows_of(adata: AnnData, layer: str | None = None, preload: bool = False) -> Rows:
    """:class:`Rows` over ``adata.X`` or ``adata.layers[layer]``, on disk when backed.

    For an AnnData opened with ``backed="r"``, anndata reads ``X`` from the file but loads
    the layers into memory; here a layer that is stored in the file is read from the file
    too, so a backed h5ad's counts layer never has to fit in memory. Layers added after
    opening (in memory only) are served from memory.

    Parameters
    ----------
    adata
        In-memory or backed AnnData.
    layer
        Layer name, or ``None`` for ``X``.
    preload
        See :class:`Rows`.
    """
    if layer is None:
        matrix = adata.X
    elif layer in adata.layers:
        matrix = adata.layers[layer]
    else:
        raise KeyError(f"Layer {layer!r} not found in adata.layers.")
    if adata.isbacked and layer is not None and not is_on_disk(matrix):
        stored = adata.file["layers"] if "layers" in adata.file else None
        if stored is not None and layer in stored:
            from anndata.io import sparse_dataset

            element = stored[layer]
            matrix = sparse_dataset(element) if hasattr(element, "keys") else element
            logger.debug("Reading layer %r from the backed file %s.", layer, adata.filename)
    return Rows(matrix, preload=preload)
