"""Query mapping: gene alignment, model surgery of λ, frozen reference weights."""

from __future__ import annotations

import logging
import warnings

import anndata as ad
import numpy as np
import pytest
import torch
from scipy import sparse

from scetm_mnn.datasets import simulate
from scetm_mnn.model import BatchCorrectedSCETM, freeze_reference
from scetm_mnn.tl import transfer_labels

QUERY_BATCH = "batch_2"
NOVEL_TYPE = "type_4"


@pytest.fixture(scope="module")
def split():
    """Reference: batches 0 and 1 without type_4; query: batch 2, all five types."""
    adata = simulate(n_cells=900, n_genes=200, n_batches=3, n_cell_types=5, random_state=0)
    in_query = (adata.obs["batch"] == QUERY_BATCH).to_numpy()
    novel = (adata.obs["cell_type"] == NOVEL_TYPE).to_numpy()
    return adata[~in_query & ~novel].copy(), adata[in_query].copy()


@pytest.fixture(scope="module")
def reference_model(split):
    reference = split[0].copy()
    BatchCorrectedSCETM.setup_anndata(reference, batch_key="batch")
    model = BatchCorrectedSCETM(reference, n_topics=8, n_emb=32)
    # 160 epochs (two steps of 256 cells each), then 80 for the query: at 80 and 40 the
    # label transfer of seeds 0-7 ranged 0.52-0.97 on the seen types and 0-1 on the novel
    # one, so whether a seed passed was chance; at 160 and 80 every seed reached >= 0.90
    # and >= 0.78.
    model.train(max_epochs=160, enable_progress_bar=False, seed=0)
    return model


@pytest.fixture(scope="module")
def mapped(split, reference_model):
    """The query model after query training, and the reference's state before it."""
    before = {k: v.clone() for k, v in reference_model.module.state_dict().items()}
    query = BatchCorrectedSCETM.prepare_query_anndata(split[1], reference_model)
    model = BatchCorrectedSCETM.load_query_data(query, reference_model)
    start = model.module.batch_bias.detach().clone()
    model.train(max_epochs=80, enable_progress_bar=False, seed=0)
    return model, before, start


def query_copy(split):
    return split[1].copy()


# ------------------------------------------------------------------ gene alignment
def test_prepare_reorders_and_drops_extra_genes(split, reference_model):
    query = query_copy(split)
    genes = list(reference_model.adata.var_names)
    shuffled = query[:, np.random.default_rng(0).permutation(query.n_vars)].copy()
    extra = sparse.csr_matrix(np.ones((shuffled.n_obs, 5), dtype=np.float32))
    wide = ad.AnnData(
        sparse.hstack([extra[:, :2], shuffled.X, extra[:, 2:]], format="csr"),
        obs=shuffled.obs.copy(),
    )
    wide.var_names = ["extra_0", "extra_1", *shuffled.var_names, "extra_2", "extra_3", "extra_4"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is missing: no warning
        aligned = BatchCorrectedSCETM.prepare_query_anndata(wide, reference_model)
    assert list(aligned.var_names) == genes
    np.testing.assert_array_equal(aligned.X.toarray(), query.X.toarray())
    assert wide.n_vars == len(genes) + 5  # the caller's data is not changed


def test_prepare_fills_missing_genes_with_zeros(split, reference_model):
    query = query_copy(split)
    genes = reference_model.adata.var_names
    query.layers["counts"] = query.X.copy()
    partial = query[:, genes[10:]].copy()
    with pytest.warns(UserWarning, match="lacks 10 of the 200 reference genes"):
        aligned = BatchCorrectedSCETM.prepare_query_anndata(partial, reference_model)
    assert list(aligned.var_names) == list(genes)
    assert aligned.X[:, :10].sum() == 0 and aligned.layers["counts"][:, :10].sum() == 0
    np.testing.assert_array_equal(aligned.X[:, 10:].toarray(), query.X[:, 10:].toarray())
    assert partial.n_vars == 190


def test_prepare_refuses_too_many_missing_genes(split, reference_model):
    query = query_copy(split)
    half = query[:, reference_model.adata.var_names[:100]].copy()
    with pytest.raises(ValueError, match=r"lacks 100 of the reference's 200 genes \(50%\)"):
        BatchCorrectedSCETM.prepare_query_anndata(half, reference_model)
    with pytest.warns(UserWarning, match="lacks 100"):
        aligned = BatchCorrectedSCETM.prepare_query_anndata(half, reference_model, max_missing=0.6)
    assert aligned.n_vars == 200


def test_prepare_refuses_duplicate_genes(split, reference_model):
    query = query_copy(split)
    query.var_names = ["gene_0", *query.var_names[1:-1], "gene_0"]
    with pytest.raises(ValueError, match="duplicate gene names"):
        BatchCorrectedSCETM.prepare_query_anndata(query, reference_model)


def test_load_query_data_needs_aligned_genes(split, reference_model):
    query = query_copy(split)[:, 5:].copy()
    with pytest.raises(ValueError, match="prepare_query_anndata"):
        BatchCorrectedSCETM.load_query_data(query, reference_model)


# ------------------------------------------------------------------ surgery and freezing
def test_query_model_extends_lambda_and_freezes_the_rest(split, reference_model):
    query = query_copy(split)
    model = BatchCorrectedSCETM.load_query_data(query, reference_model)
    bias = model.module.batch_bias.detach()
    reference_bias = reference_model.module.batch_bias.detach()
    assert bias.shape == (3, 200)
    torch.testing.assert_close(bias[:2], reference_bias)
    torch.testing.assert_close(bias[2], reference_bias.mean(dim=0))
    trainable = [n for n, p in model.module.named_parameters() if p.requires_grad]
    assert trainable == ["batch_bias"]
    assert not model.is_trained
    unfrozen = BatchCorrectedSCETM.load_query_data(
        query_copy(split), reference_model, freeze=False
    )
    assert all(p.requires_grad for p in unfrozen.module.parameters())


def test_reference_weights_unchanged_after_query_training(mapped, reference_model):
    model, before, start = mapped
    after = model.module.state_dict()
    for key, value in before.items():
        if key == "batch_bias":
            torch.testing.assert_close(after[key][:2], value, rtol=0, atol=0)
        elif key.endswith("num_batches_tracked"):
            continue  # a step counter, not a weight
        else:
            torch.testing.assert_close(after[key], value, rtol=0, atol=0, msg=key)
    # β is the reference's, and the reference model itself did not move.
    np.testing.assert_array_equal(
        model.get_topic_gene_matrix().to_numpy(),
        reference_model.get_topic_gene_matrix().to_numpy(),
    )
    for key, value in reference_model.module.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    # The new row trained, and the query's ELBO is that of a fitted λ.
    assert (after["batch_bias"][2] - start[2]).abs().max() > 1e-3
    assert model.is_trained


def test_new_lambda_row_fits_the_query(split, reference_model, mapped):
    model = mapped[0]
    query = model.adata
    untrained = BatchCorrectedSCETM.load_query_data(query_copy(split), reference_model)
    untrained.is_trained_ = True  # evaluate the starting λ row
    assert model.get_elbo(query) > untrained.get_elbo() + 1.0


def test_mapped_query_transfers_labels(split, reference_model, mapped):
    model, _, _ = mapped
    reference, query = split[0].copy(), model.adata.copy()
    reference.obsm["X_scetm_mnn"] = reference_model.get_latent_representation()
    query.obsm["X_scetm_mnn"] = model.get_latent_representation()
    transfer_labels(reference, query, "cell_type", "X_scetm_mnn", batch_key="batch")
    predicted = query.obs["cell_type_predicted"].astype(str)
    truth = query.obs["cell_type"].astype(str)
    seen = (truth != NOVEL_TYPE).to_numpy()
    assert (predicted == truth)[seen].mean() >= 0.9
    assert (predicted == "Unknown")[~seen].mean() >= 0.6


def test_reference_from_a_saved_folder(split, reference_model, tmp_path):
    reference_model.save(str(tmp_path / "ref"))
    query = BatchCorrectedSCETM.prepare_query_anndata(split[1], str(tmp_path / "ref"))
    from_folder = BatchCorrectedSCETM.load_query_data(query, str(tmp_path / "ref"))
    from_model = BatchCorrectedSCETM.load_query_data(query_copy(split), reference_model)
    for key, value in from_model.module.state_dict().items():
        torch.testing.assert_close(from_folder.module.state_dict()[key], value)


def test_reference_must_be_a_model(split):
    with pytest.raises(TypeError, match="trained BatchCorrectedSCETM or the folder"):
        BatchCorrectedSCETM.load_query_data(query_copy(split), reference=42)


# ------------------------------------------------------------------ shared batch names
def test_shared_batch_names_reuse_the_reference_row(split, reference_model, caplog):
    query = query_copy(split)
    query.obs["batch"] = query.obs["batch"].astype(str)
    query.obs.iloc[:30, query.obs.columns.get_loc("batch")] = "batch_0"
    with caplog.at_level(logging.WARNING, logger="scetm_mnn.model._query"):
        model = BatchCorrectedSCETM.load_query_data(query, reference_model)
    assert "['batch_0'] are batches of the reference too" in caplog.text
    mapping = list(model.adata_manager.get_state_registry("batch").categorical_mapping)
    assert mapping == ["batch_0", "batch_1", QUERY_BATCH]
    codes = model.adata_manager.get_from_registry("batch").ravel()
    assert set(codes[:30]) == {0} and set(codes[30:]) == {2}


def test_shared_batch_names_can_be_refused(split, reference_model):
    query = query_copy(split)
    query.obs["batch"] = "batch_1"
    with pytest.raises(ValueError, match=r"\['batch_1'\] are also batches of the reference"):
        BatchCorrectedSCETM.load_query_data(query, reference_model, shared_batches="raise")


def test_only_shared_batches_leave_nothing_to_train(split, reference_model, caplog):
    query = query_copy(split)
    query.obs["batch"] = "batch_1"
    model = BatchCorrectedSCETM.load_query_data(query, reference_model)
    assert not any(p.requires_grad for p in model.module.parameters())
    with caplog.at_level(logging.WARNING, logger="scetm_mnn.model._scetm"):
        model.train(enable_progress_bar=False)
    assert "Nothing to train" in caplog.text
    np.testing.assert_allclose(
        model.get_latent_representation(),
        reference_model.get_latent_representation(model.adata),
        rtol=1e-5,
        atol=1e-6,
    )


# ------------------------------------------------------------------ corrected mode
def test_corrected_reference_needs_the_query_layer(split):
    reference = split[0].copy()
    reference.layers["fake_corrected"] = np.log1p(reference.X.toarray())
    BatchCorrectedSCETM.setup_anndata(
        reference, batch_key="batch", corrected_layer="fake_corrected"
    )
    model = BatchCorrectedSCETM(reference, n_topics=4, n_emb=8)
    model.train(max_epochs=2, enable_progress_bar=False)
    query = query_copy(split)
    with pytest.raises(KeyError, match=r"corrector.transform\(query\)"):
        BatchCorrectedSCETM.load_query_data(query, model)
    query.layers["fake_corrected"] = np.log1p(query.X.toarray())
    query_model = BatchCorrectedSCETM.load_query_data(query, model)
    query_model.train(max_epochs=2, enable_progress_bar=False)
    # The encoder reads the layer: changing it changes the latent representation.
    latent = query_model.get_latent_representation()
    query.layers["fake_corrected"] = query.layers["fake_corrected"] * 0.5
    assert not np.allclose(query_model.get_latent_representation(query), latent)


def test_freeze_reference_without_new_rows():
    from scetm_mnn.module import ETMModule

    module = ETMModule(n_input=5, n_batch=2, n_topics=2, n_emb=3, batch_bias=True)
    freeze_reference(module, n_reference_batches=2)
    assert not any(p.requires_grad for p in module.parameters())
