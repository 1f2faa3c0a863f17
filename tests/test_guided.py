"""Guided topics (``gene_sets=``): the prior, the names, pruning, save/load, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scvi
import torch

from scetm_mnn import tl
from scetm_mnn.model import BatchCorrectedSCETM
from scetm_mnn.model._pruning import topic_map
from scetm_mnn.module import ETMModule


def _programme(adata, cell_type: str) -> list[str]:
    marker_of = adata.var["marker_of"].astype(str)
    return list(marker_of.index[marker_of == cell_type])


def _registered(sim_adata):
    adata = sim_adata.copy()
    BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch")
    return adata


@pytest.fixture(scope="module")
def guided_model(sim_adata):
    """12 topics (as ``sim_topic_model``), topic 0 guided by type_0's programme, 40 epochs."""
    adata = _registered(sim_adata)
    scvi.settings.seed = 0
    sets = {"programme_0": _programme(adata, "type_0")}
    model = BatchCorrectedSCETM(adata, n_topics=12, n_emb=16, gene_sets=sets)
    model.train(max_epochs=40, seed=0, enable_progress_bar=False)
    return model


def _ratio(model, cell_type: str, topic: str) -> float:
    theta = model.get_topic_proportions()
    column = model.topic_names.index(topic)
    is_type = (model.adata.obs["cell_type"].astype(str) == cell_type).to_numpy()
    return theta[is_type, column].mean() / theta[~is_type, column].mean()


def test_the_guided_topic_takes_its_sets_cells_and_name(guided_model):
    assert guided_model.topic_names[0] == "programme_0"
    assert guided_model.gene_set_names_ == ["programme_0"]
    assert _ratio(guided_model, "type_0", "programme_0") >= 10
    top = guided_model.get_top_genes(10)["programme_0"]
    assert set(top) <= set(_programme(guided_model.adata, "type_0"))
    assert "1 guided by gene sets" in guided_model._model_summary_string
    # the annotation names it by its own set
    table = tl.annotate_topics(guided_model, {"type_0": _programme(guided_model.adata, "type_0")})
    assert tl.topic_labels(table)["programme_0"].startswith("programme_0 · type_0 (FDR")


def test_the_prior_is_an_offset_on_the_guided_logits_only(guided_model):
    module = guided_model.module
    free = (module.alpha @ module.gene_embeddings).detach()
    beta = module.topic_gene_logits().detach()
    genes = list(guided_model.adata.var_names)
    params = guided_model.init_params_["non_kwargs"]
    members = [genes.index(g) for g in params["gene_sets"]["programme_0"]]
    offset = beta[0] - free[0]
    assert torch.allclose(offset[members], torch.tensor(params["gene_set_strength"]))
    assert offset.abs().sum() == pytest.approx(offset[members].sum().item())
    assert torch.equal(beta[1:], free[1:])
    assert module.n_guided == 1


def test_guided_models_save_and_load_without_the_gmt(guided_model, tmp_path):
    path = tmp_path / "sets.gmt"
    tl.write_gmt({"programme_0": _programme(guided_model.adata, "type_0")}, path)
    adata = guided_model.adata
    model = BatchCorrectedSCETM(adata, n_topics=6, n_emb=8, gene_sets=path)
    assert isinstance(
        model.init_params_["non_kwargs"]["gene_sets"], dict
    )  # the sets, not the path
    path.unlink()
    guided_model.save(tmp_path / "model", overwrite=True)
    loaded = BatchCorrectedSCETM.load(tmp_path / "model", adata=adata)
    assert loaded.topic_names == guided_model.topic_names
    assert torch.equal(loaded.module.topic_prior, guided_model.module.topic_prior)
    np.testing.assert_allclose(
        loaded.get_topic_proportions(), guided_model.get_topic_proportions(), atol=1e-6
    )


def test_an_unguided_module_has_no_prior_in_its_state():
    module = ETMModule(n_input=20, n_topics=4, n_emb=8)
    assert "topic_prior" not in module.state_dict() and module.n_guided == 0  # old files load
    guided = ETMModule(n_input=20, n_topics=4, n_emb=8, topic_prior=np.ones((1, 20)))
    assert "topic_prior" in guided.state_dict()
    with pytest.raises(ValueError, match=r"topic_prior must have shape \(n_guided < 4, 20\)"):
        ETMModule(n_input=20, n_topics=4, n_emb=8, topic_prior=np.ones((4, 20)))


def test_pruning_keeps_guided_topics_and_folds_their_copies():
    theta = np.array([[0.0, 0.7, 0.3, 0.0], [0.0, 0.6, 0.4, 0.0]])  # topic 0 unused
    beta = np.array([[3.0, 2, 0, 0], [0, 0, 3.0, 2], [3.0, 2, 0, 0], [0, 3.0, 2, 0]])
    assert topic_map(theta, beta, n_top=2).tolist() == [-1, 1, 2, -1]  # unguided: 0 dead
    guided = topic_map(theta, beta, n_top=2, n_guided=1)
    assert guided.tolist() == [0, 1, 0, -1]  # 0 kept though unused; 2 copies it


def test_unused_guided_topics_stay_exposed(sim_adata):
    adata = _registered(sim_adata)
    # genes of no programme: the set matches no cell type, but its topic is still shown
    background = adata.var_names[adata.var["marker_of"].astype(str) == ""][:10].tolist()
    model = BatchCorrectedSCETM(adata, n_topics=6, n_emb=8, gene_sets={"other": background})
    model.train(max_epochs=3, seed=0, enable_progress_bar=False)
    assert model.topic_names[0] == "other"
    assert model.get_topic_proportions().shape[1] == model.n_live_topics


def test_bad_gene_sets_are_refused_with_the_fix(sim_adata):
    adata = _registered(sim_adata)
    genes = list(adata.var_names[:5])
    with pytest.raises(ValueError, match=r"leave at least one free topic \(n_topics > 2\)"):
        BatchCorrectedSCETM(adata, n_topics=2, gene_sets={"a": genes, "b": genes})
    with pytest.raises(ValueError, match="'topic_3' is named like a free topic"):
        BatchCorrectedSCETM(adata, n_topics=6, gene_sets={"topic_3": genes})
    with pytest.raises(ValueError, match="gene_set_strength must be a positive number"):
        BatchCorrectedSCETM(adata, n_topics=6, gene_sets={"a": genes}, gene_set_strength=0)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="genes of the model"):
        BatchCorrectedSCETM(adata, n_topics=6, gene_sets={"a": ["NOPE"]})
    with pytest.raises(TypeError, match="is a string"):
        BatchCorrectedSCETM(adata, n_topics=6, gene_sets={"a": "INS"})
    with pytest.raises(FileNotFoundError, match="No GMT file"):
        BatchCorrectedSCETM(adata, n_topics=6, gene_sets="missing.gmt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = BatchCorrectedSCETM(adata, n_topics=6, gene_sets={"a": [*genes, "NOPE"]})
    assert [w.filename for w in caught if "not among" in str(w.message)] == [__file__]
    assert model.init_params_["non_kwargs"]["gene_sets"] == {"a": genes}


def test_stability_refuses_models_guided_by_other_sets(guided_model, sim_topic_model):
    with pytest.raises(ValueError, match="Run 1 is guided by other gene sets than run 0"):
        tl.topic_stability([guided_model, sim_topic_model])
    same = tl.topic_stability([guided_model, guided_model])
    assert same.table.loc["programme_0", "reproducibility"] == pytest.approx(1.0)


def test_a_query_model_keeps_the_guided_topics(guided_model, sim_adata):
    query = sim_adata[sim_adata.obs["batch"] == sim_adata.obs["batch"].cat.categories[0]].copy()
    query.obs["batch"] = "new_donor"
    query = BatchCorrectedSCETM.prepare_query_anndata(query, guided_model)
    model = BatchCorrectedSCETM.load_query_data(query, guided_model)
    assert model.topic_names == guided_model.topic_names
    assert torch.equal(model.module.topic_prior, guided_model.module.topic_prior)
    assert not model.module.alpha.requires_grad  # the guided topics stay the reference's
