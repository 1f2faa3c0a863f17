"""``scetm_mnn.pp.preprocess``: filters, normalization, log1p and HVG selection."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scanpy as sc
from scipy import sparse

from scetm_mnn import pp
from scetm_mnn.datasets import simulate
from scetm_mnn.pp._preprocess import _normalize_total_in_place


@pytest.fixture(scope="module")
def processed(sim_adata):
    return pp.preprocess(sim_adata, n_top_genes=100, batch_key="batch", copy=True)


def test_copy_returns_new_object_and_leaves_input_alone(sim_adata, processed):
    x_before = sim_adata.X.copy()
    again = pp.preprocess(sim_adata, n_top_genes=100, batch_key="batch", copy=True)
    assert again is not sim_adata
    assert sim_adata.shape == (600, 300) and not sim_adata.layers
    assert (sim_adata.X != x_before).nnz == 0
    assert "highly_variable" not in sim_adata.var
    np.testing.assert_array_equal(again.X.toarray(), processed.X.toarray())


def test_counts_layer_and_log_normalization(sim_adata, processed):
    assert processed.shape == (600, 100)
    raw = sim_adata[processed.obs_names]
    counts = raw[:, processed.var_names].X.toarray()
    np.testing.assert_array_equal(processed.layers["counts"].toarray(), counts)
    # normalize_total(1e4) uses every gene kept by the gene filter, before HVG subsetting
    kept = np.asarray((raw.X > 0).sum(axis=0)).ravel() >= 3
    totals = np.asarray(raw.X[:, kept].sum(axis=1)).ravel()
    expected = np.log1p(counts / totals[:, None] * 1e4)
    np.testing.assert_allclose(processed.X.toarray(), expected, rtol=1e-5, atol=1e-5)


def test_hvgs_are_batch_aware_and_capped(sim_adata, processed):
    assert processed.var["highly_variable"].all()
    assert "highly_variable_nbatches" in processed.var  # batch-aware selection
    capped = pp.preprocess(sim_adata, n_top_genes=10_000, copy=True)
    n_expressed = int((np.asarray((sim_adata.X > 0).sum(axis=0)).ravel() >= 3).sum())
    assert capped.n_vars == n_expressed


def test_in_place_by_default(sim_adata, processed):
    """Like scanpy: ``pp.preprocess(adata)`` transforms ``adata`` and returns None."""
    adata = sim_adata.copy()
    assert pp.preprocess(adata, n_top_genes=100, batch_key="batch") is None
    assert adata.shape == (600, 100)
    assert adata.X.max() < 15  # log scale
    assert (adata.layers["counts"] != processed.layers["counts"]).nnz == 0
    np.testing.assert_array_equal(adata.X.toarray(), processed.X.toarray())
    assert list(adata.var_names) == list(processed.var_names)
    assert adata.var["highly_variable"].all()
    assert pp.preprocess(sim_adata.copy(), n_top_genes=50, copy=False) is None


def test_in_place_on_a_view(sim_adata):
    view = sim_adata[:300]
    assert pp.preprocess(view, n_top_genes=50) is None
    assert not view.is_view and view.shape == (300, 50) and "counts" in view.layers
    assert sim_adata.shape == (600, 300) and not sim_adata.layers


def test_filters(sim_adata):
    n_genes = np.asarray((sim_adata.X > 0).sum(axis=1)).ravel()
    threshold = int(np.median(n_genes))
    out = pp.preprocess(sim_adata, n_top_genes=50, min_genes=threshold, min_cells=0, copy=True)
    assert out.n_obs == int((n_genes >= threshold).sum())
    assert 0 < out.n_obs < sim_adata.n_obs


def test_integer_counts_dtype(sim_adata):
    adata = sim_adata.copy()
    adata.X = sparse.csr_matrix(adata.X, dtype=np.int64)
    out = pp.preprocess(adata, n_top_genes=50, copy=True)
    assert np.issubdtype(out.X.dtype, np.floating)
    assert np.issubdtype(out.layers["counts"].dtype, np.integer)


def test_rejects_bad_input(sim_adata, processed):
    # preprocess has no `layer` argument: the message says to put counts in X instead.
    with pytest.raises(ValueError, match="non-integer") as err:
        pp.preprocess(processed)
    assert "Put raw UMI counts in adata.X" in str(err.value) and "layer=" not in str(err.value)
    negative = sim_adata.copy()
    negative.X = -negative.X
    with pytest.raises(ValueError, match=r"negative.*Put raw UMI counts in adata\.X"):
        pp.preprocess(negative)
    with pytest.raises(KeyError, match="Available columns"):
        pp.preprocess(sim_adata, batch_key="donor")
    bad = sim_adata.copy()
    bad.X = bad.X.toarray()
    bad.X[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        pp.preprocess(bad)


def test_hvg_statistics_from_a_sample_above_the_limit(monkeypatch):
    """Above HVG_MAX_CELLS the genes are ranked on a seeded sample: nearly the same genes."""
    from scetm_mnn.pp import _hvg

    adata = simulate(n_cells=3000, n_genes=400, n_batches=3, random_state=4)
    full = pp.preprocess(adata, n_top_genes=100, batch_key="batch", copy=True)
    monkeypatch.setattr(_hvg, "HVG_MAX_CELLS", 1500)
    sampled = pp.preprocess(adata, n_top_genes=100, batch_key="batch", copy=True)
    again = pp.preprocess(adata, n_top_genes=100, batch_key="batch", copy=True)
    assert sampled.shape == (3000, 100) and list(sampled.var_names) == list(again.var_names)
    assert set(full.var.columns) == set(sampled.var.columns)
    common = [g for g in sampled.var_names if g in set(full.var_names)]
    assert len(common) >= 80  # of 100
    np.testing.assert_array_equal(sampled[:, common].X.toarray(), full[:, common].X.toarray())


def test_normalization_in_chunks_equals_scanpys_and_allocates_no_copy():
    """Bitwise scanpy's normalize_total on CSR, without an nnz-long temporary array."""
    adata = simulate(n_cells=12_000, n_genes=300, random_state=3)
    adata.X[7] = 0  # a cell without counts stays zero, with scanpy's warning
    adata.X.eliminate_zeros()
    expected = adata.copy()
    sc.pp.normalize_total(expected, target_sum=1e4)
    tracemalloc.start()
    with pytest.warns(UserWarning, match="zero counts"):
        _normalize_total_in_place(adata, 1e4)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(adata.X.data, expected.X.data)
    assert adata.X.dtype == expected.X.dtype
    assert peak < 0.2 * adata.X.data.nbytes  # scanpy's division holds 2 × nbytes more


def test_filters_give_scanpys_columns_and_cells():
    adata = simulate(n_cells=400, n_genes=200, random_state=2)
    adata.X[:5] = 0  # five empty cells
    adata.X[:, :7] = 0  # seven unexpressed genes
    adata.X.eliminate_zeros()
    expected = adata.copy()
    sc.pp.filter_cells(expected, min_genes=1)
    sc.pp.filter_genes(expected, min_cells=3)
    out = pp.preprocess(adata, n_top_genes=10_000, copy=True)
    assert out.shape == expected.shape == (395, 193)
    assert list(out.obs_names) == list(expected.obs_names)
    np.testing.assert_array_equal(out.obs["n_genes"], expected.obs["n_genes"])
    np.testing.assert_array_equal(out.var["n_cells"], expected.var["n_cells"])
    np.testing.assert_array_equal(out.layers["counts"].toarray(), expected.X.toarray())


@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_in_place_preprocessing_holds_one_new_matrix(monkeypatch, dtype):
    """In place, the counts matrix becomes the layer: the caller's reference to it still
    holds the counts, and only X's new float matrix is allocated (a copy for the layer
    beside a float X would be two)."""
    from scetm_mnn.pp import _hvg

    monkeypatch.setattr(_hvg, "HVG_MAX_CELLS", 500)  # the HVG sample stays small
    # once on a few cells first: scanpy's lazy imports and numba's compilation are not data
    pp.preprocess(simulate(n_cells=600, n_genes=300, random_state=3), n_top_genes=10_000)
    adata = simulate(n_cells=12_000, n_genes=300, random_state=3)
    adata.X = adata.X.astype(dtype)
    counts = adata.X
    before = counts.copy()
    size = counts.data.nbytes + counts.indices.nbytes + counts.indptr.nbytes
    tracemalloc.start()
    pp.preprocess(adata, n_top_genes=10_000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (counts != before).nnz == 0 and counts.dtype == dtype
    assert (adata.layers["counts"] != before).nnz == 0
    assert peak < 1.5 * size
