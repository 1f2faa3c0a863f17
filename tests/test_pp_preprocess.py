"""``scetm_mnn.pp.preprocess``: filters, normalization, log1p and HVG selection."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from scetm_mnn import pp


@pytest.fixture(scope="module")
def processed(sim_adata):
    return pp.preprocess(sim_adata, n_top_genes=100, batch_key="batch")


def test_returns_new_object_and_leaves_input_alone(sim_adata, processed):
    x_before = sim_adata.X.copy()
    again = pp.preprocess(sim_adata, n_top_genes=100, batch_key="batch")
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
    capped = pp.preprocess(sim_adata, n_top_genes=10_000)
    n_expressed = int((np.asarray((sim_adata.X > 0).sum(axis=0)).ravel() >= 3).sum())
    assert capped.n_vars == n_expressed


def test_in_place_returns_none(sim_adata):
    adata = sim_adata.copy()
    assert pp.preprocess(adata, n_top_genes=50, copy=False) is None
    assert adata.shape == (600, 50)
    assert "counts" in adata.layers
    assert adata.X.max() < 15  # log scale


def test_filters(sim_adata):
    n_genes = np.asarray((sim_adata.X > 0).sum(axis=1)).ravel()
    threshold = int(np.median(n_genes))
    out = pp.preprocess(sim_adata, n_top_genes=50, min_genes=threshold, min_cells=0)
    assert out.n_obs == int((n_genes >= threshold).sum())
    assert 0 < out.n_obs < sim_adata.n_obs


def test_integer_counts_dtype(sim_adata):
    adata = sim_adata.copy()
    adata.X = sparse.csr_matrix(adata.X, dtype=np.int64)
    out = pp.preprocess(adata, n_top_genes=50)
    assert np.issubdtype(out.X.dtype, np.floating)
    assert np.issubdtype(out.layers["counts"].dtype, np.integer)


def test_rejects_bad_input(sim_adata, processed):
    with pytest.raises(ValueError, match="non-integer"):
        pp.preprocess(processed)
    with pytest.raises(KeyError, match="Available columns"):
        pp.preprocess(sim_adata, batch_key="donor")
    bad = sim_adata.copy()
    bad.X = bad.X.toarray()
    bad.X[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        pp.preprocess(bad)
