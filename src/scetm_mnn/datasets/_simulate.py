"""Seeded negative-binomial simulation of cell types with batch effects."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse


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
        Number of cell types; each is present in every batch.
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

    Returns
    -------
    AnnData with integer-valued counts in ``X`` (CSR, float32); categorical
    ``obs["batch"]`` and ``obs["cell_type"]``; ``var["marker_of"]`` naming the cell type a
    gene marks (empty for housekeeping genes); and ``varm["batch_log_fold"]``, the true
    batch effect per gene.
    """
    if n_batches < 1 or n_cell_types < 1:
        raise ValueError("n_batches and n_cell_types must be at least 1.")
    if n_cells < n_batches * n_cell_types:
        raise ValueError(
            f"n_cells={n_cells} is too small for {n_batches} batches × {n_cell_types} types."
        )
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
        props = rng.dirichlet(np.full(n_cell_types, 5.0))
        types = rng.choice(n_cell_types, size=idx.size, p=props)
        types[: min(idx.size, n_cell_types)] = np.arange(min(idx.size, n_cell_types))
        cell_types[idx] = types

    log_fold = batch_log_fold[batches]
    if type_batch_effect > 0:
        per_type = rng.normal(0.0, type_batch_effect, size=(n_batches, n_cell_types, n_genes))
        log_fold = log_fold + per_type[batches, cell_types]
    rates = base[None, :] * programmes[cell_types] * np.exp(log_fold)
    rates /= rates.sum(axis=1, keepdims=True)
    lib = library_size * batch_lib[batches] * np.exp(rng.normal(0.0, 0.25, size=n_cells))
    mean = rates * lib[:, None]
    counts = rng.poisson(rng.gamma(dispersion, mean / dispersion))

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
    adata = ad.AnnData(
        X=sparse.csr_matrix(counts.astype(np.float32)),
        obs=obs,
        var=var,
        varm={"batch_log_fold": batch_log_fold.T.astype(np.float32)},
    )
    adata.uns["simulation"] = {
        "n_batches": n_batches,
        "n_cell_types": n_cell_types,
        "batch_effect": batch_effect,
        "type_batch_effect": type_batch_effect,
        "random_state": random_state,
    }
    return adata
