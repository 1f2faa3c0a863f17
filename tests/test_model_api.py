"""The scvi-tools model API of ``BatchCorrectedSCETM`` (issue 17 A).

Normalized expression, posterior predictive counts, ELBO / reconstruction error / marginal
log-likelihood, differential expression and differential topic usage, on a model trained
once per module on the session's simulated data; held-out cells are the last 100.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scvi
import sparse
import torch
from scipy import sparse as sp

from scetm_mnn.model import BatchCorrectedSCETM
from scetm_mnn.train import source_from_manager

FAST = {"enable_progress_bar": False}
N_TRAIN = 500


@pytest.fixture(scope="module")
def split(sim_adata):
    """Training and held-out cells, each registered (copies: the session data stay)."""
    train, held_out = sim_adata[:N_TRAIN].copy(), sim_adata[N_TRAIN:].copy()
    BatchCorrectedSCETM.setup_anndata(train, batch_key="batch")
    return train, held_out


@pytest.fixture(scope="module")
def model(split):
    scvi.settings.seed = 0
    model = BatchCorrectedSCETM(split[0], n_topics=8, n_emb=16)
    model.train(max_epochs=400, **FAST)  # 800 steps: the four types get topics of their own
    return model


@pytest.fixture(scope="module")
def no_bias_model(split):
    scvi.settings.seed = 0
    model = BatchCorrectedSCETM(split[0], n_topics=4, n_emb=8, batch_bias=False)
    model.train(max_epochs=2, **FAST)
    return model


# -- normalized expression ------------------------------------------------------------------


def test_normalized_expression_shapes_and_types(model):
    adata = model.adata
    expr = model.get_normalized_expression()
    assert isinstance(expr, pd.DataFrame) and expr.shape == adata.shape
    assert list(expr.index) == list(adata.obs_names)
    assert list(expr.columns) == list(adata.var_names)
    picked = model.get_normalized_expression(indices=[4, 2], return_numpy=True)
    assert isinstance(picked, np.ndarray) and picked.shape == (2, adata.n_vars)
    draws = model.get_normalized_expression(indices=[0, 1, 2], n_samples=3, return_mean=False)
    assert isinstance(draws, np.ndarray) and draws.shape == (3, 3, adata.n_vars)
    mean = model.get_normalized_expression(indices=[0, 1, 2], n_samples=3)
    assert isinstance(mean, pd.DataFrame) and mean.shape == (3, adata.n_vars)
    pooled = model.get_normalized_expression(indices=np.arange(10), n_samples_overall=25)
    assert isinstance(pooled, np.ndarray) and pooled.shape == (25, adata.n_vars)


def test_rows_sum_to_the_library_size(model):
    adata = model.adata
    np.testing.assert_allclose(model.get_normalized_expression().sum(1), 1.0, rtol=1e-5)
    scaled = model.get_normalized_expression(library_size=1e4, return_numpy=True)
    np.testing.assert_allclose(scaled.sum(1), 1e4, rtol=1e-5)
    observed = model.get_normalized_expression(library_size="latent", return_numpy=True)
    np.testing.assert_allclose(observed.sum(1), np.asarray(adata.X.sum(1)).ravel(), rtol=1e-5)
    with pytest.raises(ValueError, match="library_size"):
        model.get_normalized_expression(library_size=0)


def test_gene_list_subsets_in_var_order(model):
    genes = ["gene_7", "gene_2", "gene_40"]
    torch.manual_seed(1)
    full = model.get_normalized_expression(indices=range(20))
    torch.manual_seed(1)
    subset = model.get_normalized_expression(indices=range(20), gene_list=genes)
    assert list(subset.columns) == ["gene_2", "gene_7", "gene_40"]
    np.testing.assert_allclose(subset, full[subset.columns], rtol=1e-6)
    with pytest.raises(KeyError, match=r"not in adata\.var_names"):
        model.get_normalized_expression(gene_list=["gene_2", "no_such_gene"])


def _expression(model, transform_batch, indices=range(50)):
    torch.manual_seed(3)  # the same draws of δ for every call
    return model.get_normalized_expression(
        indices=indices, transform_batch=transform_batch, return_numpy=True
    )


def test_transform_batch_acts_through_the_batch_bias_only(model):
    lam = model.module.batch_bias.detach().cpu().numpy()
    a, b = _expression(model, "batch_0"), _expression(model, "batch_1")
    assert not np.allclose(a, b)
    # softmax(θβ + λ₀) / softmax(θβ + λ₁) = exp(λ₀ − λ₁) up to a per-cell constant
    shift = np.log(a) - np.log(b) - (lam[0] - lam[1])
    np.testing.assert_allclose(shift - shift.mean(1, keepdims=True), 0.0, atol=1e-4)
    # the integer code names the same batch; None decodes each cell with its own
    np.testing.assert_allclose(_expression(model, 1), b, rtol=1e-6)
    own = model.adata.obs["batch"].to_numpy()[:50] == "batch_0"
    np.testing.assert_allclose(_expression(model, None)[own], a[own], rtol=1e-6)
    # a list averages the batches' expression
    np.testing.assert_allclose(_expression(model, ["batch_0", "batch_1"]), (a + b) / 2, rtol=1e-5)
    with pytest.raises(ValueError, match="not a batch of the model"):
        _expression(model, "batch_9")


def test_transform_batch_is_a_no_op_without_the_batch_bias(no_bias_model):
    assert no_bias_model.module.batch_bias is None
    a = _expression(no_bias_model, "batch_0")
    np.testing.assert_array_equal(a, _expression(no_bias_model, "batch_1"))
    np.testing.assert_array_equal(a, _expression(no_bias_model, None))


def test_outputs_for_held_out_cells(model, split):
    held_out = split[1]
    before = held_out.obs.copy()
    expr = model.get_normalized_expression(held_out)
    assert expr.shape == held_out.shape and list(expr.index) == list(held_out.obs_names)
    elbo = model.get_elbo(held_out, return_mean=False)
    assert elbo.shape == (held_out.n_obs,) and np.isfinite(elbo).all()
    marginal = model.get_marginal_ll(held_out, n_mc_samples=50, return_mean=False)
    assert marginal.shape == (held_out.n_obs,) and np.isfinite(marginal).all()
    counts = model.posterior_predictive_sample(held_out, indices=[0, 5])
    assert counts.shape == (2, held_out.n_vars)
    # registering the held-out cells adds scvi-tools' batch column and nothing else
    assert set(held_out.obs.columns) - set(before.columns) <= {"_scvi_batch"}
    pd.testing.assert_frame_equal(held_out.obs[before.columns], before)


# -- ELBO, reconstruction error, marginal log-likelihood -------------------------------------


def test_elbo_and_reconstruction_error_shapes(model):
    elbo = model.get_elbo(return_mean=False)
    assert elbo.shape == (N_TRAIN,) and (elbo < 0).all()
    assert isinstance(model.get_elbo(), float)
    error = model.get_reconstruction_error(indices=range(30), return_mean=False)
    assert list(error) == ["reconstruction_loss"]
    assert error["reconstruction_loss"].shape == (30,) and (error["reconstruction_loss"] > 0).all()
    assert isinstance(model.get_reconstruction_error()["reconstruction_loss"], float)
    # −ELBO = reconstruction error + KL ≥ reconstruction error (one draw each: on average)
    assert -model.get_elbo() > model.get_reconstruction_error()["reconstruction_loss"] - 1.0


def test_marginal_ll_bounds_the_elbo(model):
    torch.manual_seed(0)
    elbo = model.get_elbo()
    marginal = model.get_marginal_ll(n_mc_samples=300)
    assert elbo < marginal < 0
    # one importance sample is the ELBO's estimator: the same in expectation
    single = model.get_marginal_ll(n_mc_samples=1)
    assert abs(single - elbo) < 0.01 * abs(elbo)
    # the estimate is the same whatever the split into passes
    torch.manual_seed(0)
    a = model.get_marginal_ll(indices=range(20), n_mc_samples=200, n_mc_samples_per_pass=200)
    torch.manual_seed(0)
    b = model.get_marginal_ll(indices=range(20), n_mc_samples=200, n_mc_samples_per_pass=7)
    assert abs(a - b) < 0.01 * abs(a)
    with pytest.raises(ValueError, match="n_mc_samples"):
        model.get_marginal_ll(n_mc_samples=0)


# -- differential expression and topic usage ------------------------------------------------


def test_differential_expression_finds_the_markers(model):
    adata = model.adata
    columns = set(adata.obs.columns)
    de = model.differential_expression(groupby="cell_type", group1="type_0")
    assert set(adata.obs.columns) == columns  # no helper column left behind
    assert de.shape[0] == adata.n_vars and (de["comparison"] == "type_0 vs Rest").all()
    up = de[de["lfc_mean"] > 0].head(10)
    markers = adata.var.loc[up.index, "marker_of"]
    assert (markers == "type_0").sum() >= 9, markers.to_dict()
    assert de["is_de_fdr_0.05"].any()
    by_mask = model.differential_expression(
        idx1=(adata.obs["cell_type"] == "type_0").to_numpy(), all_stats=False
    )
    assert by_mask.shape[0] == adata.n_vars and "raw_mean1" not in by_mask
    with pytest.raises(KeyError, match="groupby"):
        model.differential_expression(groupby="no_such_column")
    with pytest.raises(ValueError, match=r"not in adata\.obs"):
        model.differential_expression(groupby="cell_type", group1="type_9")


def test_differential_expression_with_batch_correction(model):
    de = model.differential_expression(
        groupby="cell_type", group1="type_1", batch_correction=True, n_samples_overall=400
    )
    markers = model.adata.var.loc[de[de["lfc_mean"] > 0].head(10).index, "marker_of"]
    assert (markers == "type_1").sum() >= 8


def test_differential_topic_usage_finds_the_type_topic(model):
    adata = model.adata
    usage = model.differential_topic_usage(groupby="cell_type")
    assert {"theta1", "theta2", "log2_fold_change", "lfc_mean", "proba_de"} <= set(usage)
    assert usage.index.name == "topic" and len(usage) == 4 * model.n_live_topics
    top = model.get_top_genes(10)
    for cell_type in ["type_0", "type_1", "type_2", "type_3"]:
        rows = usage[usage["comparison"] == f"{cell_type} vs Rest"]
        best = rows.iloc[0]
        assert best["proba_de"] > 0.9 and best["log2_fold_change"] > 2
        assert best["theta1"] > best["theta2"]
        # the topic most enriched in the type is a programme of its marker genes
        markers = adata.var.loc[top[best.name], "marker_of"]
        assert (markers == cell_type).sum() >= 5, (cell_type, best.name, markers.to_dict())
        assert best["top_genes"] == ", ".join(top[best.name])
    # theta1 is the mean topic mixture of the group
    theta = model.get_topic_proportions()
    first = usage[usage["comparison"] == "type_0 vs Rest"]
    in_group = (adata.obs["cell_type"] == "type_0").to_numpy()
    np.testing.assert_allclose(first["theta1"].sort_index(), theta[in_group].mean(0), atol=0.03)
    vanilla = model.differential_topic_usage(groupby="cell_type", group1="type_2", mode="vanilla")
    assert {"proba_m1", "bayes_factor"} <= set(vanilla) and len(vanilla) == model.n_live_topics


# -- posterior predictive ---------------------------------------------------------------------


def test_posterior_predictive_counts_sum_to_the_library_size(model):
    adata = model.adata
    library = np.asarray(adata.X.sum(1)).ravel()
    one = model.posterior_predictive_sample()
    assert isinstance(one, sparse.GCXS) and one.shape == adata.shape
    # (GCXS reductions compile with numba on first use: densify instead, it is fast)
    np.testing.assert_array_equal(one.todense().sum(1), library)
    three = model.posterior_predictive_sample(indices=[3, 8], n_samples=3)
    assert three.shape == (2, adata.n_vars, 3)
    dense = three.todense()
    np.testing.assert_array_equal(dense.sum(1), np.repeat(library[[3, 8], None], 3, axis=1))
    assert np.array_equal(dense, np.round(dense)) and (dense >= 0).all()
    subset = model.posterior_predictive_sample(indices=[0], gene_list=["gene_5", "gene_1"])
    assert subset.shape == (1, 2)
    with pytest.raises(TypeError, match="single transform_batch"):
        model.posterior_predictive_sample(transform_batch=["batch_0", "batch_1"])


def test_posterior_predictive_follows_the_decoder(model):
    # the mean of many draws is the library size times the decoded expression
    torch.manual_seed(0)
    draws = model.posterior_predictive_sample(indices=[0, 1], n_samples=400).todense()
    expected = model.get_normalized_expression(
        indices=[0, 1], library_size="latent", n_samples=400, return_numpy=True
    )
    mean = draws.mean(-1)
    big = expected > 5
    np.testing.assert_allclose(mean[big], expected[big], rtol=0.15)


# -- row access -------------------------------------------------------------------------------


def test_outputs_for_a_few_cells_densify_only_their_rows(model, monkeypatch):
    shapes = []
    original = sp.csr_matrix.toarray

    def recording(self, *args, **kwargs):
        shapes.append(self.shape)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(sp.csr_matrix, "toarray", recording)
    model.get_latent_representation(indices=[3])
    model.get_normalized_expression(indices=[3, 7])
    model.get_elbo(indices=[3])
    assert shapes and max(rows for rows, _ in shapes) <= 2, shapes
    assert source_from_manager(model.adata_manager, preload=False).x.is_sparse


def test_outputs_in_corrected_mode(sim_adata):
    """The encoder reads the corrected layer; the decoder's λ still makes transform_batch act."""
    adata = sim_adata[::3].copy()  # both batches (the cells are sorted by batch)
    x = adata.X.toarray()
    adata.layers["corrected"] = np.log1p(x / x.sum(1, keepdims=True) * 1e4).astype(np.float32)
    BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch", corrected_layer="corrected")
    model = BatchCorrectedSCETM(adata, n_topics=4, n_emb=8)
    model.train(max_epochs=3, **FAST)
    a, b = _expression(model, "batch_0", range(20)), _expression(model, "batch_1", range(20))
    lam = model.module.batch_bias.detach().cpu().numpy()
    shift = np.log(a) - np.log(b) - (lam[0] - lam[1])
    np.testing.assert_allclose(shift - shift.mean(1, keepdims=True), 0.0, atol=1e-4)
    assert np.isfinite(model.get_elbo()) and model.get_marginal_ll(n_mc_samples=20) < 0
    usage = model.differential_topic_usage(groupby="cell_type", group1="type_0")
    assert len(usage) == 4
