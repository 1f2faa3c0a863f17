"""Seeded negative-binomial simulation of cell types with batch effects."""

from __future__ import annotations

import itertools
import logging
import numbers
import os
from collections.abc import Iterator, Mapping, Sequence

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from .._disk import check_free_space
from .._h5ad import dataset_kwargs, space_fix, stored_bytes, write_blocks

logger = logging.getLogger(__name__)

SIMULATE_CHUNK = 10_000
"""Cells generated at a time (a 10 000 × 2000 chunk of float64 rates is 160 MB)."""


def simulate(
    n_cells: int = 2000,
    n_genes: int = 1000,
    n_batches: int = 2,
    n_cell_types: int = 5,
    batch_effect: float = 0.5,
    type_batch_effect: float = 0.0,
    library_size: float = 1500.0,
    dispersion: float = 10.0,
    random_state: int = 0,
    filename: str | os.PathLike | None = None,
    type_proportions: Sequence[float] | None = None,
    batch_specific_types: Mapping[int, int | Sequence[int]] | None = None,
    compression: str | None = None,
) -> ad.AnnData:
    """Simulate UMI counts for cell types measured in several batches.

    Each cell type up-regulates its own set of marker genes (a gene programme). Each batch
    multiplies every gene by a batch-specific log-normal factor and shifts the library
    size, which is what splits identical cell types apart in an uncorrected embedding.

    Parameters
    ----------
    n_cells
        Number of cells.
    n_genes
        Number of genes.
    n_batches
        Number of batches.
    n_cell_types
        Number of cell types; each is present in every batch unless
        ``batch_specific_types`` says otherwise.
    batch_effect
        Standard deviation of the per-batch, per-gene log fold change. ``0`` gives no
        batch effect on gene expression.
    type_batch_effect
        Standard deviation of an extra log fold change per batch, cell type and gene: a
        batch effect that differs between cell types, which a single per-batch shift
        cannot remove. ``0`` (the default) adds none.
    library_size
        Median total counts per cell.
    dispersion
        Inverse overdispersion of the negative binomial (larger is closer to Poisson).
    random_state
        Seed; the same seed gives the same data.
    filename
        Write the data to this ``.h5ad`` file as they are generated, and return it opened
        with ``backed="r"``: an atlas-sized simulation then never has to fit in memory.
    type_proportions
        Relative abundance of each cell type (``n_cell_types`` positive numbers, normalised
        to sum 1): unbalanced types. Each batch draws its own type proportions around these
        (a Dirichlet with mean ``type_proportions`` and total concentration
        ``5 * n_cell_types``, as donors differ). ``None`` (the default) makes the types
        equally abundant on average.
    batch_specific_types
        ``{type_index: batch_index}`` (or ``{type_index: [batch_index, ...]}``): that type is
        present in those batches only. A batch's cells are shared out over the types it
        has (their proportions renormalised), so ``n_cells`` and the batch sizes do not
        change. ``None`` (the default) puts every type in every batch.
    compression
        With ``filename``: ``"lzf"`` or ``"gzip"`` compresses the counts in the file (about
        a third and a fifth of the uncompressed size); ``None`` (the default) writes them
        uncompressed, as :meth:`anndata.AnnData.write_h5ad` does.

    Notes
    -----
    Cells are generated in chunks of ``SIMULATE_CHUNK`` (10 000) straight into CSR, so memory
    beyond the result is bounded by one chunk; up to that many cells the data are the same
    as from one unchunked draw. A million cells × 2000 genes (about 650 non-zeros per cell
    at the default library size) take about 5 GB in memory as CSR; with ``filename`` the
    peak stays near one chunk.

    Returns
    -------
    AnnData (backed when ``filename`` is given) with integer-valued counts in ``X`` (CSR,
    float32); categorical
    ``obs["batch"]`` and ``obs["cell_type"]``; ``var["marker_of"]`` naming the cell type a
    gene marks (empty for housekeeping genes); and ``varm["batch_log_fold"]``, the true
    batch effect per gene.

    Examples
    --------
    >>> import scetm_mnn as sm
    >>> adata = sm.datasets.simulate(n_cells=600, n_genes=100, n_batches=3, random_state=0)
    >>> adata.shape, adata.obs["batch"].nunique(), adata.obs["cell_type"].nunique()
    ((600, 100), 3, 5)

    Unbalanced types, and a type (``type_4``) that only the first batch has:

    >>> adata = sm.datasets.simulate(
    ...     n_cells=1000, n_genes=100, n_batches=3,
    ...     type_proportions=[0.5, 0.2, 0.15, 0.1, 0.05], batch_specific_types={4: 0},
    ... )
    >>> sorted(adata.obs.loc[adata.obs["cell_type"] == "type_4", "batch"].unique())
    ['batch_0']
    >>> adata.n_obs, adata.obs["cell_type"].value_counts().index[0]
    (1000, 'type_0')
    """
    if n_batches < 1 or n_cell_types < 1:
        raise ValueError("n_batches and n_cell_types must be at least 1.")
    if n_cells < n_batches * n_cell_types:
        raise ValueError(
            f"n_cells={n_cells} is too small for {n_batches} batches × {n_cell_types} types."
        )
    # Dirichlet concentration of each batch's type proportions (5 per type when balanced).
    concentration = (
        np.full(n_cell_types, 5.0)
        if type_proportions is None
        else 5.0 * n_cell_types * _proportions(type_proportions, n_cell_types)
    )
    present = _presence(batch_specific_types, n_batches, n_cell_types)
    rng = np.random.default_rng(random_state)

    # Baseline expression: a few high genes, many low ones.
    base = rng.gamma(shape=0.5, scale=2.0, size=n_genes) + 0.05
    markers = np.full(n_genes, "", dtype=object)
    n_markers = max(1, int(0.3 * n_genes / n_cell_types))
    candidates = rng.permutation(n_genes)
    programmes = np.ones((n_cell_types, n_genes))
    for t in range(n_cell_types):
        genes = candidates[t * n_markers : (t + 1) * n_markers]
        if genes.size == 0:  # more types than genes allow: reuse genes at random
            genes = rng.choice(n_genes, size=n_markers, replace=False)
        programmes[t, genes] = np.exp(rng.normal(2.0, 0.5, size=genes.size))
        markers[genes] = f"type_{t}"

    batch_log_fold = rng.normal(0.0, batch_effect, size=(n_batches, n_genes))
    batch_lib = np.exp(rng.normal(0.0, 0.3, size=n_batches)) if n_batches > 1 else np.ones(1)

    batches = np.sort(rng.integers(0, n_batches, size=n_cells))
    batches[:n_batches] = np.arange(n_batches)  # every batch present
    batches.sort()
    # Type proportions differ between batches, as donors do.
    cell_types = np.empty(n_cells, dtype=int)
    for b in range(n_batches):
        idx = np.flatnonzero(batches == b)
        if present is None:  # every type in every batch (the original draws, unchanged)
            own = np.arange(n_cell_types)
            props = rng.dirichlet(concentration)
        else:
            own = np.flatnonzero(present[b])
            props = rng.dirichlet(concentration[own])
        types = rng.choice(own, size=idx.size, p=props)
        types[: min(idx.size, own.size)] = own[: min(idx.size, own.size)]
        cell_types[idx] = types

    per_type = (
        rng.normal(0.0, type_batch_effect, size=(n_batches, n_cell_types, n_genes))
        if type_batch_effect > 0
        else None
    )
    lib = library_size * batch_lib[batches] * np.exp(rng.normal(0.0, 0.25, size=n_cells))

    # Expression profile of every (batch, type): a cell's rates depend on nothing else, so
    # they are computed once per group rather than once per cell.
    log_fold = np.repeat(batch_log_fold[:, None, :], n_cell_types, axis=1)
    if per_type is not None:
        log_fold = log_fold + per_type
    profiles = base * programmes[None, :, :] * np.exp(log_fold)
    profiles /= profiles.sum(axis=2, keepdims=True)

    def counts_of(start: int, stop: int) -> sparse.csr_matrix:
        """Counts of cells ``start:stop``, drawn from ``rng`` in cell order."""
        b, t = batches[start:stop], cell_types[start:stop]
        mean = profiles[b, t] * lib[start:stop, None]
        return _to_csr(rng.poisson(rng.gamma(dispersion, mean / dispersion)))

    chunks = (
        (start, min(start + SIMULATE_CHUNK, n_cells))
        for start in range(0, n_cells, SIMULATE_CHUNK)
    )
    obs = pd.DataFrame(
        {
            "batch": pd.Categorical([f"batch_{b}" for b in batches]),
            "cell_type": pd.Categorical([f"type_{t}" for t in cell_types]),
        },
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(
        {"marker_of": pd.Categorical(markers.astype(str))},
        index=[f"gene_{g}" for g in range(n_genes)],
    )
    varm = {"batch_log_fold": batch_log_fold.T.astype(np.float32)}
    uns = {
        "simulation": {
            "n_batches": n_batches,
            "n_cell_types": n_cell_types,
            "batch_effect": batch_effect,
            "type_batch_effect": type_batch_effect,
            "random_state": random_state,
        }
    }
    if type_proportions is not None:
        uns["simulation"]["type_proportions"] = concentration / concentration.sum()
    if present is not None:
        uns["simulation"]["batch_specific_types"] = {
            f"type_{t}": np.flatnonzero(present[:, t])
            for t in range(n_cell_types)
            if not present[:, t].all()
        }
    if filename is not None:
        dataset_kwargs(compression)  # an unknown filter is refused before the draws
        blocks = (counts_of(*c) for c in chunks)
        blocks = _checked_blocks(filename, n_cells, blocks, compression)
        return write_blocks(
            filename, obs, var, blocks, uns=uns, varm=varm, compression=compression
        )
    return ad.AnnData(
        X=_stack(counts_of(*c) for c in chunks), obs=obs, var=var, varm=varm, uns=uns
    )


def _proportions(values: Sequence[float], n_cell_types: int) -> np.ndarray:
    """``type_proportions`` checked and normalised to sum 1."""
    props = np.asarray(values, dtype=float)
    if props.ndim != 1 or props.size != n_cell_types:
        raise ValueError(
            f"type_proportions has {props.size} values for n_cell_types={n_cell_types}; "
            "give one positive number per cell type."
        )
    if not np.isfinite(props).all() or (props <= 0).any():
        raise ValueError(
            f"type_proportions must be finite and positive, got {props.tolist()}; "
            "lower n_cell_types to drop a type."
        )
    return props / props.sum()


def _presence(
    specific: Mapping[int, int | Sequence[int]] | None, n_batches: int, n_cell_types: int
) -> np.ndarray | None:
    """``batch_specific_types`` as a (batch × type) boolean table of which types a batch has.

    ``None`` when every type is in every batch.
    """
    if specific is None:
        return None
    if not isinstance(specific, Mapping):
        raise TypeError(
            "batch_specific_types must be a mapping {type_index: batch_index or "
            f"[batch_index, ...]}}, got {type(specific).__name__}."
        )
    present = np.ones((n_batches, n_cell_types), dtype=bool)
    for t, batches in specific.items():
        if not isinstance(t, numbers.Integral) or not 0 <= t < n_cell_types:
            raise ValueError(
                f"batch_specific_types has type index {t!r}; cell types are 0 to "
                f"{n_cell_types - 1} (n_cell_types={n_cell_types})."
            )
        batches = [batches] if isinstance(batches, numbers.Integral) else list(batches)
        if not batches:
            raise ValueError(f"batch_specific_types gives type {t} no batch to be present in.")
        for b in batches:
            if not isinstance(b, numbers.Integral) or not 0 <= b < n_batches:
                raise ValueError(
                    f"batch_specific_types puts type {t} in batch {b!r}; batches are 0 to "
                    f"{n_batches - 1} (n_batches={n_batches})."
                )
        present[:, t] = False
        present[batches, t] = True
    empty = np.flatnonzero(~present.any(axis=1))
    if empty.size:
        raise ValueError(
            f"batch_specific_types leaves batch(es) {empty.tolist()} with no cell type (every "
            "type is specific to other batches); keep at least one type in every batch."
        )
    return present


def _to_csr(counts: np.ndarray) -> sparse.csr_matrix:
    """A dense block of counts as float32 CSR (what ``csr_matrix(dense)`` gives, faster)."""
    mask = counts != 0
    indptr = np.zeros(counts.shape[0] + 1, dtype=np.int64)
    np.cumsum(mask.sum(axis=1), out=indptr[1:])
    indices = np.nonzero(mask)[1].astype(np.int32)
    return sparse.csr_matrix(
        (counts[mask].astype(np.float32), indices, indptr.astype(np.int32)), shape=counts.shape
    )


def _stack(blocks: Iterator[sparse.csr_matrix]) -> sparse.csr_matrix:
    """Stack CSR row blocks, holding the result and one block at a time.

    The blocks' arrays are copied into arrays sized for the total and freed one by one:
    pages of a large ``np.empty`` are only resident once written, so the peak memory is
    the result plus about one block (not twice the result, as ``sparse.vstack``).
    """
    blocks = list(blocks)
    if len(blocks) == 1:
        return blocks[0]
    nnz = sum(block.nnz for block in blocks)
    n_rows = sum(block.shape[0] for block in blocks)
    data = np.empty(nnz, dtype=np.float32)
    indices = np.empty(nnz, dtype=np.int32)
    indptr = np.empty(n_rows + 1, dtype=np.int64 if nnz > np.iinfo(np.int32).max else np.int32)
    indptr[0] = 0
    row, pos, n_cols = 0, 0, blocks[0].shape[1]
    while blocks:
        block = blocks.pop(0)
        stop = pos + block.nnz
        data[pos:stop] = block.data
        indices[pos:stop] = block.indices
        indptr[row + 1 : row + 1 + block.shape[0]] = block.indptr[1:] + pos
        row, pos = row + block.shape[0], stop
        del block
    return sparse.csr_matrix((data, indices, indptr), shape=(n_rows, n_cols))


def _checked_blocks(
    filename: str | os.PathLike,
    n_cells: int,
    blocks: Iterator[sparse.csr_matrix],
    compression: str | None,
) -> Iterator[dict[str, sparse.csr_matrix]]:
    """The blocks for :func:`~scetm_mnn._h5ad.write_blocks`, the disk checked first.

    The first block is drawn now, before anything is written; the file's size is
    extrapolated from it (its size as written with ``compression``, 10 % more for the
    blocks' spread), and a disk without that much
    free space is refused with ``OSError`` (ENOSPC) before the file is created.
    """
    first = next(blocks)
    per_cell = stored_bytes(first, compression) / max(first.shape[0], 1)
    needed = int(1.1 * per_cell * n_cells) + (1 << 20)
    check_free_space(filename, needed, "the simulation", space_fix(compression))
    return ({"X": block} for block in itertools.chain([first], blocks))
