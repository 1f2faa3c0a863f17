"""Ranking a topic's genes by relevance (Sievert & Shirley 2014), and the model's top genes."""

from __future__ import annotations

import numpy as np
import pytest

from scetm_mnn.datasets import simulate
from scetm_mnn.model import BatchCorrectedSCETM
from scetm_mnn.model._relevance import RELEVANCE_WEIGHT, topic_relevance

RNG = np.random.default_rng(0)
BETA = RNG.normal(size=(5, 40))
USAGE = RNG.dirichlet(np.ones(5))


def _order(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-scores, axis=1, kind="stable")


def test_weight_one_ranks_as_beta_and_a_topic_constant_changes_nothing():
    np.testing.assert_array_equal(_order(topic_relevance(BETA, USAGE, 1.0)), _order(BETA))
    shifted = BETA + np.arange(5.0)[:, None]  # a constant per topic: the same softmax
    np.testing.assert_allclose(topic_relevance(shifted, USAGE), topic_relevance(BETA, USAGE))


def test_a_gene_every_topic_weights_falls_behind_the_topic_s_own():
    beta = np.zeros((3, 6))
    beta[:, 0] = 4.0  # a background gene, high in every topic
    beta[[0, 1, 2], [1, 2, 3]] = 3.5  # each topic's own gene, a little lower
    assert _order(topic_relevance(beta, np.ones(3), 1.0))[:, 0].tolist() == [0, 0, 0]
    top = _order(topic_relevance(beta, np.ones(3), RELEVANCE_WEIGHT))[:, 0]
    assert top.tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    ("usage", "weight", "message"),
    [
        (USAGE[:4], 0.6, "one value per topic"),
        (USAGE, 1.5, r"weight must be in \[0, 1\]"),
        (np.zeros(5), 0.6, "not all zero"),
        (-USAGE, 0.6, "non-negative"),
    ],
)
def test_bad_usage_or_weight_is_refused(usage, weight, message):
    with pytest.raises(ValueError, match=message):
        topic_relevance(BETA, usage, weight)


@pytest.fixture(scope="module")
def trained():
    adata = simulate(n_cells=400, n_genes=120, n_cell_types=3, random_state=0)
    BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch")
    model = BatchCorrectedSCETM(adata, n_topics=8, n_emb=8)
    model.train(max_epochs=20, seed=0, batch_size=200, enable_progress_bar=False)
    return model


def test_the_model_ranks_its_top_genes_by_relevance(trained):
    model = trained
    relevance = model.get_topic_gene_relevance()
    beta = model.get_topic_gene_matrix()
    assert list(relevance.index) == model.topic_names
    assert list(relevance.columns) == list(model.adata.var_names)
    genes = np.asarray(beta.columns)
    for weight, scores in [(RELEVANCE_WEIGHT, relevance), (1.0, beta)]:
        expected = genes[_order(scores.to_numpy())[:, :5]].T
        top = model.get_top_genes(5, relevance=weight)
        np.testing.assert_array_equal(top.to_numpy(), expected)


def test_the_topic_usage_is_saved_with_the_model(trained, tmp_path):
    model = trained
    usage = model._full_topic_proportions(None, None).mean(axis=0)
    np.testing.assert_allclose(model.topic_usage_, usage, rtol=1e-5)
    model.save(tmp_path / "m", overwrite=True)
    loaded = BatchCorrectedSCETM.load(tmp_path / "m", adata=model.adata)
    assert loaded.topic_usage_ == model.topic_usage_
    np.testing.assert_array_equal(loaded.get_top_genes(10), model.get_top_genes(10))
