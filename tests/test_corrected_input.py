"""What the encoder reads in corrected mode: ``setup_anndata(corrected_input=...)``."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scanpy as sc

from scetm_mnn._rows import Rows
from scetm_mnn.model import BatchCorrectedSCETM
from scetm_mnn.train import source_from_manager

KEY = "mnn_corrected"
N_LATENT = 7
FAST = {"enable_progress_bar": False}


def _corrected(adata, latent: bool = True):
    """A log-scale corrected layer and, optionally, a corrector latent beside it."""
    adata = adata.copy()
    x = adata.X.toarray()
    adata.layers[KEY] = np.log1p(x / x.sum(1, keepdims=True) * 1e4).astype(np.float32)
    if latent:
        adata.obsm[f"X_{KEY}"] = sc.pp.pca(adata.layers[KEY], n_comps=N_LATENT, random_state=0)
    return adata


def _model(adata, **setup) -> BatchCorrectedSCETM:
    BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch", corrected_layer=KEY, **setup)
    return BatchCorrectedSCETM(adata, n_topics=4, n_emb=8)


def test_auto_reads_the_correctors_latent_where_it_exists(sim_adata, caplog):
    with caplog.at_level(logging.INFO, logger="scetm_mnn.model._scetm"):
        model = _model(_corrected(sim_adata))
    assert model.adata_manager.registry["setup_args"]["corrected_input"] == "latent"
    assert "reads the corrected latent" in caplog.text
    assert model.module.n_encoder_input == N_LATENT
    assert model.module.log_sigma.in_features == N_LATENT  # a linear encoder of the latent
    assert model.module.rho.shape[1] == sim_adata.n_vars  # the decoder keeps every gene
    assert "encoder on corrected latent" in model._model_summary_string


def test_auto_reads_the_expression_without_a_latent(sim_adata):
    model = _model(_corrected(sim_adata, latent=False))
    assert model.adata_manager.registry["setup_args"]["corrected_input"] == "expression"
    assert model.module.encoder[0].in_features == sim_adata.n_vars


def test_explicit_expression_ignores_the_latent(sim_adata):
    model = _model(_corrected(sim_adata), corrected_input="expression")
    assert model.module.encoder[0].in_features == sim_adata.n_vars


def test_bad_corrected_input_is_refused(sim_adata):
    with pytest.raises(ValueError, match="corrected_input must be 'auto' or one of"):
        _model(_corrected(sim_adata), corrected_input="pca")
    with pytest.raises(KeyError, match=r"obsm\['X_mnn_corrected'\].*corrected_input='expression'"):
        _model(_corrected(sim_adata, latent=False), corrected_input="latent")
    bad = _corrected(sim_adata)
    bad.obsm[f"X_{KEY}"][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        _model(bad, corrected_input="latent")


def test_the_encoder_reads_the_latent_and_a_save_load_round_trip_keeps_it(
    sim_adata, tmp_path, monkeypatch
):
    adata = _corrected(sim_adata)
    model = _model(adata)
    model.train(max_epochs=2, batch_size=300, **FAST)
    z = model.get_latent_representation()
    # The latent is the input: permuting it permutes the embedding, the layer is not read.
    other = adata.copy()
    other.obsm[f"X_{KEY}"] = other.obsm[f"X_{KEY}"][::-1].copy()
    np.testing.assert_allclose(model.get_latent_representation(other), z[::-1], atol=1e-5)
    other = adata.copy()
    other.layers[KEY] = other.layers[KEY][::-1].copy()
    np.testing.assert_array_equal(model.get_latent_representation(other), z)
    # Nor are the counts: encoding every cell reads no row of them.
    read, take = [], Rows.take

    def recording_take(self, *args, **kwargs):
        read.append(self.shape)
        return take(self, *args, **kwargs)

    monkeypatch.setattr(Rows, "take", recording_take)
    np.testing.assert_array_equal(model.get_latent_representation(), z)
    model.get_topic_proportions()
    assert read and all(shape == (adata.n_obs, N_LATENT) for shape in read)
    monkeypatch.undo()
    assert source_from_manager(model.adata_manager, encoder_only=True).x is None
    model.save(tmp_path / "m")
    loaded = BatchCorrectedSCETM.load(tmp_path / "m", adata=adata.copy())
    assert loaded.adata_manager.registry["setup_args"]["corrected_input"] == "latent"
    np.testing.assert_array_equal(loaded.get_latent_representation(), z)


def test_a_model_saved_before_the_option_loads_as_expression(sim_adata, tmp_path):
    """Registries written before ``corrected_input`` existed read the expression."""
    adata = _corrected(sim_adata)
    model = _model(adata.copy(), corrected_input="expression")
    model.train(max_epochs=1, batch_size=300, **FAST)
    z = model.get_latent_representation()
    model.save(tmp_path / "m")
    registry = model.adata_manager.registry
    del registry["setup_args"]["corrected_input"]
    model.save(tmp_path / "old", overwrite=True)
    loaded = BatchCorrectedSCETM.load(tmp_path / "old", adata=adata.copy())
    assert loaded.module.encoder[0].in_features == sim_adata.n_vars
    np.testing.assert_allclose(loaded.get_latent_representation(), z, atol=1e-6)


def test_a_query_needs_the_latent_the_reference_reads(sim_adata):
    adata = _corrected(sim_adata)
    batch0 = (adata.obs["batch"] == "batch_0").to_numpy()
    reference, query = adata[batch0].copy(), adata[~batch0].copy()
    model = _model(reference)
    model.train(max_epochs=1, batch_size=300, **FAST)
    lacking = query.copy()
    del lacking.obsm[f"X_{KEY}"]
    with pytest.raises(KeyError, match=r"latent obsm\['X_mnn_corrected'\].*transform\(query\)"):
        BatchCorrectedSCETM.load_query_data(lacking, model)
    query_model = BatchCorrectedSCETM.load_query_data(query, model)
    query_model.train(max_epochs=1, **FAST)
    assert query_model.module.log_sigma.in_features == N_LATENT
    assert query_model.get_latent_representation().shape == (query.n_obs, 4)


def test_the_linear_path_to_delta_is_on_where_the_encoder_reads_the_latent(sim_adata):
    assert _model(_corrected(sim_adata)).module.encoder_skip  # reads the latent
    assert not _model(_corrected(sim_adata, latent=False)).module.encoder_skip
    plain = sim_adata.copy()
    BatchCorrectedSCETM.setup_anndata(plain, batch_key="batch")
    assert not BatchCorrectedSCETM(plain, n_topics=4, n_emb=8).module.encoder_skip
    adata = _corrected(sim_adata)
    BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch", corrected_layer=KEY)
    off = BatchCorrectedSCETM(adata, n_topics=4, n_emb=8, encoder_skip=False)
    assert not off.module.encoder_skip and off.module.mu.in_features == 128
    linear = BatchCorrectedSCETM(adata, n_topics=4, n_emb=8).module  # no hidden layer
    assert len(linear.encoder) == 0 and linear.mu.in_features == N_LATENT
    both = BatchCorrectedSCETM(adata, n_topics=4, n_emb=8, hidden_sizes=(128,)).module
    assert both.mu.in_features == 128 + N_LATENT and both.mu_skip is None


def test_the_linear_encoder_is_conformal_where_the_topics_can_hold_the_latent(sim_adata, caplog):
    adata = _corrected(sim_adata)
    BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch", corrected_layer=KEY)
    conformal = BatchCorrectedSCETM(adata, n_topics=N_LATENT, n_emb=8).module
    assert conformal.conformal_encoder and conformal.mu is None
    with caplog.at_level(logging.INFO, logger="scetm_mnn.model._encoder"):
        plain = BatchCorrectedSCETM(adata, n_topics=N_LATENT - 1, n_emb=8).module
    assert not plain.conformal_encoder
    assert f"{N_LATENT - 1} topics cannot keep the distances" in caplog.text
    with pytest.raises(ValueError, match=f"use at least {N_LATENT} topics"):
        BatchCorrectedSCETM(adata, n_topics=N_LATENT - 1, n_emb=8, conformal_encoder=True)
    counts = sim_adata.copy()
    BatchCorrectedSCETM.setup_anndata(counts, batch_key="batch")
    original = BatchCorrectedSCETM(counts, n_topics=N_LATENT, n_emb=8).module
    assert not original.conformal_encoder and original.encoder[0].out_features == 128


def test_the_mnn_term_is_off_by_default_under_the_conformal_encoder(caplog):
    from scetm_mnn.model._training import DEFAULT_MNN_WEIGHT, resolve_mnn_weight

    registered = {"mnn_pairs_key": "mnn_corrected_pairs"}
    assert resolve_mnn_weight(None, None, registered) == DEFAULT_MNN_WEIGHT
    with caplog.at_level(logging.INFO, logger="scetm_mnn.model._training"):
        assert resolve_mnn_weight(None, None, registered, constant=True) == 0.0
    assert "the term is constant" in caplog.text
    assert resolve_mnn_weight(2.0, None, registered, constant=True) == 2.0  # asked for
    assert resolve_mnn_weight(None, None, {}, constant=True) == 0.0


def test_a_conformal_model_saves_and_loads_to_the_same_latent(sim_adata, tmp_path):
    adata = _corrected(sim_adata)
    BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch", corrected_layer=KEY)
    model = BatchCorrectedSCETM(adata, n_topics=N_LATENT, n_emb=8)
    model.train(max_epochs=2, **FAST)
    model.save(tmp_path / "model")
    loaded = BatchCorrectedSCETM.load(tmp_path / "model", adata=adata)
    assert loaded.module.keeps_latent_geometry
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), model.get_latent_representation()
    )
