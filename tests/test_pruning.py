"""Topic pruning: which topics a trained model exposes, and that every output agrees."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from scetm_mnn.datasets import simulate
from scetm_mnn.model import BatchCorrectedSCETM
from scetm_mnn.model._pruning import topic_map

FAST = {"enable_progress_bar": False, "batch_size": 200}


def _setup(adata):
    BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch")
    return adata


@pytest.fixture(scope="module")
def trained():
    adata = _setup(simulate(n_cells=600, n_genes=200, n_cell_types=4, random_state=0))
    model = BatchCorrectedSCETM(adata, n_topics=16, n_emb=16)
    model.train(max_epochs=40, seed=0, **FAST)
    return model


def test_topic_map_drops_unused_and_folds_copies():
    theta = np.array([[0.5, 0.3, 0.2, 0.0], [0.4, 0.4, 0.2, 0.0]])
    beta = np.array([[5.0, 4, 3, 0, 0], [5.0, 4, 3, 0, 0], [0, 0, 5.0, 4, 3], [0, 5.0, 4, 3, 0]])
    assert topic_map(theta, beta, n_top=3).tolist() == [0, 0, 2, -1]
    # the more used of two copies is the one kept, whatever its index
    swapped = theta[:, [1, 0, 2, 3]]
    assert topic_map(swapped, beta, n_top=3).tolist() == [1, 1, 2, -1]
    # nothing pruned: every topic exposes itself
    assert topic_map(theta, beta, min_usage=0.0, max_overlap=1.0).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="max_overlap"):
        topic_map(theta, beta, max_overlap=1.5)


def test_every_output_carries_the_exposed_topics(trained):
    model = trained
    n = model.n_live_topics
    assert 2 <= n < 16
    names = model.topic_names
    assert names == [f"topic_{k}" for k in model.exposed_topics]
    theta = model.get_topic_proportions()
    assert theta.shape == (600, n)
    np.testing.assert_allclose(theta.sum(axis=1), 1.0, rtol=1e-5)
    assert list(model.get_topic_gene_matrix().index) == names
    assert list(model.get_top_genes(5).columns) == names
    assert list(model.get_topic_embeddings().index) == names
    usage = model.differential_topic_usage(groupby="cell_type", group1="type_0")
    assert sorted(usage.index) == sorted(names)
    # the embedding keeps all K coordinates of δ
    assert model.get_latent_representation().shape == (600, 16)


def test_prune_topics_reports_and_re_decides(trained, caplog):
    model = trained
    before = model.topic_names
    with caplog.at_level(logging.INFO, logger="scetm_mnn.model._pruning"):
        table = model.prune_topics(min_usage=0.0, max_overlap=1.0)
    assert "16 of 16 topics exposed" in caplog.text
    assert set(table["status"]) == {"live"} and model.n_live_topics == 16
    table = model.prune_topics()  # back to the defaults
    assert model.topic_names == before
    assert (table["status"] == "live").sum() == len(before)
    assert set(table["status"]) <= {"live", "dead", "copy"}
    copies = table[table["status"] == "copy"]
    assert set(copies["exposed_as"]) <= set(before)


def test_save_load_and_query_keep_the_exposed_topics(trained, tmp_path):
    model = trained
    model.save(tmp_path / "m", overwrite=True)
    loaded = BatchCorrectedSCETM.load(tmp_path / "m", adata=model.adata)
    assert loaded.topic_names == model.topic_names
    np.testing.assert_allclose(
        loaded.get_topic_proportions(), model.get_topic_proportions(), rtol=1e-5
    )
    query = simulate(n_cells=100, n_genes=200, n_cell_types=4, random_state=1)
    query.obs["batch"] = "new_" + query.obs["batch"].astype(str)
    BatchCorrectedSCETM.prepare_query_anndata(query, model)
    mapped = BatchCorrectedSCETM.load_query_data(query, model)
    mapped.train(max_epochs=2, **FAST)
    assert mapped.topic_names == model.topic_names


def test_a_model_saved_without_a_topic_map_exposes_every_topic(trained):
    model = trained
    saved_map = model.topic_map_
    try:
        model.topic_map_ = None  # as a model saved before pruning existed
        assert model.n_live_topics == 16
        assert model.get_topic_proportions().shape[1] == 16
    finally:
        model.topic_map_ = saved_map


def test_one_cell_type_trains_and_says_what_it_pruned(caplog):
    adata = _setup(simulate(n_cells=300, n_genes=100, n_cell_types=1, random_state=0))
    model = BatchCorrectedSCETM(adata, n_topics=10, n_emb=8)
    with caplog.at_level(logging.INFO, logger="scetm_mnn.model._pruning"):
        model.train(max_epochs=20, seed=0, **FAST)
    assert model.is_trained_
    assert "of 10 topics exposed" in caplog.text
    assert 1 <= model.n_live_topics <= 10
    assert model.get_topic_proportions().shape == (300, model.n_live_topics)


@pytest.mark.parametrize("n_topics", [1, 0, -3, 101])
def test_n_topics_out_of_range_is_refused(n_topics):
    adata = _setup(simulate(n_cells=100, n_genes=100, random_state=0))
    with pytest.raises(ValueError, match=r"n_topics=.* out of range.*100 genes"):
        BatchCorrectedSCETM(adata, n_topics=n_topics)


def test_n_topics_must_be_an_integer():
    adata = _setup(simulate(n_cells=100, n_genes=100, random_state=0))
    with pytest.raises(TypeError, match="n_topics must be an integer"):
        BatchCorrectedSCETM(adata, n_topics=5.5)
